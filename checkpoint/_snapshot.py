"""A captured state: its tree definition and one record per leaf.

Array leaves hold their bytes in a flat ``uint8`` numpy buffer (C order); generic
leaves hold pickles. Snapshots are treated as immutable: deltas and decoding may
share buffers between snapshots.
"""

from __future__ import annotations

import ctypes
import sys
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ._flatten import TreeDef, inflate
from .codecs import codec_for, generic
from .errors import CorruptCheckpoint

__all__ = ["ARRAY", "BufferOwner", "Leaf", "Snapshot", "bytes_differ", "snapshots_equal"]

ARRAY = "array"


@dataclass(eq=False)
class Leaf:
    """One leaf: ``kind`` is ``array``, ``pickle``, ``pickle_list`` or ``pickle_dict``.

    ``data`` is a flat ``uint8`` ndarray (array), ``bytes`` (pickle), a tuple of
    item pickles (pickle_list) or a tuple of ``(key, value)`` pickles (pickle_dict).
    """

    path: str
    kind: str
    meta: dict[str, Any]
    data: Any
    unchanged: bool = False   # capture knew it equals the previous snapshot's leaf
    token: Any = None         # codec's change-tracking token (torch version counter)
    # an unchanged leaf's live object, until the writer compared its bytes (``_capture.verify``)
    source: Any = field(default=None, repr=False)

    @property
    def nbytes(self) -> int:
        if self.kind == ARRAY:
            return int(self.meta["nbytes"])
        return generic.leaf_size(self.kind, self.data)

    def restore(self, share: bool = False) -> object:
        if self.kind == ARRAY:
            return codec_for(self.meta["fw"]).restore(self.meta, self.data, share=share)
        return generic.unpickle_leaf(self.kind, self.meta, self.data)

    def same_content(self, other: Leaf) -> bool:
        if (self.path, self.kind, self.meta) != (other.path, other.kind, other.meta):
            return False
        if self.kind != ARRAY:
            return bool(self.data == other.data)
        return self.data is other.data or bytes_equal(self.data, other.data)


def _libc_memcmp() -> Any:
    if not sys.platform.startswith(("linux", "darwin")):
        return None
    try:
        fn = ctypes.CDLL(None).memcmp
    except (AttributeError, OSError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t], ctypes.c_int
    return fn


_memcmp = _libc_memcmp()


def bytes_equal(a: np.ndarray, b: np.ndarray, block: int = 1024 * 1024) -> bool:
    """Bytewise equality at memcmp speed, stopping at the first difference.

    The C library's ``memcmp`` on the buffers themselves where it can be
    called (ctypes drops the GIL for it); else block by block through
    ``bytes`` copies, bounded to one block at a time. (``memoryview ==``
    compares item by item, ~15x slower; ``np.array_equal`` builds a boolean
    array.)
    """
    if a.nbytes != b.nbytes:
        return False
    if _memcmp is not None and a.flags.c_contiguous and b.flags.c_contiguous:
        return a.nbytes == 0 or _memcmp(a.ctypes.data, b.ctypes.data, a.nbytes) == 0
    a, b = a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8)
    return all(a[i:i + block].tobytes() == b[i:i + block].tobytes() for i in range(0, a.nbytes, block))


SPOT_BYTES = 1024   # bytes_differ(quick=True) compares about this many, evenly spaced


def bytes_differ(live: np.ndarray, kept: np.ndarray, *, quick: bool = False) -> bool:
    """Whether ``live`` differs from ``kept`` (both flat ``uint8``): every byte, or with
    ``quick`` about ``SPOT_BYTES`` bytes evenly spaced (False then means no difference
    was seen). The spacing of a large float tensor is a multiple of its item size, so
    the bytes compared are the lowest of their elements, which any change of value
    nearly always changes."""
    if live.nbytes != kept.nbytes:
        return True
    if quick:
        step = max(1, live.nbytes // SPOT_BYTES)
        return not np.array_equal(live[::step], kept[::step])
    return not bytes_equal(live, kept)


class BufferOwner(Protocol):
    """Where a snapshot's array buffers came from (capture's ``BufferPool``)."""

    def release(self, snapshot: Snapshot) -> None: ...


@dataclass
class Snapshot:
    """A consistent copy of a state, ready to be encoded.

    ``to_state()`` rebuilds the structure and types; torch modules, optimizers
    and Keras models come back as the ``state_dict()`` / weight list they were
    captured through, to be loaded with ``load_state_dict`` / ``set_weights``.

    Buffer ownership is declared, not implied: ``owner`` is the pool that lent
    the array buffers (set by ``capture``; ``owner.release`` gives them back and
    clears it), None for a decoded snapshot, which owns its buffers. ``reuse``
    is set by ``reuse_buffers``: the next decode against this snapshot may
    update its buffers in place (cleared by that decode).
    """

    raw_nbytes: int
    treedef: TreeDef = None
    leaves: tuple[Leaf, ...] = ()
    owner: BufferOwner | None = field(default=None, repr=False, compare=False)
    reuse: bool = field(default=False, repr=False, compare=False)
    # set by a decode that failed while writing into this snapshot's buffers
    damaged: bool = field(default=False, repr=False, compare=False)
    _by_path: dict[str, Leaf] | None = field(default=None, init=False, repr=False, compare=False)

    def leaf_map(self) -> dict[str, Leaf]:
        if self._by_path is None:
            self._by_path = {leaf.path: leaf for leaf in self.leaves}
        return self._by_path

    def to_state(self, *, share: bool = False) -> object:
        """Rebuild the original structure; array values are fresh copies.

        With ``share`` array values take over the snapshot's writable buffers
        instead (no copy): for a snapshot nothing else uses again, such as
        one just restored; it then changes with the state.

        Raises:
            CorruptCheckpoint: a leaf or the tree definition cannot be rebuilt
                (e.g. it names a class whose module is not imported).
        """
        try:
            return inflate(self.treedef, {leaf.path: _restore(leaf, share) for leaf in self.leaves})
        except CorruptCheckpoint:
            raise
        except Exception as exc:   # stored data that does not rebuild is a corrupt checkpoint
            raise CorruptCheckpoint(f"cannot rebuild the state: {type(exc).__name__}: {exc}") from exc


def _restore(leaf: Leaf, share: bool) -> object:
    try:
        return leaf.restore(share)
    except Exception as exc:
        raise CorruptCheckpoint(f"cannot rebuild state leaf {leaf.path or '<root>'!r}: "
                                f"{type(exc).__name__}: {exc}") from exc


def snapshots_equal(a: Snapshot, b: Snapshot) -> bool:
    """Bit-exact comparison: tree, leaf paths, kinds, metadata and bytes."""
    if a.raw_nbytes != b.raw_nbytes or a.treedef != b.treedef or len(a.leaves) != len(b.leaves):
        return False
    return all(x.same_content(y) for x, y in zip(a.leaves, b.leaves))
