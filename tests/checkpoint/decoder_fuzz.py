"""The decoder fuzz: real links, their mutations, the crafted bombs, and one attempt at each.

Shared by ``test_decoder_fuzz.py`` (hypothesis and a seeded campaign in this
process, the bombs in a subprocess) and by the counts in docs/reliability.md
(``python tests/checkpoint/decoder_fuzz.py`` prints them).

What an attempt allows: ``decode`` then ``to_state`` either succeed or raise
``CorruptCheckpoint`` (never because an allocation failed), within
``TIME_LIMIT`` seconds and a traced peak of at most ``2 x (recorded raw size of
the link + raw size of the state it applies to) + SLACK``.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import pickle
import pickletools
import random
import resource
import sys
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np

from checkpoint import _compress, _format, _plan
from checkpoint._capture import capture
from checkpoint._delta import decode, encode, snapshots_equal
from checkpoint._snapshot import Snapshot
from checkpoint.errors import CorruptCheckpoint

TIME_LIMIT = 20.0
SLACK = 1024 * 1024
GIB = 1 << 30


class Pair(NamedTuple):
    left: Any
    right: Any


@dataclasses.dataclass
class Run:
    step: int
    history: list[Any]
    table: dict[str, int]


@dataclasses.dataclass(frozen=True)
class Link:
    """One real link: its parts, the snapshot it applies to and the one it decodes to."""

    name: str
    parts: tuple[tuple[bytes, str, int], ...]
    previous: Snapshot | None
    expected: Snapshot

    def budget(self, parts: list[tuple[Any, ...]] | None = None) -> int:
        raws = sum(p[2] for p in self.parts)
        if parts is not None and len(parts) == len(self.parts) and all(len(p) == 3 for p in parts):
            raws = max(raws, sum(int(p[2]) for p in parts))
        return 2 * (raws + (self.previous.raw_nbytes if self.previous is not None else 0)) + SLACK


# ---------------------------------------------------------------- real links

def _state(rng: np.random.Generator) -> dict[str, Any]:
    return {
        "emb": rng.standard_normal((64, 16)).astype(np.float32),
        "dense": rng.standard_normal(3000),
        "ints": np.arange(2000, dtype=np.int16),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "scalar": np.array(2.5),
        "pair": Pair(np.ones(3, dtype=np.float32), "tag"),
        "run": Run(0, list(range(50)), {f"k{i}": i for i in range(80)}),
        "blob": bytes(range(256)) * 12,
        "names": [f"n{i}" for i in range(40)],
    }


def _advance(rng: np.random.Generator, state: dict[str, Any]) -> None:
    state["emb"][[3, 17]] += 1.0
    state["dense"] += rng.standard_normal(3000) * 1e-3
    state["run"].step += 1
    state["run"].history.append({"step": state["run"].step})
    state["run"].table["k7"] = -7
    del state["run"].table["k9"]
    state["names"][5] = "changed"


@functools.lru_cache(maxsize=1)
def links() -> tuple[Link, ...]:
    """A base and a delta per compression, encoded with small parts (many parts per link)."""
    saved = _plan.PART_FROM, _plan.CHUNK, _plan.SMALL_ARRAY
    _plan.PART_FROM, _plan.CHUNK, _plan.SMALL_ARRAY = 512, 4096, 256
    try:
        out = []
        for mode in ("auto", "gzip", "zstd", "none"):
            rng = np.random.default_rng(7)
            state = _state(rng)
            first = capture(state)
            base = encode(None, first, compression=mode)
            _advance(rng, state)
            second = capture(state)
            delta = encode(first, second, compression=mode, against=(1, "ab" * 32))
            out.append(Link(f"base/{mode}", _triples(base), None, first))
            out.append(Link(f"delta/{mode}", _triples(delta), first, second))
        return tuple(out)
    finally:
        _plan.PART_FROM, _plan.CHUNK, _plan.SMALL_ARRAY = saved


def _triples(parts: list[Any]) -> tuple[tuple[bytes, str, int], ...]:
    return tuple((p.data, p.codec, p.raw_size) for p in parts)


def index_raw(link: Link) -> bytes:
    data, codec, raw = link.parts[0]
    return bytes(_compress.decompress(data, codec, raw_size=raw))


def seal(body: bytes) -> bytes:
    """An index part's raw bytes around ``body``: magic and a valid CRC-32."""
    return _format.MAGIC + zlib.crc32(body).to_bytes(4, "little") + body


def with_index(link: Link, raw: bytes, codec: str | None = None) -> list[tuple[Any, ...]]:
    """The link's parts with part 0 replaced by ``raw`` (compressed like the original)."""
    codec = codec or link.parts[0][1]
    data = _compress.compress(raw, codec, array=False)[0] if codec != "none" else raw
    return [(data, codec, len(raw)), *link.parts[1:]]


def with_value(link: Link, edit: Callable[[dict[str, Any]], None]) -> list[tuple[Any, ...]]:
    """The link's parts with its index value edited (by ``edit``) and sealed again."""
    value = pickle.loads(index_raw(link)[8:])   # our own index: a trusted load
    edit(value)
    return with_index(link, seal(pickle.dumps(value, protocol=5)))


# ---------------------------------------------------------------- mutations

KINDS = ("flip", "truncate", "splice", "length")
TARGETS = ("stored", "stored+crc", "index-body", "index-value")
NASTY: tuple[Any, ...] = (
    None, True, 0, -1, 1, 2**31, 2**63, 2**70, 0.5, float("nan"), "", "same", "rows", "keys", "array",
    "pickle_list", "numpy", "torch", b"", b"\0" * 8, b"\xff" * 9, (), (1,), (0, 0, 0), (1, 1, 1),
    (1, 2**40, 2**40), (2**40, 1, 1), [], {}, {"fw": "numpy"}, ("d", (), ()), ("l", (None, None)),
    ("n", "this:Zen", (None,)), ("c", "this:Zen", ("a",), (None,)), ("c", "subprocess:Popen", (), ()),
    ("n", "os:system", ()), ("d", ("a", "a"), (None, None)), (("d",),), {"odict": 1},
    {"fw": "numpy", "dtype": "|O", "shape": (4,), "itemsize": 8, "nbytes": 32},
    {"fw": "numpy", "dtype": "<f8", "shape": (2**20, 2**20), "itemsize": 8, "nbytes": 2**43},
)


def _length_fields(body: bytes) -> list[tuple[int, int]]:
    """(offset, width) of the length and memo-index arguments in a pickle."""
    widths = {"SHORT_BINBYTES": 1, "SHORT_BINUNICODE": 1, "BINBYTES": 4, "BINUNICODE": 4,
              "BINBYTES8": 8, "BINUNICODE8": 8, "FRAME": 8, "LONG1": 1, "BINPUT": 1, "BINGET": 1,
              "LONG_BINPUT": 4, "LONG_BINGET": 4}
    try:
        return [(pos + 1, widths[op.name]) for op, _arg, pos in pickletools.genops(body)
                if op.name in widths and pos is not None]
    except Exception:
        return []


def _codec_fields(data: bytes, codec: str) -> list[tuple[int, int]]:
    """(offset, width) of size fields in a stored blob: zstd header, gzip trailer, shuffle byte."""
    if codec == "gzip" and len(data) >= 8:
        return [(len(data) - 4, 4), (len(data) - 8, 4)]
    if codec == "planes" and len(data) >= 1:
        # element size, one flag per plane, one 8-byte stored length per plane
        return [(0, 1), *((1 + k, 1) for k in range(data[0])), *((1 + data[0] + 8 * k, 8) for k in range(data[0]))]
    start = 1 if codec == "shuffle+zstd" else 0
    fields = [(0, 1)] if codec == "shuffle+zstd" else []
    if codec in ("zstd", "shuffle+zstd") and len(data) > start + 6:
        fields += [(start + 5, 4), (start + 6, 3)]
    return fields


def mutate(data: bytes, kind: str, rnd: random.Random, donor: bytes, fields: list[tuple[int, int]]) -> bytes:
    """One mutation of ``data``: bit flips, a truncation, a splice of ``donor`` or a length edit."""
    if not data:
        return donor[: rnd.randrange(len(donor) + 1)] if donor else b"\0"
    if kind == "flip":
        out = bytearray(data)
        for _ in range(rnd.randint(1, 3)):
            out[rnd.randrange(len(out))] ^= 1 << rnd.randrange(8)
        return bytes(out)
    if kind == "truncate":
        return data[: rnd.randrange(len(data))]
    if kind == "splice":
        at, cut = rnd.randrange(len(data) + 1), rnd.randrange(len(donor) + 1) if donor else 0
        piece = donor[cut: cut + rnd.randint(1, 64)] or b"\0"
        drop = rnd.choice((0, len(piece), rnd.randint(1, 16)))
        return data[:at] + piece + data[at + drop:]
    if not fields:
        return mutate(data, "flip", rnd, donor, fields)
    offset, width = rnd.choice(fields)
    value = rnd.choice((0, 1, 2**(8 * width) - 1, 2**(8 * width - 1), rnd.randrange(2**(8 * width)),
                        int.from_bytes(data[offset:offset + width], "little") + rnd.choice((-1, 1))))
    value %= 2**(8 * width)
    return data[:offset] + value.to_bytes(width, "little") + data[offset + width:]


def _slots(value: Any, path: tuple[Any, ...] = (), depth: int = 0) -> Iterator[tuple[Any, ...]]:
    """Paths to every value inside an index (dict keys, list and tuple positions)."""
    yield path
    if depth > 8:
        return
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _slots(child, (*path, key), depth + 1)
    elif isinstance(value, (list, tuple)) and len(value) <= 64:
        for i, child in enumerate(value):
            yield from _slots(child, (*path, i), depth + 1)


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replace(value[head], rest, new)}
    items = list(value)
    items[head] = _replace(items[head], rest, new)
    return items if isinstance(value, list) else tuple(items)


def _get(value: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        value = value[key]
    return value


def mutated(link: Link, target: str, kind: str, seed: int, triples: bool) -> list[tuple[Any, ...]]:
    """The link's parts after one mutation of ``target`` (see ``TARGETS``)."""
    rnd = random.Random(seed)
    parts: list[tuple[Any, ...]] = list(link.parts)
    donor = parts[rnd.randrange(len(parts))][0]
    if target in ("stored", "stored+crc"):
        k = rnd.randrange(len(parts)) if target == "stored" else rnd.randrange(1, len(parts)) \
            if len(parts) > 1 else 0
        data, codec, raw = parts[k]
        parts[k] = (mutate(data, kind, rnd, donor, _codec_fields(data, codec)), codec, raw)
        if target == "stored+crc" and k > 0:   # a writer that sealed bad bytes: the CRC matches them
            new = parts[k][0]

            def fix(value: dict[str, Any]) -> None:
                crc, size, codec_ = value["parts"][k - 1]
                value["parts"][k - 1] = (_format.part_check(new, value["v"]), size, codec_)
            parts = [with_value(link, fix)[0], *parts[1:]]
    elif target == "index-body":
        raw = index_raw(link)
        body = mutate(raw[8:], kind, rnd, donor, _length_fields(raw[8:]))
        parts = with_index(link, seal(body))
    else:
        value = pickle.loads(index_raw(link)[8:])
        path = rnd.choice(list(_slots(value)))
        choices = [rnd.choice(NASTY), _get(value, rnd.choice(list(_slots(value))))]
        value = _replace(value, path, rnd.choice(choices))
        parts = with_index(link, seal(pickle.dumps(value, protocol=5)))
    return parts if triples else [p[:2] for p in parts]


# ---------------------------------------------------------------- one attempt

def stage(exc: CorruptCheckpoint) -> str:
    """Where a CorruptCheckpoint came from, from its message."""
    text = str(exc)
    for needle, name in (("CRC-32", "crc"), ("xxh3", "crc"), ("index pickle", "index pickle"), ("index refers", "index pickle"),
                         ("cannot be read", "index pickle"), ("no valid header", "index header"),
                         ("rebuild", "to_state"), ("tree", "tree definition"),
                         ("layout", "index layout"), ("malformed", "index layout"),
                         ("wrong types", "index layout"), ("wrong form", "index layout"),
                         ("unknown operation", "index layout"), ("expected", "size or count"),
                         ("holds", "size or count"), ("raw bytes", "size or count"),
                         ("decompress", "decompression"), ("zstd", "decompression"),
                         ("gzip", "decompression"), ("shuffle", "decompression"),
                         ("against", "reference"), ("base/delta", "reference")):
        if needle in text:
            return name
    return "leaf check"


def attempt(link: Link, parts: list[tuple[Any, ...]]) -> tuple[str, float, int]:
    """(outcome, seconds, traced peak bytes) of decode + to_state on ``parts``.

    Raises AssertionError for anything but success or CorruptCheckpoint, and
    for a CorruptCheckpoint caused by a failed allocation.
    """
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    start = time.perf_counter()
    try:
        snap = decode(parts, link.previous)
        snap.to_state()
        outcome = "decoded: " + ("equal" if snapshots_equal(snap, link.expected) else "a different state")
    except CorruptCheckpoint as exc:
        cause: BaseException | None = exc
        while cause is not None:
            assert not isinstance(cause, MemoryError), f"{link.name}: allocation failed: {exc}"
            cause = cause.__cause__
        outcome = "CorruptCheckpoint: " + stage(exc)
    elapsed = time.perf_counter() - start
    return outcome, elapsed, tracemalloc.get_traced_memory()[1] - before


def check(link: Link, parts: list[tuple[Any, ...]]) -> str:
    """``attempt`` with its bounds asserted; returns the outcome."""
    outcome, elapsed, peak = attempt(link, parts)
    assert elapsed < TIME_LIMIT, f"{link.name}: {outcome} took {elapsed:.2f} s"
    assert peak <= link.budget(parts), f"{link.name}: {outcome} peaked at {peak} bytes"
    return outcome


def campaign(seed: int, per_target: int) -> collections.Counter[tuple[str, str]]:
    """``per_target`` seeded mutations of each target over every link; outcome counts."""
    rnd = random.Random(seed)
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    started = tracemalloc.is_tracing()
    if not started:
        tracemalloc.start()
    try:
        for target in TARGETS:
            for _ in range(per_target):
                link = rnd.choice(links())
                kind = rnd.choice(KINDS)
                parts = mutated(link, target, kind, rnd.randrange(2**32), rnd.random() < 0.5)
                case = target if target == "index-value" else f"{target}/{kind}"
                counts[(case, check(link, parts))] += 1
    finally:
        if not started:
            tracemalloc.stop()
    return counts


# ---------------------------------------------------------------- crafted bombs

def rle_zstd(total: int, declared: int | None) -> bytes:
    """A zstd frame of RLE blocks that inflates to ``total`` zero bytes (4 bytes per 128 KiB)."""
    head = bytes([0x00, 0x38]) if declared is None else bytes([0xC0, 0x38]) + declared.to_bytes(8, "little")
    block = 128 * 1024
    count = total // block
    blocks = b"".join(((i == count - 1) | (1 << 1) | (block << 3)).to_bytes(3, "little") + b"\0"
                      for i in range(count))
    return b"\x28\xb5\x2f\xfd" + head + blocks


def gzip_zeros(total: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = bytes(1 << 20)
    return b"".join(packer.compress(chunk) for _ in range(total >> 20)) + packer.flush()


@functools.lru_cache(maxsize=1)
def bomb_link() -> Link:
    """A base with one 256 KiB array in one part: the carrier of the part bombs."""
    saved = _plan.PART_FROM, _plan.CHUNK
    _plan.PART_FROM, _plan.CHUNK = 1024, 1 << 20
    try:
        snap = capture({"w": np.linspace(0, 1, 32768)})
        return Link("bomb carrier", _triples(encode(None, snap)), None, snap)
    finally:
        _plan.PART_FROM, _plan.CHUNK = saved


def _payload_bomb(data: bytes, codec: str) -> list[tuple[Any, ...]]:
    link = bomb_link()

    def point(value: dict[str, Any]) -> None:
        _crc, size, _codec = value["parts"][0]
        value["parts"][0] = (_format.part_check(data, value["v"]), size, codec)
    return [with_value(link, point)[0], (data, codec, link.parts[1][2])]


def _index_bomb(body: bytes) -> list[tuple[Any, ...]]:
    return with_index(bomb_link(), seal(body), codec="none")


def _crafted(edit: Callable[[dict[str, Any]], None]) -> list[tuple[Any, ...]]:
    return with_value(bomb_link(), edit)


def _leaf(value: dict[str, Any], **fields: Any) -> None:
    path, kind, meta, op, ref, extra = value["leaves"][0]
    record = {"path": path, "kind": kind, "meta": meta, "op": op, "ref": ref, "extra": extra, **fields}
    value["leaves"][0] = tuple(record[k] for k in ("path", "kind", "meta", "op", "ref", "extra"))


def bombs() -> dict[str, Callable[[], list[tuple[Any, ...]]]]:
    """Every crafted case: a name and how to build its parts (triples unless said)."""
    link = bomb_link()
    index_parts = list(link.parts[1:])
    real_meta = link.expected.leaves[0].meta
    return {
        "zstd part, 32 KiB inflating to 1 GiB, no size in its header":
            lambda: _payload_bomb(rle_zstd(GIB, None), "zstd"),
        "zstd part declaring 1 GiB": lambda: _payload_bomb(rle_zstd(GIB, GIB), "zstd"),
        "zstd part declaring its recorded 256 KiB, holding 1 GiB":
            lambda: _payload_bomb(rle_zstd(GIB, 256 * 1024), "zstd"),
        "shuffle+zstd part inflating to 1 GiB":
            lambda: _payload_bomb(b"\x08" + rle_zstd(GIB, None), "shuffle+zstd"),
        "gzip part, 128 KiB inflating to 128 MiB": lambda: _payload_bomb(gzip_zeros(128 << 20), "gzip"),
        "zstd index inflating to 1 GiB (recorded size given)":
            lambda: [(rle_zstd(GIB, None), "zstd", link.parts[0][2]), *index_parts],
        "zstd index declaring 1 GiB (pairs: only the index cap)":
            lambda: [(rle_zstd(GIB, GIB), "zstd"), *[p[:2] for p in index_parts]],
        "gzip index inflating to 128 MiB (recorded size given)":
            lambda: [(gzip_zeros(128 << 20), "gzip", link.parts[0][2]), *index_parts],
        "17-byte index pickle: memo entry 2**31 (LONG_BINPUT)":
            lambda: _index_bomb(b"\x80\x05Nr\xff\xff\xff\x7f."),
        "index pickle reading memo entry 2**31 (LONG_BINGET)":
            lambda: _index_bomb(b"\x80\x05N\x94j\xff\xff\xff\x7f."),
        "index pickle: BINBYTES8 of 8 GiB": lambda: _index_bomb(b"\x80\x05\x8e" + (8 * GIB).to_bytes(8, "little") + b"x."),
        "index pickle: BINUNICODE8 of 8 GiB": lambda: _index_bomb(b"\x80\x05\x8d" + (8 * GIB).to_bytes(8, "little") + b"x."),
        "index pickle: FRAME of 2**62 bytes": lambda: _index_bomb(b"\x80\x05\x95" + (2**62).to_bytes(8, "little") + b"N."),
        "index pickle calling os.system (STACK_GLOBAL + REDUCE)":
            lambda: _index_bomb(b"\x80\x05\x8c\x02os\x8c\x06system\x93\x8c\x04true\x85R."),
        "leaf claiming 8 TiB over a 256 KiB part": lambda: _crafted(lambda v: _leaf(
            v, meta={**real_meta, "shape": (2**20, 2**20), "nbytes": 2**43})),
        "1,000 leaves sharing one part (memo references)": lambda: _crafted(lambda v: v.update(
            leaves=[(f"w{i}", *v["leaves"][0][1:]) for i in range(1000)],
            raw=1000 * v["raw"], treedef=("d", tuple(f"w{i}" for i in range(1000)), (None,) * 1000))),
        "tree naming a class in a module never imported (this:Zen)": lambda: _crafted(lambda v: v.update(
            treedef=("c", "this:Zen", ("w",), (None,)))),
        "tree naming a class that is no dataclass (subprocess:Popen)": lambda: _crafted(lambda v: v.update(
            treedef=("c", "subprocess:Popen", ("w",), (None,)))),
        "tree naming a function as a namedtuple (os:system)": lambda: _crafted(lambda v: v.update(
            treedef=("n", "os:system", (None,)))),
        "array leaf with an object dtype": lambda: _crafted(lambda v: _leaf(
            v, meta={**real_meta, "dtype": "|O"})),
        "array leaf of an unknown framework": lambda: _crafted(lambda v: _leaf(
            v, meta={**real_meta, "fw": "jax"})),
    }


def _rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def bomb_report() -> dict[str, dict[str, Any]]:
    """Every bomb once: outcome, seconds, traced peak, growth of the peak RSS, modules imported.

    Run in a fresh process with its address space capped, so a regression
    fails an allocation (reported as such) instead of taking the machine's memory.
    """
    cases = bombs()
    built = {name: make() for name, make in cases.items()}
    link = bomb_link()
    check(link, list(link.parts))                    # warm the pools and the imports
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        mapped = int(f.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (mapped + GIB, hard))
    tracemalloc.start()
    out: dict[str, dict[str, Any]] = {}
    for name, parts in built.items():
        modules, rss = set(sys.modules), _rss()
        try:
            outcome, elapsed, peak = attempt(link, parts)
        except AssertionError as exc:
            outcome, elapsed, peak = f"failed: {exc}", 0.0, 0
        out[name] = {"outcome": outcome, "seconds": elapsed, "peak": peak, "rss_growth": _rss() - rss,
                     "budget": link.budget(parts), "imported": sorted(set(sys.modules) - modules)}
    tracemalloc.stop()
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    return out


if __name__ == "__main__":
    if sys.argv[1:] == ["bombs"]:
        print(json.dumps(bomb_report()))
    else:
        counts = campaign(seed=int(sys.argv[1]) if sys.argv[1:] else 0, per_target=400)
        for (case, outcome), n in sorted(counts.items()):
            print(f"{n:5d}  {case:28s} {outcome}")
        by_target: collections.Counter[tuple[str, str]] = collections.Counter()
        for (case, outcome), n in counts.items():
            by_target[(case.split("/")[0], outcome)] += n
        for (target, outcome), n in sorted(by_target.items()):
            print(f"| {target} | {outcome} | {n} |")
