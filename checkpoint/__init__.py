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

if TYPE_CHECKING:  # explicit re-exports (`X as X`) of what __getattr__ loads
    from ._files import FileCapture as FileCapture
    from ._manager import Attempt as Attempt
    from ._manager import CheckpointManager as CheckpointManager
    from ._pools import lower_thread_priority as lower_thread_priority
    from ._records import CommitInfo as CommitInfo
    from ._records import ManagerConfig as ManagerConfig
    from ._records import Restored as Restored
    from ._views import BlobView as BlobView
    from ._views import ChainLinkView as ChainLinkView
    from ._views import StorageView as StorageView
    from ._views import TaskView as TaskView
    from ._writer import TaskWriter as TaskWriter
    from .catalog import create_engine_for as create_engine_for
    from .catalog import upgrade_database as upgrade_database
    from .errors import BlobExists as BlobExists
    from .errors import BlobNotFound as BlobNotFound
    from .errors import CaptureError as CaptureError
    from .errors import CatalogMismatch as CatalogMismatch
    from .errors import CheckpointError as CheckpointError
    from .errors import CorruptCheckpoint as CorruptCheckpoint
    from .errors import Fenced as Fenced
    from .errors import InvalidId as InvalidId
    from .errors import MemoryBudgetExceeded as MemoryBudgetExceeded
    from .errors import StaleCapture as StaleCapture
    from .errors import StaleCheckpoint as StaleCheckpoint
    from .errors import StorageError as StorageError
    from .errors import StorageFull as StorageFull
    from .errors import StorageUnavailable as StorageUnavailable

# The façade. Blob stores are in ``checkpoint.stores``; capture, the codec and
# the catalog's data functions stay in their modules (internal API).
_LOCATIONS = {
    "Attempt": "._manager",
    "CheckpointManager": "._manager",
    "CommitInfo": "._records",
    "FileCapture": "._files",
    "ManagerConfig": "._records",
    "Restored": "._records",
    "TaskWriter": "._writer",
    # the read models the manager's read API returns (REST API, CLI)
    **{name: "._views" for name in ("BlobView", "ChainLinkView", "StorageView", "TaskView")},
    "create_engine_for": ".catalog",
    # the priority of the threads that persist checkpoints behind a task
    "lower_thread_priority": "._pools",
    "upgrade_database": ".catalog",
    **{name: ".errors" for name in (
        "BlobExists", "BlobNotFound", "CaptureError", "CatalogMismatch", "CheckpointError",
        "CorruptCheckpoint",
        "Fenced", "InvalidId", "MemoryBudgetExceeded", "StaleCapture", "StaleCheckpoint", "StorageError",
        "StorageFull", "StorageUnavailable")},
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
