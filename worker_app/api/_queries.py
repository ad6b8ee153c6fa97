"""Render the checkpoint library's read models (``checkpoint._views``) as response models.

``CheckpointManager.job_tasks / task_view / storage_view`` read the catalog in
read-only transactions and build frozen views; here each view becomes its
schema, field by field. Nothing is recomputed: totals come from the views.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .schemas import (
    BlobLocation,
    ChainLink,
    KeptCheckpoint,
    KeptCheckpoints,
    StorageInfo,
    StorageTotals,
    TaskDetail,
    TaskSummary,
)

if TYPE_CHECKING:
    from checkpoint import BlobView, ChainLinkView, CheckpointManager, TaskView

__all__ = ["CatalogReader"]


def _pct(value: float | None) -> float:
    return min(100.0, max(0.0, float(value or 0.0)))


def _index(task_id: str) -> int:
    tail = task_id.rpartition(":")[2]
    return int(tail) if tail.isdigit() else -1


def _summary(t: TaskView) -> TaskSummary:
    return TaskSummary(
        task_id=t.task_id,
        progress_percent=_pct(t.progress_percent),
        checkpoint_count=t.checkpoint_count,
        last_checkpoint_at=t.last_checkpoint_at,
        base_checkpoint_size=t.base_checkpoint_size,
        attempt=t.attempt,
        epoch=t.epoch,
        status=t.status,
        bytes_stored=t.stored_bytes,
        storage_full_since=t.storage_full_since,
    )


def _link(link: ChainLinkView) -> ChainLink:
    return ChainLink(
        seq=link.seq,
        kind=link.kind,
        base_seq=link.base_seq,
        epoch=link.epoch,
        codecs=list(link.codecs),
        parts=link.parts,
        files=link.files,
        raw_size=link.raw_bytes,
        stored_size=link.stored_bytes,
        progress_percent=link.progress_percent,
        created_at=link.created_at,
    )


def _blob(b: BlobView) -> BlobLocation:
    return BlobLocation(
        seq=b.seq,
        part=b.part,
        kind=b.kind,
        tier=b.tier,
        key=b.key,
        location=b.location,
        raw_size=b.raw_bytes,
        stored_size=b.stored_bytes,
        codec=b.codec,
        sha256=b.sha256,
        xxh3_128=b.xxh3_128,
    )


class CatalogReader:
    """The API's view of the catalog, through a ``checkpoint.CheckpointManager``."""

    def __init__(self, manager: CheckpointManager) -> None:
        self._m = manager

    def job_tasks(self, job_id: str) -> list[TaskSummary] | None:
        """The job's tasks in index order; None if the catalog knows none."""
        tasks = [_summary(t) for t in self._m.job_tasks(job_id)]
        return sorted(tasks, key=lambda t: (_index(t.task_id), t.task_id)) or None

    def kept(self, job_id: str | None = None) -> KeptCheckpoints:
        """The kept final checkpoints (of one job, or all), by task id."""
        return KeptCheckpoints(kept=[
            KeptCheckpoint(task_id=t.task_id, job_id=t.job_id, kept_at=t.kept_at,
                           seq=t.chain[-1].seq if t.chain else None,
                           progress_percent=_pct(t.progress_percent),
                           files=t.chain[-1].files if t.chain else 0,
                           bytes_stored=t.stored_bytes)
            for t in self._m.kept_tasks(job_id) if t.kept_at is not None])

    def task_detail(self, task_id: str) -> TaskDetail | None:
        t = self._m.task_view(task_id)
        if t is None:
            return None
        return TaskDetail(
            task_id=t.task_id,
            job_id=t.job_id,
            status=t.status,
            attempt=t.attempt,
            epoch=t.epoch,
            head_seq=t.head_seq if t.chain else None,
            checkpoint_count=t.checkpoint_count,
            progress_percent=_pct(t.progress_percent),
            last_checkpoint_at=t.last_checkpoint_at,
            age_seconds=t.age_seconds,
            base_checkpoint_size=t.base_checkpoint_size,
            bytes_stored=t.stored_bytes,
            checkpoint_storage_path=t.checkpoint_storage_path,
            chain=[_link(link) for link in t.chain],
            force_pending=t.force_requested_at is not None,
            force_requested_at=t.force_requested_at,
            storage_full_since=t.storage_full_since,
        )

    def storage_info(self, task_id: str, *, object_store: str | None = None) -> StorageInfo | None:
        view = self._m.storage_view(task_id)
        if view is None:
            return None
        return StorageInfo(
            task_id=task_id,
            object_store=object_store,
            db_size_limit=view.db_size_limit,
            blobs=[_blob(b) for b in view.blobs],
            totals=StorageTotals(
                blob_count=len(view.blobs),
                raw_bytes=view.raw_bytes,
                stored_bytes=view.stored_bytes,
                sql_bytes=view.bytes_by_tier.get("sql", 0),
                object_bytes=view.bytes_by_tier.get("object", 0),
                compression_ratio=round(view.stored_bytes / view.raw_bytes, 6) if view.raw_bytes else None,
            ),
        )
