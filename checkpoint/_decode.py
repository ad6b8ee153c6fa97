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
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _compress, _memory, _pools
from ._flatten import leaf_count
from ._format import INDEX_CAP, PART_CAP, Index, LinkRef, load_index, part_check
from ._plan import LeafRecord, Op, dict_order
from ._snapshot import ARRAY, Leaf, Snapshot
from .errors import CorruptCheckpoint, StorageError

__all__ = ["Part", "decode", "reuse_buffers"]

# (stored bytes or a function returning them, codec[, recorded raw size])
Part = tuple[Any, str] | tuple[Any, str, int]
_Payload = tuple[np.ndarray, int]                   # decompressed (maybe shuffled) bytes, element size
_Chunk = tuple[int, int, int]                       # offset in the leaf, part number (0: inline), bytes


def reuse_buffers(snapshot: Snapshot) -> Snapshot:
    """Let the next ``decode`` against ``snapshot`` update its buffers in place.

    For applying a chain: pass only an intermediate snapshot that nothing else
    holds. After a successful decode it must not be used again; a decode that
    fails leaves it intact (everything is checked before anything is written).
    """
    snapshot.reuse = True
    return snapshot


def decode(parts: Sequence[Part], previous: Snapshot | None, *,
           against: LinkRef | None = None, verified: bool = False) -> Snapshot:
    """Inverse of ``encode``: ``parts`` in encode's order, each with its codec.

    Each part is ``(data, codec, raw_size)``, ``raw_size`` being the size the
    catalog recorded (trusted: decompression never goes past it), or
    ``(data, codec)``: then the index's own table bounds the parts and
    ``INDEX_CAP`` the index. ``data`` may be a function that returns the
    bytes: it is called once, when the part is decoded, so that the parts of
    a link stream through memory (fetched and verified as they are needed)
    instead of all being held at once. ``against`` names the link
    ``previous`` was decoded from: a delta recorded against another link (or
    against none) is refused. Raises CorruptCheckpoint for malformed or
    truncated input, for a size that differs from the recorded one and for
    such a mismatch. ``verified`` says that each part's bytes were checked
    against a trusted record of their hash (the catalog's) before they are
    handed over: the index's own check of every part is then not repeated
    (it would hash every stored byte a second time). The result may share buffers with ``previous``
    (snapshots are immutable), unless ``previous`` was handed over with
    ``reuse_buffers``: then its writable buffers are updated in place and
    become the result's. Everything the index says is checked before any
    buffer is written; a part whose bytes turn out corrupt only while it is
    written into a reused snapshot marks that snapshot ``damaged``.
    """
    reuse = previous is not None and previous.reuse
    try:
        return _decode([_unpack(p) for p in parts], previous, reuse, against, verified)
    except (CorruptCheckpoint, StorageError):   # a part's fetch failed: the caller's to judge
        raise
    except Exception as exc:   # a check this module lacks: still a corrupt link, never a crash
        raise CorruptCheckpoint(f"cannot decode checkpoint: {type(exc).__name__}: {exc}") from exc
    finally:
        if previous is not None:
            previous.reuse = False


def _unpack(part: Part) -> tuple[Any, str, int | None]:
    if len(part) == 3:
        data, codec, raw = part
        if type(raw) is not int or raw < 0:
            raise CorruptCheckpoint(f"recorded raw size {raw!r} is not a size")
        return data, codec, raw
    data, codec = part
    return data, codec, None


def _bytes_of(data: Any) -> Any:
    return data() if callable(data) else data


def _decode(parts: list[tuple[Any, str, int | None]], previous: Snapshot | None, reuse: bool,
            against: LinkRef | None, verified: bool) -> Snapshot:
    if not parts:
        raise CorruptCheckpoint("no parts")
    data, codec, raw = parts[0]
    index = load_index(bytes(_compress.decompress(_bytes_of(data), codec, raw_size=raw, limit=INDEX_CAP)))
    _check_against(index, previous, against)
    if len(parts) != len(index.parts) + 1:
        raise CorruptCheckpoint(f"expected {len(index.parts) + 1} parts, got {len(parts)}")
    if index.base != (previous is None):
        raise CorruptCheckpoint("base/delta mismatch with the previous snapshot given")
    treedef = previous.treedef if index.same_tree and previous is not None else index.treedef
    _check_leaves(index, treedef)
    reader = _Parts(parts[1:], index, verified)
    before = previous.leaf_map() if previous is not None else {}
    # Check every record and build the generic leaves before any buffer is written,
    # so that a corrupt link leaves a reused previous snapshot as it was.
    steps = {r.path: _array_step(r, before, reader) for r in index.leaves if r.kind == ARRAY}
    generic = {r.path: _apply(r, before, reader) for r in index.leaves if r.kind != ARRAY}
    size = sum(int(st.meta["nbytes"]) for st in steps.values()) + sum(x.nbytes for x in generic.values())
    if size != index.raw:
        raise CorruptCheckpoint("decoded leaves do not add up to the recorded size")
    try:
        _run(steps.values(), reuse, reader)
    except BaseException:
        if reuse and previous is not None and any(st.in_place for st in steps.values()):
            previous.damaged = True
        raise
    leaves = tuple(steps[r.path].leaf() if r.kind == ARRAY else generic[r.path] for r in index.leaves)
    return Snapshot(raw_nbytes=index.raw, treedef=treedef, leaves=leaves)


def _run(steps: Iterable[_ArrayStep], reuse: bool, reader: _Parts) -> None:
    """Run the copy/XOR tasks of every step on the restore pool; raise the first failure.

    Each step's tasks are submitted as soon as its buffer is made, so the pool
    decodes the first leaves while this thread still populates the buffers of
    the next (the kernel zeroes every page of a new buffer: a fifth of the
    CPU of a base's restore). Returns only when no task runs any more, so
    nothing writes into the buffers after a failure is raised.
    """
    pool = _pools.restore_pool()
    futures: list[Future[None]] = []
    try:
        for st in steps:
            futures += [pool.submit(task) for task in st.start(reuse, reader)]
    finally:
        wait(futures)
    for future in futures:
        future.result()


class _Parts:
    """The payload parts of one link: their recorded sizes at once, their bytes when asked for."""

    def __init__(self, parts: list[tuple[Any, str, int | None]], index: Index, verified: bool) -> None:
        self.parts, self.entries, self.version = parts, index.parts, index.version
        self.verified = verified
        for number, ((_data, codec, raw), entry) in enumerate(zip(parts, index.parts), start=1):
            if codec != entry.codec:
                raise CorruptCheckpoint(f"part {number}: codec {codec!r}, index says {entry.codec!r}")
            if raw is not None and raw != entry.raw_size:
                raise CorruptCheckpoint(f"part {number}: {raw} raw bytes recorded, index says {entry.raw_size}")
            if raw is None and entry.raw_size > PART_CAP:
                raise CorruptCheckpoint(f"part {number}: {entry.raw_size} raw bytes is more than a part holds")
        self.checked: set[int] = set()
        if not any(callable(data) for data, _codec, _raw in parts):
            # All bytes are here already: check them before anything is written.
            for number in range(1, len(parts) + 1):
                self.stored(number)

    def size(self, number: int) -> int:
        return self.entries[number - 1].raw_size

    def stored(self, number: int) -> Any:
        """The stored bytes of part ``number`` (1-based), checked against the index."""
        data = _bytes_of(self.parts[number - 1][0])
        if number in self.checked or self.verified:
            return data
        if part_check(data, self.version) != self.entries[number - 1].crc:
            raise CorruptCheckpoint(f"part {number} failed its {'CRC-32' if self.version == 1 else 'xxh3'} check")
        self.checked.add(number)
        return data

    def payload(self, number: int) -> _Payload:
        """Part ``number`` decompressed, perhaps still shuffled (a ``planes`` part is unshuffled)."""
        entry = self.entries[number - 1]
        data = self.stored(number)   # checked: zstd need not check its frames' checksums again
        if entry.codec == "planes":
            out = np.empty(entry.raw_size, dtype=np.uint8)
            _compress.planes_into(out, data, verified=True)
            self._done(number, data)
            return out, 1
        return _compress.decompress_planes(data, entry.codec, raw_size=entry.raw_size)   # may be views of data

    def into(self, number: int, dst: np.ndarray, itemsize: int, base: np.ndarray | None) -> None:
        """Part ``number`` straight into ``dst`` (XORed with ``base``): a leaf's chunk.

        A shuffled part must be shuffled by the leaf's element size (the zstd
        checksum does not cover the shuffle's element-size byte).
        """
        entry = self.entries[number - 1]
        stored = self.stored(number)
        if entry.codec in ("planes", "shuffle+zstd") and len(stored) and stored[0] not in (1, itemsize):
            # checked before anything is written
            raise CorruptCheckpoint(f"leaf payload shuffled by {stored[0]} bytes, its items have {itemsize}")
        if entry.codec == "planes":
            shuffled = _compress.planes_into(dst, stored, xor_with=base, verified=True)
        elif entry.codec == "none" and base is None:
            data = np.frombuffer(stored, dtype=np.uint8)
            if data.nbytes != dst.nbytes:
                raise CorruptCheckpoint(f"part {number} holds {data.nbytes} bytes, expected {dst.nbytes}")
            np.copyto(dst, data)
            shuffled = 1
        else:
            planes, shuffled = _compress.decompress_planes(stored, entry.codec, raw_size=entry.raw_size)
            if shuffled in (1, itemsize):
                _compress.unshuffle_into(dst, planes, shuffled, xor_with=base)
            del planes
        if shuffled not in (1, itemsize):
            raise CorruptCheckpoint(f"leaf payload shuffled by {shuffled} bytes, its items have {itemsize}")
        self._done(number, stored)

    def _done(self, number: int, stored: Any) -> None:
        """Part ``number``'s bytes were fetched for this decode alone and are used up:
        a reused read buffer goes back (``_memory.READS``; nothing else is taken back)."""
        if callable(self.parts[number - 1][0]):
            _memory.READS.give(stored)


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


def _chunks(ref: Any, reader: _Parts, size: int) -> list[_Chunk]:
    """The payload of one leaf as ``(offset, part number, bytes)``; checks the total size.

    Part number 0 stands for an inline payload (``ref`` itself).
    """
    if isinstance(ref, bytes):
        if len(ref) != size:
            raise CorruptCheckpoint("leaf payload has the wrong size")
        return [(0, 0, size)]
    first, count, total = ref
    if first + count - 1 > len(reader.entries) or total != size:
        raise CorruptCheckpoint("leaf payload has the wrong size")
    out, offset = [], 0
    for number in range(first, first + count):
        out.append((offset, number, reader.size(number)))
        offset += reader.size(number)
    if offset != size:
        raise CorruptCheckpoint("leaf payload has the wrong size")
    return out


def _joined(ref: Any, chunks: list[_Chunk], reader: _Parts, size: int, itemsize: int = 1) -> np.ndarray:
    """The chunks as contiguous plain bytes (no copy of an inline payload)."""
    if isinstance(ref, bytes):
        return np.frombuffer(ref, dtype=np.uint8)
    if len(chunks) == 1:
        planes, shuffled = reader.payload(chunks[0][1])
        if shuffled == 1:
            return planes
    out = np.empty(size, dtype=np.uint8)
    for offset, number, n in chunks:
        reader.into(number, out[offset:offset + n], itemsize, None)
    return out


@dataclass
class _ArrayStep:
    """One array leaf of a link, checked; ``start`` returns its copy/XOR tasks."""

    path: str
    meta: dict[str, Any]
    op: Op
    ref: Any = None
    old: np.ndarray | None = None
    chunks: list[_Chunk] | None = None
    rows: np.ndarray | None = None
    data: np.ndarray | None = None
    in_place: bool = False

    def start(self, reuse: bool, reader: _Parts) -> list[Callable[[], None]]:
        n, old, chunks = int(self.meta["nbytes"]), self.old, self.chunks or []
        itemsize = int(self.meta["itemsize"])
        in_place = reuse and old is not None and old.flags.writeable
        if self.op is Op.SAME or n == 0:
            self.data = old if old is not None and n else np.empty(0, np.uint8)
            return []
        if self.op is Op.FULL and isinstance(self.ref, bytes):
            self.data = np.frombuffer(self.ref, dtype=np.uint8)   # no copy: the inline bytes are the leaf
            return []
        assert old is not None or self.op is Op.FULL
        # A new buffer for chunks is populated by the task that writes each chunk (on
        # the decode threads, at once), not here before any task can start.
        lazy = not in_place and self.op is not Op.ROWS and not isinstance(self.ref, bytes)
        dst = old if in_place and old is not None else _memory.empty(n, populate=not lazy)
        self.data, self.in_place = dst, dst is old
        if self.op is Op.ROWS:
            assert old is not None and self.rows is not None
            if not in_place:
                np.copyto(dst, old)
            return [functools.partial(self._xor_rows, reader)]
        base = None if self.op is Op.FULL else old
        if isinstance(self.ref, bytes):   # an inline XOR payload
            return [functools.partial(_compress.unshuffle_into, dst, np.frombuffer(self.ref, np.uint8), 1,
                                      xor_with=base)]
        return [functools.partial(_chunk_into, reader, number, dst[o:o + size], itemsize,
                                  None if base is None else base[o:o + size], lazy)
                for o, number, size in chunks]

    def _xor_rows(self, reader: _Parts) -> None:
        assert self.data is not None and self.rows is not None
        nrows = self.meta["shape"][0]
        row_bytes = int(self.meta["nbytes"]) // nrows
        delta = _joined(self.ref, self.chunks or [], reader, self.rows.size * row_bytes,
                        int(self.meta["itemsize"]))
        table = self.data.reshape(nrows, row_bytes)
        table[self.rows] ^= delta.reshape(self.rows.size, row_bytes)

    def leaf(self) -> Leaf:
        return Leaf(self.path, ARRAY, self.meta, self.data)


def _chunk_into(reader: _Parts, number: int, dst: np.ndarray, itemsize: int, base: np.ndarray | None,
                populate: bool) -> None:
    if populate:
        _memory.populate(dst)
    reader.into(number, dst, itemsize, base)


def _array_step(rec: LeafRecord, before: dict[str, Leaf], reader: _Parts) -> _ArrayStep:
    n = int(rec.meta["nbytes"])
    if rec.op is Op.FULL:
        return _ArrayStep(rec.path, rec.meta, rec.op, rec.ref, chunks=_chunks(rec.ref, reader, n) if n else [])
    old = _previous(before, rec.path, ARRAY).data
    if old.nbytes != n:
        raise CorruptCheckpoint(f"leaf {rec.path!r} decoded to the wrong size")
    if rec.op is Op.SAME:
        return _ArrayStep(rec.path, rec.meta, rec.op, None, old)
    if rec.op is Op.XOR:
        return _ArrayStep(rec.path, rec.meta, rec.op, rec.ref, old, _chunks(rec.ref, reader, n))
    assert rec.extra is not None   # _format checked the record's fields
    rows = np.frombuffer(rec.extra, dtype="<i8")
    nrows = rec.meta["shape"][0]
    if rows.size and (rows[0] < 0 or rows[-1] >= nrows or np.any(rows[1:] <= rows[:-1])):
        raise CorruptCheckpoint(f"row indices of {rec.path!r} are out of range or out of order")
    chunks = _chunks(rec.ref, reader, rows.size * (n // nrows))
    return _ArrayStep(rec.path, rec.meta, rec.op, rec.ref, old, chunks, rows)


def _previous(before: dict[str, Leaf], path: str, kind: str) -> Leaf:
    old = before.get(path)
    if old is None or old.kind != kind:
        raise CorruptCheckpoint(f"delta for {path!r} has no matching leaf in the previous snapshot")
    return old


def _apply(rec: LeafRecord, before: dict[str, Leaf], reader: _Parts) -> Leaf:
    """A generic (pickled) leaf; never writes to ``before``."""
    path, kind, meta, op, ref = rec.path, rec.kind, rec.meta, rec.op, rec.ref
    if op is Op.SAME:
        return Leaf(path, kind, meta, _previous(before, path, kind).data)
    if op is Op.FULL:
        if kind == "pickle" and not isinstance(ref, bytes):
            return Leaf(path, kind, meta, _joined(ref, _chunks(ref, reader, ref[2]), reader, ref[2]).tobytes())
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
