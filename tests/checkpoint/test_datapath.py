"""The fast data path (issue 15): byte planes, xxh3 for numeric parts, streamed
restore into the state's buffers, and version-1 checkpoints still restoring."""

from __future__ import annotations

import hashlib
import logging
import zlib

import numpy as np
import pytest
import xxhash
from ckpt_helpers import build_manager, chain
from sqlalchemy import update
from sqlalchemy.orm import Session

from checkpoint import CheckpointManager, _compress, _plan
from checkpoint._capture import capture
from checkpoint._delta import decode, encode, reuse_buffers
from checkpoint._format import Index, PartEntry, dump_index, load_index
from checkpoint._records import ManagerConfig, PartRef
from checkpoint._snapshot import snapshots_equal
from checkpoint.catalog import CheckpointRow
from checkpoint.errors import CorruptCheckpoint


@pytest.fixture
def small_parts(monkeypatch):
    """Arrays of a few KiB become several parts of their own."""
    monkeypatch.setattr(_plan, "PART_FROM", 1024)
    monkeypatch.setattr(_plan, "CHUNK", 4096)
    monkeypatch.setattr(_plan, "SMALL_ARRAY", 256)


def _state(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"w": rng.standard_normal(4096).astype(np.float32),       # 16 KiB: four parts
            "m": (rng.standard_normal(2048) * 1e-3).astype(np.float32),
            "step": 0}


def _train(state: dict, step: int) -> None:
    # one element in ten changes: dense XOR deltas (a part per chunk), small enough
    # that the chain is not compacted
    rng = np.random.default_rng(100 + step)
    state["w"][::10] += (rng.standard_normal(state["w"][::10].size) * 1e-3).astype(np.float32)
    state["m"][:100] *= np.float32(0.9)
    state["step"] = step


def _copy(state: dict) -> dict:
    return {"w": state["w"].copy(), "m": state["m"].copy(), "step": state["step"]}


def _equal(a: dict, b: dict) -> bool:
    return a["step"] == b["step"] and all(np.asarray(a[k]).tobytes() == np.asarray(b[k]).tobytes()
                                          for k in ("w", "m"))


# ---------------------------------------------------------------- planes codec

@pytest.mark.parametrize("itemsize", [2, 4, 8])
@pytest.mark.parametrize("with_base", [False, True])
def test_planes_round_trip_bit_exact(itemsize, with_base):
    rng = np.random.default_rng(itemsize)
    data = rng.integers(0, 256, 3 * _compress.PLANE_BLOCK + 8 * itemsize, dtype=np.uint8)
    data.reshape(-1, itemsize)[:, -1] = 7        # one plane that compresses
    base = rng.integers(0, 256, data.size, dtype=np.uint8) if with_base else None
    if base is not None:
        base.reshape(-1, itemsize)[:, -1] = 3    # ... and still does after the XOR
    blob = _compress.encode_planes(data, itemsize, base=base)
    assert blob[0] == itemsize and list(blob[1:1 + itemsize]) == [0] * (itemsize - 1) + [1]
    out = np.empty_like(data)
    assert _compress.planes_into(out, blob, xor_with=base) == itemsize
    assert out.tobytes() == data.tobytes()   # the XOR with the base is undone


def test_planes_in_place_xor_restores_the_current_value():
    rng = np.random.default_rng(1)
    old = rng.standard_normal(50_000).astype(np.float32).view(np.uint8)
    new = (old.view(np.float32) + np.float32(1e-3)).view(np.uint8)
    blob = _compress.encode_planes(new, 4, base=old)
    buf = old.copy()
    _compress.planes_into(buf, blob, xor_with=buf)
    assert buf.tobytes() == new.tobytes()


def test_incompressible_planes_are_stored_raw_and_a_chunk_of_raw_planes_as_none(small_parts):
    rng = np.random.default_rng(2)
    noise = rng.integers(0, 256, 8192, dtype=np.uint8)
    blob = _compress.encode_planes(noise, 4)
    assert _compress.all_raw(blob) is True
    snap = capture({"x": noise.view(np.float32)})
    parts = encode(None, snap)
    assert [p.codec for p in parts[1:]] == ["none", "none"]
    assert snapshots_equal(decode([(p.data, p.codec, p.raw_size) for p in parts], None), snap) is True


def test_store_bandwidth_decides_marginal_planes():
    # a plane that saves ~2 % of its bytes: not worth it on a fast store, worth it on a very slow one
    rng = np.random.default_rng(3)
    plane = rng.integers(0, 256, 1 << 16, dtype=np.uint8)
    plane[:2000] = 0                                    # ~3 % of the plane compresses
    assert _compress._plane_pays(plane, None) is False
    assert _compress._plane_pays(plane, 2e9) is False
    assert _compress._plane_pays(plane, 1.0) is True


def test_a_delta_compresses_only_planes_that_save_a_fifth():
    """The same plane saving ~12 % is compressed in a base, stored raw in a delta."""
    rng = np.random.default_rng(4)
    n = 1 << 16
    low = rng.integers(0, 256, n, dtype=np.uint8)
    low[rng.random(n) < 0.2] = 0                 # a plane whose bytes are a fifth zeros
    planes = [low, rng.integers(0, 256, n, dtype=np.uint8), np.zeros(n, np.uint8), np.zeros(n, np.uint8)]
    data = np.stack(planes, axis=1).reshape(-1)
    flags = lambda blob: list(blob[1:5])         # noqa: E731
    assert _compress._plane_pays(low, None) is True
    assert _compress._plane_pays(low, None, _compress._DELTA_PLANE_SAVES) is False
    assert flags(_compress.encode_planes(data, 4)) == [1, 0, 1, 1]
    base = np.zeros_like(data)                   # XOR with zeros: the same planes, as a delta
    blob = _compress.encode_planes(data, 4, base=base)
    assert flags(blob) == [0, 0, 1, 1]
    out = np.empty(data.size, np.uint8)
    _compress.planes_into(out, blob, xor_with=base)
    assert out.tobytes() == data.tobytes()


@pytest.mark.parametrize("cut", ["flag", "length", "trailing", "short", "itemsize"])
def test_malformed_planes_raise_corrupt_checkpoint(cut):
    data = np.arange(4096, dtype=np.float32).view(np.uint8)
    blob = bytearray(_compress.encode_planes(data, 4))
    if cut == "flag":
        blob[1] = 9
    elif cut == "length":
        blob[5:13] = (10**9).to_bytes(8, "little")
    elif cut == "trailing":
        blob += b"x"
    elif cut == "short":
        del blob[-3:]
    else:
        blob[0] = 1
    with pytest.raises(CorruptCheckpoint):
        _compress.planes_into(np.empty(data.size, np.uint8), bytes(blob))


def test_planes_blob_never_inflates_past_the_recorded_size():
    data = np.zeros(1 << 20, dtype=np.uint8)
    blob = _compress.encode_planes(data, 4)     # four tiny zstd frames of 256 KiB each
    with pytest.raises(CorruptCheckpoint):
        _compress.planes_into(np.empty(1 << 16, np.uint8), blob)


# ---------------------------------------------------------------- index version 1

def as_version1(parts: list, against: tuple[int, str] | None = None) -> list[tuple[bytes, str, int]]:
    """A link in the layout written before index version 2: CRC-32 checks, ``shuffle+zstd`` arrays."""
    index = load_index(bytes(_compress.decompress(parts[0][0], parts[0][1], raw_size=parts[0][2])))
    itemsize = {}
    for rec in index.leaves:
        if isinstance(rec.ref, tuple):
            for number in range(rec.ref[0], rec.ref[0] + rec.ref[1]):
                itemsize[number] = int(rec.meta.get("itemsize", 1)) if rec.kind == "array" else 1
    out, entries = [], []
    for number, (data, codec, raw) in enumerate(parts[1:], start=1):
        if codec == "planes":
            plain = np.empty(raw, np.uint8)
            _compress.planes_into(plain, data)
            data, codec = _compress.compress(plain, "auto", itemsize=itemsize[number])
        out.append((data, codec, raw))
        entries.append(PartEntry(zlib.crc32(data), raw, codec))
    old = Index(index.base, index.treedef, index.same_tree, against or index.against, index.raw,
                index.leaves, tuple(entries), version=1)
    raw_index = dump_index(old)
    assert b"bandwidth" not in raw_index
    data, codec = _compress.compress(raw_index, "zstd", array=False)
    return [(data, codec, len(raw_index)), *out]


def test_version1_links_still_decode(small_parts):
    state = _state(4)
    first = capture(state)
    _train(state, 1)
    second = capture(state)
    v1_base = as_version1([(p.data, p.codec, p.raw_size) for p in encode(None, first)])
    v1_delta = as_version1([(p.data, p.codec, p.raw_size) for p in encode(first, second)])
    assert {c for _d, c, _r in v1_base[1:]} == {"shuffle+zstd"}
    base = decode(v1_base, None)
    assert snapshots_equal(base, first) is True
    assert snapshots_equal(decode(v1_delta, reuse_buffers(base)), second) is True
    broken = list(v1_delta)
    data, codec, raw = broken[1]
    broken[1] = (data[:-1] + bytes([data[-1] ^ 1]), codec, raw)
    with pytest.raises(CorruptCheckpoint, match="CRC-32"):
        decode(broken, decode(v1_base, None))


def _rewrite_as_version1(manager: CheckpointManager, task: str) -> None:
    """Every committed link of ``task`` rewritten as a version-1 writer stored it: SHA-256 everywhere."""
    against = None
    for row in chain(manager, task):
        refs = [PartRef.from_json(p) for p in row.parts]
        parts = [(manager.tiers.store_for(r.tier).get(r.key), r.codec, r.raw_size) for r in refs]
        old = as_version1(parts, against if row.kind == "delta" else None)
        new_refs = []
        for ref, (data, codec, raw) in zip(refs, old, strict=True):
            store = manager.tiers.store_for(ref.tier)
            store.delete(ref.key)
            store.put(ref.key, data)
            new_refs.append(PartRef(ref.key, ref.tier, len(data), raw, hashlib.sha256(data).hexdigest(), codec))
        with Session(manager.engine) as s, s.begin():
            s.execute(update(CheckpointRow).where(CheckpointRow.task_id == task, CheckpointRow.seq == row.seq)
                      .values(parts=[r.to_json() for r in new_refs]))
        against = (row.seq, new_refs[0].digest)


def test_version1_chain_restores_through_the_manager(manager, small_parts):
    writer = manager.open_attempt("job", "t").writer
    state = _state(5)
    for step in range(1, 4):
        _train(state, step)
        writer.save(writer.capture(state))
    expected = _copy(state)
    _rewrite_as_version1(manager, "t")
    assert all("sha256" in p for r in chain(manager, "t") for p in r.parts)
    restored = manager.restore("job", "t")
    assert (restored.seq, restored.truncated) == (3, False)
    assert _equal(restored.state, expected) is True


# ---------------------------------------------------------------- hashes and streamed restore

def _history(manager: CheckpointManager, links: int = 4) -> dict[int, dict]:
    writer = manager.open_attempt("job", "t").writer
    state, states = _state(6), {}
    for step in range(1, links + 1):
        _train(state, step)
        writer.save(writer.capture(state))
        states[step] = _copy(state)
    return states


def test_numeric_parts_are_checked_by_xxh3_and_the_rest_by_sha256(manager, small_parts):
    _history(manager, 2)
    for row in chain(manager, "t"):
        refs = [PartRef.from_json(p) for p in row.parts]
        assert refs[0].hash == "sha256" and len(refs) > 2
        for ref in refs[1:]:
            data = manager.tiers.store_for(ref.tier).get(ref.key)
            assert ref.hash == "xxh3_128" and ref.sha256 is None
            assert ref.digest == xxhash.xxh3_128_hexdigest(data)
        assert refs[0].digest == hashlib.sha256(manager.tiers.store_for(refs[0].tier).get(refs[0].key)).hexdigest()


def test_large_pickled_leaf_keeps_sha256(manager, small_parts):
    writer = manager.open_attempt("job", "t").writer
    writer.save(writer.capture({"blob": set(range(3000))}))
    [row] = chain(manager, "t")
    assert len(row.parts) > 2 and {PartRef.from_json(p).hash for p in row.parts} == {"sha256"}


def test_tampered_numeric_part_truncates_the_chain(manager, small_parts):
    states = _history(manager)
    ref = [PartRef.from_json(p) for p in chain(manager, "t")[2].parts][1]
    store = manager.tiers.store_for(ref.tier)
    data = bytearray(store.get(ref.key))
    data[len(data) // 2] ^= 0x10
    store.delete(ref.key)
    store.put(ref.key, bytes(data))
    restored = manager.restore("job", "t")
    assert (restored.seq, restored.truncated) == (2, True)
    assert _equal(restored.state, states[2]) is True


def test_a_delta_failing_while_applied_in_place_is_decoded_again(manager, small_parts, caplog):
    states = _history(manager)
    # the last numeric part of seq 3: the parts before it are XORed into the state first
    ref = [PartRef.from_json(p) for p in chain(manager, "t")[2].parts][-1]
    assert ref.hash == "xxh3_128"
    store = manager.tiers.store_for(ref.tier)
    data = bytearray(store.get(ref.key))
    data[-1] ^= 0x01
    store.delete(ref.key)
    store.put(ref.key, bytes(data))
    with caplog.at_level(logging.WARNING, logger="checkpoint"):
        restored = manager.restore("job", "t")
    assert (restored.seq, restored.truncated, restored.chain) == (2, True, (1, 2))
    assert _equal(restored.state, states[2]) is True
    assert any("again" in r.getMessage() for r in caplog.records)


def test_restore_hands_its_buffers_to_the_state_and_open_attempt_copies(manager, small_parts):
    states = _history(manager, 3)
    restored = manager.restore("job", "t")
    state = restored.state
    assert _equal(state, states[3]) is True
    assert state["w"].flags.writeable is True
    # the state's arrays are the snapshot's buffers
    assert sum(np.shares_memory(leaf.data, state["w"]) for leaf in restored.snapshot.leaves) == 1
    attempt = manager.open_attempt("job", "t", attempt=2)
    before = attempt.writer.previous
    copied = attempt.restored.state
    copied["w"] += 1.0
    assert _equal(attempt.restored.snapshot.to_state(), states[3]) is True
    assert before is attempt.restored.snapshot


def test_numeric_hash_sha256_checks_every_part_by_sha256(backend, small_parts):
    manager = build_manager(backend, db_size_limit=4096, numeric_hash="sha256")
    states = _history(manager, 2)
    refs = [PartRef.from_json(p) for r in chain(manager, "t") for p in r.parts]
    assert len(refs) > 4 and {r.hash for r in refs} == {"sha256"}
    assert _equal(manager.restore("job", "t").state, states[2]) is True
    with pytest.raises(ValueError, match="numeric_hash"):
        ManagerConfig(numeric_hash="md5")
