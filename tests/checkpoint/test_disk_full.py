"""Disk full: a real tmpfs that fills up under the blob store and the SQLite catalog.

Nothing is patched: the kernel answers ENOSPC and SQLite "database or disk is
full". Saves keep committing deltas while a base does not fit, the task's view
says so, and everything recovers when space returns.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from activities.checkpointing import TaskCheckpointSession
from checkpoint import CheckpointManager, CommitInfo, ManagerConfig
from checkpoint.errors import StorageFull
from sdk._heartbeats import _beat
from sdk._task import TaskContext
from worker_app import metrics
from worker_app.api._queries import CatalogReader

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("mount") is None,
    reason="needs root to mount a tmpfs (a filesystem that really fills up)")

MiB = 1 << 20


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _fill(disk: Path, leave: int) -> Path:
    """A filler file that leaves about ``leave`` bytes free (0: as full as it gets)."""
    filler = disk / f"filler-{len(list(disk.glob('filler-*')))}"
    chunk = b"\0" * MiB
    with open(filler, "wb", buffering=0) as fh:
        try:
            while _free(disk) - len(chunk) > leave:
                fh.write(chunk)

            if leave == 0:
                while True:
                    fh.write(b"\0" * 4096)

        except OSError:
            pass
    return filler


def _manager(disk: Path) -> CheckpointManager:
    return CheckpointManager.from_urls(
        f"sqlite:///{disk}/catalog.db", f"file://{disk}/blobs",
        config=ManagerConfig(db_size_limit=64 * 1024, max_deltas_per_base=3))


def _state() -> dict:
    rng = np.random.default_rng(7)
    return {"w": rng.standard_normal((768, 1024)), "step": 0}   # 6 MiB, hardly compressible


def _step(state: dict, n: int) -> None:
    state["w"][n] += 1.0   # one row: a small delta
    state["step"] = n


def test_saves_continue_as_deltas_and_recover_when_space_returns(small_disk: Path) -> None:
    manager = _manager(small_disk)
    attempt = manager.open_attempt("job", "t")
    writer = attempt.writer
    state = _state()
    kinds = []
    for n in (1, 2, 3):
        _step(state, n)
        kinds.append(writer.save(writer.capture(state)).kind)
    assert kinds == ["base", "delta", "delta"]
    filler = _fill(small_disk, leave=3 * MiB)      # room for small deltas, not for a new base
    committed = {}
    seqs = []
    for n in (4, 5, 6, 7):  # the 5th save wants a base (3 deltas); stretched, 6 are allowed
        _step(state, n)
        info = writer.save(writer.capture(state))
        assert info.kind == "delta"
        seqs.append(info.seq)
        committed = copy_state_w(state)
    assert seqs == [4, 6, 7, 8]   # seq 5 was the base that did not fit (a seq is never reused)
    assert writer.storage_full is True
    assert manager.task_view("t").storage_full_since is not None
    _step(state, 8)
    with pytest.raises(StorageFull):   # past the stretched limit a base is needed
        writer.save(writer.capture(state))
    fresh = _manager(small_disk)
    restored = fresh.restore("job", "t")
    assert restored is not None and restored.truncated is False and restored.seq == 8
    assert states_equal_w(restored.state, committed) is True
    used_before = _free(small_disk)
    filler.unlink()                           # space returns
    _step(state, 9)
    info = writer.save(writer.capture(state))
    assert info.kind == "base"
    assert writer.storage_full is False
    assert manager.task_view("t").storage_full_since is None
    assert [link.seq for link in manager.task_view("t").chain] == [info.seq]
    assert _free(small_disk) > used_before    # the old chain was retired
    assert states_equal_w(fresh.restore("job", "t").state, state) is True
    manager.delete_task("t")
    assert list((small_disk / "blobs").rglob("p*")) == []


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _checkpoint(session: TaskCheckpointSession, clock: _Clock, state: dict) -> CommitInfo | None:
    """One due checkpoint of ``state`` through the task's session, persisted: what committed."""
    clock.now += 11
    assert session.checkpoint(state) is True
    return session.flush(timeout=60)


def _metric(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_storage_full_shows_in_metrics_heartbeats_and_the_api_view(small_disk: Path) -> None:
    """What an operator sees while a task's saves are short of space, through the
    worker's own path: a task's checkpoint session reporting to the Prometheus
    observer, and the REST API's query layer over the same catalog."""
    manager = _manager(small_disk)
    reader = CatalogReader(manager)
    clock = _Clock()
    session = TaskCheckpointSession(manager, TaskContext("job", "job:0", 0, 1), interval=10.0,
                                    max_age=None, memory_budget=None, clock=clock,
                                    observer=metrics.PrometheusObserver())
    session.start()
    full_commits = "crowdcompute_checkpoint_storage_full_commits_total"
    no_room = ("crowdcompute_checkpoints_skipped_total", {"reason": "storage_full"})
    before = (_metric(full_commits), _metric(no_room[0], **no_room[1]))
    state = _state()
    try:
        for n in (1, 2, 3, 4):      # base, three deltas: the next save wants a base
            _step(state, n)
            info = _checkpoint(session, clock, state)
            assert info is not None and info.storage_full is False
        filler = _fill(small_disk, leave=3 * MiB)
        kinds = []
        for n in (5, 6, 7):         # the base does not fit: deltas, past the usual limit
            _step(state, n)
            info = _checkpoint(session, clock, state)
            assert info is not None and info.storage_full is True
            kinds.append(info.kind)
        assert kinds == ["delta", "delta", "delta"]
        assert _metric(full_commits) - before[0] == 3
        assert session.heartbeat_details()["storage_full"] is True
        # ... and what JobHandle.progress() makes of these details (TaskProgress.storage_full)
        assert _beat(session.heartbeat_details(), 0.0)[3] is True
        detail = reader.task_detail("job:0")
        assert detail is not None and detail.storage_full_since is not None
        summaries = reader.job_tasks("job")
        assert summaries is not None and summaries[0].storage_full_since == detail.storage_full_since
        _step(state, 8)             # six deltas: past the stretched limit, no room at all
        assert _checkpoint(session, clock, state) is None
        assert _metric(no_room[0], **no_room[1]) - before[1] == 1
        filler.unlink()             # space returns
        _step(state, 9)
        info = _checkpoint(session, clock, state)
        assert info is not None and (info.kind, info.storage_full) == ("base", False)
        assert _metric(full_commits) - before[0] == 3
        assert "storage_full" not in session.heartbeat_details()
        assert _beat(session.heartbeat_details(), 0.0)[3] is False
        detail = reader.task_detail("job:0")
        assert detail is not None and detail.storage_full_since is None
    finally:
        asyncio.run(session.close(succeeded=False))


def test_a_full_catalog_recovers_when_space_returns(small_disk: Path) -> None:
    manager = _manager(small_disk)
    writer = manager.open_attempt("job", "t").writer
    state = {"small": np.arange(1000, dtype=np.float64), "step": 0}
    for n in (1, 2):
        state["small"][n] = -n
        state["step"] = n
        writer.save(writer.capture(state))
    committed = copy_state_w(state)
    filler = _fill(small_disk, leave=0)       # nothing left: SQLite cannot commit either
    failures = 0
    for n in (3, 4):
        state["small"][n] = -n
        state["step"] = n
        try:
            writer.save(writer.capture(state))
        except StorageFull:
            failures += 1
    assert failures == 2
    assert states_equal_w(_manager_readonly(small_disk).restore("job", "t").state, committed)
    filler.unlink()
    state["step"] = 5
    info = writer.save(writer.capture(state))
    assert info.seq >= 5
    assert states_equal_w(_manager(small_disk).restore("job", "t").state, state) is True


def _manager_readonly(disk: Path) -> CheckpointManager:
    return CheckpointManager.from_urls(f"sqlite:///{disk}/catalog.db", f"file://{disk}/blobs",
                                       migrate=False)


def copy_state_w(state: dict) -> dict:
    return {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in state.items()}


def states_equal_w(a: dict, b: dict) -> bool:
    return sorted(a) == sorted(b) and all(
        np.array_equal(a[k], b[k]) if isinstance(b[k], np.ndarray) else a[k] == b[k] for k in b)



def _tree(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


def test_files_that_do_not_fit_leave_nothing_behind(small_disk: Path, tmp_path: Path) -> None:
    """A save whose file chunks find no room fails with StorageFull, deletes what it
    wrote, and the last committed state and files stay restorable."""
    manager = _manager(small_disk)
    writer = manager.open_attempt("job", "t").writer
    rng = np.random.default_rng(3)
    src = tmp_path / "files"
    src.mkdir()
    (src / "a.bin").write_bytes(rng.bytes(2 * MiB))
    writer.save(writer.capture({"step": 1}), files=writer.capture_files(str(src)))
    first = _tree(src)
    stored = sorted((small_disk / "blobs").rglob("c*"))
    filler = _fill(small_disk, leave=2 * MiB)
    (src / "b.bin").write_bytes(rng.bytes(12 * MiB))  # three 4 MiB chunks: they cannot fit
    with pytest.raises(StorageFull):
        writer.save(writer.capture({"step": 2}), files=writer.capture_files(str(src)))
    assert sorted((small_disk / "blobs").rglob("c*")) == stored
    out = tmp_path / "restored"
    out.mkdir()
    restored = manager.restore("job", "t", files_dir=str(out))
    assert restored is not None and (restored.seq, restored.state) == (1, {"step": 1})
    assert _tree(out) == first
    filler.unlink()                           # space returns
    info = writer.save(writer.capture({"step": 3}), files=writer.capture_files(str(src)))
    assert info.file_bytes >= 12 * MiB         # only b.bin's chunks were new
    assert info.file_bytes < 14 * MiB
    again = tmp_path / "again"
    again.mkdir()
    restored = manager.restore("job", "t", files_dir=str(again))
    assert restored is not None and restored.state == {"step": 3}
    assert _tree(again) == _tree(src)
