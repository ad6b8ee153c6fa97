"""TaskCheckpointSession against a real catalog (SQLite) and blob store (directory):
the spec's worker-side edge cases without Temporal in the way."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from activities.checkpointing import TaskCheckpointSession
from checkpoint import CheckpointManager, ManagerConfig
from sdk._task import TaskContext


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_manager(tmp: Path, **config: Any) -> CheckpointManager:
    return CheckpointManager.from_urls(f"sqlite:///{tmp}/catalog.db", f"file://{tmp}/blobs",
                                       config=ManagerConfig(**config))


def open_session(manager: CheckpointManager, clock: Clock, attempt: int = 1, *,
                 interval: float = 10.0, budget: int | None = None,
                 max_age: float | None = 3600.0) -> TaskCheckpointSession:
    ctx = TaskContext("job1", "job1:0", 0, attempt)
    session = TaskCheckpointSession(manager, ctx, interval=interval, max_age=max_age,
                                    memory_budget=budget, clock=clock)
    session.start()
    return session


def finish(session: TaskCheckpointSession) -> None:
    asyncio.run(session.close(succeeded=False))


def wait_persisted(session: TaskCheckpointSession) -> None:
    assert session._inflight is not None
    session._inflight.result(timeout=30)


def test_not_due_until_interval_then_captures(tmp_path: Path) -> None:
    clock = Clock()
    s = open_session(make_manager(tmp_path), clock)
    assert s.checkpoint({"a": np.zeros(4)}) is False
    clock.now += 9.9
    assert s.checkpoint({"a": np.zeros(4)}) is False
    clock.now += 0.2
    assert s.checkpoint({"a": np.ones(4)}, progress_percent=40.0) is True
    wait_persisted(s)
    assert s.last_commit is not None and s.last_commit.seq == 1
    assert s.heartbeat_details()["checkpoint"]["progress_percent"] == 40.0
    finish(s)


def test_resume_on_next_attempt_with_new_epoch(tmp_path: Path) -> None:
    clock, manager = Clock(), make_manager(tmp_path)
    s1 = open_session(manager, clock)
    state = {"step": 7, "w": np.arange(100.0)}
    clock.now += 11
    assert s1.checkpoint(state) is True
    wait_persisted(s1)
    finish(s1)
    s2 = open_session(manager, clock, attempt=2)
    assert s2.epoch == s1.epoch + 1
    got = s2.restore()
    assert got["step"] == 7
    assert np.array_equal(got["w"], state["w"])
    finish(s2)


def test_coalesces_while_persisting(tmp_path: Path) -> None:
    clock = Clock()
    s = open_session(make_manager(tmp_path), clock)
    gate = threading.Event()
    s._persister.submit(gate.wait)  # occupy the persist thread
    clock.now += 11
    assert s.checkpoint({"x": 1}) is True  # captured, queued behind the gate
    clock.now += 11
    assert s.checkpoint({"x": 2}) is False  # one in flight: coalesced, not queued
    gate.set()
    wait_persisted(s)
    clock.now += 11
    assert s.checkpoint({"x": 3}) is True
    wait_persisted(s)
    assert s.last_commit is not None and s.last_commit.seq == 2
    finish(s)


def test_unpicklable_state_is_skipped_and_earlier_checkpoint_stays(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock, manager = Clock(), make_manager(tmp_path)
    s = open_session(manager, clock)
    clock.now += 11
    assert s.checkpoint({"step": 1}) is True
    wait_persisted(s)
    clock.now += 11
    with caplog.at_level(logging.ERROR):
        assert s.checkpoint({"step": 2, "lock": threading.Lock()}) is False
    assert any(r.getMessage().startswith("CheckpointHandler:") for r in caplog.records)
    finish(s)
    s2 = open_session(manager, clock, attempt=2)
    assert s2.restore() == {"step": 1}
    finish(s2)


def test_state_over_memory_budget_is_skipped(tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    s = open_session(make_manager(tmp_path), clock, budget=50_000)  # the RNG states fit
    clock.now += 11
    with caplog.at_level(logging.ERROR):
        assert s.checkpoint({"big": np.zeros(10_000)}) is False
    assert "memory budget" in caplog.text
    clock.now += 11
    assert s.checkpoint({"small": np.zeros(10)}) is True
    wait_persisted(s)
    assert s.last_commit is not None
    finish(s)


def test_storage_unavailable_is_skipped_then_retried(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    # db_size_limit=1: every blob goes to the object store (a directory here).
    s = open_session(make_manager(tmp_path, db_size_limit=1), clock)
    blobs = tmp_path / "blobs"
    blobs.mkdir(exist_ok=True)
    shutil.move(blobs, tmp_path / "away")
    blobs.write_text("not a directory")  # the store cannot write below a file
    clock.now += 11
    with caplog.at_level(logging.WARNING):
        assert s.checkpoint({"a": np.arange(50.0)}) is True
        wait_persisted(s)
    assert s.last_commit is None
    assert "trying again at the next interval" in caplog.text
    blobs.unlink()
    shutil.move(tmp_path / "away", blobs)
    clock.now += 11
    assert s.checkpoint({"a": np.arange(50.0)}) is True
    wait_persisted(s)
    assert s.last_commit is not None and s.last_commit.kind == "base"
    finish(s)


def test_forced_checkpoint_ignores_interval(tmp_path: Path) -> None:
    clock, manager = Clock(), make_manager(tmp_path)
    s = open_session(manager, clock)
    assert manager.request_force("job1:0") is True
    s._poll_force()
    assert s.checkpoint({"x": 1}) is True  # interval not elapsed, but forced
    wait_persisted(s)
    assert s.checkpoint({"x": 2}) is False  # the force was consumed
    finish(s)


def test_zombie_attempt_is_fenced(tmp_path: Path) -> None:
    clock, manager = Clock(), make_manager(tmp_path)
    zombie = open_session(manager, clock, attempt=1)
    clock.now += 11
    assert zombie.checkpoint({"who": "zombie", "n": 1}) is True
    wait_persisted(zombie)
    retry = open_session(manager, clock, attempt=2)  # new epoch
    clock.now += 11
    assert zombie.checkpoint({"who": "zombie", "n": 2}) is True
    wait_persisted(zombie)
    assert zombie._fenced is True
    assert zombie.last_commit is not None and zombie.last_commit.seq == 1
    finish(zombie)
    finish(retry)
    s3 = open_session(manager, clock, attempt=3)
    assert s3.restore() == {"who": "zombie", "n": 1}
    finish(s3)


def test_stale_checkpoint_restarts_from_scratch(tmp_path: Path) -> None:
    clock, manager = Clock(), make_manager(tmp_path)
    s = open_session(manager, clock)
    clock.now += 11
    assert s.checkpoint({"step": 3}) is True
    wait_persisted(s)
    finish(s)
    fresh = open_session(manager, clock, attempt=2, max_age=3600.0)
    assert fresh.restore() == {"step": 3}
    finish(fresh)
    stale = open_session(manager, clock, attempt=3, max_age=0.0)
    assert stale.restore() is None
    finish(stale)
    again = open_session(manager, clock, attempt=4, max_age=None)
    assert again.restore() is None  # the stale chain was deleted
    finish(again)


def test_compaction_is_invisible(tmp_path: Path) -> None:
    clock, manager = Clock(), make_manager(tmp_path, max_deltas_per_base=3)
    s = open_session(manager, clock)
    state = {"w": np.random.default_rng(0).standard_normal(20_000), "step": 0}
    kinds = []
    for i in range(10):
        state["w"][i] = i + 1
        state["step"] = i
        clock.now += 11
        assert s.checkpoint(state) is True
        wait_persisted(s)
        kinds.append(s.last_commit.kind)
    finish(s)
    assert kinds == ["base", "delta", "delta", "delta"] * 2 + ["base", "delta"]
    s2 = open_session(manager, clock, attempt=2)
    got = s2.restore()
    assert got["step"] == 9
    assert np.array_equal(got["w"], state["w"])
    finish(s2)


def _die_mid_persist(tmp: str) -> None:
    """Child process: commit one checkpoint, then die while writing the next."""
    manager = make_manager(Path(tmp), db_size_limit=1)
    clock = Clock()
    s = open_session(manager, clock)
    clock.now += 11
    s.checkpoint({"n": 1, "a": np.arange(10.0)})
    wait_persisted(s)
    store = manager.tiers.objects
    original = store.put_pieces   # what the writer stores each part with

    def put_then_die(key: str, pieces: Any) -> None:
        original(key, pieces)
        os._exit(9)  # the worker dies with a blob written and nothing committed

    store.put_pieces = put_then_die  # type: ignore[method-assign]
    clock.now += 11
    s.checkpoint({"n": 2, "a": np.arange(10.0) * 2})
    wait_persisted(s)


def test_worker_killed_while_persisting_resumes_from_last_commit(tmp_path: Path) -> None:
    proc = multiprocessing.get_context("spawn").Process(target=_die_mid_persist,
                                                         args=(str(tmp_path),))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 9
    manager = make_manager(tmp_path, db_size_limit=1)
    written = list((tmp_path / "blobs").rglob("*"))
    assert any(p.is_file() for p in written)
    s = open_session(manager, Clock(), attempt=2)
    assert s.restore()["n"] == 1
    finish(s)
    assert manager.sweep_orphans(grace_seconds=0) >= 1



def _draws() -> tuple[float, float, bytes]:
    import random

    import torch

    return random.random(), float(np.random.random()), torch.rand(8).numpy().tobytes()


def test_restore_puts_the_global_rng_states_back(tmp_path: Path) -> None:
    import random

    import torch

    clock, manager = Clock(), make_manager(tmp_path)
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    s1 = open_session(manager, clock)
    clock.now += 11
    assert s1.checkpoint({"step": 3}) is True
    wait_persisted(s1)
    finish(s1)
    after_checkpoint = [_draws() for _ in range(3)]
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    s2 = open_session(manager, clock, attempt=2)
    assert s2.restore() == {"step": 3}
    assert [_draws() for _ in range(3)] == after_checkpoint
    finish(s2)


def test_rng_false_leaves_the_generators_alone(tmp_path: Path) -> None:
    import random

    import torch

    clock, manager = Clock(), make_manager(tmp_path)
    s1 = open_session(manager, clock)
    clock.now += 11
    assert s1.checkpoint({"step": 3}, rng=False) is True
    wait_persisted(s1)
    finish(s1)
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    expected = _draws()
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    s2 = open_session(manager, clock, attempt=2)
    assert s2.restore() == {"step": 3}
    assert _draws() == expected
    finish(s2)


def test_generator_objects_in_the_state_come_back_bit_exact(tmp_path: Path) -> None:
    import torch

    clock, manager = Clock(), make_manager(tmp_path)
    np_gen, torch_gen = np.random.default_rng(5), torch.Generator().manual_seed(5)
    np_gen.random(3), torch.rand(3, generator=torch_gen)  # advanced past their seeds
    s1 = open_session(manager, clock)
    clock.now += 11
    assert s1.checkpoint({"np": np_gen, "torch": torch_gen}) is True
    wait_persisted(s1)
    finish(s1)
    want = (np_gen.random(4).tobytes(), torch.rand(4, generator=torch_gen).numpy().tobytes())
    s2 = open_session(manager, clock, attempt=2)
    got = s2.restore()
    assert (got["np"].random(4).tobytes(),
            torch.rand(4, generator=got["torch"]).numpy().tobytes()) == want
    finish(s2)


def test_checkpoint_due_and_a_callable_state(tmp_path: Path) -> None:
    clock, manager = Clock(), make_manager(tmp_path)
    ctx = TaskContext("job1", "job1:0", 0, 1)
    s = TaskCheckpointSession(manager, ctx, interval=None, every_steps=2, max_age=None,
                              memory_budget=None, clock=clock)
    s.start()
    built: list[int] = []
    assert s.checkpoint_due() is False
    assert s.checkpoint(lambda: built.append(1) or {"x": 1}) is False
    assert s.checkpoint_due() is True
    assert s.checkpoint(lambda: built.append(2) or {"x": 2}) is True
    wait_persisted(s)
    assert built == [2]
    assert s.checkpoint_due() is False
    finish(s)


def _addresses(snapshot: Any) -> set[int]:
    return {leaf.data.__array_interface__["data"][0] for leaf in snapshot.leaves
            if leaf.kind == "array" and leaf.data.nbytes}


def test_the_first_capture_copies_into_buffers_made_halfway_to_it(tmp_path: Path) -> None:
    """Halfway to the first checkpoint the session makes its capture buffers on the
    persist thread; the capture then takes exactly those, and none before halfway."""
    clock = Clock()
    s = open_session(make_manager(tmp_path), clock)
    state = {"w": np.arange(300_000, dtype=np.float32), "b": np.ones(1000), "step": 3}
    assert s.checkpoint(state) is False
    clock.now += 4.9
    assert s.checkpoint(state) is False
    assert s._prepared is False and s._writer is not None and not s._writer.pool._free
    clock.now += 0.2                                   # half of the 10 s interval
    assert s.checkpoint(state) is False
    assert s._prepared is True
    s._persister.submit(lambda: None).result(timeout=30)   # the buffers are made by now
    free = {key: [b.array.__array_interface__["data"][0] for b in bufs]
            for key, bufs in s._writer.pool._free.items()}
    assert sorted(k[1] for k in free) == [8000, 1_200_000]   # one per array leaf, sized
    clock.now += 5.0
    assert s.checkpoint(state) is True
    assert s._inflight is not None
    assert s._inflight.result(timeout=30) is not None
    head = s._writer.previous
    assert head is not None
    assert _addresses(head) == {a for addrs in free.values() for a in addrs}
    copied = [leaf.data for leaf in head.leaves if leaf.kind == "array" and leaf.data.nbytes == 1_200_000]
    assert len(copied) == 1 and np.array_equal(copied[0].view(np.float32), state["w"])
    finish(s)


def test_no_buffers_are_made_ahead_for_a_lazy_state_or_one_over_budget(tmp_path: Path) -> None:
    clock = Clock()
    s = open_session(make_manager(tmp_path), clock, budget=1000)
    clock.now += 6
    assert s.checkpoint({"w": np.zeros(10_000)}) is False      # 80 kB, budget 1 kB
    assert s._prepared is True
    s._persister.submit(lambda: None).result(timeout=30)
    assert s._writer is not None and not s._writer.pool._free
    finish(s)
    s2 = open_session(make_manager(tmp_path / "2"), clock)
    calls: list[int] = []
    clock.now += 6
    assert s2.checkpoint(lambda: calls.append(1) or {"w": np.zeros(10)}) is False
    assert calls == [] and s2._prepared is True
    assert s2._writer is not None and not s2._writer.pool._free
    finish(s2)


def test_a_refused_stale_capture_is_taken_again_at_the_next_call(tmp_path: Path, caplog) -> None:
    """A tensor written through ``.data`` in one element (past its version counter and the
    capture's spot check) makes the writer refuse that snapshot; the session captures again
    at the very next call, copying the tensor, and the next attempt restores it exactly."""
    torch = pytest.importorskip("torch")
    clock, manager = Clock(), make_manager(tmp_path)
    s1 = open_session(manager, clock)
    model = torch.nn.Linear(512, 512)
    state = {"step": 1, "model": model}
    clock.now += 11
    assert s1.checkpoint(state) is True
    wait_persisted(s1)
    model.weight.data[3, 3] = 42.0
    state["step"] = 2
    clock.now += 11
    assert s1.checkpoint(state) is True
    assert s1.flush(timeout=30) is None                  # refused: nothing stored
    assert s1.last_commit is not None and s1.last_commit.seq == 1
    assert "checkpoint not stored" in caplog.text and "model/weight" in caplog.text
    assert s1.checkpoint_due() is True                    # no interval to wait for
    assert s1.checkpoint(state) is True
    wait_persisted(s1)
    assert s1.last_commit.seq == 2
    finish(s1)
    got = open_session(manager, clock, attempt=2).restore()
    assert got["step"] == 2
    assert torch.equal(got["model"]["weight"], model.weight)
