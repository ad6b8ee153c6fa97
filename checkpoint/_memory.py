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

Buffers below ``MMAP_FROM`` come from numpy (malloc); so do all buffers where
``mmap`` lacks these flags (not Linux).
"""

from __future__ import annotations

import mmap

import numpy as np

__all__ = ["MMAP_FROM", "empty"]

MMAP_FROM = 1024 * 1024
_FLAGS = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


def empty(nbytes: int) -> np.ndarray:
    """A writable flat ``uint8`` array of ``nbytes`` (contents undefined).

    Large ones are anonymous private mappings, populated at once where the
    platform allows; the array keeps its mapping alive and the mapping is
    unmapped when the last view of it goes away.
    """
    if nbytes < MMAP_FROM or not _POPULATE:
        return np.empty(nbytes, dtype=np.uint8)
    try:
        region = mmap.mmap(-1, nbytes, flags=_FLAGS | _POPULATE)
    except OSError:  # e.g. a locked-memory or overcommit limit: let malloc decide
        return np.empty(nbytes, dtype=np.uint8)
    return np.frombuffer(region, dtype=np.uint8)
