"""The checkpoint catalog: models, engines and data functions."""

from __future__ import annotations

from ._data import (
    begin_attempt,
    catalog_id,
    chain_rows,
    clear_chain,
    commit_checkpoint,
    delete_checkpoints,
    delete_job_rows,
    end_open_tasks,
    ensure_task,
    fence_tasks,
    get_task,
    job_tasks,
    jobs_with_checkpoints,
    kept_tasks,
    mark_kept,
    referenced_keys,
    release_kept,
    request_force,
    set_status,
    set_storage_full,
    stored_bytes_by_task,
    take_force,
)
from ._engine import create_engine_for, read_engine
from ._errors import translate_error
from ._migrate import upgrade_database
from ._models import Base, BlobRow, CatalogRow, CheckpointRow, TaskRow, UTCDateTime, utcnow

__all__ = [
    "Base",
    "BlobRow",
    "CatalogRow",
    "CheckpointRow",
    "TaskRow",
    "UTCDateTime",
    "begin_attempt",
    "catalog_id",
    "chain_rows",
    "clear_chain",
    "commit_checkpoint",
    "create_engine_for",
    "delete_checkpoints",
    "delete_job_rows",
    "end_open_tasks",
    "ensure_task",
    "fence_tasks",
    "get_task",
    "job_tasks",
    "jobs_with_checkpoints",
    "kept_tasks",
    "mark_kept",
    "read_engine",
    "referenced_keys",
    "release_kept",
    "request_force",
    "set_status",
    "set_storage_full",
    "stored_bytes_by_task",
    "take_force",
    "translate_error",
    "upgrade_database",
    "utcnow",
]
