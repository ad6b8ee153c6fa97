"""Framework-aware incremental checkpoints in hybrid SQL / object storage.

Names are loaded on first use, so ``import checkpoint`` stays cheap (no numpy,
torch, SQLAlchemy or boto3 until something needs them).

Typical use by one attempt of a task::

    manager = CheckpointManager.from_urls("sqlite:///state.db", "file:///var/blobs")
    attempt = manager.open_attempt(job_id, task_id, attempt_number)
    state = attempt.restored.state if attempt.restored else initial_state()
    writer = attempt.writer
    writer.save(writer.capture(state), progress_percent=12.5)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._manager import Attempt, CheckpointManager
    from ._records import CommitInfo, ManagerConfig, Restored
    from ._writer import TaskWriter
    from .catalog import create_engine_for, upgrade_database
    from .errors import (
        BlobExists,
        BlobNotFound,
        CaptureError,
        CatalogMismatch,
        CheckpointError,
        CorruptCheckpoint,
        Fenced,
        InvalidId,
        MemoryBudgetExceeded,
        StaleCheckpoint,
        StorageError,
        StorageUnavailable,
    )

# The façade. Blob stores are in ``checkpoint.stores``; capture, the codec and
# the catalog's data functions stay in their modules (internal API).
_LOCATIONS = {
    "Attempt": "._manager",
    "CheckpointManager": "._manager",
    "CommitInfo": "._records",
    "ManagerConfig": "._records",
    "Restored": "._records",
    "TaskWriter": "._writer",
    "create_engine_for": ".catalog",
    "upgrade_database": ".catalog",
    **{name: ".errors" for name in (
        "BlobExists", "BlobNotFound", "CaptureError", "CatalogMismatch", "CheckpointError",
        "CorruptCheckpoint",
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
