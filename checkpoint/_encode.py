"""Encode a snapshot as a full base or as a per-leaf delta.

Order of work: plan every leaf (``_plan``, on the codec pool), give each
payload under ``PART_FROM`` a place inline in its record and split larger
ones into chunks of at most ``CHUNK`` bytes, compress the chunks (codec
pool), then lay out and compress the index (``_format``). Pure CPU work.
"""

from __future__ import annotations

from . import _compress, _plan, _pools
from ._format import EncodedPart, Index, LinkRef, PartEntry, dump_index, part_check
from ._plan import LeafRecord, Plan
from ._snapshot import Snapshot

__all__ = ["COMPRESSIONS", "encode"]

COMPRESSIONS = ("auto", "gzip", "zstd", "none")


def encode(previous: Snapshot | None, current: Snapshot, *, compression: str = "auto",
           threads: int | None = None, against: LinkRef | None = None,
           bandwidth: float | None = None) -> list[EncodedPart]:
    """A full base (``previous`` None) or a delta against ``previous``.

    ``against`` names the committed link whose state ``previous`` is; it is
    recorded in the delta's index and checked by ``decode``. ``bandwidth``
    (bytes/s) is what the store moves per stream, for ``auto``'s choice of
    which byte planes to compress (None: only the bytes saved count); the
    index records it. Pure CPU work on the codec pool, on at most ``threads``
    of its threads (None: all). Raises ValueError for an unknown compression.
    """
    if compression not in COMPRESSIONS:
        raise ValueError(f"unknown compression {compression!r}; expected one of {COMPRESSIONS}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1 or None, got {threads}")
    before = previous.leaf_map() if previous is not None else {}
    plans: list[Plan] = _pools.pmap(lambda leaf: _plan.plan_leaf(before.get(leaf.path), leaf, compression),
                                    current.leaves, threads)
    records, jobs = _place_payloads(plans)
    parts: list[EncodedPart] = _pools.pmap(
        lambda job: _encode_chunk(job[0], job[1], job[2], compression, bandwidth), jobs, threads)
    same_tree = previous is not None and previous.treedef == current.treedef
    index = Index(
        base=previous is None,
        treedef=None if same_tree else current.treedef,
        same_tree=same_tree,
        against=None if previous is None or against is None else (int(against[0]), str(against[1])),
        raw=current.raw_nbytes,
        leaves=tuple(records),
        parts=tuple(PartEntry(part_check(p.data), p.raw_size, p.codec) for p in parts),
        bandwidth=None if bandwidth is None else int(bandwidth),
    )
    raw = dump_index(index)
    data, codec = _compress.compress(raw, compression, array=False)
    return [EncodedPart(data, codec, len(raw)), *parts]


def _place_payloads(plans: list[Plan]) -> tuple[list[LeafRecord], list[tuple[Plan, int, int]]]:
    """Each plan's final record (payload inline, or the span of its parts) and the chunks to encode."""
    records: list[LeafRecord] = []
    jobs: list[tuple[Plan, int, int]] = []
    for plan in plans:
        if plan.source is None:
            records.append(plan.record)
        elif plan.size < _plan.PART_FROM:
            records.append(plan.record.with_ref(bytes(plan.source(0, plan.size))))
        else:
            chunk = _plan.CHUNK // plan.itemsize * plan.itemsize
            first = len(jobs) + 1
            jobs.extend((plan, s, min(s + chunk, plan.size)) for s in range(0, plan.size, chunk))
            records.append(plan.record.with_ref((first, len(jobs) + 1 - first, plan.size)))
    return records, jobs


def _encode_chunk(plan: Plan, start: int, end: int, mode: str, bandwidth: float | None) -> EncodedPart:
    assert plan.source is not None
    if mode == "auto" and plan.data is not None and 2 <= plan.itemsize <= 255 \
            and (end - start) % plan.itemsize == 0:
        # XOR, shuffle and the choice of planes in one pass over the chunk
        base = None if plan.base is None else plan.base[start:end]
        data = _compress.encode_planes(plan.data[start:end], plan.itemsize, base=base, bandwidth=bandwidth)
        if _compress.all_raw(data):   # nothing compressed: store the bytes as they are
            return EncodedPart(bytes(plan.source(start, end)), "none", end - start, numeric=True)
        return EncodedPart(data, "planes", end - start, numeric=True)
    payload = plan.source(start, end)
    data, codec = _compress.compress(payload, mode, itemsize=plan.itemsize, array=plan.array)
    return EncodedPart(data, codec, end - start, numeric=plan.array)
