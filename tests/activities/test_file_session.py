"""TaskCheckpointSession with files and keep="final", against a real SQLite catalog and
blob directory (no Temporal): what the task process does at attempt start and end."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from activities.checkpointing import TaskCheckpointSession
from checkpoint import CheckpointManager
from sdk._task import TaskContext


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _manager(tmp: Path) -> CheckpointManager:
    return CheckpointManager.from_urls(f"sqlite:///{tmp}/catalog.db", f"file://{tmp}/blobs")


def _session(manager: CheckpointManager, clock: Clock, attempt: int, **kw: Any
             ) -> TaskCheckpointSession:
    ctx = TaskContext("job1", "job1:0", 0, attempt)
    session = TaskCheckpointSession(manager, ctx, interval=10.0, max_age=None,
                                    memory_budget=None, clock=clock, **kw)
    session.start()
    return session


def _close(session: TaskCheckpointSession, succeeded: bool) -> None:
    asyncio.run(session.close(succeeded=succeeded))


def test_files_come_back_with_their_state_and_the_directory_goes(tmp_path: Path) -> None:
    manager, clock = _manager(tmp_path), Clock()
    work = tmp_path / "work"
    work.mkdir()
    first = _session(manager, clock, 1)
    assert first.restore_files() is None
    first.checkpoint_files(str(work))
    for step in (1, 2):
        (work / "model.txt").write_text(f"step {step}")
        clock.now += 10
        assert first.checkpoint({"step": step}) is True
        first.flush(30)
    (work / "model.txt").write_text("step 3, never checkpointed")
    _close(first, succeeded=False)

    second = _session(manager, clock, 2)
    restored = second.restore_files()
    assert second.restore() == {"step": 2}
    assert restored is not None
    assert (Path(restored) / "model.txt").read_text() == "step 2"
    _close(second, succeeded=False)
    assert not os.path.exists(restored)   # the attempt's own directory is removed
    assert manager.kept_tasks() == []


def test_keep_final_commits_the_last_offered_state(tmp_path: Path) -> None:
    manager, clock = _manager(tmp_path), Clock()
    session = _session(manager, clock, 1, keep="final")
    state = {"step": 0}
    for step in range(1, 4):          # never due: the interval does not elapse
        state["step"] = step
        assert session.checkpoint(state) is False
    state["done"] = True              # changed after the last call: kept as it is at the end
    _close(session, succeeded=True)
    [kept] = manager.kept_tasks()
    assert kept.task_id == "job1:0" and kept.status == "kept"
    restored = manager.restore_kept("job1:0")
    assert restored is not None and restored.state["state"] == {"step": 3, "done": True}


def test_a_failed_attempt_keeps_nothing(tmp_path: Path) -> None:
    manager, clock = _manager(tmp_path), Clock()
    session = _session(manager, clock, 1, keep="final")
    clock.now += 10
    assert session.checkpoint({"step": 1}) is True
    _close(session, succeeded=False)
    assert manager.kept_tasks() == []


def test_keep_final_takes_a_refused_last_capture_again(tmp_path: Path) -> None:
    """The task's last call captured, but the writer refused the snapshot (a tensor written
    through ``.data`` escaped the spot check): the final commit captures that state again."""
    torch = pytest.importorskip("torch")
    manager, clock = _manager(tmp_path), Clock()
    session = _session(manager, clock, 1, keep="final")
    model = torch.nn.Linear(256, 256)
    clock.now += 10
    assert session.checkpoint({"model": model}) is True
    session.flush(30)
    model.weight.data[1, 1] = 5.0
    clock.now += 10
    assert session.checkpoint({"model": model}) is True   # the task's last call, then it returns
    _close(session, succeeded=True)
    [kept] = manager.kept_tasks()
    assert kept.status == "kept"
    restored = manager.restore_kept("job1:0")
    assert restored is not None and restored.seq == 2
    assert torch.equal(restored.state["state"]["model"]["weight"], model.weight)
