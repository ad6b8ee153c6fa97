"""TaskWriter: one attempt's write path (encode, store, verify, fenced commit)."""

from __future__ import annotations

import hashlib
import logging
import threading
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from ._capture import BufferPool, capture
from ._delta import encode
from ._ids import blob_key
from ._records import CommitInfo, PartRef, Restored, plan_kind
from .catalog import CheckpointRow, chain_rows, commit_checkpoint, get_task, read_engine, utcnow
from .errors import CheckpointError, Fenced, StorageError, StorageUnavailable

if TYPE_CHECKING:
    from ._manager import CheckpointManager
    from ._snapshot import Snapshot

__all__ = ["TaskWriter"]

log = logging.getLogger("checkpoint")


class TaskWriter:
    """Writes the checkpoints of one attempt (one fencing epoch) of one task.

    Not shared between threads: one save at a time (a lock enforces it).
    """

    def __init__(self, manager: CheckpointManager, job_id: str, task_id: str, epoch: int,
                 restored: Restored | None = None) -> None:
        self.manager = manager
        self.job_id, self.task_id, self.epoch = job_id, task_id, epoch
        self.pool = BufferPool()
        self.previous: Snapshot | None = None
        self._lock = threading.Lock()
        self._base: dict[str, Any] | None = None  # the current chain's base summary
        self._deltas: list[dict[str, Any]] = []
        with Session(read_engine(manager.engine), expire_on_commit=False) as s, s.begin():
            task = get_task(s, task_id)
            head = task.head_seq if task is not None else 0
            rows = chain_rows(s, task_id) if restored is not None else []
        self._next_seq = head + 1
        if restored is not None:
            self.previous = restored.snapshot
            if not restored.truncated and restored.seq == head:
                self._resume_chain(rows, restored)

    def _resume_chain(self, rows: list[CheckpointRow], restored: Restored) -> None:
        links = [r for r in rows if r.seq in set(restored.chain)]
        if not links or links[0].kind != "base":
            return
        self._base = _summary(links[0])
        self._deltas = [_summary(r) for r in links[1:]]

    def capture(self, state: Any, *, max_bytes: int | None = None) -> Snapshot:
        """Snapshot ``state`` against the last committed snapshot (a memory copy)."""
        return capture(state, previous=self.previous, pool=self.pool, max_bytes=max_bytes)

    def save(self, snapshot: Snapshot, *, progress_percent: float | None = None) -> CommitInfo:
        """Encode, store and commit ``snapshot``; return what was committed.

        Raises Fenced when a newer attempt owns the task (nothing written by
        this save stays visible), StorageError / StorageUnavailable when a
        store or the catalog fails. After a failure the next save is still
        encoded against the last committed snapshot.
        """
        with self._lock:
            kind = self._plan()
            seq = self._next_seq
            self._next_seq += 1  # never reuse a seq whose blobs may survive a failed cleanup
            parts = encode(self.previous if kind == "delta" else None, snapshot,
                           compression=self.manager.config.compression,
                           threads=self.manager.config.encode_threads)
            written: list[PartRef] = []
            try:
                info, summary = self._write_and_commit(kind, seq, parts, written, snapshot,
                                                       progress_percent)
            except BaseException as exc:
                self.manager._delete_blobs(written)
                if isinstance(exc, Fenced):
                    log.warning("%s", exc)
                elif isinstance(exc, CheckpointError):
                    log.warning("CheckpointManager: save of task %r seq %d failed: %s",
                                self.task_id, seq, exc)
                raise
            self._advance(info, summary, snapshot)
            return info

    def _plan(self) -> str:
        base_bytes = self._base["stored_bytes"] if self._base else 0
        return plan_kind(
            has_previous=self.previous is not None and self._base is not None,
            deltas_since_base=len(self._deltas),
            delta_bytes_since_base=sum(d["stored_bytes"] for d in self._deltas),
            base_bytes=base_bytes,
            max_deltas_per_base=self.manager.config.max_deltas_per_base)

    def _write_and_commit(self, kind: str, seq: int, parts: list[Any], written: list[PartRef],
                          snapshot: Snapshot, progress: float | None
                          ) -> tuple[CommitInfo, dict[str, Any]]:
        m = self.manager
        prefix = m.config.key_prefix
        for i, part in enumerate(parts):
            data = part.data
            ref = PartRef(blob_key(prefix, self.job_id, self.task_id, self.epoch, seq, i),
                          m.blobs.tier_for(len(data)), len(data), int(part.raw_size),
                          hashlib.sha256(data).hexdigest(), str(part.codec))
            m.blobs.store_for(ref.tier).put(ref.key, data)
            written.append(ref)
        for ref in written:
            if not m.blobs.store_for(ref.tier).exists(ref.key):
                raise StorageError(f"CheckpointManager: blob {ref.key!r} missing right after write")
        base_seq = seq if kind == "base" else int(self._base["seq"])  # type: ignore[index]
        row = CheckpointRow(
            task_id=self.task_id, job_id=self.job_id, seq=seq, epoch=self.epoch, kind=kind,
            base_seq=base_seq, created_at=utcnow(), progress_percent=progress,
            raw_bytes=int(getattr(snapshot, "raw_nbytes", sum(r.raw_size for r in written))),
            stored_bytes=sum(r.size for r in written), parts=[r.to_json() for r in written])
        summary = _summary(row)
        task_fields: dict[str, Any]
        if kind == "base":
            task_fields = {"base_checkpoint": summary, "delta_checkpoints": [],
                           "base_checkpoint_size": row.stored_bytes,
                           "checkpoint_storage_path": m._storage_path(written)}
        else:
            task_fields = {"delta_checkpoints": [*self._deltas, summary]}
        info = CommitInfo(self.task_id, self.job_id, seq, self.epoch, kind, base_seq,
                          row.raw_bytes, row.stored_bytes, tuple(written), row.created_at, progress)
        try:
            with Session(m.engine, expire_on_commit=False) as s, s.begin():
                commit_checkpoint(s, row, task_fields)
        except OperationalError as exc:
            raise StorageUnavailable(f"CheckpointManager: commit of task {self.task_id!r} "
                                     f"seq {seq} failed: {exc.orig}") from exc
        except SQLAlchemyError as exc:
            raise StorageError(f"CheckpointManager: commit of task {self.task_id!r} "
                               f"seq {seq} failed: {exc}") from exc
        log.info("CheckpointManager: committed task %r seq %d (%s, epoch %d, %d -> %d bytes, %s)",
                 self.task_id, seq, kind, self.epoch, row.raw_bytes, row.stored_bytes,
                 "+".join(sorted(set(info.tiers))) or "empty")
        return info, summary

    def _advance(self, info: CommitInfo, summary: dict[str, Any], snapshot: Snapshot) -> None:
        old_previous = self.previous
        if info.kind == "base":
            self._base, self._deltas = summary, []
            self.manager._drop_older_than(self.job_id, self.task_id, info.seq)
        else:
            self._deltas.append(summary)
        self.previous = snapshot
        if old_previous is not None and old_previous is not snapshot:
            self.pool.release(old_previous)
        # The next capture needs a second set of buffers while this snapshot is
        # kept as the delta reference: make them here, off the caller's pause
        # (a no-op once the buffers of the snapshot before are free). The commit
        # stands whatever happens here: without spares the capture allocates.
        try:
            self.pool.reserve(snapshot)
        except (MemoryError, OSError) as exc:
            log.warning("CheckpointManager: no spare capture buffers for task %r (%s)",
                        self.task_id, exc)


def _summary(row: CheckpointRow) -> dict[str, Any]:
    return {"seq": row.seq, "epoch": row.epoch, "kind": row.kind, "raw_bytes": row.raw_bytes,
            "stored_bytes": row.stored_bytes,
            "created_at": row.created_at.isoformat() if row.created_at else None,
            "codecs": sorted({p["codec"] for p in row.parts}),
            "keys": [p["key"] for p in row.parts]}
