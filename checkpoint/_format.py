"""The on-disk layout of a link's index (part 0), and its bounded reader.

Part 0, once decompressed: ``MAGIC`` (4 bytes), the CRC-32 of the body (4 bytes,
little-endian), then the body: a pickle (protocol 5) of a dict of builtin
values only::

    {"v": 2, "base": bool, "treedef": TreeDef | None, "same_tree": bool,
     "against": (seq, sha256 hex) | None, "raw": int,
     "leaves": [(path, kind, meta, op, ref, extra), ...],
     "parts": [(check, raw_size, codec), ...],   # parts 1..n
     "bandwidth": int | None}                    # what ``auto`` assumed of the store

``check`` is the xxh3-64 of the stored part in version 2 and its CRC-32 in
version 1 (which has no ``bandwidth``); both versions are read.

Reading never trusts the body: ``load_index`` checks the header and CRC, then
walks the pickle's opcodes (``pickletools``) before loading it, and refuses
any opcode outside a small set of builtin constructors (no globals, no
``REDUCE``, no extension codes), memo indices beyond the opcodes seen so far
(the C unpickler sizes its memo table by the largest index: a 17-byte pickle
could ask for gigabytes) and lengths that run past the body. The loaded value
must then have the layout above, leaf records their op's shapes and array
metadata a consistent size. Every failure is ``CorruptCheckpoint``.
"""

from __future__ import annotations

import io
import math
import pickle
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import xxhash

from . import codecs
from ._plan import LeafRecord, Op
from .errors import CorruptCheckpoint

__all__ = [
    "INDEX_CAP", "KINDS", "MAGIC", "PART_CAP", "VERSION", "EncodedPart", "Index", "LinkRef", "PartEntry",
    "dump_index", "load_index", "part_check", "pieces_check",
]

LinkRef = tuple[int, str]   # (seq, SHA-256 hex of the link's index part)

MAGIC = b"CCX1"
VERSION = 2
# Bounds when the caller cannot give a part's recorded raw size: the index
# holds records and payloads under PART_FROM each, a part at most one CHUNK.
INDEX_CAP = 256 * 1024 * 1024
PART_CAP = 64 * 1024 * 1024
KINDS = ("array", "pickle", "pickle_list", "pickle_dict")
_OPS = {
    "array": (Op.SAME, Op.FULL, Op.XOR, Op.ROWS),
    "pickle": (Op.SAME, Op.FULL),
    "pickle_list": (Op.SAME, Op.FULL, Op.TAIL, Op.ITEMS),
    "pickle_dict": (Op.SAME, Op.FULL, Op.KEYS),
}
_FIELDS = {1: {"v", "base", "treedef", "same_tree", "against", "raw", "leaves", "parts"}}
_FIELDS[2] = _FIELDS[1] | {"bandwidth"}
# The opcodes a protocol-5 pickle of builtin values uses, by argument: a
# fixed-size argument (bytes), or a length field (bytes) followed by that many.
_FIXED = {
    0x80: 1, 0x95: 8, 0x28: 0, 0x4E: 0, 0x88: 0, 0x89: 0,                     # PROTO FRAME MARK NONE bools
    0x4A: 4, 0x4B: 1, 0x4D: 2, 0x47: 8,                                         # BININT BININT1/2 BINFLOAT
    0x29: 0, 0x85: 0, 0x86: 0, 0x87: 0, 0x74: 0, 0x5D: 0, 0x61: 0, 0x65: 0,     # tuples, lists
    0x7D: 0, 0x73: 0, 0x75: 0,                                                  # dicts
}
_COUNTED = {0x8A: 1, 0x8C: 1, 0x58: 4, 0x8D: 8, 0x43: 1, 0x42: 4, 0x8E: 8}    # LONG1, str, bytes
_PUT = {0x71: 1, 0x72: 4}   # BINPUT, LONG_BINPUT
_GET = {0x68: 1, 0x6A: 4}   # BINGET, LONG_BINGET
_MEMOIZE, _STOP, _FRAME = 0x94, 0x2E, 0x95


@dataclass(frozen=True)
class EncodedPart:
    """One part as ``encode`` returns it, ready to store."""

    data: bytes       # bytes to store (already compressed)
    codec: str        # compression recorded in the manifest
    raw_size: int     # size before compression
    numeric: bool = False   # array bytes, never unpickled (may be checked by xxh3)


@dataclass(frozen=True)
class PartEntry:
    """What the index records of one payload part."""

    crc: int          # ``part_check`` of the stored bytes (CRC-32 in version 1)
    raw_size: int
    codec: str


@dataclass(frozen=True)
class Index:
    """A link's index, checked."""

    base: bool
    treedef: Any
    same_tree: bool
    against: LinkRef | None
    raw: int
    leaves: tuple[LeafRecord, ...]
    parts: tuple[PartEntry, ...]
    version: int = VERSION
    bandwidth: int | None = None


def part_check(data: Any, version: int = VERSION) -> int:
    """The check the index records of one stored part: xxh3-64 (v2) or CRC-32 (v1)."""
    return zlib.crc32(data) if version == 1 else xxhash.xxh3_64_intdigest(data)


def pieces_check(pieces: Sequence[Any], version: int = VERSION) -> int:
    """``part_check`` of the concatenation of ``pieces``, without making it."""
    if version == 1:
        crc = 0
        for piece in pieces:
            crc = zlib.crc32(piece, crc)
        return crc
    h = xxhash.xxh3_64()
    for piece in pieces:
        h.update(piece)
    return int(h.intdigest())


def dump_index(index: Index) -> bytes:
    """The raw (uncompressed) bytes of part 0, in ``index.version``'s layout."""
    fields: dict[str, Any] = {
        "v": index.version,
        "base": index.base,
        "treedef": index.treedef,
        "same_tree": index.same_tree,
        "against": index.against,
        "raw": index.raw,
        "leaves": [(r.path, r.kind, r.meta, r.op.value, r.ref, r.extra) for r in index.leaves],
        "parts": [(p.crc, p.raw_size, p.codec) for p in index.parts],
    }
    if index.version >= 2:
        fields["bandwidth"] = index.bandwidth
    body = pickle.dumps(fields, protocol=5)
    return MAGIC + zlib.crc32(body).to_bytes(4, "little") + body


def load_index(raw: bytes) -> Index:
    """Inverse of ``dump_index``; raises CorruptCheckpoint for anything else."""
    if len(raw) < 8 or raw[:4] != MAGIC:
        raise CorruptCheckpoint("index part has no valid header")
    body = raw[8:]
    if zlib.crc32(body) != int.from_bytes(raw[4:8], "little"):
        raise CorruptCheckpoint("index part failed its CRC-32 check")
    _check_opcodes(body)
    try:
        value = _NoGlobals(io.BytesIO(body)).load()
    except CorruptCheckpoint:
        raise
    except Exception as exc:
        raise CorruptCheckpoint(f"index part cannot be read: {type(exc).__name__}: {exc}") from exc
    return _layout(value)


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise CorruptCheckpoint(f"index refers to {module}.{name}")


def _check_opcodes(body: bytes) -> None:
    """Refuse opcodes, memo indices and lengths a genuine index never has.

    One pass over the opcodes without building anything (``pickletools.genops``
    does the same, three times slower): every argument must lie inside the
    body, memo entries are stored densely and read only once stored, and the
    pickle ends at its STOP.
    """
    at, end, memo = 0, len(body), 0
    while at < end:
        op, at = body[at], at + 1
        if op == _MEMOIZE:
            memo += 1
            continue
        width = _FIXED.get(op)
        if width is not None:
            if op == _FRAME and int.from_bytes(body[at:at + 8], "little") > end - at - 8:
                raise CorruptCheckpoint(f"index pickle frame at byte {at - 1} runs past the end")
            at += width
        elif op in _COUNTED:
            width = _COUNTED[op]
            at += width + int.from_bytes(body[at:at + width], "little")
        elif op in _PUT or op in _GET:
            width = _PUT.get(op) or _GET[op]
            entry = int.from_bytes(body[at:at + width], "little")
            if entry > memo or (op in _GET and entry == memo):
                raise CorruptCheckpoint(f"index pickle uses memo entry {entry} of {memo} at byte {at - 1}")
            memo, at = max(memo, entry + 1), at + width
        elif op == _STOP and at == end:
            return
        else:
            raise CorruptCheckpoint(f"index pickle has opcode {op:#04x} at byte {at - 1}")
    raise CorruptCheckpoint("index pickle is truncated")


def _layout(value: Any) -> Index:
    version = value.get("v") if isinstance(value, dict) else None
    if type(version) is not int or version not in _FIELDS or set(value) != _FIELDS[version]:
        raise CorruptCheckpoint("index part has an unknown layout")
    bandwidth = value.get("bandwidth")
    if bandwidth is not None and not _count(bandwidth):
        raise CorruptCheckpoint("index records a malformed store bandwidth")
    base, same_tree, raw = value["base"], value["same_tree"], value["raw"]
    if type(base) is not bool or type(same_tree) is not bool or not _count(raw):
        raise CorruptCheckpoint("index header fields have the wrong types")
    leaves, parts = value["leaves"], value["parts"]
    if type(leaves) is not list or type(parts) is not list:
        raise CorruptCheckpoint("index tables have the wrong types")
    return Index(base, value["treedef"], same_tree, _against(value["against"]), raw,
                 tuple(_leaf(r) for r in leaves), tuple(_part(p) for p in parts), version, bandwidth)


def _count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _against(value: Any) -> LinkRef | None:
    if value is None:
        return None
    if type(value) is tuple and len(value) == 2 and type(value[0]) is int and type(value[1]) is str:
        return value[0], value[1]
    raise CorruptCheckpoint("index names its reference link in the wrong form")


def _part(entry: Any) -> PartEntry:
    if type(entry) is tuple and len(entry) == 3 and _count(entry[0]) and _count(entry[1]) \
            and type(entry[2]) is str:
        return PartEntry(*entry)
    raise CorruptCheckpoint("index part table has a malformed entry")


def _leaf(rec: Any) -> LeafRecord:
    if type(rec) is not tuple or len(rec) != 6:
        raise CorruptCheckpoint("index has a malformed leaf record")
    path, kind, meta, op, ref, extra = rec
    if type(path) is not str or kind not in KINDS or type(meta) is not dict:
        raise CorruptCheckpoint(f"leaf record {str(path)[:80]!r} is malformed")
    ops = _OPS[kind]
    if op not in [o.value for o in ops]:
        raise CorruptCheckpoint(f"unknown operation {op!r} for {path!r}")
    record = LeafRecord(path, kind, meta, Op(op), ref, extra)
    if not (_array_ok(record) if kind == "array" else _generic_ok(record)):
        raise CorruptCheckpoint(f"leaf record {path!r} ({kind}, {op}) has malformed fields")
    return record


def _span_or_bytes(ref: Any) -> bool:
    if type(ref) is bytes:
        return True
    return type(ref) is tuple and len(ref) == 3 and all(_count(x) for x in ref) and ref[0] >= 1 \
        and ref[1] >= 1


def _array_ok(rec: LeafRecord) -> bool:
    meta = rec.meta
    shape, itemsize, nbytes = meta.get("shape"), meta.get("itemsize"), meta.get("nbytes")
    if meta.get("fw") not in codecs.NAMES or type(shape) is not tuple or not all(_count(s) for s in shape):
        return False
    if not _count(itemsize) or not _count(nbytes) or math.prod(shape) * int(itemsize or 0) != nbytes:
        return False
    if rec.op is Op.SAME:
        return rec.ref is None and rec.extra is None
    if rec.op is Op.ROWS:
        if type(rec.extra) is not bytes or len(rec.extra) % 8 or not shape or shape[0] < 1:
            return False
    elif rec.extra is not None:
        return False
    return nbytes == 0 and rec.ref is None or _span_or_bytes(rec.ref)


def _blobs(value: Any) -> bool:
    return type(value) is tuple and all(type(x) is bytes for x in value)


def _pairs(value: Any) -> bool:
    return type(value) is tuple and all(type(x) is tuple and len(x) == 2 and type(x[0]) is bytes
                                        and type(x[1]) is bytes for x in value)


def _generic_ok(rec: LeafRecord) -> bool:
    op, ref = rec.op, rec.ref
    if rec.extra is not None:
        return False
    if rec.kind == "pickle_dict" and (set(rec.meta) != {"odict"} or type(rec.meta["odict"]) is not bool):
        return False
    if rec.kind != "pickle_dict" and rec.meta:
        return False
    if op is Op.SAME:
        return ref is None
    if rec.kind == "pickle":
        return _span_or_bytes(ref)
    if rec.kind == "pickle_list":
        if op is Op.FULL:
            return _blobs(ref)
        if op is Op.TAIL:
            return type(ref) is tuple and len(ref) == 2 and _count(ref[0]) and _blobs(ref[1])
        return type(ref) is tuple and all(type(x) is tuple and len(x) == 2 and _count(x[0])
                                          and type(x[1]) is bytes for x in ref)
    if op is Op.FULL:
        return _pairs(ref)
    return type(ref) is tuple and len(ref) == 3 and _pairs(ref[0]) and _blobs(ref[1]) \
        and (ref[2] is None or _blobs(ref[2]))
