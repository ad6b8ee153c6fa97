"""Blob store in the catalog database's ``blobs`` table (the small-blob tier)."""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import ColumnElement, Engine, delete, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from ..catalog import BlobRow, read_engine, translate_error, utcnow
from ..errors import (
    BlobExists,
    BlobNotFound,
)
from ._base import BlobInfo, BlobStore, check_key

__all__ = ["SqlStore"]


def _under(prefix: str) -> ColumnElement[bool]:
    """``key LIKE prefix%`` with the prefix's own ``%`` and ``_`` taken literally."""
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return BlobRow.key.like(escaped + "%", escape="\\")


class SqlStore(BlobStore):
    """One row per blob; each call is its own short transaction."""

    tier = "sql"

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._reader = read_engine(engine)

    def put(self, key: str, data: bytes) -> None:
        check_key(key)
        try:
            with Session(self.engine) as s, s.begin():
                s.add(BlobRow(key=key, data=bytes(data), size=len(data), created_at=utcnow()))
        except IntegrityError:
            raise BlobExists(f"CheckpointManager: blob {key!r} already exists") from None
        except SQLAlchemyError as exc:
            raise translate_error(exc, f"storing blob {key!r}") from exc

    def get(self, key: str) -> bytes:
        check_key(key)
        try:
            with Session(self._reader) as s, s.begin():
                data = s.scalar(select(BlobRow.data).where(BlobRow.key == key))
        except SQLAlchemyError as exc:
            raise translate_error(exc, f"reading blob {key!r}") from exc
        if data is None:
            raise BlobNotFound(f"blob {key!r} not found in the database")
        return bytes(data)

    def exists(self, key: str) -> bool:
        check_key(key)
        try:
            with Session(self._reader) as s, s.begin():
                return s.scalar(select(BlobRow.key).where(BlobRow.key == key)) is not None
        except SQLAlchemyError as exc:
            raise translate_error(exc, f"looking up blob {key!r}") from exc

    def delete(self, key: str) -> None:
        check_key(key)
        self.delete_many([key])

    def delete_many(self, keys: list[str]) -> None:
        """Delete several keys in one transaction."""
        if not keys:
            return
        try:
            with Session(self.engine) as s, s.begin():
                s.execute(delete(BlobRow).where(BlobRow.key.in_(keys)))
        except SQLAlchemyError as exc:
            raise translate_error(exc, f"deleting {len(keys)} blobs") from exc

    def delete_prefix(self, prefix: str) -> int:
        """Delete every row under ``prefix`` (a put here is never partial).

        By exact key, in batches: SQLite's ``LIKE`` ignores case, so deleting
        ``LIKE prefix%`` could take another task's rows.
        """
        keys = self.list(prefix)
        for i in range(0, len(keys), 500):
            self.delete_many(keys[i:i + 500])
        return len(keys)

    def scan(self, prefix: str = "") -> Iterator[BlobInfo]:
        query = select(BlobRow.key, BlobRow.size, BlobRow.created_at)
        if prefix:
            query = query.where(_under(prefix))
        try:
            with Session(self._reader) as s, s.begin():
                rows = s.execute(query.order_by(BlobRow.key)).all()
        except SQLAlchemyError as exc:
            raise translate_error(exc, f"listing blobs under {prefix!r}") from exc
        for key, size, created in rows:
            if key.startswith(prefix):
                yield BlobInfo(key, size, created)

    def describe(self, key: str) -> str:
        return f"database:blobs/{key}"
