"""Encode a snapshot as a full base or as a per-leaf delta, and decode it back.

A façade over the modules that do the work (the names other modules import):

* ``_plan``    the pure planner: one frozen ``LeafRecord`` per leaf, its ``Op``;
* ``_encode``  runs the plans, splits payloads into parts, compresses them;
* ``_format``  the index (part 0): layout, magic, CRC-32, the bounded reader;
* ``_decode``  parts back into a snapshot, bounded by the recorded raw sizes;
* ``_pools``   the codec pool, capture's copy helpers and their CPU priority.

Parts, in a deterministic order: part 0, the *index* (tree definition, one
record per leaf, the size / CRC-32 / codec of every other part; payloads
under ``PART_FROM`` inline), then the payloads of large leaves, in leaf order,
each split into chunks of at most ``CHUNK`` bytes.

A delta's index names the link it was encoded against (``against``: that
link's seq and the SHA-256 of its index part, which the catalog records and
which in turn names the link before it), and ``decode`` refuses a delta whose
reference is not the link it is asked to apply to: a delta encoded against one
state can never be applied to another and yield a state that never existed.
"""

from __future__ import annotations

from ._decode import decode, reuse_buffers
from ._encode import COMPRESSIONS, encode
from ._format import EncodedPart, LinkRef
from ._plan import CHUNK, PART_FROM
from ._snapshot import snapshots_equal

__all__ = [
    "CHUNK", "COMPRESSIONS", "PART_FROM", "EncodedPart", "LinkRef", "decode", "encode",
    "reuse_buffers", "snapshots_equal",
]
