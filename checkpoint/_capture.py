"""Capture: the blocking part of a checkpoint, a flatten plus memory copies.

Order of work, so that nothing is copied when the budget is exceeded:
flatten, size the array leaves, check the budget, pickle the generic leaves,
check again, then copy the arrays (CUDA copies are asynchronous into pinned
buffers, with one synchronize at the end; host copies are shared leaf by leaf
between this thread and helper threads on the other cores).

A tensor whose version counter says it is unchanged is not copied: its
previous buffer is shared. The counter misses writes through ``.data``, a
numpy view or an extension's pointer (an EMA updated through ``.data``, an
8-bit optimizer's kernel), so it is checked twice: in the pause a spot check
(about 1024 bytes evenly spaced) against the shared buffer, and before the
writer commits (``verify``) every byte. A leaf found different either way is distrusted: it
is copied at every capture of its pool from then on; a snapshot failing
``verify`` is not stored (``StaleCapture``), and the next capture is exact.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np

from . import _memory, _pools, codecs
from ._flatten import flatten
from ._snapshot import ARRAY, Leaf, Snapshot
from .codecs import ArrayCodec, generic
from .errors import CaptureError, MemoryBudgetExceeded, StaleCapture, name_paths

__all__ = ["BufferPool", "buffer_plan", "capture", "verify"]

log = logging.getLogger("checkpoint")

_FREE_PER_KEY = 2


class _Buffer:
    __slots__ = ("array", "holder", "key", "refs")

    def __init__(self, key: tuple[Any, ...], array: np.ndarray, holder: Any) -> None:
        self.key = key
        self.array = array      # flat uint8 view
        self.holder = holder    # pinned torch tensor owning the memory, or None
        self.refs = 1


class BufferPool:
    """Reusable host buffers keyed by leaf path, size and pinning.

    A buffer may be shared by consecutive snapshots (an unchanged tensor); it is
    counted once per snapshot and goes back to the pool when the last snapshot
    holding it is released. Releasing a snapshot twice is harmless. Thread-safe:
    capture and release usually run on different threads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: dict[tuple[Any, ...], list[_Buffer]] = {}
        self._live: dict[int, _Buffer] = {}   # id(array) -> buffer
        # leaf paths whose change counter missed a write: always copied
        self.distrusted: set[str] = set()
        self._overlaps_told: set[tuple[str, str]] = set()

    def acquire(self, key: tuple[Any, ...], nbytes: int, pinned: bool) -> _Buffer:
        with self._lock:
            free = self._free.get(key)
            buf = free.pop() if free else None
        if buf is None:
            buf = self._make(nbytes, pinned, key)
        buf.refs = 1
        with self._lock:
            self._live[id(buf.array)] = buf
        return buf

    @staticmethod
    def _make(nbytes: int, pinned: bool, key: tuple[Any, ...]) -> _Buffer:
        if pinned:
            holder, array = codecs.codec_for("torch").pinned_buffer(nbytes)
        else:
            holder, array = None, _memory.empty(nbytes)
        return _Buffer(key, array, holder)

    def distrust(self, paths: list[str], seen: str, level: int = logging.WARNING) -> None:
        """Copy the leaves at ``paths`` at every capture from now on (their change counters
        missed a write); one log record names them."""
        new = self._first_time(self.distrusted, paths)
        if new:
            log.log(level, "checkpoint: %d tensor(s) changed without their version counter "
                    "(%s; written through .data, a numpy view or an extension?): %s; copied "
                    "at every capture from now on", len(new), seen, name_paths(new))

    def tell_overlaps(self, pairs: list[tuple[str, str]]) -> None:
        """One warning naming the pairs of leaves whose memory overlaps, each pair once."""
        new = self._first_time(self._overlaps_told, pairs)
        if new:
            log.warning("checkpoint: %d pair(s) of state leaves share memory without being the same "
                        "array (%s): each is stored and restored separately, so after a restore a "
                        "write through one no longer shows through the other; checkpoint the "
                        "array they view once instead", len(new),
                        name_paths([f"{a} and {b}" for a, b in new]))

    def _first_time(self, told: set[Any], items: list[Any]) -> list[Any]:
        """The ``items`` not in ``told``, which are added to it (under the pool's lock)."""
        with self._lock:
            new = [item for item in items if item not in told]
            told.update(new)
        return new

    def retain(self, array: np.ndarray) -> None:
        with self._lock:
            buf = self._live.get(id(array))
            if buf is not None and buf.array is array:
                buf.refs += 1

    def _drop(self, array: np.ndarray) -> None:
        buf = self._live.get(id(array))
        if buf is None or buf.array is not array:
            return
        buf.refs -= 1
        if buf.refs > 0:
            return
        del self._live[id(array)]
        free = self._free.setdefault(buf.key, [])
        if len(free) < _FREE_PER_KEY:
            free.append(buf)

    def reserve(self, snapshot: Snapshot) -> int:
        """Make sure the next capture of this state finds a free buffer per copied leaf.

        Run after a snapshot is persisted, on the persisting thread: the buffers
        the next capture would otherwise allocate (and fault in, in the paused
        caller) are made now. Leaves that capture found unchanged get none.
        Returns the bytes allocated (0 in the steady state: the buffers of the
        snapshot before are free by then).
        """
        wanted: list[tuple[tuple[Any, ...], int, bool]] = []
        with self._lock:
            for leaf in snapshot.leaves:
                buf = self._live.get(id(leaf.data)) if leaf.kind == ARRAY and not leaf.unchanged else None
                if buf is not None and buf.array is leaf.data and not self._free.get(buf.key):
                    wanted.append((buf.key, buf.array.nbytes, buf.holder is not None))
        return self._spares(wanted)

    def reserve_for(self, plan: list[tuple[tuple[Any, ...], int, bool]]) -> int:
        """Make a free buffer for each ``(key, nbytes, pinned)`` of ``buffer_plan`` that has none.

        Before a state's first capture (when nothing is live yet), so that it
        copies into buffers made in the background instead of making them in
        the caller's pause. Returns the bytes allocated.
        """
        with self._lock:
            wanted = [(key, nbytes, pinned) for key, nbytes, pinned in plan if not self._free.get(key)]
        return self._spares(wanted)

    def _spares(self, wanted: list[tuple[tuple[Any, ...], int, bool]]) -> int:
        for key, nbytes, pinned in wanted:
            buf = self._make(nbytes, pinned, key)
            with self._lock:
                free = self._free.setdefault(key, [])
                if len(free) < _FREE_PER_KEY:
                    free.append(buf)
        return sum(n for _, n, _ in wanted)

    def trim(self, keys: list[tuple[Any, ...]]) -> None:
        """Drop the free buffers of these keys (leaves that stopped changing)."""
        with self._lock:
            for key in keys:
                self._free.pop(key, None)

    def release(self, snapshot: Snapshot) -> None:
        """Give the snapshot's buffers back once no longer needed."""
        with self._lock:
            if snapshot.owner is not self:
                return  # not ours, or already released
            snapshot.owner = None
            for leaf in snapshot.leaves:
                if leaf.kind == ARRAY:
                    self._drop(leaf.data)

    def _abandon(self, arrays: list[np.ndarray]) -> None:
        with self._lock:
            for array in arrays:
                self._drop(array)


def _fail(path: str, exc: BaseException) -> CaptureError:
    return CaptureError(f"cannot capture state leaf {path or '<root>'!r}: {type(exc).__name__}: {exc}")


def capture(
    state: object,
    *,
    previous: Snapshot | None = None,
    pool: BufferPool | None = None,
    max_bytes: int | None = None,
) -> Snapshot:
    """Blocking part of a checkpoint: flatten ``state`` and copy its data.

    The caller may mutate ``state`` as soon as this returns. No compression, no
    I/O, no pickling of arrays. With ``previous``, torch tensors whose storage,
    layout and version counter are unchanged are not read: the previous buffer
    is shared and the leaf is marked ``unchanged``. Generic leaves are pickled.

    Raises:
        MemoryBudgetExceeded: the raw bytes exceed ``max_bytes`` (nothing copied).
        CaptureError: a leaf cannot be captured (e.g. unpicklable), naming its path.
    """
    pool = pool if pool is not None else BufferPool()
    try:
        treedef, flat = flatten(state, convert=codecs.convert, is_array=codecs.is_array,
                                address=codecs.address, view_key=codecs.view_key)
    except ValueError as exc:
        raise CaptureError(f"cannot capture state: {exc}") from exc
    arrays, array_bytes = _describe_arrays(flat)
    if previous is None or previous.treedef != treedef:
        pool.tell_overlaps(_overlaps(flat, arrays))
    _check_budget(array_bytes, max_bytes)
    generics = _pickle_generics(flat, arrays)
    raw = array_bytes + sum(leaf.nbytes for leaf in generics.values())
    _check_budget(raw, max_bytes)
    copied = _copy_arrays(flat, arrays, previous, pool)
    leaves = tuple(copied[p] if p in copied else generics[p] for p in flat)
    return Snapshot(raw_nbytes=raw, treedef=treedef, leaves=leaves, owner=pool)


def buffer_plan(state: object, *, max_bytes: int | None = None
                ) -> list[tuple[tuple[Any, ...], int, bool]] | None:
    """The capture buffers ``capture(state)`` would take: ``(pool key, bytes, pinned)`` per array leaf.

    Reads no array data: a flatten and each leaf's description. None when
    the state cannot be planned cheaply (framework objects whose weights
    would have to be copied out to be seen: Keras models), cannot be
    flattened, or its array bytes exceed ``max_bytes``.
    """
    def convert(obj: object) -> object:
        if generic.framework_kind(type(obj)) == "keras_weights":  # type: ignore[arg-type]  # classes hash
            raise _Unplannable
        return codecs.convert(obj)

    try:
        _treedef, flat = flatten(state, convert=convert, is_array=codecs.is_array,
                                 address=codecs.address, view_key=codecs.view_key)
        arrays, array_bytes = _describe_arrays(flat)
    except (_Unplannable, ValueError, CaptureError):
        return None
    if max_bytes is not None and array_bytes > max_bytes:
        return None
    plan = []
    for path, (codec, meta) in arrays.items():
        pinned = codec.needs_pinned(flat[path])
        plan.append(((path, meta["nbytes"], pinned), int(meta["nbytes"]), pinned))
    return plan


class _Unplannable(Exception):
    pass


def _check_budget(nbytes: int, max_bytes: int | None) -> None:
    if max_bytes is not None and nbytes > max_bytes:
        raise MemoryBudgetExceeded(f"state needs {nbytes} bytes, budget is {max_bytes}")


_Arrays = dict[str, tuple[ArrayCodec, dict[str, Any]]]
_Copy = tuple[str, ArrayCodec, object, Any, bool]   # path, codec, leaf, target buffer, pinned


def _describe_arrays(flat: dict[str, object]) -> tuple[_Arrays, int]:
    arrays: _Arrays = {}
    total = 0
    for path, obj in flat.items():
        codec = codecs.find_array_codec(obj)
        if codec is not None:
            try:
                meta = codec.describe(obj)
            except Exception as exc:
                raise _fail(path, exc) from exc
            arrays[path] = (codec, meta)
            total += meta["nbytes"]
    return arrays, total


def _overlaps(flat: dict[str, object], arrays: _Arrays) -> list[tuple[str, str]]:
    """Pairs of array leaves whose bytes overlap in memory (views of one another).

    Leaves that are the same view were made one leaf by ``flatten``; these are
    the others, which a restore cannot make share memory again.
    """
    spans = []
    for order, (path, (codec, _meta)) in enumerate(arrays.items()):
        span = codec.extent(flat[path])
        if span is not None:
            spans.append((str(span[0]), span[1], span[2], order, path))
    spans.sort()
    pairs: list[tuple[int, str, int, str]] = []
    space, end, holder = "", 0, (0, "")
    for where, low, high, order, path in spans:
        if where == space and low < end:
            pairs.append(min(holder, (order, path)) + max(holder, (order, path)))
        if where != space or high > end:
            space, end, holder = where, high, (order, path)
    return [(first, second) for _, first, _, second in sorted(pairs)]


def _pickle_generics(flat: dict[str, object], arrays: dict[str, Any]) -> dict[str, Leaf]:
    out: dict[str, Leaf] = {}
    for path, obj in flat.items():
        if path in arrays:
            continue
        try:
            kind, meta, data = generic.pickle_leaf(obj)
        except Exception as exc:
            raise _fail(path, exc) from exc
        out[path] = Leaf(path, kind, meta, data)
    return out


def _copy_arrays(
    flat: dict[str, object],
    arrays: _Arrays,
    previous: Snapshot | None,
    pool: BufferPool,
) -> dict[str, Leaf]:
    before = previous.leaf_map() if previous is not None else {}
    out: dict[str, Leaf] = {}
    taken: list[np.ndarray] = []
    idle: list[tuple[Any, ...]] = []   # pool keys of unchanged leaves: no spare buffer needed
    copies: list[_Copy] = []
    spotted: list[str] = []   # skippable by their counters, but the spot check saw a change
    try:
        for path, (codec, meta) in arrays.items():
            obj = flat[path]
            token = codec.version_token(obj)
            old = before.get(path)
            pinned = codec.needs_pinned(obj)
            key = (path, meta["nbytes"], pinned)
            if (old is not None and path not in pool.distrusted and _reusable(old, meta)
                    and codec.unchanged(obj, old.token)):
                if not codec.differs(obj, old.data, quick=True):
                    pool.retain(old.data)
                    idle.append(key)
                    taken.append(old.data)
                    out[path] = Leaf(path, ARRAY, meta, old.data, unchanged=True, token=token,
                                     source=obj)
                    continue
                spotted.append(path)
            buf = pool.acquire(key, meta["nbytes"], pinned)
            taken.append(buf.array)
            copies.append((path, codec, obj, buf.holder if buf.holder is not None else buf.array, pinned))
            out[path] = Leaf(path, ARRAY, meta, buf.array, token=token)
        _run_copies(copies, sum(int(arrays[c[0]][1]["nbytes"]) for c in copies))
        for codec in {id(c[1]): c[1] for c in copies if c[4]}.values():
            codec.synchronize()
    except BaseException:
        pool._abandon(taken)
        raise
    pool.trim(idle)
    # Nothing was lost (they were copied): worth knowing, not a warning.
    pool.distrust(spotted, "seen by the capture's spot check", logging.INFO)
    return out


def verify(snapshot: Snapshot, pool: BufferPool) -> None:
    """Compare every byte of the leaves ``capture`` skipped unread with the buffers they share.

    Run before the snapshot is stored (the writer does), while the task goes
    on. A difference while the counter still has not moved means the leaf was
    written without it, before the capture (the buffer is stale) or after it:
    its path is distrusted. A difference after the counter moved may be a
    plain write made since the capture: it cannot be told from a stale buffer,
    so the snapshot is refused either way (once, needlessly, in that case).
    Each leaf is compared once (the live objects are dropped).

    Raises:
        StaleCapture: naming the leaves that differ; nothing may be stored.
    """
    stale, unseen = [], []
    for leaf in snapshot.leaves:
        source, leaf.source = leaf.source, None
        if source is None:
            continue
        codec = codecs.codec_for(leaf.meta["fw"])
        if codec.differs(source, leaf.data):
            stale.append(leaf.path)
            if codec.unchanged(source, leaf.token):
                unseen.append(leaf.path)
    pool.distrust(unseen, "seen before the commit")
    if stale:
        raise StaleCapture(stale)


def _copy_one(job: _Copy) -> None:
    path, codec, obj, target, pinned = job
    try:
        codec.copy_into(obj, target, non_blocking=pinned)
    except Exception as exc:
        raise _fail(path, exc) from exc


def _run_copies(jobs: list[_Copy], nbytes: int) -> None:
    """Copy the leaves, helped by other cores when there is enough to copy.

    Each copy is one single-threaded memcpy; the calling thread and the helpers
    take leaves from one shared queue, so a helper that the OS deschedules
    delays the pause by at most the leaf it holds, never by a fixed share of
    the state (as a static split across threads would).
    """
    for job in jobs:  # CUDA copies: issued asynchronously, from this thread only
        if job[4]:
            _copy_one(job)
    jobs = [job for job in jobs if not job[4]]
    helpers = _pools.copy_helpers()
    if helpers is None or nbytes < _SHARE_FROM or len(jobs) < 2:
        for job in jobs:
            _copy_one(job)
        return
    queue = iter(jobs)
    lock = threading.Lock()

    def drain() -> None:
        while True:
            with lock:
                job = next(queue, None)
            if job is None:
                return
            _copy_one(job)

    futures = [helpers.submit(drain) for _ in range(_pools.width(helpers))]
    try:
        drain()
    finally:
        errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error


_SHARE_FROM = 16 * 1024 * 1024


def _reusable(old: Leaf, meta: dict[str, Any]) -> bool:
    return old.kind == ARRAY and old.token is not None and old.meta == meta

