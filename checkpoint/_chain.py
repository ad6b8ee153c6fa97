"""ChainStore: where the checkpoint chains of tasks live — tiers, catalog rows, blob keys.

The writer (one attempt's saves) and the manager (attempts, restore, cleanup)
both work through a ChainStore and never through each other. It owns the tier
router, the catalog engine and the key prefix, and translates backend errors
into :mod:`checkpoint.errors` at this one place.

Call order for one attempt of one task:

1. :meth:`begin_attempt` takes a new fencing epoch and reads the task's
   committed rows in the same transaction (the only read of them).
2. :meth:`open_link` streams the blobs of one link to restore into the
   decoder: each blob is fetched (a bounded window ahead), and its size and
   hash checked before it is decoded (the fetches of every link share one
   pool, ``_pools.fetch_pool``). :meth:`restore_files` writes the files of the
   restored link, each chunk checked the same way (and its raw bytes against
   their content hash).
3. Per save: :meth:`put_stream` (create-only puts of the parts as they are
   encoded, each verified; :meth:`put_parts` for parts made beforehand) and, when the
   save carries files, :meth:`put_chunks` for the chunks not stored yet, then
   :meth:`commit` (one fenced transaction: the state and its files together). When the outcome of a commit is
   unknown, :meth:`row_committed` tells whether it landed. After a base
   committed, :meth:`retire_before` drops the older chains (best effort).
4. Cleanup at any time: :meth:`delete_task_rows` (fences the task), :meth:`delete_rows`,
   :meth:`delete_refs`,
   :meth:`delete_prefix`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np
import xxhash
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from . import _pools
from . import catalog as cat
from ._compress import decompress
from ._delta import EncodedPart
from ._encode import StreamPart
from ._files import Manifest, chunk_refs, unreferenced_chunks, write_tree
from ._ids import blob_key, chunk_key
from ._records import PartRef
from .catalog import CheckpointRow, read_engine, transaction, utcnow
from .errors import (
    CorruptCheckpoint,
    StorageError,
)
from .stores import BlobStore

__all__ = ["TIERS", "ChainStore", "LinkStream", "TierRouter", "digest", "digest_pieces"]

log = logging.getLogger("checkpoint")

#: The two storage tiers, by the names the manifest, the REST API and the docs use.
TIERS = ("sql", "object")

_HASHERS: dict[str, Callable[..., Any]] = {"sha256": hashlib.sha256, "xxh3_128": xxhash.xxh3_128}


def _hasher(kind: str) -> Any:
    """A new hash object of ``kind`` (``PartRef.hash``)."""
    try:
        return _HASHERS[kind]()
    except KeyError:
        raise CorruptCheckpoint(f"unknown integrity hash {kind!r}") from None


def digest(data: Any, kind: str) -> str:
    """Hex digest of ``data`` by ``kind`` (``PartRef.hash``)."""
    return digest_pieces((data,), kind)


def digest_pieces(pieces: Sequence[Any], kind: str) -> str:
    """``digest`` of the concatenation of ``pieces``, without making it."""
    h = _hasher(kind)
    for piece in pieces:
        h.update(piece)
    return str(h.hexdigest())


@dataclass(frozen=True)
class TierRouter:
    """Blobs smaller than ``db_size_limit`` go to the ``sql`` tier, the others to ``object``."""

    sql: BlobStore
    objects: BlobStore
    db_size_limit: int = 1 << 20

    def tier_for(self, size: int) -> str:
        return "sql" if size < self.db_size_limit else "object"

    def store_for(self, tier: str) -> BlobStore:
        if tier == "sql":
            return self.sql
        if tier == "object":
            return self.objects
        raise StorageError(f"unknown storage tier {tier!r}")

    @property
    def stores(self) -> tuple[BlobStore, BlobStore]:
        return self.sql, self.objects

    def close(self) -> None:
        self.sql.close()
        self.objects.close()


class ChainStore:
    """The stored chains of tasks (see the module docstring for the call order)."""

    def __init__(self, engine: Engine, tiers: TierRouter, key_prefix: str = "ckpt", *,
                 numeric_hash: str = "xxh3_128") -> None:
        self.engine = engine
        self.tiers = tiers
        self.key_prefix = key_prefix
        self.numeric_hash = numeric_hash
        self._reader = read_engine(engine)

    # -- attempts and reads ---------------------------------------------------------------

    def begin_attempt(self, job_id: str, task_id: str, attempt: int
                      ) -> tuple[int, int, list[CheckpointRow]]:
        """A new fencing epoch, the task's head seq and its committed rows (oldest first)."""
        with transaction(self.engine, f"attempt {attempt} of task {task_id!r}") as s:
            epoch = cat.begin_attempt(s, job_id, task_id, attempt)
            task = cat.get_task(s, task_id)
            head = task.head_seq if task is not None else 0
            rows = cat.chain_rows(s, task_id)
            s.expunge_all()
        return epoch, head, rows

    def rows(self, task_id: str) -> list[CheckpointRow]:
        """The task's committed rows, oldest first (no epoch taken)."""
        with transaction(self._reader, f"reading the chain of task {task_id!r}") as s:
            rows = cat.chain_rows(s, task_id)
            s.expunge_all()
        return rows

    def _fetch(self, task_id: str, seq: int, ref: PartRef) -> bytes:
        data = self.tiers.store_for(ref.tier).get(ref.key)
        _check(task_id, seq, ref, data)
        return data

    def _fetch_buffer(self, task_id: str, seq: int, ref: PartRef) -> bytes | np.ndarray:
        """Like ``_fetch``, but a numeric part may come in one of the store's reused buffers.

        Only numeric parts do (the decoder copies them into the state and gives
        the buffer back); the index and pickled parts stay private bytes.
        """
        store = self.tiers.store_for(ref.tier)
        data = store.get(ref.key) if ref.hash == "sha256" else store.get_buffer(ref.key)
        _check(task_id, seq, ref, data)
        return data

    def open_link(self, task_id: str, link: CheckpointRow) -> LinkStream:
        """The parts of ``link`` for ``decode``, each fetched and checked when the decoder needs it.

        The index part is fetched and checked here; the others a few parts
        ahead of the decoder (the store's ``read_ahead``), the first of them while the
        decoder still reads the index. Close the stream when done.
        """
        return LinkStream(self, task_id, link)

    # -- the write path -------------------------------------------------------------------

    def put_parts(self, job_id: str, task_id: str, epoch: int, seq: int,
                  parts: Sequence[EncodedPart]) -> list[PartRef]:
        """Store the parts of one checkpoint (``encode``'s order) under create-only keys; their refs.

        As :meth:`put_stream`, for parts made beforehand.
        """
        return self.put_stream(job_id, task_id, epoch, seq,
                               (StreamPart(i, (p.data,), p.codec, p.raw_size, p.numeric)
                                for i, p in enumerate(parts)))

    def put_stream(self, job_id: str, task_id: str, epoch: int, seq: int,
                   parts: Iterable[StreamPart]) -> list[PartRef]:
        """Store each part of one checkpoint as it comes, under create-only keys; their refs by number.

        Each part goes to the tier its size selects, written from its pieces
        (never joined into one blob for the object tier) and dropped before
        the next is taken, so memory holds what the iterator keeps in flight.
        Then every part is checked to exist. On any
        failure, the iterator's included, what was written is deleted (best
        effort) and the error raised: nothing names these keys until
        :meth:`commit`, so a process that dies half-way leaves only orphans.
        """
        written: dict[int, PartRef] = {}
        try:
            for part in parts:
                written[part.number] = self._put_part(job_id, task_id, epoch, seq, part)
                del part   # its buffers go as soon as it is stored
            for ref in written.values():
                if not self.tiers.store_for(ref.tier).exists(ref.key):
                    raise StorageError(f"CheckpointManager: blob {ref.key!r} missing right after write")
            if sorted(written) != list(range(len(written))):
                raise StorageError(f"CheckpointManager: parts {sorted(written)} of task {task_id!r} "
                                   f"seq {seq} are not numbered 0..{len(written) - 1}")
        except BaseException:
            self.delete_refs(written.values())
            raise
        return [written[i] for i in range(len(written))]

    def _put_part(self, job_id: str, task_id: str, epoch: int, seq: int, part: StreamPart) -> PartRef:
        size = part.size
        # Numeric parts are never unpickled: a fast hash suffices (threat model
        # in docs/architecture.md); the index and every pickled part keep SHA-256.
        kind = self.numeric_hash if part.numeric else "sha256"
        ref = PartRef(blob_key(self.key_prefix, job_id, task_id, epoch, seq, part.number),
                      self.tiers.tier_for(size), size, int(part.raw_size),
                      digest_pieces(part.pieces, kind), str(part.codec), kind)
        self.tiers.store_for(ref.tier).put_pieces(ref.key, part.pieces)
        return ref

    def put_chunks(self, job_id: str, task_id: str, epoch: int, seq: int,
                   chunks: dict[str, EncodedPart]) -> dict[str, PartRef]:
        """Store new file chunks (by raw SHA-256) under create-only keys of this save; their refs.

        Same rules as :meth:`put_parts`: each chunk goes to the tier its stored
        size selects, is checked to exist, and on any failure what was written
        is deleted and the error raised.
        """
        written: dict[str, PartRef] = {}
        try:
            for sha, part in chunks.items():
                data = part.data
                ref = PartRef(chunk_key(self.key_prefix, job_id, task_id, epoch, seq, sha),
                              self.tiers.tier_for(len(data)), len(data), int(part.raw_size),
                              hashlib.sha256(data).hexdigest(), str(part.codec))
                self.tiers.store_for(ref.tier).put(ref.key, data)
                written[sha] = ref
            for ref in written.values():
                if not self.tiers.store_for(ref.tier).exists(ref.key):
                    raise StorageError(f"CheckpointManager: chunk {ref.key!r} missing right after write")
        except BaseException:
            self.delete_refs(written.values())
            raise
        return written

    def restore_files(self, task_id: str, seq: int, files: Manifest, dest: str) -> None:
        """Write the files of checkpoint ``seq`` under ``dest``, every chunk verified first.

        A chunk's stored blob must match its size and SHA-256 before it is
        decompressed, and the raw bytes must match the content hash the
        manifest names them by. Raises CorruptCheckpoint / BlobNotFound (the
        caller then restores an older link), other StorageErrors as they come.
        """
        refs = chunk_refs(files)
        cache: dict[str, bytes] = {}

        def chunk(sha: str) -> bytes:
            if sha in cache:
                return cache[sha]
            ref = refs.get(sha)
            if ref is None:
                raise CorruptCheckpoint(f"file manifest of task {task_id!r} seq {seq} names "
                                        f"chunk {sha} without a blob")
            data = self.tiers.store_for(ref.tier).get(ref.key)
            if len(data) != ref.size or hashlib.sha256(data).hexdigest() != ref.sha256:
                raise CorruptCheckpoint(f"chunk {ref.key!r} of task {task_id!r} seq {seq} fails "
                                        f"its SHA-256 check")
            raw = bytes(decompress(data, ref.codec, raw_size=ref.raw_size))
            if hashlib.sha256(raw).hexdigest() != sha:
                raise CorruptCheckpoint(f"chunk {ref.key!r} of task {task_id!r} seq {seq} does "
                                        f"not hold the content it is named by")
            if len(cache) < 4:  # a chunk repeated in several files is fetched once
                cache[sha] = raw
            return raw

        write_tree(dest, files, chunk)

    def commit(self, row: CheckpointRow, task_fields: dict[str, Any]) -> None:
        """Insert ``row`` and update the task's summary, fenced by ``row.epoch``.

        Raises Fenced when a newer attempt owns the task, StorageUnavailable /
        StorageError when the catalog fails (the row may then have committed:
        ask :meth:`row_committed`).
        """
        with transaction(self.engine, f"commit of task {row.task_id!r} seq {row.seq}") as s:
            cat.commit_checkpoint(s, row, task_fields)

    def row_committed(self, task_id: str, seq: int, epoch: int) -> bool | None:
        """Whether the row of ``seq`` by ``epoch`` is committed; None when the catalog cannot tell."""
        try:
            with Session(self._reader) as s, s.begin():
                found = cat.committed_epoch(s, task_id, seq)
        except SQLAlchemyError:
            return None
        return found == epoch

    def retire_before(self, job_id: str, task_id: str, seq: int) -> bool:
        """After a base committed at ``seq``: delete the chains before it; False if that failed.

        Best effort and never raises: a save whose row committed stands, and
        what cannot be deleted now is retried by the writer after its next
        commit, dropped by the next base, by the task's cleanup or by the
        orphan sweeper.
        """
        try:
            with Session(self.engine, expire_on_commit=False) as s, s.begin():
                rows = cat.chain_rows(s, task_id)
                old = [r for r in rows if r.seq < seq]
                cat.delete_checkpoints(s, task_id, [r.seq for r in old])
        except Exception as exc:
            log.warning("CheckpointManager: could not retire the chains of task %r before base seq %d"
                        " (retried after the next commit): %s", task_id, seq, exc)
            return False
        self.delete_refs(_freed(old, [r for r in rows if r.seq >= seq]))
        if old:
            log.info("CheckpointManager: compacted task %r: dropped %d checkpoints before base "
                     "seq %d", task_id, len(old), seq)
        return True

    def mark_storage_full(self, task_id: str, full: bool) -> None:
        """Record (best effort) whether the task's saves are short of space, for the API view."""
        try:
            with Session(self.engine) as s, s.begin():
                cat.set_storage_full(s, task_id, utcnow() if full else None)
        except SQLAlchemyError as exc:
            log.warning("CheckpointManager: could not record the storage state of task %r: %s",
                        task_id, exc)

    # -- deletion -------------------------------------------------------------------------

    def delete_refs(self, refs: Iterable[PartRef]) -> None:
        """Best effort: what fails here is left to the orphan sweeper."""
        for ref in refs:
            try:
                self.tiers.store_for(ref.tier).delete(ref.key)
            except Exception as exc:
                log.warning("CheckpointManager: could not delete blob %r: %s", ref.key, exc)

    def delete_task_rows(self, task_id: str) -> None:
        """Every committed row of the task, then their blobs; the task is fenced.

        One transaction takes the task from whatever attempt owns it, reads its rows
        and deletes them: a commit either landed before (and is deleted) or is
        rejected; nothing is fenced if the deletion fails.
        """
        with transaction(self.engine, f"deleting checkpoints of task {task_id!r}") as s:
            cat.fence_tasks(s, [task_id])
            rows = cat.chain_rows(s, task_id)
            cat.delete_checkpoints(s, task_id, [r.seq for r in rows])
            cat.clear_chain(s, task_id)
        self.delete_refs(_freed(rows, []))

    def delete_rows(self, task_id: str, rows: Sequence[CheckpointRow], *, clear: bool) -> None:
        """Delete these rows (and with ``clear`` the task's chain summary), then their blobs."""
        seqs = {r.seq for r in rows}
        with transaction(self.engine, f"deleting checkpoints of task {task_id!r}") as s:
            kept = [r for r in cat.chain_rows(s, task_id) if r.seq not in seqs]
            cat.delete_checkpoints(s, task_id, sorted(seqs))
            if clear:
                cat.clear_chain(s, task_id)
        self.delete_refs(_freed(rows, kept))

    def delete_prefix(self, prefix: str) -> int:
        """Everything under ``prefix`` in both tiers: blobs committed or not, unfinished
        uploads and temp files; how many were removed."""
        return sum(store.delete_prefix(prefix) for store in self.tiers.stores)

    def storage_path(self, refs: Sequence[PartRef]) -> str:
        """Where a checkpoint's large parts live (a directory or URL), or ``sql``."""
        for ref in refs:
            if ref.tier == "object":
                return self.tiers.objects.describe(ref.key).rsplit("/", 1)[0]
        return "sql"


def _check(task_id: str, seq: int, ref: PartRef, data: bytes | np.ndarray) -> None:
    if len(data) != ref.size or digest(data, ref.hash) != ref.digest:
        raise CorruptCheckpoint(f"blob {ref.key!r} of task {task_id!r} seq {seq} "
                                f"fails its {ref.hash} check")


def _freed(dropped: Sequence[CheckpointRow], kept: Sequence[CheckpointRow]) -> list[PartRef]:
    """The blobs deleting ``dropped`` frees: their parts, and their file chunks no kept row names."""
    parts = [PartRef.from_json(p) for r in dropped for p in r.parts]
    return parts + unreferenced_chunks((r.files for r in dropped), (r.files for r in kept))


class LinkStream:
    """One link's parts as ``decode`` takes them, fetched a bounded window ahead.

    ``parts`` holds ``(fetch, codec, raw_size)`` triples; calling ``fetch``
    returns the part's verified bytes (raising ``CorruptCheckpoint`` or
    ``BlobNotFound`` for a bad or missing blob, ``StorageError`` otherwise) and
    starts fetching the parts after it. Each part's bytes are dropped here once
    handed out, so memory holds at most the window.
    """

    def __init__(self, chain: ChainStore, task_id: str, link: CheckpointRow) -> None:
        self.refs = [PartRef.from_json(p) for p in link.parts]
        self._chain, self._task_id, self._seq = chain, task_id, link.seq
        self._lock = threading.Lock()
        self._futures: dict[int, Future[bytes | np.ndarray]] = {}
        self._next = 1
        # The window of the slowest store the link's parts are in (a link's
        # small parts may sit in the SQL tier, its large ones in the object store).
        self._ahead = max((chain.tiers.store_for(r.tier).read_ahead for r in self.refs[1:]), default=1)
        index = self.refs[0] if self.refs else None
        first: Any = (chain._fetch(task_id, link.seq, index) if index is not None else b"")
        self.parts: list[tuple[Any, str, int]] = [(first, index.codec, index.raw_size)] if index else []
        self.parts += [(self._getter(i), r.codec, r.raw_size) for i, r in enumerate(self.refs[1:], start=1)]
        with self._lock:   # the first parts are fetched while the decoder reads the index
            self._submit_upto(self._ahead)

    def _getter(self, number: int) -> Callable[[], bytes | np.ndarray]:
        return lambda: self._get(number)

    def _submit_upto(self, last: int) -> None:
        pool = _pools.fetch_pool()
        while self._next <= min(last, len(self.refs) - 1):
            ref = self.refs[self._next]
            self._futures[self._next] = pool.submit(self._chain._fetch_buffer, self._task_id, self._seq, ref)
            self._next += 1

    def _get(self, number: int) -> bytes | np.ndarray:
        with self._lock:
            self._submit_upto(number + self._ahead)
            future = self._futures.pop(number, None)
        if future is None:   # asked for again: fetch it again
            return self._chain._fetch_buffer(self._task_id, self._seq, self.refs[number])
        return future.result()

    def close(self) -> None:
        """Cancel what was fetched ahead and not used."""
        with self._lock:
            for future in self._futures.values():
                future.cancel()
            self._futures.clear()
