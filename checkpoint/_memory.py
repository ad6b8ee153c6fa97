"""Large host buffers for captures and restores, populated by the kernel up front.

numpy advises the kernel to back large allocations with transparent huge pages
(``madvise(MADV_HUGEPAGE)``), and the pages are then faulted in one by one when
first written. On VMs whose memory the host backs lazily (Firecracker, which
Fargate and Lambda run on) faulting in huge pages is slow: on a 2-core
Firecracker VM the first copy into a fresh 400 MB ``np.empty`` buffer took
1.2 s, against 0.23 s into a plain anonymous mapping and 0.11 s + 0.04 s
for a mapping the kernel populates in one call (``MAP_POPULATE``), the same as
a copy into memory already in use. A capture writes every byte of its buffers
anyway, so populating them when they are made costs nothing extra.

The pages are populated with ``madvise(MADV_POPULATE_WRITE)`` (Linux 5.14 and
later), called through ctypes, which releases the GIL: ``mmap.mmap`` holds it
for the whole call, and with ``MAP_POPULATE`` that is the kernel zeroing every
page (0.2 s for 400 MB here), while the restore's decode threads wait for the
GIL between their calls. Older kernels get ``MAP_POPULATE``. A restore's
new leaf buffers are made unpopulated (``empty(n, populate=False)``) and each
decode thread populates the chunk it is about to write (``populate``): the
zeroing is spread over the decode threads instead of done by the thread that
makes the buffers before any chunk can be written (a 403 MB base restored in
0.237 s instead of 0.347 s).

Buffers below ``MMAP_FROM`` come from numpy (malloc); so do all buffers where
``mmap`` lacks these flags (not Linux).

A restore also needs buffers only while it runs: the decompressed planes of
a part, the stored bytes of the parts being fetched. New ones of that size
are pages the kernel must hand over and zero each time, so a restore reuses
them from a ``Scratch``: ``take``, ``give`` back, ``release`` at its end.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import platform
import threading
import weakref
from typing import Any

import numpy as np

from . import _native, _pools

__all__ = ["MMAP_FROM", "READS", "Scratch", "empty", "populate"]

MMAP_FROM = 1024 * 1024
_FLAGS = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
# MADV_POPULATE_WRITE in Linux's generic mman-common.h (the value on these machines).
_POPULATE_WRITE = 23 if platform.machine() in ("x86_64", "AMD64", "aarch64", "arm64") else 0


def _load_madvise() -> Any:
    """libc's ``madvise`` (ctypes: called without the GIL), or None off Linux."""
    if not (_POPULATE and _POPULATE_WRITE):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    return fn


_madvise = _native.once(_load_madvise)
_kernel_populates = True   # False once madvise said EINVAL (a kernel older than 5.14)


def _can_populate() -> bool:
    return _kernel_populates and _madvise() is not None


def _populate(address: int, nbytes: int) -> bool:
    """Populate the pages under ``nbytes`` bytes at ``address`` with madvise; False where the
    kernel cannot (``MAP_POPULATE`` from then on). Raises OSError (e.g. ENOMEM)."""
    global _kernel_populates
    if not _can_populate():
        return False
    madvise: Any = _madvise()   # a libc function, which once() types as a library
    start = address - address % mmap.PAGESIZE
    if madvise(start, address + nbytes - start, _POPULATE_WRITE) == 0:
        return True
    if ctypes.get_errno() != errno.EINVAL:   # e.g. ENOMEM: as MAP_POPULATE would have
        raise OSError(ctypes.get_errno(), "madvise(MADV_POPULATE_WRITE) failed")
    _kernel_populates = False
    return False


def _mapping(nbytes: int, populate: bool) -> mmap.mmap:
    """An anonymous private mapping of ``nbytes``: populated (without the GIL where the
    kernel can), or left for ``populate`` where madvise can populate it later."""
    if _can_populate():
        region = mmap.mmap(-1, nbytes, flags=_FLAGS)
        try:
            if not populate or _populate(ctypes.addressof(ctypes.c_char.from_buffer(region)), nbytes):
                return region
        except OSError:
            region.close()
            raise
        region.close()
    return mmap.mmap(-1, nbytes, flags=_FLAGS | _POPULATE)


def populate(view: np.ndarray) -> None:
    """Make the pages under ``view`` (a flat slice of a buffer ``empty(..., populate=False)``
    made) resident now, without the GIL; nothing where they are already, or off Linux.

    For decode threads that each fill their own part of a large buffer: the
    kernel zeroes each thread's pages on that thread, instead of the thread
    that made the buffer zeroing all of them before any can be written.
    """
    if view.nbytes < MMAP_FROM:
        return
    try:
        _populate(_native._address(view), view.nbytes)
    except OSError:   # the writes will fault the pages in
        pass


def empty(nbytes: int, *, populate: bool = True) -> np.ndarray:
    """A writable flat ``uint8`` array of ``nbytes`` (contents undefined).

    Large ones are anonymous private mappings, populated at once where the
    platform allows; the array keeps its mapping alive and the mapping is
    unmapped when the last view of it goes away. ``populate=False``: its
    writers populate their slices themselves (``populate``), where the kernel
    can; elsewhere it is populated at once all the same.
    """
    if nbytes < MMAP_FROM or not _POPULATE:
        return np.empty(nbytes, dtype=np.uint8)
    try:
        region = _mapping(nbytes, populate)
    except OSError:  # e.g. a locked-memory or overcommit limit: let malloc decide
        return np.empty(nbytes, dtype=np.uint8)
    return np.frombuffer(region, dtype=np.uint8)


class Scratch:
    """Flat ``uint8`` buffers reused while a restore runs, and dropped at its end.

    ``take`` hands out a view of a kept buffer large enough, else of a new one
    (from malloc, not populated: a large buffer given to a small request holds
    only the pages written). From ``whole_from`` bytes on a request gets a
    buffer of ``whole`` bytes (or its own size if larger), which every later
    request of a restore fits: the sizes differ from part to part, and buffers
    made for each size would be kept side by side. ``give`` takes back only
    buffers this scratch made, and keeps the ``kept`` largest; a buffer never
    given back is freed like any other. Thread-safe.
    """

    def __init__(self, kept: int, whole_from: int, whole: int) -> None:
        self.kept, self.whole_from, self.whole = kept, whole_from, whole
        self._lock = threading.Lock()
        self._free: list[np.ndarray] = []
        self._made: weakref.WeakValueDictionary[int, np.ndarray] = weakref.WeakValueDictionary()
        self.made = 0   # buffers made so far (the rest of the takes reused one)

    def take(self, nbytes: int) -> np.ndarray:
        with self._lock:
            fits = [i for i, a in enumerate(self._free) if a.nbytes >= nbytes]
            if fits:
                best = self._free.pop(min(fits, key=lambda i: self._free[i].nbytes))
                return best[:nbytes]
        whole = np.empty(max(nbytes, self.whole) if nbytes >= self.whole_from else nbytes, dtype=np.uint8)
        with self._lock:
            self._made[id(whole)] = whole
            self.made += 1
        return whole[:nbytes]

    def give(self, buffer: object) -> None:
        """Take back ``buffer`` (a view ``take`` returned) for reuse; anything else is ignored.

        Its holder must not use it any more.
        """
        if not isinstance(buffer, np.ndarray):
            return
        whole = buffer.base if isinstance(buffer.base, np.ndarray) else buffer
        with self._lock:
            if self._made.get(id(whole)) is not whole or any(a is whole for a in self._free):
                return
            self._free.append(whole)
            self._free.sort(key=lambda a: a.nbytes, reverse=True)
            del self._free[self.kept:]

    def release(self) -> None:
        """Drop the kept buffers (at the end of a restore: their memory goes back)."""
        with self._lock:
            self._free.clear()

    def kept_count(self) -> int:
        with self._lock:
            return len(self._free)


# The stored bytes of large numeric parts read from a local directory
# (``FsStore.get_buffer``) while a restore decodes them: the fetch window
# (``BlobStore.read_ahead``, at most 4) ahead of as many decode threads as cores,
# and one more. A part holds at most ``_plan.CHUNK`` (16 MiB) raw bytes and its header.
READS = Scratch(kept=4 + _pools.CORE_THREADS + 1, whole_from=MMAP_FROM, whole=(16 << 20) + (64 << 10))
