"""Encode a snapshot as a full base or as a per-leaf delta.

Order of work: plan every leaf (``_plan``, on the codec pool), give each
payload under ``PART_FROM`` a place inline in its record and split larger
ones into chunks of at most ``CHUNK`` bytes, compress the chunks (codec
pool, a bounded window of them at a time), then lay out and compress the
index (``_format``). Pure CPU work.

``encode_stream`` yields the parts as they are made, the index (part 0) last,
each as the pieces its stored bytes are the concatenation of: the writer
stores one part while the next are encoded, so a save holds a few chunks
besides the snapshot instead of the whole encoded link, and no part's pieces
are ever joined. ``encode`` returns the same parts as whole blobs, in order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from . import _compress, _plan, _pools
from ._format import EncodedPart, Index, LinkRef, PartEntry, dump_index, pieces_check
from ._plan import LeafRecord, Plan
from ._snapshot import Snapshot

__all__ = ["COMPRESSIONS", "StreamPart", "encode", "encode_stream"]

COMPRESSIONS = ("auto", "gzip", "zstd", "none")


@dataclass(frozen=True)
class StreamPart:
    """One part of a link as ``encode_stream`` yields it.

    ``pieces`` are buffers (bytes, memoryviews, flat ``uint8`` arrays) whose
    concatenation is the part's stored bytes; they may be views of the
    snapshot, which must stay unchanged (as snapshots do) until they are stored.
    """

    number: int                 # its place in the link: 0 is the index
    pieces: tuple[Any, ...]
    codec: str
    raw_size: int
    numeric: bool = False       # array bytes, never unpickled (may be checked by xxh3)

    @property
    def size(self) -> int:
        """Stored bytes."""
        return sum(memoryview(p).nbytes for p in self.pieces)

    def joined(self) -> EncodedPart:
        """The part as one blob."""
        data = self.pieces[0] if len(self.pieces) == 1 and type(self.pieces[0]) is bytes \
            else b"".join(self.pieces)
        return EncodedPart(data, self.codec, self.raw_size, self.numeric)


def encode(previous: Snapshot | None, current: Snapshot, *, compression: str = "auto",
           threads: int | None = None, against: LinkRef | None = None,
           bandwidth: float | None = None) -> list[EncodedPart]:
    """A full base (``previous`` None) or a delta against ``previous``, as whole parts in order.

    ``against`` names the committed link whose state ``previous`` is; it is
    recorded in the delta's index and checked by ``decode``. ``bandwidth``
    (bytes/s) is what the store moves per stream, for ``auto``'s choice of
    which byte planes to compress (None: only the bytes saved count); the
    index records it. Pure CPU work on the codec pool, on at most ``threads``
    of its threads (None: all). Raises ValueError for an unknown compression.
    """
    parts = [p.joined() for p in encode_stream(previous, current, compression=compression,
                                                threads=threads, against=against,
                                                bandwidth=bandwidth)]
    return [parts[-1], *parts[:-1]]


def encode_stream(previous: Snapshot | None, current: Snapshot, *, compression: str = "auto",
                  threads: int | None = None, against: LinkRef | None = None,
                  bandwidth: float | None = None) -> Generator[StreamPart, None, None]:
    """``encode``'s parts as they are made: the payload parts in order, then the index.

    At most ``threads`` chunks (None: the codec pool's width) are encoded at
    once while the caller handles the part before; closing the iterator early
    cancels the chunks not started and waits for the running ones. The
    arguments are checked before anything is encoded (ValueError).
    """
    if compression not in COMPRESSIONS:
        raise ValueError(f"unknown compression {compression!r}; expected one of {COMPRESSIONS}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1 or None, got {threads}")
    return _stream(previous, current, compression, threads, against, bandwidth)


def _stream(previous: Snapshot | None, current: Snapshot, compression: str, threads: int | None,
            against: LinkRef | None, bandwidth: float | None) -> Generator[StreamPart, None, None]:
    before = previous.leaf_map() if previous is not None else {}
    plans: list[Plan] = _pools.pmap(lambda leaf: _plan.plan_leaf(before.get(leaf.path), leaf, compression),
                                    current.leaves, threads)
    records, jobs = _place_payloads(plans)
    entries: list[PartEntry] = []

    def run(numbered: tuple[int, tuple[Plan, int, int]]) -> StreamPart:
        number, (plan, start, end) = numbered
        return _encode_chunk(number, plan, start, end, compression, bandwidth)

    for part in _windowed(run, list(enumerate(jobs, start=1)), threads):
        entries.append(PartEntry(pieces_check(part.pieces), part.raw_size, part.codec))
        yield part
    same_tree = previous is not None and previous.treedef == current.treedef
    index = Index(
        base=previous is None,
        treedef=None if same_tree else current.treedef,
        same_tree=same_tree,
        against=None if previous is None or against is None else (int(against[0]), str(against[1])),
        raw=current.raw_nbytes,
        leaves=tuple(records),
        parts=tuple(entries),
        bandwidth=None if bandwidth is None else int(bandwidth),
    )
    raw = dump_index(index)
    data, codec = _compress.compress(raw, compression, array=False)
    yield StreamPart(0, (data,), codec, len(raw))


def _windowed(fn: Callable[[Any], StreamPart], items: Sequence[Any],
              threads: int | None) -> Iterator[StreamPart]:
    """``fn`` over ``items`` on the codec pool, in order, at most ``threads`` running at once.

    The next item is submitted before a result is handed out, so the pool
    stays busy while the caller stores that result.
    """
    pool = _pools.codec_pool()
    width = _pools.width(pool) if threads is None else min(threads, _pools.width(pool))
    pending: deque[Future[StreamPart]] = deque()
    todo = iter(items)
    try:
        for item in todo:
            pending.append(pool.submit(fn, item))
            if len(pending) >= width:
                break
        while pending:
            done = pending.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.submit(fn, nxt))
            yield done
    finally:
        for future in pending:
            future.cancel()
        for future in pending:
            if not future.cancelled():
                future.exception()   # wait: its job may still read the snapshot's buffers


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


def _encode_chunk(number: int, plan: Plan, start: int, end: int, mode: str,
                  bandwidth: float | None) -> StreamPart:
    assert plan.source is not None
    if mode == "auto" and plan.data is not None and 2 <= plan.itemsize <= 255 \
            and (end - start) % plan.itemsize == 0:
        # XOR, shuffle and the choice of planes in one pass over the chunk
        base = None if plan.base is None else plan.base[start:end]
        pieces = _compress.plane_pieces(plan.data[start:end], plan.itemsize, base=base, bandwidth=bandwidth)
        if _compress.all_raw(pieces[0]):   # nothing compressed: store the bytes as they are
            return StreamPart(number, (plan.source(start, end),), "none", end - start, numeric=True)
        return StreamPart(number, tuple(pieces), "planes", end - start, numeric=True)
    payload = plan.source(start, end)
    data, codec = _compress.compress(payload, mode, itemsize=plan.itemsize, array=plan.array)
    return StreamPart(number, (data,), codec, end - start, numeric=plan.array)
