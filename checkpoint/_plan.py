"""Planning a link: which operation stores each leaf, as frozen records.

Pure: ``plan_leaf`` compares a leaf with its previous value and returns a
``Plan`` (the leaf's ``LeafRecord`` and, for a payload, where to read it);
nothing is written anywhere. ``_encode`` runs the plans and ``_format`` lays
the records out on disk. Operations (``Op``):

* ``same``   unchanged; costs only its record. torch tensors found unchanged by
  capture share the previous buffer and are not read again; other arrays are
  compared.
* ``rows``   2-D+ arrays where at most half the rows (axis 0) changed: row
  indices in ``extra``, XOR of the changed rows as payload.
* ``xor``    dense change: XOR with the previous bytes (then shuffled and
  compressed by ``_compress``) when a sample shows it packs smaller than...
* ``full``   ...the plain bytes. Always lossless.
* ``tail`` / ``items`` / ``keys`` for generic lists (new tail, changed items)
  and dicts (changed, removed keys, and the key order when it is not implied).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _compress
from ._snapshot import ARRAY, Leaf, bytes_equal

__all__ = [
    "CHUNK", "PART_FROM", "ROW_FRACTION", "SMALL_ARRAY", "LeafRecord", "Op", "Plan", "PartSpan",
    "dict_order", "plan_leaf", "xor",
]

PART_FROM = 1024 * 1024
CHUNK = 16 * 1024 * 1024  # at most 16 MiB per part; smaller chunks encode in parallel
SMALL_ARRAY = 64 * 1024
ROW_FRACTION = 0.5
_ROW_BLOCK = 16 * 1024 * 1024
_PROBE_ROWS = 64
_HEAD = 4096

PartSpan = tuple[int, int, int]   # (first part number, number of parts, payload bytes)


class Op(enum.StrEnum):
    """How a leaf is stored; the value is what the index records."""

    SAME = "same"
    FULL = "full"
    ROWS = "rows"
    XOR = "xor"
    TAIL = "tail"
    ITEMS = "items"
    KEYS = "keys"


@dataclass(frozen=True)
class LeafRecord:
    """One leaf of a link as the index records it.

    ``ref`` is the payload: inline bytes, a ``PartSpan`` once encoded, or the
    generic delta of ``tail`` / ``items`` / ``keys``; ``extra`` holds the row
    indices of ``rows`` (little-endian int64 bytes).
    """

    path: str
    kind: str
    meta: dict[str, Any]
    op: Op
    ref: Any = None
    extra: bytes | None = None

    def with_ref(self, ref: Any) -> LeafRecord:
        return LeafRecord(self.path, self.kind, self.meta, self.op, ref, self.extra)


@dataclass(frozen=True)
class Plan:
    """A leaf's record and, when it has a payload, how to read ``[start, end)`` of it."""

    record: LeafRecord
    size: int = 0                                   # payload bytes
    source: Callable[[int, int], Any] | None = None
    itemsize: int = 1
    array: bool = True
    # For arrays: the payload is ``data[start:end]``, XORed with ``base[start:end]``
    # when ``base`` is set (what ``source`` computes), so that the encoder can fuse
    # the XOR with the byte shuffle instead of making the XOR first.
    data: np.ndarray | None = None
    base: np.ndarray | None = None


# ---------------------------------------------------------------- byte helpers

def xor(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a ^ b`` of two flat ``uint8`` arrays of one length (by words when it can)."""
    if a.nbytes % 8 == 0:
        words: np.ndarray = np.bitwise_xor(a.view(np.uint64), b.view(np.uint64))
        return words.view(np.uint8)
    out: np.ndarray = np.bitwise_xor(a, b)
    return out


def _word(nbytes: int) -> type[np.unsignedinteger[Any]]:
    for size, dtype in ((8, np.uint64), (4, np.uint32), (2, np.uint16)):
        if nbytes % size == 0:
            return dtype
    return np.uint8


def _head_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether the first ``_HEAD`` bytes match: a dense change fails here, before
    ``bytes_equal`` copies a whole block of each side to compare it."""
    return bool(a[:_HEAD].tobytes() == b[:_HEAD].tobytes())


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


# ---------------------------------------------------------------- arrays

def plan_leaf(old: Leaf | None, cur: Leaf, mode: str) -> Plan:
    """The plan that stores ``cur`` given its previous value ``old`` (None: none)."""
    if cur.kind == ARRAY:
        return _plan_array(old, cur, mode)
    return _plan_generic(old, cur)


def _record(cur: Leaf, op: Op, ref: Any = None, extra: bytes | None = None) -> LeafRecord:
    return LeafRecord(cur.path, cur.kind, cur.meta, op, ref, extra)


def _full(cur: Leaf) -> Plan:
    data = cur.data
    return Plan(_record(cur, Op.FULL), data.nbytes, lambda s, e: data[s:e], int(cur.meta["itemsize"]),
                data=data)


def _same(cur: Leaf) -> Plan:
    return Plan(_record(cur, Op.SAME))


def _plan_array(old: Leaf | None, cur: Leaf, mode: str) -> Plan:
    meta = cur.meta
    if old is None or old.kind != ARRAY or old.meta.get("shape") != meta["shape"] \
            or old.meta.get("nbytes") != meta["nbytes"]:
        return _full(cur)
    if cur.data is old.data or meta["nbytes"] == 0:
        return _same(cur)
    shape, n = meta["shape"], meta["nbytes"]
    if n < SMALL_ARRAY:
        return _same(cur) if bytes_equal(cur.data, old.data) else _full(cur)
    if _head_equal(cur.data, old.data) and bytes_equal(cur.data, old.data):
        return _same(cur)
    if len(shape) >= 2 and shape[0] >= 2:
        rows = _changed_rows(cur.data, old.data, shape[0])
        if rows is not None and rows.size <= ROW_FRACTION * shape[0]:
            return _rows(old, cur, rows)
    return _dense(old, cur, mode)


def _rows(old: Leaf, cur: Leaf, rows: np.ndarray) -> Plan:
    nrows = cur.meta["shape"][0]
    row_bytes = cur.meta["nbytes"] // nrows
    delta = xor(cur.data.reshape(nrows, row_bytes)[rows].reshape(-1),
                old.data.reshape(nrows, row_bytes)[rows].reshape(-1))
    record = _record(cur, Op.ROWS, extra=rows.astype("<i8").tobytes())
    return Plan(record, delta.nbytes, lambda s, e: delta[s:e], int(cur.meta["itemsize"]), data=delta)


def _dense(old: Leaf, cur: Leaf, mode: str) -> Plan:
    a, b, itemsize = cur.data, old.data, int(cur.meta["itemsize"])
    if mode == "none" or not _xor_pays(a, b, itemsize, mode):
        return _full(cur)
    return Plan(_record(cur, Op.XOR), a.nbytes, lambda s, e: xor(a[s:e], b[s:e]), itemsize,
                data=a, base=b)


def _xor_pays(a: np.ndarray, b: np.ndarray, itemsize: int, mode: str) -> bool:
    window = max(8 * itemsize, (32 * 1024) // (8 * itemsize) * 8 * itemsize)
    starts = sorted({(a.nbytes - window) * i // 3 // (8 * itemsize) * 8 * itemsize for i in range(4)})
    if a.nbytes <= 4 * window:
        starts, window = [0], a.nbytes
    plain = np.concatenate([a[s:s + window] for s in starts])
    mixed = xor(plain, np.concatenate([b[s:s + window] for s in starts]))
    return _packed_size(mixed, mode, itemsize) <= _packed_size(plain, mode, itemsize)


def _packed_size(sample: np.ndarray, mode: str, itemsize: int) -> int:
    """``len(compress(sample, mode)[0])`` with one compression instead of two for ``auto``.

    ``auto`` compresses a sample to choose its codec and then the data; the
    sample here is the data, so its first compression is the answer (or the
    raw size when ``auto`` would store it raw).
    """
    if mode != "auto":
        return len(_compress.compress(sample, mode, itemsize=itemsize)[0])
    size = _compress.auto_size(sample, itemsize)
    return size if size is not None else len(_compress.compress(sample, mode, itemsize=itemsize)[0])


# ---------------------------------------------------------------- generic leaves

def _plan_generic(old: Leaf | None, cur: Leaf) -> Plan:
    comparable = old is not None and old.kind == cur.kind and old.meta == cur.meta
    if comparable and old is not None and old.data == cur.data:
        return _same(cur)
    op, ref = Op.FULL, cur.data
    if comparable and old is not None:
        if cur.kind == "pickle_list":
            op, ref = _list_delta(old.data, cur.data)
        elif cur.kind == "pickle_dict":
            op, ref = _dict_delta(old.data, cur.data)
    if op is Op.FULL and cur.kind == "pickle" and len(cur.data) >= PART_FROM:
        view = memoryview(cur.data)
        return Plan(_record(cur, op), len(cur.data), lambda s, e: view[s:e], 1, array=False)
    return Plan(_record(cur, op, ref))


def _list_delta(old: tuple[bytes, ...], cur: tuple[bytes, ...]) -> tuple[Op, Any]:
    n = len(old)
    if len(cur) >= n and cur[:n] == old:
        return Op.TAIL, (n, cur[n:])
    prefix = 0
    for x, y in zip(old, cur):
        if x != y:
            break
        prefix += 1
    if len(cur) == n:
        changed = tuple((i, cur[i]) for i in range(prefix, n) if cur[i] != old[i])
        if len(changed) * 2 <= n:
            return Op.ITEMS, changed
    if prefix * 2 >= len(cur):
        return Op.TAIL, (prefix, cur[prefix:])
    return Op.FULL, cur


def dict_order(old: tuple[tuple[bytes, bytes], ...], keep: set[bytes], added: list[bytes]) -> list[bytes]:
    """The key order a ``keys`` delta implies: surviving old keys, then the added ones."""
    return [k for k, _ in old if k in keep] + added


def _dict_delta(old: tuple[tuple[bytes, bytes], ...], cur: tuple[tuple[bytes, bytes], ...]) -> tuple[Op, Any]:
    before = dict(old)
    keys = [k for k, _ in cur]
    present = set(keys)
    changed = tuple((k, v) for k, v in cur if before.get(k) != v)
    removed = tuple(k for k in before if k not in present)
    order = dict_order(old, present, [k for k, _ in changed if k not in before])
    return Op.KEYS, (changed, removed, None if order == keys else tuple(keys))
