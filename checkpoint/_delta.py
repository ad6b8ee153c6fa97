"""Encode a snapshot as a full base or as a per-leaf delta, and decode it back.

Parts, in a deterministic order:

* part 0, the *index*: a plain pickle (tuples, dicts, str, bytes, numbers only,
  read back with a loader that refuses every global) holding the tree
  definition, one record per leaf, and the size / CRC-32 / codec of every
  other part. Small payloads (below ``PART_FROM``) are stored inline here.
* parts 1..n: the payloads of large leaves, in leaf order, each split into
  chunks of at most ``CHUNK`` bytes.

Per-leaf operations (``op`` in the record):

* ``same``   unchanged; costs only its record. torch tensors found unchanged by
  capture share the previous buffer and are not read again; other arrays are
  compared.
* ``rows``   2-D+ arrays where at most half the rows (axis 0) changed: row
  indices in the index, XOR of the changed rows as payload.
* ``xor``    dense change: XOR with the previous bytes (then shuffled and
  compressed by ``_compress``) when a sample shows it packs smaller than...
* ``full``   ...the plain bytes. Always lossless.
* ``tail`` / ``items`` / ``keys`` for generic lists (new tail, changed items)
  and dicts (changed, removed keys, and the key order when it is not implied).

A delta's index names the link it was encoded against (``against``: that
link's seq and the SHA-256 of its index part, which the catalog records and
which in turn names the link before it), and ``decode`` refuses a delta whose
reference is not the link it is asked to apply to: a delta encoded against one
state can never be applied to another and yield a state that never existed.
"""

from __future__ import annotations

import io
import os
import pickle
import threading
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _compress, _memory
from ._snapshot import ARRAY, Leaf, Snapshot, bytes_equal
from .errors import CorruptCheckpoint

__all__ = [
    "CHUNK", "COMPRESSIONS", "PART_FROM", "EncodedPart", "LinkRef", "decode", "encode",
    "reuse_buffers", "snapshots_equal",
]

LinkRef = tuple[int, str]   # (seq, SHA-256 hex of the link's index part)

COMPRESSIONS = ("auto", "gzip", "zstd", "none")
PART_FROM = 1024 * 1024
CHUNK = 16 * 1024 * 1024  # at most 64 MiB per part; smaller chunks encode in parallel
SMALL_ARRAY = 64 * 1024
ROW_FRACTION = 0.5
_ROW_BLOCK = 16 * 1024 * 1024
_PROBE_ROWS = 64
_MAGIC = b"CCX1"
_VERSION = 1
_executor: ThreadPoolExecutor | None = None


@dataclass(frozen=True)
class EncodedPart:
    data: bytes       # bytes to store (already compressed)
    codec: str        # compression recorded in the manifest
    raw_size: int     # size before compression


BACKGROUND_NICE = 10


def lower_thread_priority() -> None:
    """Lower the calling thread's CPU priority (Linux: per-thread nice).

    Encoding and storing a checkpoint run behind the task's own threads: when
    the cores are busy the training loop should win, and the checkpoint take the
    CPU that is left. Elsewhere this does nothing.
    """
    try:
        current = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(),
                       max(current, BACKGROUND_NICE))
    except (AttributeError, OSError):
        pass


def _pool() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1),
                                       thread_name_prefix="ckpt-codec",
                                       initializer=lower_thread_priority)
    return _executor


def _map(fn: Callable[[Any], Any], items: Sequence[Any], threads: int | None) -> list[Any]:
    """``fn`` over ``items`` on the codec pool, in order, on at most ``threads`` of its threads."""
    pool = _pool()
    width = pool._max_workers  # type: ignore[attr-defined]
    if threads is None or threads >= width or len(items) <= 1:
        return list(pool.map(fn, items))
    groups = list(pool.map(lambda k: [fn(x) for x in items[k::threads]], range(threads)))
    out: list[Any] = [None] * len(items)
    for k, results in enumerate(groups):
        out[k::threads] = results
    return out


# ---------------------------------------------------------------- byte helpers

def _xor(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.nbytes % 8 == 0:
        return np.bitwise_xor(a.view(np.uint64), b.view(np.uint64)).view(np.uint8)
    return np.bitwise_xor(a, b)


def _word(nbytes: int) -> type[np.unsignedinteger[Any]]:
    for size, dtype in ((8, np.uint64), (4, np.uint32), (2, np.uint16)):
        if nbytes % size == 0:
            return dtype
    return np.uint8


def _changed_rows(a: np.ndarray, b: np.ndarray, nrows: int) -> np.ndarray | None:
    """Indices of rows that differ, or None when a probe says most rows changed."""
    row_bytes = a.nbytes // nrows
    word = _word(row_bytes)
    av, bv = a.view(word).reshape(nrows, -1), b.view(word).reshape(nrows, -1)
    probe = np.unique(np.linspace(0, nrows - 1, min(nrows, _PROBE_ROWS)).astype(np.int64))
    if np.count_nonzero((av[probe] != bv[probe]).any(axis=1)) > ROW_FRACTION * probe.size:
        return None
    block = max(1, _ROW_BLOCK // max(row_bytes, 1))
    masks = [(av[i:i + block] != bv[i:i + block]).any(axis=1) for i in range(0, nrows, block)]
    return np.flatnonzero(np.concatenate(masks))


# ---------------------------------------------------------------- planning

@dataclass
class _Plan:
    record: list[Any]                      # [path, kind, meta, op, ref, extra]
    size: int = 0                          # payload bytes
    source: Callable[[int, int], Any] | None = None
    itemsize: int = 1
    array: bool = True


def _plan(old: Leaf | None, cur: Leaf, mode: str) -> _Plan:
    if cur.kind == ARRAY:
        return _plan_array(old, cur, mode)
    return _plan_generic(old, cur)


def _full(cur: Leaf) -> _Plan:
    data = cur.data
    return _Plan([cur.path, cur.kind, cur.meta, "full", None, None], data.nbytes,
                 lambda s, e: data[s:e], int(cur.meta["itemsize"]))


def _same(cur: Leaf) -> _Plan:
    return _Plan([cur.path, cur.kind, cur.meta, "same", None, None])


def _plan_array(old: Leaf | None, cur: Leaf, mode: str) -> _Plan:
    meta = cur.meta
    if old is None or old.kind != ARRAY or old.meta.get("shape") != meta["shape"] \
            or old.meta.get("nbytes") != meta["nbytes"]:
        return _full(cur)
    if cur.data is old.data or meta["nbytes"] == 0:
        return _same(cur)
    shape, n = meta["shape"], meta["nbytes"]
    if n < SMALL_ARRAY:
        return _same(cur) if bytes_equal(cur.data, old.data) else _full(cur)
    if bytes_equal(cur.data, old.data):   # cheap, and exits at the first difference
        return _same(cur)
    if len(shape) >= 2 and shape[0] >= 2:
        rows = _changed_rows(cur.data, old.data, shape[0])
        if rows is not None and rows.size <= ROW_FRACTION * shape[0]:
            return _rows(old, cur, rows)
    return _dense(old, cur, mode)


def _rows(old: Leaf, cur: Leaf, rows: np.ndarray) -> _Plan:
    nrows = cur.meta["shape"][0]
    row_bytes = cur.meta["nbytes"] // nrows
    delta = _xor(cur.data.reshape(nrows, row_bytes)[rows].reshape(-1),
                 old.data.reshape(nrows, row_bytes)[rows].reshape(-1))
    record = [cur.path, cur.kind, cur.meta, "rows", None, rows.astype("<i8").tobytes()]
    return _Plan(record, delta.nbytes, lambda s, e: delta[s:e], int(cur.meta["itemsize"]))


def _dense(old: Leaf, cur: Leaf, mode: str) -> _Plan:
    a, b, itemsize = cur.data, old.data, int(cur.meta["itemsize"])
    if mode == "none" or not _xor_pays(a, b, itemsize, mode):
        return _full(cur)
    record = [cur.path, cur.kind, cur.meta, "xor", None, None]
    return _Plan(record, a.nbytes, lambda s, e: _xor(a[s:e], b[s:e]), itemsize)


def _xor_pays(a: np.ndarray, b: np.ndarray, itemsize: int, mode: str) -> bool:
    window = max(8 * itemsize, (32 * 1024) // (8 * itemsize) * 8 * itemsize)
    starts = sorted({(a.nbytes - window) * i // 3 // (8 * itemsize) * 8 * itemsize for i in range(4)})
    if a.nbytes <= 4 * window:
        starts, window = [0], a.nbytes
    plain = np.concatenate([a[s:s + window] for s in starts])
    mixed = _xor(plain, np.concatenate([b[s:s + window] for s in starts]))
    packed_plain = _compress.compress(plain, mode, itemsize=itemsize)[0]
    packed_xor = _compress.compress(mixed, mode, itemsize=itemsize)[0]
    return len(packed_xor) <= len(packed_plain)


def _plan_generic(old: Leaf | None, cur: Leaf) -> _Plan:
    if old is not None and old.kind == cur.kind and old.meta == cur.meta and old.data == cur.data:
        return _same(cur)
    record = [cur.path, cur.kind, cur.meta, "full", None, None]
    if old is not None and old.kind == cur.kind and old.meta == cur.meta:
        if cur.kind == "pickle_list":
            record[3:5] = _list_delta(old.data, cur.data)
        elif cur.kind == "pickle_dict":
            record[3:5] = _dict_delta(old.data, cur.data)
    if record[3] == "full" and cur.kind == "pickle" and len(cur.data) >= PART_FROM:
        view = memoryview(cur.data)
        return _Plan(record, len(cur.data), lambda s, e: view[s:e], 1, array=False)
    if record[3] == "full":
        record[4] = cur.data
    return _Plan(record)


def _list_delta(old: tuple[bytes, ...], cur: tuple[bytes, ...]) -> tuple[str, Any]:
    n = len(old)
    if len(cur) >= n and cur[:n] == old:
        return "tail", (n, cur[n:])
    prefix = 0
    for x, y in zip(old, cur):
        if x != y:
            break
        prefix += 1
    if len(cur) == n:
        changed = tuple((i, cur[i]) for i in range(prefix, n) if cur[i] != old[i])
        if len(changed) * 2 <= n:
            return "items", changed
    if prefix * 2 >= len(cur):
        return "tail", (prefix, cur[prefix:])
    return "full", cur


def _dict_order(old: tuple[tuple[bytes, bytes], ...], keep: set[bytes], added: list[bytes]) -> list[bytes]:
    return [k for k, _ in old if k in keep] + added


def _dict_delta(old: tuple[tuple[bytes, bytes], ...], cur: tuple[tuple[bytes, bytes], ...]) -> tuple[str, Any]:
    before = dict(old)
    keys = [k for k, _ in cur]
    present = set(keys)
    changed = tuple((k, v) for k, v in cur if before.get(k) != v)
    removed = tuple(k for k in before if k not in present)
    order = _dict_order(old, present, [k for k, _ in changed if k not in before])
    return "keys", (changed, removed, None if order == keys else tuple(keys))


# ---------------------------------------------------------------- encode

def encode(previous: Snapshot | None, current: Snapshot, *, compression: str = "auto",
           threads: int | None = None, against: LinkRef | None = None) -> list[EncodedPart]:
    """A full base (``previous`` None) or a delta against ``previous``.

    ``against`` names the committed link whose state ``previous`` is; it is
    recorded in the delta's index and checked by ``decode``. Pure CPU work on
    the codec pool, on at most ``threads`` of its threads (None: all). Raises
    ValueError for an unknown compression.
    """
    if compression not in COMPRESSIONS:
        raise ValueError(f"unknown compression {compression!r}; expected one of {COMPRESSIONS}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1 or None, got {threads}")
    before = previous.leaf_map() if previous is not None else {}
    plans = _map(lambda leaf: _plan(before.get(leaf.path), leaf, compression), current.leaves, threads)
    jobs: list[tuple[_Plan, int, int]] = []
    for plan in plans:
        if plan.source is None:
            continue
        if plan.size < PART_FROM:
            plan.record[4] = bytes(plan.source(0, plan.size))
            continue
        chunk = CHUNK // plan.itemsize * plan.itemsize
        first = len(jobs) + 1
        jobs.extend((plan, s, min(s + chunk, plan.size)) for s in range(0, plan.size, chunk))
        plan.record[4] = (first, len(jobs) + 1 - first, plan.size)
    parts = _map(lambda job: _encode_chunk(*job, compression), jobs, threads)
    same_tree = previous is not None and previous.treedef == current.treedef
    index = {
        "v": _VERSION,
        "base": previous is None,
        "treedef": None if same_tree else current.treedef,
        "same_tree": same_tree,
        "against": None if previous is None or against is None else (int(against[0]), str(against[1])),
        "raw": current.raw_nbytes,
        "leaves": [tuple(p.record) for p in plans],
        "parts": [(zlib.crc32(p.data), p.raw_size, p.codec) for p in parts],
    }
    body = pickle.dumps(index, protocol=5)
    raw = _MAGIC + zlib.crc32(body).to_bytes(4, "little") + body
    data, codec = _compress.compress(raw, compression, array=False)
    return [EncodedPart(data, codec, len(raw)), *parts]


def _encode_chunk(plan: _Plan, start: int, end: int, mode: str) -> EncodedPart:
    assert plan.source is not None
    payload = plan.source(start, end)
    data, codec = _compress.compress(payload, mode, itemsize=plan.itemsize, array=plan.array)
    return EncodedPart(data, codec, end - start)


# ---------------------------------------------------------------- decode

class _NoGlobals(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise CorruptCheckpoint(f"index refers to {module}.{name}")


def _read_index(data: bytes, codec: str) -> dict[str, Any]:
    raw = bytes(_compress.decompress(data, codec))
    if len(raw) < 8 or raw[:4] != _MAGIC:
        raise CorruptCheckpoint("index part has no valid header")
    body = raw[8:]
    if zlib.crc32(body) != int.from_bytes(raw[4:8], "little"):
        raise CorruptCheckpoint("index part failed its CRC-32 check")
    index = _NoGlobals(io.BytesIO(body)).load()
    if not isinstance(index, dict) or index.get("v") != _VERSION:
        raise CorruptCheckpoint("index part has an unknown layout")
    return index


def reuse_buffers(snapshot: Snapshot) -> Snapshot:
    """Let the next ``decode`` against ``snapshot`` update its buffers in place.

    For applying a chain: pass only an intermediate snapshot that nothing else
    holds. After a successful decode it must not be used again; a decode that
    fails leaves it intact (everything is checked before anything is written).
    """
    snapshot._reuse = True  # type: ignore[attr-defined]
    return snapshot


def decode(parts: Sequence[tuple[bytes, str]], previous: Snapshot | None, *,
           against: LinkRef | None = None) -> Snapshot:
    """Inverse of ``encode``: ``parts`` in encode's order, each with its codec.

    ``against`` names the link ``previous`` was decoded from: a delta recorded
    against another link (or against none) is refused. Raises CorruptCheckpoint
    for malformed or truncated input and for such a mismatch. The result may
    share buffers with ``previous`` (snapshots are immutable), unless
    ``previous`` was handed over with ``reuse_buffers``: then its writable
    buffers are updated in place and become the result's.
    """
    reuse = previous is not None and bool(getattr(previous, "_reuse", False))
    try:
        return _decode(parts, previous, reuse, against)
    except CorruptCheckpoint:
        raise
    except Exception as exc:
        raise CorruptCheckpoint(f"cannot decode checkpoint: {type(exc).__name__}: {exc}") from exc
    finally:
        if previous is not None:
            previous._reuse = False  # type: ignore[attr-defined]


def _decode(parts: Sequence[tuple[bytes, str]], previous: Snapshot | None, reuse: bool,
            against: LinkRef | None) -> Snapshot:
    if not parts:
        raise CorruptCheckpoint("no parts")
    index = _read_index(*parts[0])
    _check_against(index, previous, against)
    table = index["parts"]
    if len(parts) != len(table) + 1:
        raise CorruptCheckpoint(f"expected {len(table) + 1} parts, got {len(parts)}")
    if index["base"] != (previous is None):
        raise CorruptCheckpoint("base/delta mismatch with the previous snapshot given")
    payloads = list(_pool().map(lambda i: _read_part(parts[i + 1], table[i], i + 1), range(len(table))))
    before = previous.leaf_map() if previous is not None else {}
    # Check every record and build the generic leaves before any buffer is written,
    # so that a corrupt link leaves a reused previous snapshot as it was.
    steps = {rec[0]: _array_step(rec, before, payloads) for rec in index["leaves"] if rec[1] == ARRAY}
    generic = {rec[0]: _apply(rec, before, payloads) for rec in index["leaves"] if rec[1] != ARRAY}
    size = sum(int(st.meta["nbytes"]) for st in steps.values()) + sum(x.nbytes for x in generic.values())
    if size != index["raw"]:
        raise CorruptCheckpoint("decoded leaves do not add up to the recorded size")
    tasks = [task for st in steps.values() for task in st.start(reuse)]
    list(_pool().map(lambda task: task(), tasks))
    leaves = tuple(steps[rec[0]].leaf() if rec[1] == ARRAY else generic[rec[0]] for rec in index["leaves"])
    treedef = previous.treedef if index["same_tree"] and previous is not None else index["treedef"]
    return Snapshot(raw_nbytes=index["raw"], treedef=treedef, leaves=leaves)


def _check_against(index: dict[str, Any], previous: Snapshot | None, against: LinkRef | None) -> None:
    if previous is None or against is None:
        return
    recorded = index.get("against")
    expected = (int(against[0]), str(against[1]))
    if recorded is None or tuple(recorded) != expected:
        named = "no reference" if recorded is None else f"seq {recorded[0]} ({str(recorded[1])[:12]}…)"
        raise CorruptCheckpoint(f"delta was encoded against {named}, not against seq {expected[0]} "
                                f"({expected[1][:12]}…)")


def _read_part(part: tuple[bytes, str], entry: tuple[int, int, str], number: int) -> tuple[np.ndarray, int]:
    data, codec = part
    crc, raw_size, recorded = entry
    if codec != recorded:
        raise CorruptCheckpoint(f"part {number}: codec {codec!r}, index says {recorded!r}")
    if zlib.crc32(data) != crc:
        raise CorruptCheckpoint(f"part {number} failed its CRC-32 check")
    return _compress.decompress_planes(data, codec, raw_size=raw_size)


_Chunk = tuple[int, np.ndarray, int]   # offset in the leaf, (shuffled) bytes, element size


def _chunks(ref: Any, payloads: list[tuple[np.ndarray, int]], size: int) -> list[_Chunk]:
    """The payload of one leaf as chunks placed at their offsets; checks the total size."""
    if isinstance(ref, bytes):
        chunks = [(np.frombuffer(ref, dtype=np.uint8), 1)]
    else:
        first, count, total = ref
        chunks = payloads[first - 1:first - 1 + count] if first >= 1 else []
        if len(chunks) != count or count < 1:
            raise CorruptCheckpoint("leaf refers to parts that do not exist")
        if total != size:
            raise CorruptCheckpoint("leaf payload has the wrong size")
    out, offset = [], 0
    for data, itemsize in chunks:
        out.append((offset, data, itemsize))
        offset += data.nbytes
    if offset != size:
        raise CorruptCheckpoint("leaf payload has the wrong size")
    return out


def _joined(chunks: list[_Chunk], size: int) -> np.ndarray:
    """The chunks as contiguous plain bytes (no copy for one unshuffled chunk)."""
    if len(chunks) == 1 and chunks[0][2] == 1:
        return chunks[0][1]
    out = np.empty(size, dtype=np.uint8)
    for offset, data, itemsize in chunks:
        _compress.unshuffle_into(out[offset:offset + data.nbytes], data, itemsize)
    return out


def _payload(ref: Any, payloads: list[tuple[np.ndarray, int]]) -> np.ndarray:
    """A generic leaf's payload as contiguous plain bytes."""
    size = len(ref) if isinstance(ref, bytes) else ref[2] if isinstance(ref, tuple) and len(ref) == 3 else -1
    return _joined(_chunks(ref, payloads, size), size)


@dataclass
class _ArrayStep:
    """One array leaf of a link, checked; ``start`` returns its copy/XOR tasks."""

    path: str
    meta: dict[str, Any]
    op: str
    old: np.ndarray | None = None
    chunks: list[_Chunk] | None = None
    rows: np.ndarray | None = None
    data: np.ndarray | None = None

    def start(self, reuse: bool) -> list[Callable[[], None]]:
        n, old, chunks = int(self.meta["nbytes"]), self.old, self.chunks or []
        in_place = reuse and old is not None and old.flags.writeable
        if self.op == "same" or n == 0:
            self.data = old if old is not None and n else np.empty(0, np.uint8)
            return []
        if self.op == "full" and len(chunks) == 1 and chunks[0][2] == 1:
            self.data = chunks[0][1]   # no copy: the decompressed bytes are the leaf
            return []
        assert old is not None or self.op == "full"
        self.data = old if in_place else _memory.empty(n)
        if self.op == "rows":
            assert old is not None and self.rows is not None
            if not in_place:
                np.copyto(self.data, old)
            return [self._xor_rows]
        dst, base = self.data, (None if self.op == "full" else old)
        return [lambda o=o, c=c, k=k: _compress.unshuffle_into(
                    dst[o:o + c.nbytes], c, k, xor_with=None if base is None else base[o:o + c.nbytes])
                for o, c, k in chunks]

    def _xor_rows(self) -> None:
        assert self.data is not None and self.rows is not None
        nrows = self.meta["shape"][0]
        row_bytes = int(self.meta["nbytes"]) // nrows
        delta = _joined(self.chunks or [], self.rows.size * row_bytes)
        table = self.data.reshape(nrows, row_bytes)
        table[self.rows] ^= delta.reshape(self.rows.size, row_bytes)

    def leaf(self) -> Leaf:
        return Leaf(self.path, ARRAY, self.meta, self.data)


def _array_step(record: tuple[Any, ...], before: dict[str, Leaf],
                payloads: list[tuple[np.ndarray, int]]) -> _ArrayStep:
    path, _kind, meta, op, ref, extra = record
    n = int(meta["nbytes"])
    if op == "full":
        return _ArrayStep(path, meta, op, chunks=_chunks(ref, payloads, n) if n else [])
    if op not in ("same", "xor", "rows"):
        raise CorruptCheckpoint(f"unknown operation {op!r} for {path!r}")
    old = _previous(before, path, ARRAY).data
    if old.nbytes != n:
        raise CorruptCheckpoint(f"leaf {path!r} decoded to the wrong size")
    if op == "same":
        return _ArrayStep(path, meta, op, old)
    if op == "xor":
        return _ArrayStep(path, meta, op, old, _chunks(ref, payloads, n))
    rows = np.frombuffer(extra, dtype="<i8")
    nrows = meta["shape"][0]
    if rows.size and (rows.min() < 0 or rows.max() >= nrows):
        raise CorruptCheckpoint(f"row index out of range for {path!r}")
    return _ArrayStep(path, meta, op, old, _chunks(ref, payloads, rows.size * (n // nrows)), rows)


def _previous(before: dict[str, Leaf], path: str, kind: str) -> Leaf:
    old = before.get(path)
    if old is None or old.kind != kind:
        raise CorruptCheckpoint(f"delta for {path!r} has no matching leaf in the previous snapshot")
    return old


def _apply(record: tuple[Any, ...], before: dict[str, Leaf], payloads: list[Any]) -> Leaf:
    """A generic (pickled) leaf; never writes to ``before``."""
    path, kind, meta, op, ref, _extra = record
    if op == "same":
        return Leaf(path, kind, meta, _previous(before, path, kind).data)
    if op == "full":
        data = _payload(ref, payloads).tobytes() if kind == "pickle" and not isinstance(ref, bytes) else ref
        return Leaf(path, kind, meta, data)
    old = _previous(before, path, kind).data
    if op == "tail":
        prefix, tail = ref
        return Leaf(path, kind, meta, tuple(old[:prefix]) + tuple(tail))
    if op == "items":
        items = list(old)
        for i, value in ref:
            items[i] = value
        return Leaf(path, kind, meta, tuple(items))
    if op == "keys":
        return Leaf(path, kind, meta, _apply_keys(old, *ref))
    raise CorruptCheckpoint(f"unknown operation {op!r} for {path!r}")


def _apply_keys(old: tuple[tuple[bytes, bytes], ...], changed: Any, removed: Any, order: Any) -> tuple[Any, ...]:
    values = dict(old)
    for key in removed:
        del values[key]
    added = [k for k, _ in changed if k not in values]
    values.update(changed)
    if order is None:
        order = _dict_order(old, set(values), added)
    return tuple((k, values[k]) for k in order)


def snapshots_equal(a: Snapshot, b: Snapshot) -> bool:
    """Bit-exact comparison: tree, leaf paths, kinds, metadata and bytes."""
    if a.raw_nbytes != b.raw_nbytes or a.treedef != b.treedef or len(a.leaves) != len(b.leaves):
        return False
    return all(x.same_content(y) for x, y in zip(a.leaves, b.leaves))
