"""Turn the checkpoint manager's read API (plain dicts) into the API's response models.

``CheckpointManager.job_summary / task_detail / storage_info`` read the
catalog (read-only transactions) and raise ``KeyError`` for an unknown job or
task; here that becomes ``None`` and the numbers are checked into the schemas.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .schemas import (
    BlobLocation,
    ChainLink,
    StorageInfo,
    StorageTotals,
    TaskDetail,
    TaskSummary,
)

__all__ = ["CatalogReader"]


def _pct(value: Any) -> float:
    return min(100.0, max(0.0, float(value or 0.0)))


def _count(value: Any) -> int:
    return max(0, int(value or 0))


def _opt(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and value >= 0 else None


def _index(task_id: str) -> int:
    tail = task_id.rpartition(":")[2]
    return int(tail) if tail.isdigit() else -1


def _summary(item: Mapping[str, Any]) -> TaskSummary:
    return TaskSummary(
        task_id=item["task_id"],
        progress_percent=_pct(item.get("progress_percent")),
        checkpoint_count=_count(item.get("checkpoint_count")),
        last_checkpoint_at=item.get("last_checkpoint_at"),
        base_checkpoint_size=_opt(item.get("base_checkpoint_size")),
        attempt=_opt(item.get("attempt")),
        epoch=_opt(item.get("epoch")),
        status=item.get("status"),
        bytes_stored=_count(item.get("stored_bytes")),
        storage_full_since=item.get("storage_full_since"),
    )


def _link(row: Mapping[str, Any]) -> ChainLink:
    return ChainLink(
        seq=_count(row.get("seq")),
        kind="base" if row.get("kind") == "base" else "delta",
        base_seq=_opt(row.get("base_seq")),
        epoch=_opt(row.get("epoch")),
        codecs=[str(c) for c in row.get("codecs") or []],
        parts=_count(row.get("parts")),
        raw_size=_opt(row.get("raw_bytes")),
        stored_size=_count(row.get("stored_bytes")),
        progress_percent=row.get("progress_percent"),
        created_at=row.get("created_at"),
    )


def _blob(b: Mapping[str, Any]) -> BlobLocation:
    return BlobLocation(
        seq=_count(b.get("seq")),
        part=_count(b.get("part")),
        kind="base" if b.get("kind") == "base" else "delta",
        tier="database" if b.get("storage") == "database" else "object_store",
        key=str(b.get("key", "")),
        location=b.get("location"),
        raw_size=_opt(b.get("raw_bytes")),
        stored_size=_count(b.get("stored_bytes")),
        codec=b.get("codec"),
        sha256=b.get("sha256"),
    )


def _totals(blobs: list[BlobLocation]) -> StorageTotals:
    raw = sum(b.raw_size or 0 for b in blobs)
    stored = sum(b.stored_size for b in blobs)
    raw_known = all(b.raw_size is not None for b in blobs)
    return StorageTotals(
        blob_count=len(blobs),
        raw_bytes=raw,
        stored_bytes=stored,
        database_bytes=sum(b.stored_size for b in blobs if b.tier == "database"),
        object_store_bytes=sum(b.stored_size for b in blobs if b.tier == "object_store"),
        compression_ratio=round(stored / raw, 6) if raw and raw_known else None,
    )


class CatalogReader:
    """The API's view of the catalog, through a ``checkpoint.CheckpointManager``."""

    def __init__(self, manager: Any) -> None:
        self._m = manager

    def job_tasks(self, job_id: str) -> list[TaskSummary] | None:
        """The job's tasks in index order; None if the catalog knows none."""
        try:
            summary = self._m.job_summary(job_id)
        except KeyError:
            return None
        tasks = [_summary(t) for t in summary.get("tasks", [])]
        return sorted(tasks, key=lambda t: (_index(t.task_id), t.task_id)) or None

    def task_detail(self, task_id: str) -> TaskDetail | None:
        try:
            d = self._m.task_detail(task_id)
        except KeyError:
            return None
        chain = [_link(r) for r in d.get("chain", [])]
        return TaskDetail(
            task_id=d["task_id"],
            job_id=d["job_id"],
            status=d.get("status"),
            attempt=_opt(d.get("attempt")),
            epoch=_opt(d.get("epoch")),
            head_seq=_opt(d.get("head_seq")) if chain else None,
            checkpoint_count=_count(d.get("checkpoint_count")),
            progress_percent=_pct(d.get("progress_percent")),
            last_checkpoint_at=d.get("last_checkpoint_at"),
            age_seconds=d.get("age_seconds"),
            base_checkpoint_size=_opt(d.get("base_checkpoint_size")),
            bytes_stored=_count(d.get("stored_bytes")),
            checkpoint_storage_path=d.get("checkpoint_storage_path"),
            chain=chain,
            force_pending=d.get("force_requested_at") is not None,
            force_requested_at=d.get("force_requested_at"),
            storage_full_since=d.get("storage_full_since"),
        )

    def storage_info(self, task_id: str, *, object_store: str | None = None) -> StorageInfo | None:
        try:
            info = self._m.storage_info(task_id)
        except KeyError:
            return None
        blobs = [_blob(b) for b in info.get("blobs", [])]
        return StorageInfo(
            task_id=task_id,
            object_store=object_store,
            db_size_limit=_opt(info.get("db_size_limit")),
            blobs=blobs,
            totals=_totals(blobs),
        )
