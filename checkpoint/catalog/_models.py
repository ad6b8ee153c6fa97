"""SQLAlchemy 2.x models of the checkpoint catalog.

``tasks`` holds one row per task: the fencing epoch, the head seq, the spec's
summary fields (kept after the checkpoint data is deleted) and the current
chain. ``checkpoints`` holds one row per committed checkpoint with its blob
references. ``blobs`` is the SQL tier of the blob store. ``catalog`` names this catalog.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Float, Integer, LargeBinary, String, TypeDecorator
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["Base", "BlobRow", "CatalogRow", "CheckpointRow", "TaskRow", "UTCDateTime", "utcnow"]


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class TaskRow(Base):
    __tablename__ = "tasks"

    task_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(255), index=True)
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(32), default="pending")
    head_seq: Mapped[int] = mapped_column(Integer, default=0)
    base_checkpoint: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    delta_checkpoints: Mapped[list[Any]] = mapped_column(JSON, default=list)
    checkpoint_count: Mapped[int] = mapped_column(Integer, default=0)
    progress_percent: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_checkpoint_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    checkpoint_storage_path: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    base_checkpoint_size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    force_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # set while the task's saves find no room for a new base (see TaskWriter)
    storage_full_since: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # set when the task completed with keep="final": its checkpoints outlive the job
    kept_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class CheckpointRow(Base):
    __tablename__ = "checkpoints"

    task_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(String(255), index=True)
    epoch: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(8))  # "base" | "delta"
    base_seq: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    progress_percent: Mapped[float | None] = mapped_column(Float, nullable=True)
    raw_bytes: Mapped[int] = mapped_column(Integer)
    stored_bytes: Mapped[int] = mapped_column(Integer)
    # [{key, tier: "sql"|"object", size, raw_size, sha256, codec}]
    parts: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    # the directory's files committed with this state (checkpoint/_files.py), or None
    files: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True, default=None)


class CatalogRow(Base):
    """The catalog's identity: one row, made when the catalog is created."""

    __tablename__ = "catalog"

    catalog_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class BlobRow(Base):
    __tablename__ = "blobs"

    key: Mapped[str] = mapped_column(String(1024), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
