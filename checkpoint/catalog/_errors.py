"""The one choke point where catalog (SQLAlchemy) errors become ``checkpoint.errors`` types."""

from __future__ import annotations

from sqlalchemy.exc import OperationalError, SQLAlchemyError

from ..errors import StorageError, StorageFull, StorageUnavailable, is_storage_full

__all__ = ["translate_error"]


def translate_error(exc: SQLAlchemyError, what: str) -> StorageError:
    """``what`` failed with ``exc``: StorageFull, StorageUnavailable (the database is
    unreachable, locked or restarting) or StorageError; raise it ``from exc``."""
    reason = getattr(exc, "orig", None) or exc
    if is_storage_full(exc):
        return StorageFull(f"CheckpointManager: {what} failed: {reason}")
    if isinstance(exc, OperationalError):
        return StorageUnavailable(f"CheckpointManager: {what} failed: {reason}")
    return StorageError(f"CheckpointManager: {what} failed: {exc}")
