"""Response models of the monitoring API (they make the OpenAPI document exact).

Field names follow the specification's EXAMPLE 3; extra fields are additions.
Timestamps serialise as ISO 8601 with a UTC offset.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "BlobLocation",
    "ChainLink",
    "ErrorBody",
    "ForceCheckpointAccepted",
    "Health",
    "JobCheckpoints",
    "JobStatus",
    "KeptCheckpoint",
    "KeptCheckpoints",
    "StorageInfo",
    "StorageTotals",
    "TaskDetail",
    "TaskSummary",
    "ValidationErrorBody",
]

JobStatus = Literal[
    "running",
    "completed",
    "failed",
    "cancelled",
    "terminated",
    "timed_out",
    "continued_as_new",
    "unknown",
]
"""``unknown``: Temporal has no record of the workflow (e.g. past retention) or is unreachable."""

Tier = Literal["sql", "object"]
"""``sql``: the catalog's blob table (blobs below ``db_size_limit``); ``object``: the object store."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskSummary(_Model):
    task_id: str
    progress_percent: float = Field(ge=0, le=100)
    checkpoint_count: int = Field(ge=0, description="Checkpoints committed over the task's life.")
    last_checkpoint_at: datetime | None = Field(description="ISO 8601, UTC.")
    base_checkpoint_size: int | None = Field(
        ge=0, description="Stored bytes of the current base; null without a checkpoint."
    )
    attempt: int | None = Field(default=None, ge=0)
    epoch: int | None = Field(default=None, ge=0)
    status: str | None = Field(default=None, description="Task status as recorded in the catalog.")
    bytes_stored: int = Field(default=0, ge=0, description=(
        "Stored bytes of the live chain's state blobs (its file chunks are counted in the "
        "task's detail and storage-info)."))
    storage_full_since: datetime | None = Field(
        default=None, description="Set while the task's saves find no room for a new base."
    )


class JobCheckpoints(_Model):
    job_id: str
    job_status: JobStatus
    total_tasks: int = Field(ge=0)
    tasks_with_checkpoints: int = Field(ge=0)
    average_progress_percent: float = Field(ge=0, le=100)
    total_checkpoints_taken: int = Field(ge=0)
    total_bytes_stored: int = Field(default=0, ge=0)
    tasks: list[TaskSummary]


class KeptCheckpoint(_Model):
    """A completed task's final checkpoint kept with ``keep="final"``."""

    task_id: str
    job_id: str
    kept_at: datetime = Field(description="When the task completed and its checkpoint was kept.")
    seq: int | None = Field(default=None, ge=0, description="The kept (newest) checkpoint.")
    progress_percent: float = Field(ge=0, le=100)
    files: int = Field(default=0, ge=0, description="Files kept with it.")
    bytes_stored: int = Field(default=0, ge=0,
                              description="Stored bytes of its chain, file chunks included.")


class KeptCheckpoints(_Model):
    kept: list[KeptCheckpoint]


class ChainLink(_Model):
    seq: int = Field(ge=0)
    kind: Literal["base", "delta"]
    base_seq: int | None = Field(default=None, ge=0)
    epoch: int | None = Field(default=None, ge=0)
    codecs: list[str] = Field(default_factory=list, description="Encodings of its blobs.")
    parts: int = Field(default=0, ge=0, description="Number of blobs.")
    files: int = Field(default=0, ge=0, description="Files committed with this checkpoint.")
    raw_size: int | None = Field(default=None, ge=0, description="Bytes before compression.")
    stored_size: int = Field(ge=0, description="Bytes after compression.")
    progress_percent: float | None = None
    created_at: datetime | None = None


class TaskDetail(_Model):
    task_id: str
    job_id: str
    status: str | None = None
    attempt: int | None = Field(default=None, ge=0)
    epoch: int | None = Field(default=None, ge=0)
    head_seq: int | None = Field(default=None, ge=0)
    checkpoint_count: int = Field(ge=0)
    progress_percent: float = Field(ge=0, le=100)
    last_checkpoint_at: datetime | None = None
    age_seconds: float | None = Field(
        default=None, description="Age of the newest committed checkpoint."
    )
    base_checkpoint_size: int | None = Field(default=None, ge=0)
    bytes_stored: int = Field(default=0, ge=0, description=(
        "Stored bytes of the live chain: its blobs, and each file chunk once."))
    checkpoint_storage_path: str | None = Field(
        default=None, description="Object-store directory of the task's blobs, or 'sql'."
    )
    chain: list[ChainLink] = Field(description="Committed checkpoints: a base, then its deltas.")
    force_pending: bool = False
    force_requested_at: datetime | None = None
    storage_full_since: datetime | None = Field(
        default=None,
        description="Set while the task's saves find no room for a new base (deltas still commit).",
    )


class BlobLocation(_Model):
    seq: int = Field(ge=0)
    part: int = Field(default=0, ge=0)
    kind: Literal["base", "delta", "file"] = Field(
        description="`file`: a chunk of the task's checkpointed files, listed once however "
                    "many checkpoints name it.")
    tier: Tier
    key: str = Field(description="Blob key (ids percent-encoded).")
    location: str | None = Field(
        default=None, description="Where it lives: catalog row, file path or s3:// URL."
    )
    raw_size: int | None = Field(default=None, ge=0, description="Bytes before compression.")
    stored_size: int = Field(ge=0, description="Bytes after compression.")
    codec: str | None = None
    sha256: str | None = None
    xxh3_128: str | None = Field(
        default=None, description="Integrity hash of a numeric part (index version 2) instead of SHA-256."
    )


class StorageTotals(_Model):
    blob_count: int = Field(ge=0)
    raw_bytes: int = Field(ge=0)
    stored_bytes: int = Field(ge=0)
    sql_bytes: int = Field(ge=0, description="Stored bytes in the catalog's blob table.")
    object_bytes: int = Field(ge=0, description="Stored bytes in the object store.")
    compression_ratio: float | None = Field(
        default=None, description="stored / raw; null when raw sizes are unknown."
    )


class StorageInfo(_Model):
    task_id: str
    object_store: str | None = Field(
        default=None, description="Where large blobs live (bucket or directory URL)."
    )
    db_size_limit: int | None = Field(
        default=None, description="Blobs below this many bytes go to the sql tier."
    )
    blobs: list[BlobLocation]
    totals: StorageTotals


class ForceCheckpointAccepted(_Model):
    task_id: str
    force_pending: Literal[True] = True
    already_pending: bool = Field(
        description="True when a request was already waiting; at most one is kept per task."
    )


class Health(_Model):
    status: Literal["ok"] = "ok"


class ErrorBody(_Model):
    error: str
    detail: str


class ValidationErrorBody(_Model):
    error: Literal["invalid_request"] = "invalid_request"
    detail: str
    errors: list[dict[str, Any]] = Field(default_factory=list)
