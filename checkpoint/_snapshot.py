"""A captured state: its tree definition and one record per leaf.

Array leaves hold their bytes in a flat ``uint8`` numpy buffer (C order); generic
leaves hold pickles. Snapshots are treated as immutable: deltas and decoding may
share buffers between snapshots.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._flatten import TreeDef, inflate
from .codecs import codec_for, generic

__all__ = ["ARRAY", "Leaf", "Snapshot"]

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

    @property
    def nbytes(self) -> int:
        if self.kind == ARRAY:
            return int(self.meta["nbytes"])
        return generic.leaf_size(self.kind, self.data)

    def restore(self) -> object:
        if self.kind == ARRAY:
            return codec_for(self.meta["fw"]).restore(self.meta, self.data)
        return generic.unpickle_leaf(self.kind, self.meta, self.data)

    def same_content(self, other: Leaf) -> bool:
        if (self.path, self.kind, self.meta) != (other.path, other.kind, other.meta):
            return False
        if self.kind != ARRAY:
            return bool(self.data == other.data)
        return self.data is other.data or bytes_equal(self.data, other.data)


def bytes_equal(a: np.ndarray, b: np.ndarray, block: int = 1024 * 1024) -> bool:
    """Bytewise equality at memcmp speed, stopping at the first differing block.

    (``memoryview ==`` compares item by item, ~15x slower; ``np.array_equal``
    builds a boolean array.) Bounded temporaries: one block at a time.
    """
    if a.nbytes != b.nbytes:
        return False
    a, b = a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8)
    return all(a[i:i + block].tobytes() == b[i:i + block].tobytes() for i in range(0, a.nbytes, block))


@dataclass
class Snapshot:
    """A consistent copy of a state, ready to be encoded.

    ``to_state()`` rebuilds the structure and types; torch modules, optimizers
    and Keras models come back as the ``state_dict()`` / weight list they were
    captured through, to be loaded with ``load_state_dict`` / ``set_weights``.
    """

    raw_nbytes: int
    treedef: TreeDef = None
    leaves: tuple[Leaf, ...] = ()
    _by_path: dict[str, Leaf] | None = field(default=None, init=False, repr=False, compare=False)

    def leaf_map(self) -> dict[str, Leaf]:
        if self._by_path is None:
            self._by_path = {leaf.path: leaf for leaf in self.leaves}
        return self._by_path

    def to_state(self) -> object:
        """Rebuild the original structure; array values are fresh copies."""
        return inflate(self.treedef, {leaf.path: leaf.restore() for leaf in self.leaves})
