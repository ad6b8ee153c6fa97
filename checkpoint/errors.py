"""Errors raised by the checkpoint library.

Hierarchy::

    CheckpointError
    ├── CaptureError            state could not be captured (e.g. unpicklable leaf)
    │   ├── MemoryBudgetExceeded  state larger than the configured memory budget
    │   └── StaleCapture        a tensor skipped as unchanged had changed: nothing stored
    ├── StorageError            a blob store or the catalog failed
    │   ├── StorageUnavailable  the backend cannot be reached right now (retry later)
    │   │   └── StorageFull     the store or the catalog has no space left
    │   ├── BlobNotFound        a key that should exist does not
    │   └── BlobExists          a create-only put found the key already written
    ├── CorruptCheckpoint       a blob failed its SHA-256 check or is malformed
    ├── Fenced                  a commit from an attempt whose epoch is no longer current
    ├── StaleCheckpoint         the newest checkpoint is older than max_checkpoint_age
    ├── CatalogMismatch         the catalog is not the one the task's earlier attempts used
    └── InvalidId               a job or task id that may not be used in keys or paths

Backend exceptions (boto3, SQLAlchemy, OSError) are translated into these at the
store / catalog boundary, always chained with ``raise ... from exc``.
"""

from __future__ import annotations

__all__ = [
    "BlobExists",
    "BlobNotFound",
    "CaptureError",
    "CatalogMismatch",
    "CheckpointError",
    "CorruptCheckpoint",
    "Fenced",
    "InvalidId",
    "MemoryBudgetExceeded",
    "StaleCapture",
    "StaleCheckpoint",
    "StorageError",
    "StorageFull",
    "StorageUnavailable",
    "is_storage_full",
]


class CheckpointError(Exception):
    """Base class of every error this library raises."""


class CaptureError(CheckpointError):
    """The state could not be captured; earlier checkpoints stay valid."""


class MemoryBudgetExceeded(CaptureError):
    """Capturing the state would need more memory than the budget allows."""


def name_paths(paths: list[str], shown: int = 5) -> str:
    """``'a', 'b' and 3 more``: the first ``shown`` leaf paths and a count of the rest."""
    named = ", ".join(map(repr, paths[:shown]))
    return named + (f" and {len(paths) - shown} more" if len(paths) > shown else "")


class StaleCapture(CaptureError):
    """A snapshot was refused before anything was stored: a tensor that capture skipped
    unread, because its version counter had not moved, holds other bytes than the
    buffer it would have been saved from (written through ``.data``, a numpy view or
    an extension's pointer, or a plain write made since the capture). The next capture
    copies these tensors (those written past their counter at every capture from then
    on), so it is exact.
    """

    def __init__(self, paths: list[str]) -> None:
        super().__init__(f"state changed without its version counter at {name_paths(paths)}: "
                         "snapshot not stored; the next capture copies these tensors")
        self.paths = paths


class StorageError(CheckpointError):
    """A blob store or the catalog failed."""


class StorageUnavailable(StorageError):
    """The backend cannot be reached right now; the operation may be retried."""


class StorageFull(StorageUnavailable):
    """The store or the catalog has no space left; saves work again once space returns."""


def is_storage_full(exc: BaseException) -> bool:
    """Whether a backend exception (OSError, a DB-API or SQLAlchemy error) means "no space left".

    Duck-typed so that this module imports no backend: errno ENOSPC / EDQUOT, SQLite's
    "database or disk is full", PostgreSQL's SQLSTATE 53100 (disk_full).
    """
    for err in (exc, getattr(exc, "orig", None), exc.__cause__):
        if err is None:
            continue
        if getattr(err, "errno", None) in (28, 122):  # ENOSPC, EDQUOT
            return True
        if getattr(err, "sqlstate", None) == "53100":
            return True
        if "database or disk is full" in str(err) or "No space left on device" in str(err):
            return True
    return False


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


class CatalogMismatch(CheckpointError):
    """This worker's catalog is not the one the task's earlier attempts committed to.

    Restoring from it would silently restart the task from zero; the attempt
    fails instead (retryable: a worker with the right catalog can take it).
    """


class InvalidId(CheckpointError, ValueError):
    """An identifier that cannot be used safely in keys, paths or URLs."""
