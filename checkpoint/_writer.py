"""TaskWriter: one attempt's write path (plan, encode, store, fenced commit).

What the writer believes is committed is one immutable :class:`ChainHead`,
replaced only after a commit succeeded (or was found to have landed). Every
delta is encoded against the head's snapshot and names the head's link, so a
save that fails half-way, or a retirement of old chains that fails after the
commit, can never make the next delta describe a state the catalog does not
hold.

Full storage: a new base needs room for itself while the chain it replaces
still exists. When a base cannot be stored for lack of space the same save is
committed as a delta instead, and so are the saves after it while storage
stays full, up to twice the compaction limits (a base is tried again every
``FULL_BASE_RETRY`` saves). The first base that fits retires the old chain;
a retirement that fails is retried after the next commit.

Files: a save may carry a :class:`~checkpoint._files.FileCapture` (one
directory). Its chunks that the head's manifest does not name are compressed
and stored with the save's parts, and the row's manifest commits in the same
fenced transaction as the state, so a restore gets the files and the state
they go with, or neither.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ._capture import BufferPool, buffer_plan, capture, verify
from ._chain import ChainStore
from ._compress import compress
from ._delta import EncodedPart, LinkRef
from ._encode import encode_stream
from ._files import FileCapture, Manifest, StatSig, chunk_refs, manifest, scan
from ._records import CommitInfo, ManagerConfig, PartRef, plan_kind
from ._snapshot import Snapshot
from .catalog import CheckpointRow, utcnow
from .errors import Fenced, StorageError, StorageFull

__all__ = ["ChainHead", "TaskWriter", "link_summary"]

log = logging.getLogger("checkpoint")

FULL_BASE_RETRY = 5     # while storage is full, every this many saves tries a base again
FULL_LIMIT_FACTOR = 2   # ... and the compaction limits stretch by this factor meanwhile


@dataclass(frozen=True)
class ChainHead:
    """The newest committed link a writer continues from.

    ``snapshot`` is that link's state and ``ref`` names the link. ``base`` and
    ``deltas`` summarise the chain it belongs to; ``base`` is None when the
    chain must not be extended (restored from a truncated or older chain, or
    after a commit whose outcome is unknown): the next save is then a base.
    """

    snapshot: Snapshot
    ref: LinkRef
    base: dict[str, Any] | None
    deltas: tuple[dict[str, Any], ...] = field(default=())
    files: Manifest | None = None    # the link's file manifest: chunks a save need not store


class TaskWriter:
    """Writes the checkpoints of one attempt (one fencing epoch) of one task.

    Made by :meth:`CheckpointManager.open_attempt`. One save at a time (a lock
    enforces it); ``capture`` may run on another thread than ``save``.
    """

    def __init__(self, chain: ChainStore, config: ManagerConfig, job_id: str, task_id: str,
                 epoch: int, *, next_seq: int, head: ChainHead | None = None) -> None:
        self.chain, self.config = chain, config
        self.job_id, self.task_id, self.epoch = job_id, task_id, epoch
        self.pool = BufferPool()
        self._head = head
        self._next_seq = next_seq
        self._lock = threading.Lock()
        self._full_saves: int | None = None   # saves since storage became full; None: not full
        self._retire_pending: int | None = None  # a base seq whose older chains are still stored
        # stat signatures and chunks of the files of the last committed capture, by root
        self._stat_root: str | None = None
        self._stat_cache: dict[str, tuple[StatSig, tuple[str, ...]]] = {}

    @property
    def storage_full(self) -> bool:
        """True while a base could not be stored for lack of space (deltas still commit)."""
        return self._full_saves is not None

    @property
    def previous(self) -> Snapshot | None:
        """The snapshot of the newest committed link (the next delta's reference)."""
        return self._head.snapshot if self._head is not None else None

    def prepare(self, state: Any, *, max_bytes: int | None = None) -> Callable[[], int] | None:
        """What makes the capture buffers of ``state`` ahead of its first capture, or None.

        Plans on the calling thread (a flatten, no data read; ``buffer_plan``)
        and returns a function that allocates the buffers, to run on another
        thread while the task works: the first capture then only copies
        (on this project's VM making 403 MB of buffers in the pause took
        0.2-1.3 s, the copy 0.02-0.03 s). The function returns the bytes it
        allocated and may raise MemoryError or OSError.
        """
        plan = buffer_plan(state, max_bytes=max_bytes)
        if not plan:
            return None
        return lambda: self.pool.reserve_for(plan)

    def capture(self, state: Any, *, max_bytes: int | None = None) -> Snapshot:
        """Snapshot ``state`` against the last committed snapshot (a memory copy)."""
        return capture(state, previous=self.previous, pool=self.pool, max_bytes=max_bytes)

    def capture_files(self, root: str, *, max_bytes: int | None = None) -> FileCapture:
        """Read the directory ``root`` for the next save (the chunks not already stored).

        Call it in the same pause as :meth:`capture`: between the two the task
        must not change the files or the state. Files whose stat is unchanged
        since the last committed capture and whose chunks the head names are
        not read.
        """
        head = self._head
        stored = chunk_refs(head.files if head is not None else None)
        known = self._stat_cache if self._stat_root == root else {}
        return scan(root, known, stored, max_bytes=max_bytes,
                    chunk_size=self.config.file_chunk_size)

    def save(self, snapshot: Snapshot, *, progress_percent: float | None = None,
             files: FileCapture | None = None) -> CommitInfo:
        """Encode, store and commit ``snapshot`` (and ``files``); return what was committed.

        Raises Fenced when a newer attempt owns the task (nothing written by
        this save stays visible), StorageError / StorageUnavailable when a
        store or the catalog fails, StaleCapture (nothing written) when a
        tensor the capture skipped as unchanged holds other bytes now. A save
        whose row committed is never reported as failed. After a failure the
        next save is still encoded against the last committed snapshot.
        """
        verify(snapshot, self.pool)
        with self._lock:
            head = self._head
            kind = self._plan(head)
            try:
                info = self._save_as(kind, head, snapshot, progress_percent, files)
            except StorageFull as exc:
                self._note_full(exc)
                if kind != "base" or not self._extendable(head, stretched=True):
                    raise
                log.warning("CheckpointManager: task %r: no space for a new base; committing a "
                            "delta instead", self.task_id)
                info = self._save_as("delta", head, snapshot, progress_percent, files)
            if info.kind == "base" and self._full_saves is not None:
                log.info("CheckpointManager: task %r: storage has room again", self.task_id)
                self._full_saves = None
                self.chain.mark_storage_full(self.task_id, False)
            elif self._full_saves is not None:
                self._full_saves += 1
                info = replace(info, storage_full=True)
            return info

    def _save_as(self, kind: str, head: ChainHead | None, snapshot: Snapshot,
                 progress_percent: float | None, files: FileCapture | None) -> CommitInfo:
        seq = self._next_seq
        self._next_seq += 1  # never reuse a seq whose blobs may survive a failed cleanup
        reference = head if kind == "delta" else None
        # Each part is stored as soon as it is encoded (the index last), so the
        # save holds a few chunks besides the snapshot, never the whole link.
        parts = encode_stream(reference.snapshot if reference else None, snapshot,
                              compression=self.config.compression, threads=self.config.encode_threads,
                              against=reference.ref if reference else None,
                              bandwidth=self.chain.tiers.objects.bandwidth)
        try:
            refs = self.chain.put_stream(self.job_id, self.task_id, self.epoch, seq, parts)
        finally:
            parts.close()   # after a failed put: stop encoding the rest
        new_chunks: list[PartRef] = []
        row = self._row(kind, seq, refs, snapshot, progress_percent, head)
        if files is not None:
            try:
                row.files, new_chunks = self._store_files(seq, head, files)
            except BaseException:
                self.chain.delete_refs(refs)
                raise
        self._commit(row, [*refs, *new_chunks], head)
        info = _commit_info(row, refs, sum(r.size for r in new_chunks))
        self._head = _advance(head, row, snapshot, refs)
        if files is not None:
            self._stat_root = files.root
            self._stat_cache = {e.path: (files.sigs[e.path], e.chunks) for e in files.entries}
        self._after_commit(info, head, snapshot)
        return info

    def _store_files(self, seq: int, head: ChainHead | None,
                     files: FileCapture) -> tuple[Manifest, list[PartRef]]:
        """Store the chunks the head does not name; the row's manifest and the new chunks."""
        stored = chunk_refs(head.files if head is not None else None)
        todo = {h: _encode_chunk(d, self.config.compression)
                for h, d in files.data.items() if h not in stored}
        new = self.chain.put_chunks(self.job_id, self.task_id, self.epoch, seq, todo)
        return manifest(files.entries, {**stored, **new}), list(new.values())

    def _note_full(self, exc: StorageFull) -> None:
        if self._full_saves is None:
            log.warning("CheckpointManager: task %r: storage full (%s)", self.task_id, exc)
            self._full_saves = 0
            self.chain.mark_storage_full(self.task_id, True)

    def _extendable(self, head: ChainHead | None, *, stretched: bool) -> bool:
        """Whether a delta may follow ``head`` (within the limits, stretched while full)."""
        if head is None or head.base is None:
            return False
        factor = FULL_LIMIT_FACTOR if stretched else 1
        return plan_kind(
            has_previous=True,
            deltas_since_base=len(head.deltas),
            delta_bytes_since_base=sum(d["stored_bytes"] for d in head.deltas),
            base_bytes=factor * head.base["stored_bytes"],
            max_deltas_per_base=factor * self.config.max_deltas_per_base) == "delta"

    def _plan(self, head: ChainHead | None) -> str:
        if self._extendable(head, stretched=False):
            return "delta"
        full = self._full_saves is not None and self._full_saves % FULL_BASE_RETRY != 0
        return "delta" if full and self._extendable(head, stretched=True) else "base"

    def _row(self, kind: str, seq: int, refs: list[PartRef], snapshot: Snapshot,
             progress: float | None, head: ChainHead | None) -> CheckpointRow:
        base_seq = seq if kind == "base" else int(head.base["seq"])  # type: ignore[union-attr,index]
        return CheckpointRow(
            task_id=self.task_id, job_id=self.job_id, seq=seq, epoch=self.epoch, kind=kind,
            base_seq=base_seq, created_at=utcnow(), progress_percent=progress,
            raw_bytes=int(snapshot.raw_nbytes), stored_bytes=sum(r.size for r in refs),
            parts=[r.to_json() for r in refs])

    def _commit(self, row: CheckpointRow, refs: list[PartRef], head: ChainHead | None) -> None:
        summary = link_summary(row)
        fields: dict[str, Any]
        if row.kind == "base":
            fields = {"base_checkpoint": summary, "delta_checkpoints": [],
                      "base_checkpoint_size": row.stored_bytes,
                      "checkpoint_storage_path": self.chain.storage_path(refs)}
        else:
            fields = {"delta_checkpoints": [*(head.deltas if head else ()), summary]}
        try:
            self.chain.commit(row, fields)
        except Fenced as exc:
            self.chain.delete_refs(refs)
            log.warning("%s", exc)
            raise
        except StorageError as exc:
            landed = self.chain.row_committed(self.task_id, row.seq, self.epoch)
            if landed:
                log.warning("CheckpointManager: commit of task %r seq %d reported %s but it landed",
                            self.task_id, row.seq, exc)
                return
            if landed is None:
                # Unknown outcome: keep the blobs (the sweeper removes them if the row is
                # not there) and start a new chain, which is right either way.
                self._head = _unextendable(head)
            else:
                self.chain.delete_refs(refs)
            log.warning("CheckpointManager: save of task %r seq %d failed: %s", self.task_id,
                        row.seq, exc)
            raise
        except BaseException:
            self.chain.delete_refs(refs)
            raise
        log.info("CheckpointManager: committed task %r seq %d (%s, epoch %d, %d -> %d bytes, %s)",
                 self.task_id, row.seq, row.kind, self.epoch, row.raw_bytes, row.stored_bytes,
                 "+".join(sorted({r.tier for r in refs})) or "empty")

    def _after_commit(self, info: CommitInfo, old: ChainHead | None, snapshot: Snapshot) -> None:
        """Housekeeping after a commit; nothing here can undo or fail the save."""
        if old is not None and old.snapshot is not snapshot:
            self.pool.release(old.snapshot)
        if info.kind == "base":
            self._retire_pending = info.seq
        if self._retire_pending is not None and self.chain.retire_before(
                self.job_id, self.task_id, self._retire_pending):
            self._retire_pending = None
        # The next capture needs a second set of buffers while this snapshot is
        # kept as the delta reference: make them here, off the caller's pause
        # (a no-op once the buffers of the snapshot before are free). Without
        # spares the capture allocates.
        try:
            self.pool.reserve(snapshot)
        except (MemoryError, OSError) as exc:
            log.warning("CheckpointManager: no spare capture buffers for task %r (%s)",
                        self.task_id, exc)


def _advance(head: ChainHead | None, row: CheckpointRow, snapshot: Snapshot,
             refs: list[PartRef]) -> ChainHead:
    summary = link_summary(row)
    ref = (row.seq, refs[0].digest)   # the index part: always SHA-256
    if row.kind == "base" or head is None or head.base is None:
        return ChainHead(snapshot, ref, summary, files=row.files)
    return ChainHead(snapshot, ref, head.base, (*head.deltas, summary), files=row.files)


def _unextendable(head: ChainHead | None) -> ChainHead | None:
    return None if head is None else ChainHead(head.snapshot, head.ref, None, files=head.files)


def _encode_chunk(data: bytes, compression: str) -> EncodedPart:
    stored, codec = compress(data, compression, array=False)
    return EncodedPart(stored, codec, len(data))


def _commit_info(row: CheckpointRow, refs: list[PartRef], file_bytes: int = 0) -> CommitInfo:
    return CommitInfo(row.task_id, row.job_id, row.seq, row.epoch, row.kind, row.base_seq,
                      row.raw_bytes, row.stored_bytes, tuple(refs), row.created_at,
                      row.progress_percent, file_bytes)


def link_summary(row: CheckpointRow) -> dict[str, Any]:
    """The summary of one link kept in the task row (the spec's base / delta fields)."""
    return {"seq": row.seq, "epoch": row.epoch, "kind": row.kind, "raw_bytes": row.raw_bytes,
            "stored_bytes": row.stored_bytes,
            "created_at": row.created_at.isoformat() if row.created_at else None,
            "codecs": sorted({p["codec"] for p in row.parts}),
            "keys": [p["key"] for p in row.parts]}
