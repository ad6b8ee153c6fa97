"""Protocol members shared by codecs whose leaves are copied synchronously into host memory.

They carry no change counter (unchanged leaves are found by comparing bytes), need no
pinned buffers and have no copies to wait for. numpy and TensorFlow codecs import these.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _memory

__all__ = ["differs", "needs_pinned", "pinned_buffer", "synchronize", "unchanged", "version_token"]


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


def needs_pinned(obj: Any) -> bool:
    return False


def pinned_buffer(nbytes: int) -> tuple[None, np.ndarray]:
    """Host memory needs no pinning here: a plain buffer, owned by its array."""
    return None, _memory.empty(nbytes)


def synchronize() -> None:
    """Copies are synchronous: nothing to wait for."""
