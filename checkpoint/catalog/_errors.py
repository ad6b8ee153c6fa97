"""The one choke point where catalog (SQLAlchemy) errors become ``checkpoint.errors`` types."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from ..errors import StorageError, StorageFull, StorageUnavailable, is_storage_full

__all__ = ["transaction", "translate_error"]


def translate_error(exc: SQLAlchemyError, what: str) -> StorageError:
    """``what`` failed with ``exc``: StorageFull, StorageUnavailable (the database is
    unreachable, locked or restarting) or StorageError; raise it ``from exc``."""
    reason = getattr(exc, "orig", None) or exc
    if is_storage_full(exc):
        return StorageFull(f"CheckpointManager: {what} failed: {reason}")
    if isinstance(exc, OperationalError):
        return StorageUnavailable(f"CheckpointManager: {what} failed: {reason}")
    return StorageError(f"CheckpointManager: {what} failed: {exc}")


@contextmanager
def transaction(engine: Engine, what: str) -> Iterator[Session]:
    """One catalog transaction whose objects stay usable after it; a SQLAlchemy
    error inside it leaves as ``translate_error``'s type (``what`` names the work)."""
    try:
        with Session(engine, expire_on_commit=False) as s, s.begin():
            yield s
    except SQLAlchemyError as exc:
        raise translate_error(exc, what) from exc
