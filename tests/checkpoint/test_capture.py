"""capture: copies are independent of the caller's state, budgets, errors, pool."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from ckpt_helpers import count_allocations

from checkpoint._capture import BufferPool, buffer_plan, capture
from checkpoint._delta import snapshots_equal
from checkpoint.errors import CaptureError, MemoryBudgetExceeded

ROOT = Path(__file__).resolve().parents[2]


def test_mutating_after_capture_leaves_snapshot_intact():
    weights = np.arange(12, dtype=np.float64).reshape(3, 4)
    history = [{"step": 1}]
    config = {"lr": 0.1}
    snap = capture({"w": weights, "history": history, "config": config})
    weights[:] = -1
    history[0]["step"] = 99
    history.append({"step": 2})
    config["lr"] = 0.5
    restored = snap.to_state()
    assert restored["w"].tolist() == np.arange(12, dtype=np.float64).reshape(3, 4).tolist()
    assert restored["history"] == [{"step": 1}]
    assert restored["config"] == {"lr": 0.1}


def test_restored_arrays_do_not_alias_snapshot_buffers():
    snap = capture({"w": np.zeros(4)})
    first = snap.to_state()["w"]
    first[:] = 7
    assert snap.to_state()["w"].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_non_contiguous_and_fortran_arrays():
    base = np.arange(60, dtype=np.int32).reshape(6, 10)
    state = {"strided": base[::2, 1::3], "fortran": np.asfortranarray(base), "scalar": np.float16(2.5)}
    restored = capture(state).to_state()
    assert restored["strided"].tolist() == base[::2, 1::3].tolist()
    assert restored["fortran"].tolist() == base.tolist()
    assert restored["scalar"] == np.float16(2.5)
    assert type(restored["scalar"]) is np.float16


def test_raw_nbytes_counts_arrays_and_pickles():
    snap = capture({"a": np.zeros(100, dtype=np.float32), "b": np.zeros((2, 3), dtype=np.int8)})
    assert snap.raw_nbytes == 406


def test_memory_budget_is_checked_before_copying():
    pool = BufferPool()
    state = {"a": np.zeros(1000, dtype=np.float64)}
    with pytest.raises(MemoryBudgetExceeded):
        capture(state, pool=pool, max_bytes=7999)
    assert pool._live == {}
    assert capture(state, pool=pool, max_bytes=8000).raw_nbytes == 8000


def test_memory_budget_counts_generic_leaves():
    with pytest.raises(MemoryBudgetExceeded):
        capture({"a": np.zeros(10), "blob": b"x" * 10_000}, max_bytes=5_000)


def test_unpicklable_leaf_raises_capture_error_with_path():
    state = {"model": {"w": np.zeros(2), "lock": threading.Lock()}}
    with pytest.raises(CaptureError, match="model/lock"):
        capture(state)


def test_capture_error_is_not_a_budget_error():
    with pytest.raises(CaptureError) as info:
        capture({"f": lambda: 1})
    assert type(info.value) is CaptureError


def test_pool_reuses_buffers_after_release():
    pool = BufferPool()
    state = {"w": np.ones(1000)}
    first = capture(state, pool=pool)
    buffer = first.leaves[0].data
    pool.release(first)
    pool.release(first)  # releasing twice is harmless
    second = capture(state, pool=pool)
    assert second.leaves[0].data is buffer
    third = capture(state, pool=pool)
    assert third.leaves[0].data is not buffer


def test_a_captured_snapshot_names_the_pool_that_owns_its_buffers():
    pool, other = BufferPool(), BufferPool()
    snap = capture({"w": np.ones(1000)}, pool=pool)
    assert snap.owner is pool
    other.release(snap)               # not its pool: nothing happens
    assert snap.owner is pool
    pool.release(snap)
    assert snap.owner is None


@pytest.mark.parametrize("framework", ["numpy", "torch", "tf"])
def test_every_codec_implements_the_whole_array_codec_protocol(framework):
    import inspect

    from checkpoint import codecs

    if framework != "numpy":
        pytest.importorskip("torch" if framework == "torch" else "tensorflow")
    members = {name for name, _ in inspect.getmembers(codecs.ArrayCodec) if not name.startswith("_")}
    members |= set(codecs.ArrayCodec.__annotations__)
    assert {"version_token", "unchanged", "differs", "needs_pinned", "pinned_buffer",
            "synchronize"} <= members
    codec = codecs.codec_for(framework)
    assert sorted(m for m in members if not hasattr(codec, m)) == []


@pytest.mark.parametrize("framework", ["numpy", "tf"])
def test_host_codecs_compare_the_bytes_they_copy(framework):
    """numpy and TensorFlow leaves are never skipped unread, but their ``differs`` answers
    like torch's: equal to its own copy (a strided array too), one flipped bit found."""
    from checkpoint import codecs

    values = np.arange(5000, dtype=np.float32).reshape(100, 50)
    if framework == "tf":
        tf = pytest.importorskip("tensorflow")
        obj = tf.Variable(values)
    else:
        obj = values[:, ::2]   # strided
    codec = codecs.codec_for(framework)
    out = np.empty(codec.describe(obj)["nbytes"], dtype=np.uint8)
    codec.copy_into(obj, out)
    assert not codec.differs(obj, out) and not codec.differs(obj, out, quick=True)
    out[0] ^= 1
    assert codec.differs(obj, out) and codec.differs(obj, out, quick=True)


def test_pool_keeps_shared_buffers_until_every_holder_is_released():
    torch = pytest.importorskip("torch")
    pool = BufferPool()
    state = {"t": torch.arange(1000, dtype=torch.float32)}
    first = capture(state, pool=pool)
    second = capture(state, previous=first, pool=pool)
    assert second.leaves[0].unchanged is True
    assert second.leaves[0].data is first.leaves[0].data
    pool.release(first)
    third = capture({"t": torch.zeros(1000)}, pool=pool)
    assert third.leaves[0].data is not second.leaves[0].data
    assert second.to_state()["t"].tolist() == list(range(1000))
    pool.release(second)
    fourth = capture({"t": torch.zeros(1000)}, pool=pool)
    assert fourth.leaves[0].data is second.leaves[0].data


def test_reserve_makes_the_next_capture_allocate_nothing(monkeypatch):
    made = count_allocations(monkeypatch)
    pool = BufferPool()
    state = {"a": np.ones(300_000), "b": np.zeros(200_000, dtype=np.float32)}
    first = capture(state, pool=pool)
    assert sorted(made) == [800_000, 2_400_000]
    assert pool.reserve(first) == 3_200_000      # what the next capture will need
    assert pool.reserve(first) == 0              # already there
    made.clear()
    state["a"] += 1
    second = capture(state, previous=first, pool=pool)
    assert made == []
    assert not np.shares_memory(second.leaves[0].data, first.leaves[0].data)
    assert second.to_state()["a"][0] == 2 and first.to_state()["a"][0] == 1
    pool.release(first)
    assert pool.reserve(second) == 0             # steady state: the first snapshot's buffers are free
    third = capture(state, previous=second, pool=pool)
    assert made == [] and third.leaves[0].data is first.leaves[0].data


def test_unchanged_tensors_keep_no_spare_buffer(monkeypatch):
    torch = pytest.importorskip("torch")
    made = count_allocations(monkeypatch)
    pool = BufferPool()
    state = {"frozen": torch.ones(100_000), "trained": torch.zeros(100_000)}
    first = capture(state, pool=pool)
    pool.reserve(first)                          # spares for both: nothing is known yet
    assert len(made) == 4
    with torch.no_grad():
        state["trained"] += 1
    second = capture(state, previous=first, pool=pool)
    assert [leaf.unchanged for leaf in second.leaves] == [True, False]
    pool.release(first)
    made.clear()
    assert pool.reserve(second) == 0             # the trained leaf's old buffer is free again
    with torch.no_grad():
        state["frozen"] += 1                     # a frozen tensor starts changing: allocated then
    capture(state, previous=second, pool=pool)
    assert made == [400_000]


def test_capture_is_repeatable():
    state = {"w": np.arange(5), "cfg": {"a": 1}, "xs": [1, 2, 3]}
    assert snapshots_equal(capture(state), capture(state)) is True


BLOCKED = textwrap.dedent(
    """
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "tensorflow", "keras", "jax"):
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())
    import numpy as np
    from checkpoint._capture import capture
    from checkpoint._delta import decode, encode, snapshots_equal

    state = {"w": np.arange(10.0), "hist": [1, 2], "cfg": {"a": 1}}
    base = capture(state)
    state["w"][3] = 7
    state["hist"].append(3)
    current = capture(state, previous=base)
    parts = encode(base, current)
    back = decode([(p.data, p.codec) for p in parts], base)
    assert snapshots_equal(back, current)
    restored = back.to_state()
    print(restored["w"].tolist()[3], restored["hist"], sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "tensorflow")))
    """
)


def test_numpy_only_environment_works_without_torch_or_tensorflow():
    result = subprocess.run(
        [sys.executable, "-c", BLOCKED], cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert (result.returncode, result.stderr[-2000:]) == (0, result.stderr[-2000:])
    assert result.stdout.strip() == "7.0 [1, 2, 3] []"


def test_large_capture_shared_with_helper_threads_is_exact(monkeypatch):
    import checkpoint._capture as capture_module

    monkeypatch.setattr(capture_module, "_SHARE_FROM", 1)   # always share the copies
    rng = np.random.default_rng(11)
    state = {f"a{i}": rng.standard_normal((64, 33)) for i in range(12)}
    state["strided"] = rng.standard_normal((40, 30))[:, ::3]
    pool = BufferPool()
    snap = capture(state, pool=pool)
    for key, value in state.items():
        state[key] = value * 0   # the snapshot must not see later writes
    restored = snap.to_state()
    expected = np.random.default_rng(11)
    for i in range(12):
        assert restored[f"a{i}"].tobytes() == expected.standard_normal((64, 33)).tobytes()
    assert restored["strided"].tobytes() == np.ascontiguousarray(expected.standard_normal((40, 30))[:, ::3]).tobytes()


def test_failed_copy_on_a_helper_thread_raises_capture_error_and_frees_buffers(monkeypatch):
    import checkpoint._capture as capture_module
    from checkpoint.codecs import numpy_codec

    monkeypatch.setattr(capture_module, "_SHARE_FROM", 1)
    original = numpy_codec.copy_into

    def failing(obj, out, **kw):
        if obj.shape == (7, 7):
            raise RuntimeError("device lost")
        return original(obj, out, **kw)

    monkeypatch.setattr(numpy_codec, "copy_into", failing)
    pool = BufferPool()
    state = {f"a{i}": np.ones((50, 50)) for i in range(8)}
    state["bad"] = np.ones((7, 7))
    with pytest.raises(CaptureError, match="bad"):
        capture(state, pool=pool)
    assert pool._live == {}


def test_buffers_planned_and_made_ahead_are_the_ones_the_first_capture_takes(monkeypatch):
    made = count_allocations(monkeypatch)
    state = {"a": np.arange(1 << 18, dtype=np.float32), "b": [np.ones((3, 5)), "text"], "empty": np.zeros(0)}
    plan = buffer_plan(state)
    assert plan is not None
    assert sorted(nbytes for _key, nbytes, _pinned in plan) == [0, 120, 1 << 20]
    pool = BufferPool()
    assert pool.reserve_for(plan) == (1 << 20) + 120
    assert pool.reserve_for(plan) == 0                 # each key has its free buffer already
    assert sorted(made) == [0, 120, 1 << 20]
    snap = capture(state, pool=pool)
    assert sorted(made) == [0, 120, 1 << 20]            # the capture made none of its own
    assert snapshots_equal(snap, capture(state)) is True


def test_no_plan_over_the_budget_or_for_what_only_a_copy_reveals():
    assert buffer_plan({"a": np.zeros(1000)}, max_bytes=7999) is None
    assert buffer_plan({"a": np.zeros(1000)}, max_bytes=8000) is not None
    model = type("Model", (), {"__module__": "keras.src.models.model"})()   # a Keras model by name
    assert buffer_plan({"model": model, "a": np.zeros(10)}) is None
    assert buffer_plan({"step": 1}) == []
