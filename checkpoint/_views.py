"""Read models: frozen views of tasks, their chains and their blobs, built in one place.

The REST API and the CLI render these; they do not recompute them. Tier names
are the manifest's everywhere: ``sql`` (the catalog's ``blobs`` table, blobs
below ``db_size_limit``) and ``object`` (the object store).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, cast

from ._chain import TIERS
from ._files import chunk_refs
from ._records import PartRef
from .catalog import CheckpointRow, TaskRow, utcnow

#: the catalog stores these as strings; the views name the values they take
LinkKind = Literal["base", "delta"]
BlobKind = Literal["base", "delta", "file"]
TierName = Literal["sql", "object"]   # ``_chain.TIERS``

__all__ = ["BlobView", "ChainLinkView", "StorageView", "TaskView", "link_view", "live_bytes",
           "task_view"]


@dataclass(frozen=True)
class ChainLinkView:
    """One committed checkpoint of a task's chain."""

    seq: int
    kind: LinkKind
    base_seq: int
    epoch: int
    created_at: datetime
    progress_percent: float | None
    raw_bytes: int
    stored_bytes: int
    codecs: tuple[str, ...]
    parts: int
    files: int = 0             # files committed with this state (file checkpoints)


@dataclass(frozen=True)
class TaskView:
    """A task as the catalog knows it; ``chain`` is filled for single-task views."""

    task_id: str
    job_id: str
    status: str
    attempt: int
    epoch: int
    head_seq: int
    checkpoint_count: int
    progress_percent: float | None
    last_checkpoint_at: datetime | None
    base_checkpoint_size: int | None
    stored_bytes: int           # stored bytes of the live chain
    checkpoint_storage_path: str | None
    force_requested_at: datetime | None
    storage_full_since: datetime | None
    chain: tuple[ChainLinkView, ...] = ()
    kept_at: datetime | None = None   # set while its final checkpoint is kept (keep="final")

    @property
    def age_seconds(self) -> float | None:
        """Age of the newest committed checkpoint (None without a chain)."""
        return (utcnow() - self.chain[-1].created_at).total_seconds() if self.chain else None


@dataclass(frozen=True)
class BlobView:
    """One stored blob of a task, where it lives and its sizes."""

    seq: int                   # a file chunk: the oldest live checkpoint naming it
    part: int
    kind: BlobKind             # "file": a chunk, listed once however many name it
    key: str
    tier: TierName
    location: str
    stored_bytes: int
    raw_bytes: int
    codec: str
    sha256: str | None          # SHA-256 of the stored bytes (the index, pickled parts)
    xxh3_128: str | None = None  # xxh3-128 instead, for numeric parts since index version 2


@dataclass(frozen=True)
class StorageView:
    """Every blob of a task's live chain, with the totals (computed once, here)."""

    task_id: str
    db_size_limit: int
    blobs: tuple[BlobView, ...]
    raw_bytes: int
    stored_bytes: int
    bytes_by_tier: dict[str, int]

    @classmethod
    def of(cls, task_id: str, db_size_limit: int, rows: Sequence[CheckpointRow],
           locate: Callable[[PartRef], str]) -> StorageView:
        blobs = tuple(_blob(r.seq, i, r.kind, PartRef.from_json(p), locate)
                      for r in rows for i, p in enumerate(r.parts)) + _chunks(rows, locate)
        by_tier = dict.fromkeys(TIERS, 0)
        for b in blobs:
            by_tier[b.tier] = by_tier.get(b.tier, 0) + b.stored_bytes
        return cls(task_id, db_size_limit, blobs, sum(b.raw_bytes for b in blobs),
                   sum(b.stored_bytes for b in blobs), by_tier)


def _blob(seq: int, part: int, kind: str, ref: PartRef,
          locate: Callable[[PartRef], str]) -> BlobView:
    return BlobView(seq, part, cast(BlobKind, kind), ref.key, cast(TierName, ref.tier),
                    locate(ref), ref.size,
                    ref.raw_size, ref.codec, ref.sha256,
                    ref.digest if ref.hash == "xxh3_128" else None)


def _chunks(rows: Sequence[CheckpointRow], locate: Callable[[PartRef], str]) -> tuple[BlobView, ...]:
    """Each stored file chunk once, however many checkpoints name it."""
    seen: dict[str, BlobView] = {}
    for r in rows:
        for ref in chunk_refs(r.files).values():
            if ref.key not in seen:
                seen[ref.key] = _blob(r.seq, len(seen), "file", ref, locate)
    return tuple(seen.values())


def live_bytes(rows: Sequence[CheckpointRow]) -> int:
    """Stored bytes of these rows: their parts, and each file chunk they name once."""
    chunks = {ref.key: ref.size for r in rows for ref in chunk_refs(r.files).values()}
    return sum(r.stored_bytes for r in rows) + sum(chunks.values())


def link_view(row: CheckpointRow) -> ChainLinkView:
    return ChainLinkView(row.seq, cast(LinkKind, row.kind), row.base_seq, row.epoch, row.created_at,
                         row.progress_percent, row.raw_bytes, row.stored_bytes,
                         tuple(sorted({p["codec"] for p in row.parts})), len(row.parts),
                         len(row.files["files"]) if row.files else 0)


def task_view(t: TaskRow, stored_bytes: int, chain: Sequence[CheckpointRow] = ()) -> TaskView:
    return TaskView(
        task_id=t.task_id, job_id=t.job_id, status=t.status, attempt=t.attempt, epoch=t.epoch,
        head_seq=t.head_seq, checkpoint_count=t.checkpoint_count,
        progress_percent=t.progress_percent, last_checkpoint_at=t.last_checkpoint_at,
        base_checkpoint_size=t.base_checkpoint_size, stored_bytes=stored_bytes,
        checkpoint_storage_path=t.checkpoint_storage_path,
        force_requested_at=t.force_requested_at, storage_full_since=t.storage_full_since,
        chain=tuple(link_view(r) for r in chain), kept_at=t.kept_at)
