"""Compression of one blob, and the byte shuffle used for arrays.

Codec strings (recorded in the manifest): ``none``, ``zstd``, ``gzip``,
``shuffle+zstd`` and ``planes``. A ``shuffle+zstd`` blob starts with one byte, the
element size, followed by a zstd frame of the shuffled bytes (byte k of every
element grouped together, so slowly-varying high bytes compress well). zstd
frames carry a checksum. A ``planes`` blob (written since index version 2) is
the same shuffle with each byte plane stored on its own, raw or as a zstd frame,
whichever a sample of that plane says pays (see ``encode_planes``): the mantissa
planes of floats do not compress, so they cost neither a compression pass when
saved nor a decompression pass when restored. Every decoding failure is raised as ``CorruptCheckpoint``, and given
the expected size decompression never writes past it (zstd: the size the frame
header declares must be that size; gzip: output is cut one byte past it).
"""

from __future__ import annotations

import gzip
import os
import threading
import time
import zlib
from typing import Any

import numpy as np
import zstandard

from . import _libzstd, _native
from .errors import CorruptCheckpoint

__all__ = [
    "CODECS", "MODES", "auto_size", "choose_codec", "compress", "decompress", "decompress_planes", "encode_planes",
    "plane_pieces", "planes_into", "shuffle", "unshuffle", "unshuffle_into",
]

MODES = ("auto", "gzip", "zstd", "none")
CODECS = ("none", "zstd", "gzip", "shuffle+zstd", "planes")
ARRAY_LEVEL = 1
PICKLE_LEVEL = 3
_SAMPLE_FROM = 256 * 1024
_SAMPLE_WINDOW = 32 * 1024
_NOT_WORTH = 0.95
_MT_FROM = 8 * 1024 * 1024
# Blobs are compressed on the codec pool (one worker per core up to 8), so zstd's
# own worker threads only add contention below that: on 2 cores threads=0 encoded
# 16 MiB chunks ~15 % faster than threads=-1.
_MT = (os.cpu_count() or 1) > 8
_local = threading.local()


def _compressor(level: int, threads: int) -> zstandard.ZstdCompressor:
    cache = getattr(_local, "zstd", None)
    if cache is None:
        cache = _local.zstd = {}
    key = (level, threads)
    if key not in cache:
        cache[key] = zstandard.ZstdCompressor(level=level, threads=threads, write_checksum=True)
    compressor: zstandard.ZstdCompressor = cache[key]
    return compressor


def shuffle(data: Any, itemsize: int) -> np.ndarray:
    """Group byte k of every element together (length must be a multiple of itemsize)."""
    raw = np.frombuffer(data, dtype=np.uint8)
    if itemsize <= 1 or raw.size == 0:
        return raw
    return np.ascontiguousarray(raw.reshape(-1, itemsize).T).reshape(-1)


def unshuffle(data: Any, itemsize: int) -> np.ndarray:
    raw = np.frombuffer(data, dtype=np.uint8)
    if itemsize <= 1 or raw.size == 0:
        return raw
    if raw.size % itemsize:
        raise CorruptCheckpoint(f"shuffled blob of {raw.size} bytes is not a multiple of {itemsize}")
    out = np.empty(raw.size, dtype=np.uint8)
    unshuffle_into(out, raw, itemsize)
    return out


def _zstd(data: Any, level: int) -> bytes:
    size = memoryview(data).nbytes
    threads = -1 if _MT and size >= _MT_FROM else 0
    return _compressor(level, threads).compress(data)


def _sample(data: Any, itemsize: int) -> memoryview:
    view = memoryview(data).cast("B")
    if view.nbytes < _SAMPLE_FROM:
        return view
    step = max(itemsize, 1)
    window = _SAMPLE_WINDOW - _SAMPLE_WINDOW % step
    starts = [((view.nbytes - window) * i // 3) // step * step for i in range(4)]
    return memoryview(b"".join(view[s:s + window] for s in starts))


def choose_codec(mode: str, data: Any, *, itemsize: int = 1, array: bool = True) -> str:
    """The codec ``mode`` resolves to for this blob (``auto`` samples large blobs)."""
    if mode not in MODES:
        raise ValueError(f"unknown compression {mode!r}; expected one of {MODES}")
    if mode != "auto":
        return mode
    # the shuffle records its element size in one byte: wider elements are not shuffled
    codec = "shuffle+zstd" if array and 1 < itemsize <= 255 else "zstd"
    sample = _sample(data, itemsize)
    if sample.nbytes >= _SAMPLE_WINDOW:
        packed = _encode(codec, sample, itemsize, ARRAY_LEVEL if array else PICKLE_LEVEL)
        if len(packed) > _NOT_WORTH * sample.nbytes:
            return "none"
    return codec


def auto_size(data: Any, itemsize: int) -> int | None:
    """``len(compress(data, "auto", itemsize=itemsize)[0])`` of array bytes, with one compression.

    For data under ``_SAMPLE_FROM`` bytes, whose sample ``auto`` compresses
    is the data itself; None for larger data (then call ``compress``).
    """
    view = memoryview(data).cast("B")
    if view.nbytes >= _SAMPLE_FROM or (itemsize > 1 and view.nbytes % itemsize):
        return None
    codec = "shuffle+zstd" if 1 < itemsize <= 255 else "zstd"
    packed = len(_encode(codec, view, itemsize, ARRAY_LEVEL))
    return view.nbytes if view.nbytes >= _SAMPLE_WINDOW and packed > _NOT_WORTH * view.nbytes else packed


def _encode(codec: str, data: Any, itemsize: int, level: int) -> bytes:
    if codec == "none":
        return bytes(data)
    if codec == "zstd":
        return _zstd(data, level)
    if codec == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if codec == "shuffle+zstd":
        if not 1 <= itemsize <= 255:
            raise ValueError(f"itemsize {itemsize} cannot be shuffled")
        return bytes([itemsize]) + _zstd(shuffle(data, itemsize), level)
    raise ValueError(f"unknown codec {codec!r}")


def compress(data: Any, mode: str, *, itemsize: int = 1, array: bool = True) -> tuple[bytes, str]:
    """Compress one blob; returns (stored bytes, codec string)."""
    codec = choose_codec(mode, data, itemsize=itemsize, array=array)
    if codec == "shuffle+zstd" and memoryview(data).nbytes % itemsize:
        codec = "zstd"
    return _encode(codec, data, itemsize, ARRAY_LEVEL if array else PICKLE_LEVEL), codec


def _unzstd(data: Any, raw_size: int | None, bound: int | None) -> bytes:
    if bound is not None:
        # The frame header declares the content size and zstd refuses to write
        # past it: checking it first bounds the output before any is made.
        declared = zstandard.get_frame_parameters(data).content_size
        if declared == zstandard.CONTENTSIZE_UNKNOWN:
            raise CorruptCheckpoint("zstd frame does not record its size")
        if declared > bound or (raw_size is not None and declared != raw_size):
            raise CorruptCheckpoint(f"zstd frame holds {declared} bytes, expected "
                                    f"{raw_size if raw_size is not None else f'at most {bound}'}")
    if bound is not None and _ONE_SHOT:
        # One call into an output of the declared size, on this thread's context;
        # zstd itself refuses a cut frame, a bad checksum and trailing bytes.
        out: bytes = _decompressor().decompress(data, allow_extra_data=False)
        return out
    dobj = zstandard.ZstdDecompressor().decompressobj()
    out = dobj.decompress(data)
    if not dobj.eof:
        raise CorruptCheckpoint("truncated zstd frame")
    if dobj.unused_data:
        raise CorruptCheckpoint("trailing bytes after zstd frame")
    return out


def _decompressor() -> zstandard.ZstdDecompressor:
    cached: zstandard.ZstdDecompressor | None = getattr(_local, "unzstd", None)
    if cached is None:
        cached = _local.unzstd = zstandard.ZstdDecompressor()
    return cached


def _one_shot() -> bool:
    """Whether this zstandard refuses trailing bytes in ``decompress`` (``allow_extra_data``)."""
    frame = zstandard.ZstdCompressor(write_checksum=True).compress(b"x")
    try:
        zstandard.ZstdDecompressor().decompress(frame + b"!", allow_extra_data=False)
    except TypeError:
        return False
    except zstandard.ZstdError:
        return True
    return False


_ONE_SHOT = _one_shot()


def _ungzip(data: Any, bound: int | None) -> bytes:
    if bound is None:
        return gzip.decompress(data)
    stream = zlib.decompressobj(wbits=31)   # one gzip member, header and trailer checked
    out = stream.decompress(data, bound + 1)
    if len(out) > bound:
        raise CorruptCheckpoint(f"gzip blob holds more than {bound} bytes")
    if not stream.eof:
        raise CorruptCheckpoint("truncated gzip stream")
    if stream.unused_data:
        raise CorruptCheckpoint("trailing bytes after gzip stream")
    return out


def _decompress(data: Any, codec: str, raw_size: int | None, limit: int | None) -> tuple[Any, int]:
    """(decompressed bytes, element size of the shuffle or 1), checked against ``raw_size``.

    Never makes more than ``raw_size`` (else ``limit``) bytes of output.
    """
    itemsize, bound = 1, raw_size if raw_size is not None else limit
    try:
        if codec == "none":
            out: Any = data
        elif codec == "zstd":
            out = _unzstd(data, raw_size, bound)
        elif codec == "gzip":
            out = _ungzip(data, bound)
        elif codec == "shuffle+zstd":
            view = memoryview(data)
            if view.nbytes < 1:
                raise CorruptCheckpoint("empty shuffle+zstd blob")
            itemsize = view[0]
            if itemsize < 2:   # compress shuffles only multi-byte elements
                raise CorruptCheckpoint(f"shuffle+zstd blob with an element size of {itemsize}")
            out = _unzstd(view[1:], raw_size, bound)
            if len(out) % itemsize:
                raise CorruptCheckpoint(f"shuffled blob of {len(out)} bytes is not a multiple of {itemsize}")
        else:
            raise CorruptCheckpoint(f"unknown codec {codec!r}")
    except CorruptCheckpoint:
        raise
    except (zstandard.ZstdError, OSError, EOFError, zlib.error, ValueError) as exc:
        raise CorruptCheckpoint(f"cannot decompress {codec} blob: {exc}") from exc
    size = memoryview(out).nbytes
    if raw_size is not None and size != raw_size:
        raise CorruptCheckpoint(f"{codec} blob decoded to {size} bytes, expected {raw_size}")
    if limit is not None and size > limit:
        raise CorruptCheckpoint(f"{codec} blob of {size} bytes is larger than {limit}")
    return out, itemsize


def decompress(data: Any, codec: str, *, raw_size: int | None = None, limit: int | None = None) -> Any:
    """Inverse of ``compress``.

    With ``raw_size`` the result must have exactly that size, otherwise at most
    ``limit`` bytes (when given); decompression stops there, so a small blob
    that would inflate to gigabytes costs nothing.
    """
    out, itemsize = _decompress(data, codec, raw_size, limit)
    return unshuffle(out, itemsize) if codec == "shuffle+zstd" else out


def decompress_planes(data: Any, codec: str, *, raw_size: int | None = None,
                      limit: int | None = None) -> tuple[np.ndarray, int]:
    """Like ``decompress``, but a shuffled blob stays shuffled.

    Returns a flat ``uint8`` array (no copy of the decompressed bytes) and the
    element size to unshuffle it with (1: not shuffled), so that the caller can
    unshuffle straight into its destination (``unshuffle_into``).
    """
    out, itemsize = _decompress(data, codec, raw_size, limit)
    return np.frombuffer(out, dtype=np.uint8), itemsize


def unshuffle_into(dst: np.ndarray, planes: np.ndarray, itemsize: int, *,
                   xor_with: np.ndarray | None = None) -> None:
    """``dst = unshuffle(planes)``, or ``xor_with ^ unshuffle(planes)``, in one pass.

    ``dst`` may be ``xor_with`` itself (in-place update). All flat ``uint8``
    arrays of the same length.
    """
    if itemsize > 1:
        if _native.interleave(dst, list(planes.reshape(itemsize, -1)), xor_with):
            return
        # One pass per plane (long strided inner loops) is 2-3x faster in numpy
        # than copying through the transposed view (inner loops of itemsize).
        rows = dst.reshape(-1, itemsize)
        base = None if xor_with is None else xor_with.reshape(-1, itemsize)
        for k, plane in enumerate(planes.reshape(itemsize, -1)):
            if base is None:
                rows[:, k] = plane
            else:
                np.bitwise_xor(base[:, k], plane, out=rows[:, k])
        return
    word = next((w for n, w in ((8, np.uint64), (4, np.uint32)) if dst.nbytes % n == 0), np.uint8)
    if xor_with is None:
        np.copyto(dst.view(word), planes.view(word))
    else:
        np.bitwise_xor(xor_with.view(word), planes.view(word), out=dst.view(word))


# ---------------------------------------------------------------- planes

#: Bytes of a leaf shuffled at a time: XOR and shuffle of one block stay in the
#: core's cache, so the source is read once and each plane written once.
PLANE_BLOCK = 1024 * 1024
_RAW, _PACKED = 0, 1
_PLANE_SAMPLE = 16 * 1024
# A plane is compressed when that saves at least this share of its bytes (the
# stored size stays what whole-blob zstd gave) ...
_PLANE_SAVES = 0.05
# ... a fifth for the planes of a delta (XORed with the previous value). The low
# mantissa planes of a dense delta save 10-25 %; each costs a decompression
# (~1.2 GB/s per core) in every restore of the chain, several times the time the
# bytes it saves take to read from a local disk, and its compression at every
# save. On a 403 MB W1 chain (base + 8 deltas): restore CPU -13 %, deltas 0.565
# -> 0.586 of raw (the issue bounds them at 0.60). A base keeps the 5 % floor:
# its bytes are bounded at what they were (0.756 of raw, limit 0.76).
_DELTA_PLANE_SAVES = 0.20


def _planes_of(data: np.ndarray, base: np.ndarray | None, itemsize: int) -> np.ndarray:
    """``shuffle(data ^ base)`` (or of ``data``): the native kernel's one pass, else
    numpy one cache-sized block at a time."""
    n = data.nbytes
    out = np.empty(n, dtype=np.uint8)
    planes = out.reshape(itemsize, n // itemsize)
    if _native.split(list(planes), data, base):
        return out
    block = PLANE_BLOCK - PLANE_BLOCK % (8 * itemsize)
    scratch = np.empty(block, dtype=np.uint8) if base is not None else None
    word = _WORDS.get(itemsize)
    shifted = np.empty(block // itemsize, dtype=word) if word is not None else None
    for start in range(0, n, block):
        end = min(n, start + block)
        src = data[start:end]
        if base is not None and scratch is not None:
            src = scratch[:end - start]
            _xor_into(src, data[start:end], base[start:end])
        first, last = start // itemsize, end // itemsize
        if word is not None and shifted is not None:
            # Byte k of each element is its word shifted right by 8k, truncated to a
            # byte when stored: contiguous vector passes, ~30 % faster than the
            # strided byte copies below (3.4 vs 5.0 ms per 16 MiB of float32).
            words, tmp = src.view(word), shifted[:last - first]
            planes[0, first:last] = words
            for k in range(1, itemsize):
                np.right_shift(words, 8 * k, out=tmp)
                planes[k, first:last] = tmp
            continue
        rows = src.reshape(-1, itemsize)
        for k in range(itemsize):
            planes[k, first:last] = rows[:, k]
    return out


# element sizes whose byte k is taken out of a machine word by shifting (little-endian
# layout in memory: byte 0 is the lowest)
_WORDS: dict[int, type[np.unsignedinteger[Any]]] = (
    {2: np.uint16, 4: np.uint32, 8: np.uint64} if np.little_endian else {})


def _xor_into(out: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    if out.nbytes % 8 == 0:
        np.bitwise_xor(a.view(np.uint64), b.view(np.uint64), out=out.view(np.uint64))
    else:
        np.bitwise_xor(a, b, out=out)


def _plane_compressor() -> zstandard.ZstdCompressor:
    """zstd tuned for one byte plane: the fast strategy with a small match table.

    A plane's gain is almost all in its literals (the Huffman stage: exponent
    bytes take few values), not in matches; on W1's planes these parameters
    stored as much as level 1 (0.737 / 0.640 of raw for a base / delta, 0.733 /
    0.641 at level 1) in 70-90 % of its CPU, and decompress 25-40 % faster.
    """
    cached: zstandard.ZstdCompressor | None = getattr(_local, "planes", None)
    if cached is None:
        params = zstandard.ZstdCompressionParameters(
            strategy=zstandard.STRATEGY_FAST, window_log=17, hash_log=6, chain_log=6, search_log=1,
            min_match=7, target_length=0, write_checksum=1, write_content_size=1)
        cached = _local.planes = zstandard.ZstdCompressor(compression_params=params)
    return cached


def _plane_pays(plane: np.ndarray, bandwidth: float | None, floor: float = _PLANE_SAVES) -> bool:
    """Whether zstd pays for this plane, judged on a sample of it.

    It pays when it saves ``floor`` of the bytes, or when the time it
    saves moving the bytes at the store's ``bandwidth`` (bytes/s; None: the
    bytes alone count) exceeds the time it takes, measured on the sample.
    """
    n = plane.nbytes
    if n <= 4 * _PLANE_SAMPLE:
        sample = plane
    else:
        starts = [(n - _PLANE_SAMPLE) * i // 3 for i in range(4)]
        sample = np.concatenate([plane[s:s + _PLANE_SAMPLE] for s in starts])
    t0 = time.perf_counter()
    packed = len(_plane_compressor().compress(sample.data))
    spent = max(time.perf_counter() - t0, 1e-9)
    saved = 1.0 - packed / max(sample.nbytes, 1)
    if saved >= floor:
        return True
    return bandwidth is not None and saved > 0 and saved * sample.nbytes / bandwidth > spent


def encode_planes(data: np.ndarray, itemsize: int, *, base: np.ndarray | None = None,
                  bandwidth: float | None = None) -> bytes:
    """A ``planes`` blob of ``data`` (XORed with ``base`` when given), flat ``uint8``.

    Layout: the element size (1 byte, 2..255), one flag per plane (0 raw,
    1 zstd), the stored length of each plane (8 bytes little-endian each),
    then the planes in order. Each plane holds ``len(data) / itemsize`` bytes.
    """
    return b"".join(plane_pieces(data, itemsize, base=base, bandwidth=bandwidth))


def plane_pieces(data: np.ndarray, itemsize: int, *, base: np.ndarray | None = None,
                 bandwidth: float | None = None) -> list[Any]:
    """The ``planes`` blob of ``encode_planes`` as the pieces it is the concatenation of.

    The header first, then each plane: raw planes are views of one buffer, so a
    store that writes the pieces one after the other (``BlobStore.put_pieces``)
    never copies them into one blob. ``all_raw`` takes the header.
    """
    if not 2 <= itemsize <= 255 or data.nbytes % itemsize:
        raise ValueError(f"cannot store {data.nbytes} bytes as planes of {itemsize}")
    planes = _planes_of(data, base, itemsize).reshape(itemsize, -1)
    flags, stored = bytearray(), list[Any]()
    for plane in planes:
        if _plane_pays(plane, bandwidth, _PLANE_SAVES if base is None else _DELTA_PLANE_SAVES):
            flags.append(_PACKED)
            stored.append(_plane_compressor().compress(plane.data))
        else:
            flags.append(_RAW)
            stored.append(plane.data)
    lengths = b"".join(len(x).to_bytes(8, "little") for x in stored)
    return [bytes([itemsize]) + bytes(flags) + lengths, *stored]


def _plane_views(data: Any, raw_size: int) -> tuple[int, list[tuple[int, memoryview]]]:
    """Element size and ``(flag, stored bytes)`` of each plane; checks the layout against ``raw_size``."""
    view = memoryview(data).cast("B")
    if view.nbytes < 1:
        raise CorruptCheckpoint("empty planes blob")
    itemsize = view[0]
    head = 1 + 9 * itemsize
    if itemsize < 2 or view.nbytes < head:
        raise CorruptCheckpoint(f"planes blob with an element size of {itemsize} or a cut header")
    if raw_size % itemsize:
        raise CorruptCheckpoint(f"planes blob of {raw_size} bytes is not a multiple of {itemsize}")
    flags = view[1:1 + itemsize]
    at, out = head, []
    for k in range(itemsize):
        length = int.from_bytes(view[1 + itemsize + 8 * k:1 + itemsize + 8 * (k + 1)], "little")
        if flags[k] not in (_RAW, _PACKED) or at + length > view.nbytes:
            raise CorruptCheckpoint(f"plane {k} of a planes blob is malformed")
        if flags[k] == _RAW and length != raw_size // itemsize:
            raise CorruptCheckpoint(f"raw plane {k} holds {length} bytes, expected {raw_size // itemsize}")
        out.append((flags[k], view[at:at + length]))
        at += length
    if at != view.nbytes:
        raise CorruptCheckpoint("trailing bytes after the planes")
    return itemsize, out


def planes_into(dst: np.ndarray, data: Any, *, xor_with: np.ndarray | None = None,
                verified: bool = False) -> int:
    """Decode a ``planes`` blob into ``dst`` (``xor_with ^`` it for a delta); its element size.

    ``dst`` (flat ``uint8``, may be ``xor_with`` itself) has the recorded raw
    size; no plane decompresses past its share of it. ``verified``: the blob
    matched a trusted hash already, so its frames' checksums need not be
    computed again. Raises CorruptCheckpoint.
    """
    itemsize, stored = _plane_views(data, dst.nbytes)
    share = dst.nbytes // itemsize
    packed = sum(flag == _PACKED for flag, _part in stored)
    # The compressed planes decompress into one scratch buffer that restores reuse
    # (libzstd), not into a new ``bytes`` each (python-zstandard's only output).
    scratch = _libzstd.take(packed * share) if packed and share and _libzstd.available() else None
    try:
        planes, used = [], 0
        for k, (flag, part) in enumerate(stored):
            if flag == _PACKED and scratch is not None:
                plane = scratch[used:used + share]
                used += share
                try:
                    _libzstd.decompress_into(part, plane, verified=verified)
                except CorruptCheckpoint as exc:
                    raise CorruptCheckpoint(f"cannot decompress plane {k}: {exc}") from exc
                planes.append(plane)
            else:
                planes.append(_plane(k, flag, part, share))
        # Every plane is checked (decompressed to its exact size) before dst is written.
        if _native.interleave(dst, planes, xor_with):
            return itemsize
        rows = dst.reshape(-1, itemsize)
        base = None if xor_with is None else xor_with.reshape(-1, itemsize)
        for k, plane in enumerate(planes):
            if base is None:
                rows[:, k] = plane
            else:
                np.bitwise_xor(base[:, k], plane, out=rows[:, k])
        return itemsize
    finally:
        if scratch is not None:
            _libzstd.give(scratch)


def _plane(k: int, flag: int, stored: memoryview, share: int) -> np.ndarray:
    """Plane ``k`` as ``share`` plain bytes: the stored bytes themselves (raw) or decompressed."""
    try:
        plane = np.frombuffer(stored if flag == _RAW else _unzstd(stored, share, share), dtype=np.uint8)
    except (zstandard.ZstdError, ValueError) as exc:
        raise CorruptCheckpoint(f"cannot decompress plane {k}: {exc}") from exc
    if plane.nbytes != share:
        raise CorruptCheckpoint(f"plane {k} decoded to {plane.nbytes} bytes, expected {share}")
    return plane


def all_raw(blob: bytes) -> bool:
    """Whether a ``planes`` blob of ``encode_planes`` (or its header) stores every plane raw."""
    itemsize = blob[0]
    return not any(blob[1:1 + itemsize])
