"""Compression of one blob, and the byte shuffle used for arrays.

Codec strings (recorded in the manifest): ``none``, ``zstd``, ``gzip`` and
``shuffle+zstd``. A ``shuffle+zstd`` blob starts with one byte, the element size,
followed by a zstd frame of the shuffled bytes (byte k of every element grouped
together, so slowly-varying high bytes compress well). zstd frames carry a
checksum. Every decoding failure is raised as ``CorruptCheckpoint``, and given
the expected size decompression never writes past it (zstd: the size the frame
header declares must be that size; gzip: output is cut one byte past it).
"""

from __future__ import annotations

import gzip
import os
import threading
import zlib
from typing import Any

import numpy as np
import zstandard

from .errors import CorruptCheckpoint

__all__ = [
    "CODECS", "MODES", "choose_codec", "compress", "decompress", "decompress_planes", "shuffle",
    "unshuffle", "unshuffle_into",
]

MODES = ("auto", "gzip", "zstd", "none")
CODECS = ("none", "zstd", "gzip", "shuffle+zstd")
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
    dobj = zstandard.ZstdDecompressor().decompressobj()
    out = dobj.decompress(data)
    if not dobj.eof:
        raise CorruptCheckpoint("truncated zstd frame")
    if dobj.unused_data:
        raise CorruptCheckpoint("trailing bytes after zstd frame")
    return out


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
