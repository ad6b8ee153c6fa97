"""Decode a link's parts back into a snapshot, within bounds.

What a decode may allocate is bounded before anything is decompressed: every
part is decompressed to its recorded raw size and no further (the size the
catalog recorded when the caller passes ``(data, codec, raw_size)`` triples,
else the index's own table, at most ``PART_CAP`` per part and ``INDEX_CAP``
for the index); each part feeds exactly one leaf; a leaf's buffer is only
made once its payload is known to fill it exactly. Everything is checked
before any buffer is written, so a link that fails leaves a reused previous
snapshot as it was. Only ``CorruptCheckpoint`` leaves ``decode``.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _compress, _memory, _pools
from ._flatten import leaf_count
from ._format import INDEX_CAP, PART_CAP, Index, LinkRef, PartEntry, load_index
from ._plan import LeafRecord, Op, dict_order
from ._snapshot import ARRAY, Leaf, Snapshot
from .errors import CorruptCheckpoint

__all__ = ["Part", "decode", "reuse_buffers"]

Part = tuple[bytes, str] | tuple[bytes, str, int]   # (stored bytes, codec[, recorded raw size])
_Payload = tuple[np.ndarray, int]                   # decompressed (maybe shuffled) bytes, element size
_Chunk = tuple[int, np.ndarray, int]                # offset in the leaf, (shuffled) bytes, element size


def reuse_buffers(snapshot: Snapshot) -> Snapshot:
    """Let the next ``decode`` against ``snapshot`` update its buffers in place.

    For applying a chain: pass only an intermediate snapshot that nothing else
    holds. After a successful decode it must not be used again; a decode that
    fails leaves it intact (everything is checked before anything is written).
    """
    snapshot.reuse = True
    return snapshot


def decode(parts: Sequence[Part], previous: Snapshot | None, *,
           against: LinkRef | None = None) -> Snapshot:
    """Inverse of ``encode``: ``parts`` in encode's order, each with its codec.

    Each part is ``(data, codec, raw_size)``, ``raw_size`` being the size the
    catalog recorded (trusted: decompression never goes past it), or
    ``(data, codec)``: then the index's own table bounds the parts and
    ``INDEX_CAP`` the index. ``against`` names the link ``previous`` was
    decoded from: a delta recorded against another link (or against none) is
    refused. Raises CorruptCheckpoint for malformed or truncated input, for a
    size that differs from the recorded one and for such a mismatch. The
    result may share buffers with ``previous`` (snapshots are immutable),
    unless ``previous`` was handed over with ``reuse_buffers``: then its
    writable buffers are updated in place and become the result's.
    """
    reuse = previous is not None and previous.reuse
    try:
        return _decode([_unpack(p) for p in parts], previous, reuse, against)
    except CorruptCheckpoint:
        raise
    except Exception as exc:   # a check this module lacks: still a corrupt link, never a crash
        raise CorruptCheckpoint(f"cannot decode checkpoint: {type(exc).__name__}: {exc}") from exc
    finally:
        if previous is not None:
            previous.reuse = False


def _unpack(part: Part) -> tuple[bytes, str, int | None]:
    if len(part) == 3:
        data, codec, raw = part
        if type(raw) is not int or raw < 0:
            raise CorruptCheckpoint(f"recorded raw size {raw!r} is not a size")
        return data, codec, raw
    data, codec = part
    return data, codec, None


def _decode(parts: list[tuple[bytes, str, int | None]], previous: Snapshot | None, reuse: bool,
            against: LinkRef | None) -> Snapshot:
    if not parts:
        raise CorruptCheckpoint("no parts")
    data, codec, raw = parts[0]
    index = load_index(bytes(_compress.decompress(data, codec, raw_size=raw, limit=INDEX_CAP)))
    _check_against(index, previous, against)
    if len(parts) != len(index.parts) + 1:
        raise CorruptCheckpoint(f"expected {len(index.parts) + 1} parts, got {len(parts)}")
    if index.base != (previous is None):
        raise CorruptCheckpoint("base/delta mismatch with the previous snapshot given")
    treedef = previous.treedef if index.same_tree and previous is not None else index.treedef
    _check_leaves(index, treedef)
    jobs = list(zip(parts[1:], index.parts))
    payloads = list(_pools.codec_pool().map(lambda i: _read_part(*jobs[i], i + 1), range(len(jobs))))
    before = previous.leaf_map() if previous is not None else {}
    # Check every record and build the generic leaves before any buffer is written,
    # so that a corrupt link leaves a reused previous snapshot as it was.
    steps = {r.path: _array_step(r, before, payloads) for r in index.leaves if r.kind == ARRAY}
    generic = {r.path: _apply(r, before, payloads) for r in index.leaves if r.kind != ARRAY}
    size = sum(int(st.meta["nbytes"]) for st in steps.values()) + sum(x.nbytes for x in generic.values())
    if size != index.raw:
        raise CorruptCheckpoint("decoded leaves do not add up to the recorded size")
    tasks = [task for st in steps.values() for task in st.start(reuse)]
    list(_pools.codec_pool().map(lambda task: task(), tasks))
    leaves = tuple(steps[r.path].leaf() if r.kind == ARRAY else generic[r.path] for r in index.leaves)
    return Snapshot(raw_nbytes=index.raw, treedef=treedef, leaves=leaves)


def _check_against(index: Index, previous: Snapshot | None, against: LinkRef | None) -> None:
    if previous is None or against is None:
        return
    recorded = index.against
    expected = (int(against[0]), str(against[1]))
    if recorded is None or recorded != expected:
        named = "no reference" if recorded is None else f"seq {recorded[0]} ({recorded[1][:12]}…)"
        raise CorruptCheckpoint(f"delta was encoded against {named}, not against seq {expected[0]} "
                                f"({expected[1][:12]}…)")


def _check_leaves(index: Index, treedef: Any) -> None:
    """As many unique paths as the tree has leaves, and parts that each feed one leaf, in order."""
    paths = {r.path for r in index.leaves}
    try:
        count = leaf_count(treedef)
    except (ValueError, RecursionError) as exc:
        raise CorruptCheckpoint(f"tree definition is malformed: {exc}") from exc
    if len(paths) != len(index.leaves) or count != len(paths):
        raise CorruptCheckpoint("leaf records do not match the tree definition")
    following = 1
    for rec in index.leaves:
        if rec.kind in (ARRAY, "pickle") and isinstance(rec.ref, tuple):
            first, count, _size = rec.ref
            if first != following:
                raise CorruptCheckpoint(f"leaf {rec.path!r} refers to parts out of order")
            following += count
    if following != len(index.parts) + 1:
        raise CorruptCheckpoint("leaf records do not use exactly the parts the index lists")


def _read_part(part: tuple[bytes, str, int | None], entry: PartEntry, number: int) -> _Payload:
    data, codec, raw = part
    if codec != entry.codec:
        raise CorruptCheckpoint(f"part {number}: codec {codec!r}, index says {entry.codec!r}")
    if raw is not None and raw != entry.raw_size:
        raise CorruptCheckpoint(f"part {number}: {raw} raw bytes recorded, index says {entry.raw_size}")
    if raw is None and entry.raw_size > PART_CAP:
        raise CorruptCheckpoint(f"part {number}: {entry.raw_size} raw bytes is more than a part holds")
    if zlib.crc32(data) != entry.crc:
        raise CorruptCheckpoint(f"part {number} failed its CRC-32 check")
    return _compress.decompress_planes(data, codec, raw_size=entry.raw_size)


def _chunks(ref: Any, payloads: list[_Payload], size: int, itemsize: int = 1) -> list[_Chunk]:
    """The payload of one leaf as chunks placed at their offsets; checks the total size.

    A shuffled chunk must be shuffled by the leaf's element size (the zstd
    checksum does not cover the shuffle's element-size byte).
    """
    if isinstance(ref, bytes):
        chunks = [(np.frombuffer(ref, dtype=np.uint8), 1)]
    else:
        first, count, total = ref
        chunks = payloads[first - 1:first - 1 + count]
        if len(chunks) != count or total != size:
            raise CorruptCheckpoint("leaf payload has the wrong size")
    out, offset = [], 0
    for data, shuffled in chunks:
        if shuffled not in (1, itemsize):
            raise CorruptCheckpoint(f"leaf payload shuffled by {shuffled} bytes, its items have {itemsize}")
        out.append((offset, data, shuffled))
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


@dataclass
class _ArrayStep:
    """One array leaf of a link, checked; ``start`` returns its copy/XOR tasks."""

    path: str
    meta: dict[str, Any]
    op: Op
    old: np.ndarray | None = None
    chunks: list[_Chunk] | None = None
    rows: np.ndarray | None = None
    data: np.ndarray | None = None

    def start(self, reuse: bool) -> list[Callable[[], None]]:
        n, old, chunks = int(self.meta["nbytes"]), self.old, self.chunks or []
        in_place = reuse and old is not None and old.flags.writeable
        if self.op is Op.SAME or n == 0:
            self.data = old if old is not None and n else np.empty(0, np.uint8)
            return []
        if self.op is Op.FULL and len(chunks) == 1 and chunks[0][2] == 1:
            self.data = chunks[0][1]   # no copy: the decompressed bytes are the leaf
            return []
        assert old is not None or self.op is Op.FULL
        dst = old if in_place and old is not None else _memory.empty(n)
        self.data = dst
        if self.op is Op.ROWS:
            assert old is not None and self.rows is not None
            if not in_place:
                np.copyto(dst, old)
            return [self._xor_rows]
        base = None if self.op is Op.FULL else old
        return [functools.partial(_unshuffle_chunk, dst, o, c, k, base) for o, c, k in chunks]

    def _xor_rows(self) -> None:
        assert self.data is not None and self.rows is not None
        nrows = self.meta["shape"][0]
        row_bytes = int(self.meta["nbytes"]) // nrows
        delta = _joined(self.chunks or [], self.rows.size * row_bytes)
        table = self.data.reshape(nrows, row_bytes)
        table[self.rows] ^= delta.reshape(self.rows.size, row_bytes)

    def leaf(self) -> Leaf:
        return Leaf(self.path, ARRAY, self.meta, self.data)


def _unshuffle_chunk(dst: np.ndarray, offset: int, chunk: np.ndarray, itemsize: int,
                     base: np.ndarray | None) -> None:
    """One chunk of a leaf into ``dst`` (XORed with ``base`` for a delta)."""
    end = offset + chunk.nbytes
    _compress.unshuffle_into(dst[offset:end], chunk, itemsize, xor_with=None if base is None else base[offset:end])


def _array_step(rec: LeafRecord, before: dict[str, Leaf], payloads: list[_Payload]) -> _ArrayStep:
    n, itemsize = int(rec.meta["nbytes"]), int(rec.meta["itemsize"])
    if rec.op is Op.FULL:
        return _ArrayStep(rec.path, rec.meta, rec.op,
                          chunks=_chunks(rec.ref, payloads, n, itemsize) if n else [])
    old = _previous(before, rec.path, ARRAY).data
    if old.nbytes != n:
        raise CorruptCheckpoint(f"leaf {rec.path!r} decoded to the wrong size")
    if rec.op is Op.SAME:
        return _ArrayStep(rec.path, rec.meta, rec.op, old)
    if rec.op is Op.XOR:
        return _ArrayStep(rec.path, rec.meta, rec.op, old, _chunks(rec.ref, payloads, n, itemsize))
    assert rec.extra is not None   # _format checked the record's fields
    rows = np.frombuffer(rec.extra, dtype="<i8")
    nrows = rec.meta["shape"][0]
    if rows.size and (rows[0] < 0 or rows[-1] >= nrows or np.any(rows[1:] <= rows[:-1])):
        raise CorruptCheckpoint(f"row indices of {rec.path!r} are out of range or out of order")
    chunks = _chunks(rec.ref, payloads, rows.size * (n // nrows), itemsize)
    return _ArrayStep(rec.path, rec.meta, rec.op, old, chunks, rows)


def _previous(before: dict[str, Leaf], path: str, kind: str) -> Leaf:
    old = before.get(path)
    if old is None or old.kind != kind:
        raise CorruptCheckpoint(f"delta for {path!r} has no matching leaf in the previous snapshot")
    return old


def _apply(rec: LeafRecord, before: dict[str, Leaf], payloads: list[_Payload]) -> Leaf:
    """A generic (pickled) leaf; never writes to ``before``."""
    path, kind, meta, op, ref = rec.path, rec.kind, rec.meta, rec.op, rec.ref
    if op is Op.SAME:
        return Leaf(path, kind, meta, _previous(before, path, kind).data)
    if op is Op.FULL:
        if kind == "pickle" and not isinstance(ref, bytes):
            return Leaf(path, kind, meta, _joined(_chunks(ref, payloads, ref[2]), ref[2]).tobytes())
        return Leaf(path, kind, meta, ref)
    old = _previous(before, path, kind).data
    if op is Op.TAIL:
        prefix, tail = ref
        if prefix > len(old):
            raise CorruptCheckpoint(f"list delta for {path!r} keeps more items than there were")
        return Leaf(path, kind, meta, tuple(old[:prefix]) + tuple(tail))
    if op is Op.ITEMS:
        items = list(old)
        for i, value in ref:
            if i >= len(items):
                raise CorruptCheckpoint(f"list delta for {path!r} changes an item that does not exist")
            items[i] = value
        return Leaf(path, kind, meta, tuple(items))
    return Leaf(path, kind, meta, _apply_keys(path, old, *ref))


def _apply_keys(path: str, old: tuple[tuple[bytes, bytes], ...], changed: Any, removed: Any,
                order: Any) -> tuple[Any, ...]:
    values = dict(old)
    for key in removed:
        if values.pop(key, None) is None:
            raise CorruptCheckpoint(f"dict delta for {path!r} removes a key that does not exist")
    added = [k for k, _ in changed if k not in values]
    values.update(changed)
    if order is None:
        order = dict_order(old, set(values), added)
    elif len(order) != len(values) or set(order) != set(values):
        raise CorruptCheckpoint(f"dict delta for {path!r} orders keys that are not its keys")
    return tuple((k, values[k]) for k in order)
