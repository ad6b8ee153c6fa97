"""The save side of the data path (issue 15): parts encoded and stored one by one
(``encode_stream`` / ``ChainStore.put_stream``), written from their pieces
(``BlobStore.put_pieces``) without joining them, and the cheaper planning steps
giving the very bytes of before."""

from __future__ import annotations

import numpy as np
import pytest

from checkpoint import CheckpointManager, _compress, _plan
from checkpoint._capture import capture
from checkpoint._delta import decode, encode
from checkpoint._encode import StreamPart, encode_stream, pieces_check
from checkpoint._format import load_index, part_check
from checkpoint._records import ManagerConfig
from checkpoint._snapshot import snapshots_equal
from checkpoint.errors import BlobExists
from checkpoint.stores import FsStore


@pytest.fixture
def small_parts(monkeypatch):
    """Arrays of a few KiB become several parts of their own."""
    monkeypatch.setattr(_plan, "PART_FROM", 1024)
    monkeypatch.setattr(_plan, "CHUNK", 4096)
    monkeypatch.setattr(_plan, "SMALL_ARRAY", 256)


def _state(seed: int, scale: float = 1.0) -> dict:
    rng = np.random.default_rng(seed)
    return {"w": (rng.standard_normal(8192) * scale).astype(np.float32),   # 32 KiB: 8 parts
            "h": rng.standard_normal(1024).astype(np.float16),
            "d": rng.standard_normal(1024),
            "step": seed}


@pytest.mark.parametrize("itemsize", [2, 3, 4, 8])
@pytest.mark.parametrize("delta", [False, True])
def test_plane_pieces_are_the_planes_blob_and_its_shuffled_bytes(itemsize, delta):
    rng = np.random.default_rng(itemsize)
    n = itemsize * 300_001   # not a multiple of the plane block
    data = rng.integers(0, 256, n, dtype=np.uint8)
    data[::itemsize] = 0   # one plane compresses, so both kinds of plane occur
    base = rng.integers(0, 256, n, dtype=np.uint8) if delta else None
    pieces = _compress.plane_pieces(data, itemsize, base=base)
    blob = _compress.encode_planes(data, itemsize, base=base)
    assert b"".join(pieces) == blob
    mixed = data if base is None else data ^ base
    expected = _compress.shuffle(mixed.tobytes(), itemsize).reshape(itemsize, -1)
    for k, piece in enumerate(pieces[1:]):
        if pieces[0][1 + k] == 0:   # a raw plane: the shuffled bytes themselves
            assert bytes(piece) == expected[k].tobytes()
    out = np.empty(n, dtype=np.uint8)
    _compress.planes_into(out, blob, xor_with=base)
    assert out.tobytes() == data.tobytes()


def test_encode_stream_yields_encodes_parts_index_last(small_parts):
    first, second = capture(_state(1)), capture(_state(2, scale=1.001))
    for previous, current in ((None, first), (first, second)):
        streamed = list(encode_stream(previous, current, threads=2))
        whole = encode(previous, current)
        assert [p.number for p in streamed] == [*range(1, len(whole)), 0]
        joined = [p.joined() for p in [streamed[-1], *streamed[:-1]]]
        assert [(p.data, p.codec, p.raw_size, p.numeric) for p in joined] == \
               [(p.data, p.codec, p.raw_size, p.numeric) for p in whole]
        index = load_index(bytes(_compress.decompress(whole[0].data, whole[0].codec)))
        assert [e.crc for e in index.parts] == [part_check(p.data) for p in whole[1:]]
        assert [pieces_check(p.pieces) for p in streamed[:-1]] == [e.crc for e in index.parts]
        assert len(whole) > 8


def test_encode_stream_checks_its_arguments_before_encoding():
    snap = capture(_state(1))
    with pytest.raises(ValueError, match="unknown compression"):
        encode_stream(None, snap, compression="lz4")
    with pytest.raises(ValueError, match="threads"):
        encode_stream(None, snap, threads=0)


def test_a_stream_closed_early_encodes_no_more(small_parts):
    snap = capture(_state(3))
    stream = encode_stream(None, snap, threads=1)
    first = next(stream)
    stream.close()
    assert first.number == 1
    with pytest.raises(StopIteration):
        next(stream)


@pytest.mark.parametrize("seed", range(6))
def test_auto_size_is_the_size_auto_compression_gives(seed):
    rng = np.random.default_rng(seed)
    size = [1000, 32 * 1024, 100_000, 128 * 1024, 200_000, 255 * 1024][seed]
    itemsize = [4, 2, 8, 4, 1, 4][seed]
    for sample in (rng.integers(0, 256, size, dtype=np.uint8),                    # incompressible
                   rng.standard_normal(size // 4).astype(np.float32).view(np.uint8),
                   np.zeros(size, dtype=np.uint8)):
        sample = sample[:len(sample) // itemsize * itemsize]
        expected = len(_compress.compress(sample, "auto", itemsize=itemsize)[0])
        assert _compress.auto_size(sample, itemsize) == expected
    assert _compress.auto_size(np.zeros(256 * 1024, dtype=np.uint8), 4) is None


def test_a_change_in_the_first_bytes_and_one_at_the_end_are_both_seen():
    rng = np.random.default_rng(0)
    w = rng.standard_normal(1 << 19).astype(np.float32)   # 2 MiB: several equality blocks
    flat, rows = capture({"w": w}), capture({"w": w.reshape(512, -1)})
    head, tail, same = w.copy(), w.copy(), w.copy()
    head[0] += 1.0
    tail[-1] += 1.0
    for changed, row in ((head, 0), (tail, 511), (same, None)):
        plan = _plan.plan_leaf(rows.leaves[0], capture({"w": changed.reshape(512, -1)}).leaves[0], "auto")
        assert plan.record.op == (_plan.Op.SAME if row is None else _plan.Op.ROWS)
        if row is not None:
            assert np.frombuffer(plan.record.extra, "<i8").tolist() == [row]
        dense = _plan.plan_leaf(flat.leaves[0], capture({"w": changed}).leaves[0], "auto")
        assert dense.record.op == (_plan.Op.SAME if row is None else _plan.Op.XOR)


def test_fs_put_pieces_stores_their_concatenation_create_only(tmp_path):
    store = FsStore(tmp_path)
    pieces = [b"head", np.arange(100_000, dtype=np.uint8), memoryview(b"tail")]
    store.put_pieces("a/b/p1", pieces)
    assert store.get("a/b/p1") == b"head" + np.arange(100_000, dtype=np.uint8).tobytes() + b"tail"
    with pytest.raises(BlobExists):
        store.put_pieces("a/b/p1", [b"other"])
    assert store.get("a/b/p1")[:4] == b"head"
    assert [p.name for p in (tmp_path / "a" / "b").iterdir()] == ["p1"]   # no temp file left


def _manager(tmp_path) -> CheckpointManager:
    return CheckpointManager.from_urls(f"sqlite:///{tmp_path}/catalog.db", f"file://{tmp_path}/blobs",
                                       config=ManagerConfig(db_size_limit=1024))


def test_put_stream_stores_a_link_that_restores(tmp_path, small_parts):
    manager = _manager(tmp_path)
    writer = manager.open_attempt("j", "t", max_age=None).writer
    first = writer.capture(_state(1))
    writer.save(first)
    second = writer.capture(_state(2, scale=1.001))
    info = writer.save(second)
    assert info.kind == "delta"
    assert [r.key.rsplit("/", 1)[1] for r in info.parts] == [f"p{i}" for i in range(len(info.parts))]
    assert {r.tier for r in info.parts} == {"sql", "object"}
    restored = manager.restore("j", "t", max_age=None)
    assert snapshots_equal(capture(restored.state), capture(_state(2, scale=1.001))) is True
    manager.close()


def test_put_stream_that_fails_half_way_deletes_what_it_wrote(tmp_path, small_parts):
    manager = _manager(tmp_path)
    parts = list(encode_stream(None, capture(_state(4))))

    def failing():
        yield from parts[:3]
        raise OSError("encoder died")

    with pytest.raises(OSError, match="encoder died"):
        manager.chain.put_stream("j", "t", 1, 1, failing())
    assert manager.tiers.objects.list("") == []
    assert manager.tiers.sql.list("") == []
    refs = manager.chain.put_stream("j", "t", 1, 1, iter(parts))
    assert len(refs) == len(parts)
    back = decode([(manager.tiers.store_for(r.tier).get(r.key), r.codec, r.raw_size) for r in refs], None)
    assert snapshots_equal(back, capture(_state(4))) is True
    manager.close()


def test_stream_parts_report_their_stored_size():
    part = StreamPart(3, (b"ab", np.zeros(5, dtype=np.uint8), memoryview(b"c")), "none", 8)
    assert part.size == 8
    assert part.joined().data == b"ab\x00\x00\x00\x00\x00c"


@pytest.mark.parametrize("use_memcmp", [True, False])
def test_bytes_equal_finds_a_difference_anywhere(monkeypatch, use_memcmp):
    """``bytes_equal`` (memcmp on the buffers, or the block copies without it) stops at no
    false equality: one flipped bit at the start, the end or past a block boundary."""
    from checkpoint import _snapshot

    if not use_memcmp:
        monkeypatch.setattr(_snapshot, "_memcmp", None)
    elif _snapshot._memcmp is None:
        pytest.skip("no C library memcmp on this platform")
    a = np.random.default_rng(5).integers(0, 256, 3 * 1024 * 1024 + 17, dtype=np.uint8)
    assert _snapshot.bytes_equal(a, a.copy())
    assert _snapshot.bytes_equal(a[:0], a[:0].copy())
    assert not _snapshot.bytes_equal(a, a[:-1].copy())
    for at in (0, 1024 * 1024, a.size - 1):
        b = a.copy()
        b[at] ^= 0x10
        assert not _snapshot.bytes_equal(a, b)
    floats = a[:4 * 1000].view(np.float32).reshape(10, 100)
    changed = floats.copy()
    changed.view(np.uint32)[9, 99] ^= 1   # the lowest mantissa bit of the last element
    assert _snapshot.bytes_equal(floats, floats.copy()) and not _snapshot.bytes_equal(floats, changed)
