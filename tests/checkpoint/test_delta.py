"""encode / decode: bases and delta chains are bit-exact, deltas are small."""

from __future__ import annotations

import dataclasses
from collections import namedtuple

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from checkpoint import _compress, _delta, _encode, _format, _plan, _pools
from checkpoint._capture import BufferPool, capture
from checkpoint._delta import COMPRESSIONS, decode, encode, snapshots_equal
from checkpoint.errors import CorruptCheckpoint

Pair = namedtuple("Pair", ["left", "right"])


@dataclasses.dataclass
class Run:
    step: int
    history: list
    weights: dict


def _round(previous, current, compression="auto"):
    parts = encode(previous, current, compression=compression)
    return parts, decode([(p.data, p.codec) for p in parts], previous)


def _size(parts) -> int:
    return sum(len(p.data) for p in parts)


@pytest.fixture
def small_parts(monkeypatch):
    """Route small arrays through the part / chunk / sampling paths."""
    monkeypatch.setattr(_plan, "PART_FROM", 256)
    monkeypatch.setattr(_plan, "CHUNK", 1024)
    monkeypatch.setattr(_plan, "SMALL_ARRAY", 64)


DTYPES = ["bool", "int8", "uint16", "int32", "int64", "float16", "float32", "float64",
          "complex64", "complex128", "M8[ms]", "m8[s]", "S3", "U2"]
np_arrays = hnp.arrays(
    dtype=st.sampled_from(DTYPES).map(np.dtype),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6),
)


@settings(max_examples=40, deadline=None)
@given(st.lists(np_arrays, min_size=1, max_size=4), st.sampled_from(COMPRESSIONS))
def test_numpy_base_round_trip(values, compression):
    state = {f"a{i}": v for i, v in enumerate(values)}
    snap = capture(state)
    _, back = _round(None, snap, compression)
    assert snapshots_equal(back, snap) is True
    restored = back.to_state()
    for key, value in state.items():
        assert restored[key].dtype == value.dtype
        assert restored[key].shape == value.shape
        assert restored[key].tobytes() == value.tobytes()


def _chain_state(rng):
    """The starting state of the chain tests: row-sparse, dense, half, 0-d and empty leaves."""
    return {
        "emb": rng.standard_normal((40, 8)).astype(np.float32),
        "vec": rng.standard_normal(100),
        "half": rng.standard_normal((30, 5)).astype(np.float16),
        "scalar": np.array(3.5, dtype=np.float32),
        "empty": np.zeros((0, 3), dtype=np.int16),
    }


def _chain_examples(test):
    """Seed, a list of mutations and a compression mode for a chain test."""
    return settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])(given(
        st.integers(0, 2**32 - 1),
        st.lists(st.sampled_from(["none", "rows", "dense", "reshape", "rebind", "keys"]),
                 min_size=1, max_size=5),
        st.sampled_from(COMPRESSIONS),
    )(test))


def _mutate(rng, state, how):
    for key in list(state):
        value = state[key]
        if value.size == 0 or value.dtype.kind != "f":
            continue
        if how == "rows" and value.ndim == 2:
            value[rng.integers(0, value.shape[0], 2)] += 1.0
        elif how == "dense":
            value += rng.standard_normal(value.shape).astype(value.dtype) * 1e-3
        elif how == "reshape":
            state[key] = rng.standard_normal((value.size + 3,)).astype(np.float64)
        elif how == "rebind":
            state[key] = np.ascontiguousarray(value[::-1]) if value.ndim else value * 2
    if how == "keys":
        state[f"new{len(state)}"] = rng.standard_normal((5, 4)).astype(np.float32)
        del state[next(iter(state))]


@_chain_examples
def test_delta_chain_is_bit_exact(small_parts, seed, steps, compression):
    rng = np.random.default_rng(seed)
    state = _chain_state(rng)
    pool = BufferPool()
    previous = capture(state, pool=pool)
    _, restored = _round(None, previous, compression)
    for how in steps:
        _mutate(rng, state, how)
        current = capture(state, previous=previous, pool=pool)
        _, restored = _round(restored, current, compression)
        assert snapshots_equal(restored, current) is True
        pool.release(previous)
        previous = current
    final = restored.to_state()
    assert list(final) == list(state)
    assert all(final[k].tobytes() == state[k].tobytes() for k in state)


def test_generic_chain_with_namedtuples_and_dataclasses():
    run = Run(0, [], {"lr": 0.1})
    state = {"run": run, "pair": Pair(np.zeros(3), "tag"), "items": {i: str(i) for i in range(100)}}
    previous = capture(state)
    _, restored = _round(None, previous)
    for step in range(1, 6):
        run.step = step
        run.history.append({"step": step, "loss": 1.0 / step})
        run.weights[f"w{step}"] = step
        state["pair"] = Pair(state["pair"].left + 1, "tag")
        del state["items"][step]
        current = capture(state, previous=previous)
        _, restored = _round(restored, current)
        assert snapshots_equal(restored, current) is True
        previous = current
    final = restored.to_state()
    assert final["run"] == run
    assert type(final["pair"]) is Pair
    assert final["pair"].left.tolist() == [5.0, 5.0, 5.0]
    assert final["items"] == state["items"]


def test_unchanged_state_costs_almost_nothing():
    rng = np.random.default_rng(0)
    state = {f"w{i}": rng.standard_normal((256, 256)).astype(np.float32) for i in range(8)}
    state["history"] = list(range(10_000))
    base = capture(state)
    full = _size(encode(None, base))
    delta = _size(encode(base, capture(state)))
    assert full > 1_500_000
    assert delta < 1_000
    assert len(encode(base, capture(state))) == 1


def test_row_sparse_change_is_small():
    rng = np.random.default_rng(1)
    table = rng.standard_normal((100_000, 64)).astype(np.float32)  # 25.6 MB
    base = capture({"emb": table})
    table[rng.choice(100_000, 100, replace=False)] += 0.5
    current = capture({"emb": table})
    parts, back = _round(base, current)
    assert snapshots_equal(back, current) is True
    assert _size(parts) < 100 * 64 * 4 + 100 * 8 + 4_000


def test_dense_delta_is_lossless_and_smaller_than_raw():
    rng = np.random.default_rng(2)
    weights = rng.standard_normal(1_000_000).astype(np.float32)
    base = capture({"w": weights})
    weights += rng.standard_normal(weights.size).astype(np.float32) * 1e-4
    current = capture({"w": weights})
    parts, back = _round(base, current)
    assert snapshots_equal(back, current) is True
    assert _size(parts) < 0.9 * weights.nbytes
    assert back.to_state()["w"].tobytes() == weights.tobytes()


def test_append_only_list_stores_only_its_tail():
    history = [{"id": i, "name": f"item-{i}"} for i in range(10_000)]
    state = {"w": np.zeros(4), "history": history}
    base = capture(state)
    history.extend({"id": i, "name": f"item-{i}"} for i in range(10_000, 10_010))
    parts, back = _round(base, capture(state))
    assert _size(parts) < 1_000
    assert back.to_state()["history"] == history


def test_dict_delta_stores_changed_keys_only():
    table = {f"key{i}": i for i in range(5_000)}
    base = capture({"w": np.zeros(2), "table": table})
    table["key7"] = -7
    del table["key9"]
    table["extra"] = 1
    parts, back = _round(base, capture({"w": np.zeros(2), "table": table}))
    assert _size(parts) < 500
    restored = back.to_state()["table"]
    assert restored == table
    assert list(restored) == list(table)


def test_large_leaf_is_split_into_parts(small_parts):
    values = np.arange(2_000, dtype=np.float64)
    parts = encode(None, capture({"v": values}))
    assert len(parts) == 1 + 16  # 16,000 bytes in 1,024-byte chunks
    assert [p.raw_size for p in parts[1:]] == [1024] * 15 + [640]
    back = decode([(p.data, p.codec) for p in parts], None)
    assert back.to_state()["v"].tobytes() == values.tobytes()


def test_encode_threads_bound_the_parallelism_not_the_bytes(small_parts, monkeypatch):
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(_pools, "_executor", ThreadPoolExecutor(4))
    running, peak, lock = [0], [0], threading.Lock()
    real = _encode._encode_chunk

    def chunk(*args):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.005)
        try:
            return real(*args)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(_encode, "_encode_chunk", chunk)
    rng = np.random.default_rng(3)
    old = capture({"a": rng.standard_normal(3000), "b": rng.standard_normal(2000)})
    new = capture({"a": old.to_state()["a"] * 1.001, "b": rng.standard_normal(2000)})
    results = {}
    for threads in (None, 1, 2, 3):
        peak[0] = 0
        results[threads] = [(p.data, p.codec, p.raw_size) for p in encode(old, new, threads=threads)]
        assert peak[0] <= (threads or 4)
        if threads is None:
            assert peak[0] >= 2
    assert results[1] == results[2] == results[3] == results[None]
    with pytest.raises(ValueError):
        encode(old, new, threads=0)


def test_manager_config_refuses_zero_encode_threads():
    from checkpoint import ManagerConfig

    with pytest.raises(ValueError, match="encode_threads"):
        ManagerConfig(encode_threads=0)
    assert ManagerConfig(encode_threads=1).encode_threads == 1


def test_plans_are_frozen_and_leave_their_leaves_untouched():
    rng = np.random.default_rng(4)
    old = capture({"emb": rng.standard_normal((128, 256)).astype(np.float32), "names": ["a", "b"]})
    state = old.to_state()
    state["emb"][[5]] += 1.0
    state["names"].append("c")
    cur = capture(state)
    plans = [_plan.plan_leaf(old.leaf_map()[leaf.path], leaf, "auto") for leaf in cur.leaves]
    assert [(p.record.path, p.record.op) for p in plans] == [("emb", _plan.Op.ROWS), ("names", _plan.Op.TAIL)]
    with pytest.raises(dataclasses.FrozenInstanceError):
        plans[0].record.ref = b"x"  # type: ignore[misc]
    placed = plans[0].record.with_ref((1, 1, plans[0].size))
    assert (placed.ref, plans[0].record.ref) == ((1, 1, plans[0].size), None)
    assert snapshots_equal(cur, capture(state)) is True


def test_unknown_compression_is_a_value_error():
    with pytest.raises(ValueError):
        encode(None, capture({"a": 1}), compression="brotli")


def _corruptions(parts):
    pairs = [(p.data, p.codec) for p in parts]
    for i, (data, codec) in enumerate(pairs):
        for bad in (data[: len(data) // 2], data[:-1] + bytes([data[-1] ^ 1]), b""):
            if bad != data:
                yield pairs[:i] + [(bad, codec)] + pairs[i + 1:]
        flipped = bytearray(data)
        flipped[len(flipped) // 2] ^= 0x40
        yield pairs[:i] + [(bytes(flipped), codec)] + pairs[i + 1:]
    yield pairs[:-1]
    if len(pairs) > 1:
        yield pairs[::-1]


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_corrupt_parts_raise_corrupt_checkpoint(small_parts, compression):
    rng = np.random.default_rng(3)
    state = {"emb": rng.standard_normal((50, 8)).astype(np.float32), "meta": {"a": 1}}
    base = capture(state)
    state["emb"][3] += 1
    current = capture(state)
    for previous in (None, base):
        parts = encode(previous, current, compression=compression)
        assert (len(parts) > 1) == (previous is None)
        for broken in _corruptions(parts):
            with pytest.raises(CorruptCheckpoint):
                decode(broken, previous)


def test_delta_without_its_previous_is_corrupt():
    base = capture({"a": np.zeros(3)})
    parts = encode(base, capture({"a": np.zeros(3)}))
    with pytest.raises(CorruptCheckpoint):
        decode([(p.data, p.codec) for p in parts], None)
    with pytest.raises(CorruptCheckpoint):
        decode([(p.data, p.codec) for p in parts], capture({"b": np.zeros(3)}))


def test_delta_is_refused_against_any_link_but_its_own():
    first = capture({"a": np.arange(100_000, dtype=np.float32)})
    second = capture({"a": np.arange(100_000, dtype=np.float32) + 1})
    mine, other = (3, "ab" * 32), (4, "cd" * 32)
    parts = [(p.data, p.codec) for p in encode(first, second, against=mine)]
    assert snapshots_equal(decode(parts, first, against=mine), second) is True
    for wrong in (other, (3, "cd" * 32), (4, "ab" * 32)):
        with pytest.raises(CorruptCheckpoint, match="encoded against seq 3"):
            decode(parts, first, against=wrong)
    unnamed = [(p.data, p.codec) for p in encode(first, second)]
    with pytest.raises(CorruptCheckpoint, match="against no reference"):
        decode(unnamed, first, against=mine)
    assert snapshots_equal(decode(unnamed, first), second) is True  # library use without references


@_chain_examples
def test_chain_applied_in_place_is_bit_exact(small_parts, seed, steps, compression):
    """reuse_buffers: each link updates the previous link's buffers in place."""
    rng = np.random.default_rng(seed)
    state = _chain_state(rng)
    previous = capture(state)
    links = [encode(None, previous, compression=compression)]
    expected = [previous]
    for how in steps:
        _mutate(rng, state, how)
        current = capture(state, previous=previous)
        links.append(encode(previous, current, compression=compression))
        expected.append(current)
        previous = current
    restored = None
    for parts, want in zip(links, expected):
        pairs = [(p.data, p.codec) for p in parts]
        restored = decode(pairs, _delta.reuse_buffers(restored) if restored is not None else None)
        assert snapshots_equal(restored, want) is True
    assert restored.reuse is False


def test_decode_without_reuse_never_writes_to_previous(small_parts):
    rng = np.random.default_rng(5)
    state = {"emb": rng.standard_normal((64, 16)).astype(np.float32), "vec": rng.standard_normal(300)}
    first = capture(state)
    base = decode([(p.data, p.codec) for p in encode(None, first)], None)
    copies = {leaf.path: leaf.data.copy() for leaf in base.leaves}
    state["emb"][[1, 7]] += 1.0           # rows
    state["vec"] += 1e-3                  # dense xor
    second = capture(state)
    parts = encode(first, second)
    ops = {rec.path: rec.op for rec in _index(parts).leaves}
    assert ops == {"emb": "rows", "vec": "xor"}
    back = decode([(p.data, p.codec) for p in parts], base)
    assert snapshots_equal(back, second) is True
    assert all(leaf.data.tobytes() == copies[leaf.path].tobytes() for leaf in base.leaves)


def test_failed_decode_leaves_a_reused_previous_intact(small_parts):
    rng = np.random.default_rng(6)
    state = {"emb": rng.standard_normal((64, 16)).astype(np.float32), "vec": rng.standard_normal(300)}
    first = capture(state)
    base = decode([(p.data, p.codec) for p in encode(None, first)], None)
    state["emb"][[2, 9]] += 1.0
    state["vec"] += 1e-3
    parts = [(p.data, p.codec) for p in encode(first, capture(state))]
    for broken in _corruptions(encode(first, capture(state))):
        with pytest.raises(CorruptCheckpoint):
            decode(broken, _delta.reuse_buffers(base))
        assert snapshots_equal(base, first) is True
    assert snapshots_equal(decode(parts, _delta.reuse_buffers(base)), capture(state)) is True


def _index(parts):
    return _format.load_index(bytes(_compress.decompress(parts[0].data, parts[0].codec)))
