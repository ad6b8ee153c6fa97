"""Protocol members shared by codecs whose leaves are copied synchronously into host memory.

They carry no change counter (unchanged leaves are found by comparing bytes), need no
pinned buffers and have no copies to wait for. numpy and TensorFlow codecs import these.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np

from .. import _memory

__all__ = [
    "address", "differs", "extent", "needs_pinned", "pinned_buffer", "synchronize", "unchanged", "version_token",
    "view_key",
]


def version_token(obj: Any) -> None:
    """No change counter: unchanged leaves are found by comparing bytes."""
    return None


def unchanged(obj: Any, token: Any) -> bool:
    return False


def differs(obj: Any, data: np.ndarray, *, quick: bool = False) -> bool:
    """Whether the array's (or TensorFlow value's) bytes differ from ``data``."""
    from .._snapshot import bytes_differ

    value = np.ascontiguousarray(obj if isinstance(obj, np.ndarray) else obj.numpy())
    return bytes_differ(value.reshape(-1).view(np.uint8), data[:value.nbytes], quick=quick)


def address(obj: Any) -> Hashable | None:
    """A NumPy array's first address; None for TensorFlow values (whose memory is not
    exposed) and empty arrays (which may all share one)."""
    if type(obj) is not np.ndarray or not obj.size:
        return None
    return int(obj.__array_interface__["data"][0])


def view_key(obj: Any) -> Hashable:
    """Layout, dtype and writability (asked only of arrays at one ``address``)."""
    return (obj.shape, obj.strides, obj.dtype, obj.flags.writeable)


def extent(obj: Any) -> tuple[Hashable, int, int] | None:
    if not isinstance(obj, np.ndarray) or not obj.size:
        return None
    low = high = int(obj.__array_interface__["data"][0])
    for size, stride in zip(obj.shape, obj.strides):
        if stride < 0:
            low += (size - 1) * stride
        else:
            high += (size - 1) * stride
    return ("cpu", low, high + obj.itemsize)


def needs_pinned(obj: Any) -> bool:
    return False


def pinned_buffer(nbytes: int) -> tuple[None, np.ndarray]:
    """Host memory needs no pinning here: a plain buffer, owned by its array."""
    return None, _memory.empty(nbytes)


def synchronize() -> None:
    """Copies are synchronous: nothing to wait for."""
