"""Framework-aware incremental checkpoints in hybrid SQL / object storage.

Names are loaded on first use, so ``import checkpoint`` stays cheap (no numpy,
torch, SQLAlchemy or boto3 until something needs them).

Typical use by one attempt of a task::

    manager = CheckpointManager.from_urls("sqlite:///state.db", "file:///var/blobs")
    epoch = manager.begin_attempt(job_id, task_id, attempt)
    restored = manager.restore(job_id, task_id)
    state = restored.state if restored else initial_state()
    writer = manager.writer(job_id, task_id, epoch, restored)
    writer.save(writer.capture(state), progress_percent=12.5)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._capture import BufferPool, capture
    from ._delta import COMPRESSIONS, EncodedPart, decode, encode, snapshots_equal
    from ._ids import encode_id, validate_id
    from ._manager import CheckpointManager
    from ._records import CommitInfo, ManagerConfig, PartRef, Restored
    from ._snapshot import Snapshot
    from ._writer import TaskWriter
    from .catalog import create_engine_for, upgrade_database
    from .errors import (
        BlobExists,
        BlobNotFound,
        CaptureError,
        CheckpointError,
        CorruptCheckpoint,
        Fenced,
        InvalidId,
        MemoryBudgetExceeded,
        StaleCheckpoint,
        StorageError,
        StorageUnavailable,
    )
    from .stores import (
        BlobStore,
        FsStore,
        HybridStore,
        MemoryStore,
        S3Store,
        SqlStore,
        open_object_store,
    )

_LOCATIONS = {
    "BufferPool": "._capture",
    "capture": "._capture",
    "COMPRESSIONS": "._delta",
    "EncodedPart": "._delta",
    "decode": "._delta",
    "encode": "._delta",
    "snapshots_equal": "._delta",
    "encode_id": "._ids",
    "validate_id": "._ids",
    "CheckpointManager": "._manager",
    "CommitInfo": "._records",
    "ManagerConfig": "._records",
    "PartRef": "._records",
    "Restored": "._records",
    "Snapshot": "._snapshot",
    "TaskWriter": "._writer",
    "create_engine_for": ".catalog",
    "upgrade_database": ".catalog",
    "BlobStore": ".stores",
    "FsStore": ".stores",
    "HybridStore": ".stores",
    "MemoryStore": ".stores",
    "S3Store": ".stores",
    "SqlStore": ".stores",
    "open_object_store": ".stores",
    **{name: ".errors" for name in (
        "BlobExists", "BlobNotFound", "CaptureError", "CheckpointError", "CorruptCheckpoint",
        "Fenced", "InvalidId", "MemoryBudgetExceeded", "StaleCheckpoint", "StorageError",
        "StorageUnavailable")},
}

__all__ = sorted(_LOCATIONS)


def __getattr__(name: str) -> Any:
    module = _LOCATIONS.get(name)
    if module is None:
        raise AttributeError(f"module 'checkpoint' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
