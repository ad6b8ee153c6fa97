"""One zstd frame decompressed into a buffer the caller owns, through the system's libzstd.

python-zstandard returns every decompressed frame as a new ``bytes``; a
restore decompresses thousands of multi-megabyte byte planes, and each new
``bytes`` of that size is memory the kernel must hand over and zero (on a
Firecracker VM, whose host takes back pages the guest freed, the dominant
cost: the compressed planes of a 403 MB 9-link chain decompressed in 7.4-13.8
CPU s as ``bytes`` against 1.9 s into one reused buffer). libzstd's
``ZSTD_decompressDCtx`` writes into a given buffer, so restores decompress
into scratch buffers that are reused for the whole restore (``take`` /
``give`` / ``release``).

libzstd is loaded with ctypes (``libzstd.so.1``, the runtime library every
Debian and Ubuntu system carries; no headers or compiler needed) and needs
version 1.4 or later; where it is missing, or ``CROWDCOMPUTE_NATIVE=0``,
``available()`` is False and callers use python-zstandard. ctypes releases
the GIL for the call, so decode threads decompress at once.

A frame is accepted only whole and alone: exactly one frame spanning the
input, declaring its content size, which must be the destination's size;
zstd checks the frame's checksum unless the caller says the frame's bytes
were already checked against a trusted hash (``verified=True``: a restore's
parts are, before they are decoded). Nothing is written past the destination.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from typing import Any

import numpy as np

from . import _memory, _native, _pools
from .errors import CorruptCheckpoint

__all__ = ["available", "decompress_into", "give", "release", "take"]

_MIN_VERSION = 10400
# ZSTD_d_forceIgnoreChecksum (ZSTD_d_experimentalParam3) skips the checksum of frames
# whose bytes were verified already (8-10 % of decompressing W1's delta planes). It is
# an experimental parameter, so its number is used only in the versions known to
# define it so; elsewhere every frame's checksum is checked.
_IGNORE_CHECKSUM = 1002
_IGNORE_FROM, _IGNORE_BEFORE = 10407, 10600
# As many buffers are kept as decode threads run (the restore pool's width).
_SCRATCH_KEPT = _pools.CORE_THREADS
# Requests from this size on get a buffer of a whole part (``_plan.CHUNK``), which
# fits every later request of the restore: the planes of large leaves come in
# several sizes (1 to 4 compressed planes of a 16 MiB chunk), and buffers made
# for each size would be kept side by side.
_WHOLE_FROM = 4 << 20
_WHOLE = 16 << 20
_local = threading.local()


def _load() -> ctypes.CDLL | None:
    if os.environ.get("CROWDCOMPUTE_NATIVE", "1") == "0":
        return None
    for name in ("libzstd.so.1", ctypes.util.find_library("zstd")):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
            lib.ZSTD_versionNumber.restype = ctypes.c_uint
            if lib.ZSTD_versionNumber() < _MIN_VERSION:
                continue
        except (OSError, AttributeError):
            continue
        lib.ZSTD_createDCtx.restype = ctypes.c_void_p
        lib.ZSTD_createDCtx.argtypes = []
        lib.ZSTD_freeDCtx.restype = ctypes.c_size_t
        lib.ZSTD_freeDCtx.argtypes = [ctypes.c_void_p]
        lib.ZSTD_decompressDCtx.restype = ctypes.c_size_t
        lib.ZSTD_decompressDCtx.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                                            ctypes.c_void_p, ctypes.c_size_t]
        lib.ZSTD_findFrameCompressedSize.restype = ctypes.c_size_t
        lib.ZSTD_findFrameCompressedSize.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        lib.ZSTD_getFrameContentSize.restype = ctypes.c_ulonglong
        lib.ZSTD_getFrameContentSize.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        lib.ZSTD_isError.restype = ctypes.c_uint
        lib.ZSTD_isError.argtypes = [ctypes.c_size_t]
        lib.ZSTD_getErrorName.restype = ctypes.c_char_p
        lib.ZSTD_getErrorName.argtypes = [ctypes.c_size_t]
        lib.ZSTD_DCtx_setParameter.restype = ctypes.c_size_t
        lib.ZSTD_DCtx_setParameter.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        return lib
    return None


_library = _native.once(_load)


def available() -> bool:
    """Whether libzstd is loaded (``decompress_into`` can be used)."""
    return _library() is not None


class _Context:
    """A decompression context of this thread, freed with it (``trusting``: skips checksums where it can)."""

    def __init__(self, lib: ctypes.CDLL, trusting: bool = False) -> None:
        self.lib, self.ptr = lib, lib.ZSTD_createDCtx()
        if not self.ptr:
            raise MemoryError("ZSTD_createDCtx failed")
        if trusting and _IGNORE_FROM <= lib.ZSTD_versionNumber() < _IGNORE_BEFORE:
            # On failure the context keeps checking: slower, never wrong.
            lib.ZSTD_DCtx_setParameter(self.ptr, _IGNORE_CHECKSUM, 1)

    def __del__(self) -> None:
        if self.ptr:
            self.lib.ZSTD_freeDCtx(self.ptr)
            self.ptr = None


def _context(lib: ctypes.CDLL, trusting: bool) -> Any:
    name = "trusting" if trusting else "checking"
    ctx: _Context | None = getattr(_local, name, None)
    if ctx is None:
        ctx = _Context(lib, trusting)
        setattr(_local, name, ctx)
    return ctx.ptr


def decompress_into(frame: Any, out: np.ndarray, *, verified: bool = False) -> None:
    """Decompress the one zstd frame ``frame`` (any buffer) into ``out``, a flat writable ``uint8`` array.

    Raises CorruptCheckpoint unless ``frame`` is exactly one whole frame that
    declares and holds ``out.nbytes`` bytes and passes its checksum, and
    RuntimeError when libzstd is not ``available()``. ``verified`` says the
    frame's bytes matched a trusted hash already: its checksum is then not
    computed again (where libzstd allows skipping it). ``out`` may be partly
    written when the frame turns out corrupt.
    """
    lib = _library()
    if lib is None:
        raise RuntimeError("libzstd is not available")
    src = np.frombuffer(frame, dtype=np.uint8)
    if not (_native._flat(out) and out.flags.writeable):
        raise ValueError("decompress_into needs a flat, writable uint8 array")
    at, n = _native._address(src) if src.nbytes else 0, src.nbytes
    size = lib.ZSTD_findFrameCompressedSize(at, n)
    if lib.ZSTD_isError(size):
        raise CorruptCheckpoint(f"malformed zstd frame: {lib.ZSTD_getErrorName(size).decode()}")
    if size != n:
        raise CorruptCheckpoint(f"{n - size} trailing bytes after a zstd frame")
    declared = lib.ZSTD_getFrameContentSize(at, n)
    if declared >= 2**64 - 2:   # ZSTD_CONTENTSIZE_UNKNOWN, ZSTD_CONTENTSIZE_ERROR
        raise CorruptCheckpoint("zstd frame does not record its size")
    if declared != out.nbytes:
        raise CorruptCheckpoint(f"zstd frame holds {declared} bytes, expected {out.nbytes}")
    done = lib.ZSTD_decompressDCtx(_context(lib, verified), _native._address(out) if out.nbytes else None, out.nbytes, at, n)
    if lib.ZSTD_isError(done):
        raise CorruptCheckpoint(f"cannot decompress zstd frame: {lib.ZSTD_getErrorName(done).decode()}")
    if done != out.nbytes:
        raise CorruptCheckpoint(f"zstd frame decoded to {done} bytes, expected {out.nbytes}")


# The restore's decompressed planes (see ``_memory.Scratch``): not populated up front,
# a whole part's buffer given to a request of a quarter of it holds only the pages
# written (a 403 MB base restored with peak RSS 1.24x the state, against 1.29x with
# populated buffers).
SCRATCH = _memory.Scratch(kept=_SCRATCH_KEPT, whole_from=_WHOLE_FROM, whole=_WHOLE)
take, give, release = SCRATCH.take, SCRATCH.give, SCRATCH.release
