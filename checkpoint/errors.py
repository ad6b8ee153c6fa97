"""Errors raised by the checkpoint library.

Hierarchy::

    CheckpointError
    ├── CaptureError            state could not be captured (e.g. unpicklable leaf)
    │   └── MemoryBudgetExceeded  state larger than the configured memory budget
    ├── StorageError            a blob store or the catalog failed
    │   ├── StorageUnavailable  the backend cannot be reached right now (retry later)
    │   ├── BlobNotFound        a key that should exist does not
    │   └── BlobExists          a create-only put found the key already written
    ├── CorruptCheckpoint       a blob failed its SHA-256 check or is malformed
    ├── Fenced                  a commit from an attempt whose epoch is no longer current
    ├── StaleCheckpoint         the newest checkpoint is older than max_checkpoint_age
    └── InvalidId               a job or task id that may not be used in keys or paths

Backend exceptions (boto3, SQLAlchemy, OSError) are translated into these at the
store / catalog boundary, always chained with ``raise ... from exc``.
"""

from __future__ import annotations

__all__ = [
    "BlobExists",
    "BlobNotFound",
    "CaptureError",
    "CheckpointError",
    "CorruptCheckpoint",
    "Fenced",
    "InvalidId",
    "MemoryBudgetExceeded",
    "StaleCheckpoint",
    "StorageError",
    "StorageUnavailable",
]


class CheckpointError(Exception):
    """Base class of every error this library raises."""


class CaptureError(CheckpointError):
    """The state could not be captured; earlier checkpoints stay valid."""


class MemoryBudgetExceeded(CaptureError):
    """Capturing the state would need more memory than the budget allows."""


class StorageError(CheckpointError):
    """A blob store or the catalog failed."""


class StorageUnavailable(StorageError):
    """The backend cannot be reached right now; the operation may be retried."""


class BlobNotFound(StorageError):
    """A blob key that should exist does not."""


class BlobExists(StorageError):
    """A create-only write found its key already present."""


class CorruptCheckpoint(CheckpointError):
    """A blob failed its integrity check, or its contents are malformed."""


class Fenced(CheckpointError):
    """A newer attempt owns the task: this attempt's commit was rejected."""


class StaleCheckpoint(CheckpointError):
    """The newest checkpoint is older than the allowed maximum age."""


class InvalidId(CheckpointError, ValueError):
    """An identifier that cannot be used safely in keys, paths or URLs."""
