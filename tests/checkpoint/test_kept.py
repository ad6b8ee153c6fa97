"""Kept final checkpoints (``keep="final"``) in the library, on both real backends:
cleanup leaves them, ``delete_kept`` removes them, the mark is fenced by the epoch."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from ckpt_helpers import all_blob_keys, build_manager, chain
from sqlalchemy import update
from sqlalchemy.orm import Session

from checkpoint import CheckpointManager
from checkpoint.catalog import TaskRow, jobs_with_checkpoints, utcnow


def _run(manager: CheckpointManager, task_id: str, n: int, root: Path | None = None) -> int:
    attempt = manager.open_attempt("job", task_id)
    writer = attempt.writer
    files = None
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
        (root / "out.txt").write_text(f"{task_id} {n}")
    for step in range(1, n + 1):
        files = writer.capture_files(str(root)) if root is not None else None
        writer.save(writer.capture({"step": step}), files=files)
    return attempt.epoch


def test_cleanup_leaves_kept_tasks_and_delete_kept_removes_them(backend, tmp_path) -> None:
    manager = build_manager(backend, db_size_limit=4096)
    kept_epoch = _run(manager, "job:0", 3, tmp_path / "a")
    _run(manager, "job:1", 2)
    assert manager.mark_kept("job:0", kept_epoch) is True

    manager.delete_task("job:0")          # the per-task cleanup after its result
    manager.delete_job("job")  # the job's cleanup when it ends
    assert chain(manager, "job:0")[-1].seq == 3
    assert chain(manager, "job:1") == []
    assert [t.task_id for t in manager.kept_tasks()] == ["job:0"]
    with Session(manager.engine) as s:
        assert jobs_with_checkpoints(s) == []  # gc's list: nothing left to collect
    assert manager.task_view("job:1").chain == ()  # its counters stay, its data went
    keys = set(all_blob_keys(manager))
    assert keys and all("/job%3A0/" in k for k in keys)

    out = tmp_path / "restored"
    out.mkdir()
    restored = manager.restore_kept("job:0", files_dir=str(out))
    assert restored is not None and restored.state == {"step": 3}
    assert (out / "out.txt").read_text() == "job:0 3"
    assert manager.restore_kept("job:1") is None

    assert manager.delete_kept(older_than_seconds=3600) == []
    assert manager.delete_kept(older_than_seconds=0) == ["job:0"]
    assert manager.kept_tasks() == []
    assert chain(manager, "job:0") == []
    assert all_blob_keys(manager) == []


def test_a_new_job_of_the_same_id_forgets_kept_checkpoints(backend, tmp_path) -> None:
    manager = build_manager(backend, db_size_limit=4096)
    assert manager.mark_kept("job:0", _run(manager, "job:0", 3, tmp_path / "a")) is True
    manager.delete_job("job")
    assert [t.task_id for t in manager.kept_tasks()] == ["job:0"]
    # The first run of a new job "job" forgets the earlier one, kept data included:
    # its task 0 must start from scratch, not from the earlier job's final state.
    manager.delete_job("job", forget=True)
    assert manager.kept_tasks() == [] and manager.task_view("job:0") is None
    assert manager.restore("job", "job:0") is None
    assert all_blob_keys(manager) == []


def test_kept_only_by_the_attempt_that_owns_the_task(backend) -> None:
    manager = build_manager(backend)
    stale = _run(manager, "job:0", 1)
    manager.open_attempt("job", "job:0")   # a newer attempt takes the task
    assert manager.mark_kept("job:0", stale) is False
    assert manager.kept_tasks() == []


def test_a_new_attempt_unkeeps_and_old_keeps_expire_first(backend) -> None:
    manager = build_manager(backend)
    for i in range(2):
        assert manager.mark_kept(f"job:{i}", _run(manager, f"job:{i}", 1)) is True
    with Session(manager.engine) as s, s.begin():
        s.execute(update(TaskRow).where(TaskRow.task_id == "job:0")
                  .values(kept_at=utcnow() - timedelta(days=3)))
    assert manager.delete_kept(older_than_seconds=2 * 86400) == ["job:0"]
    assert [t.task_id for t in manager.kept_tasks("job")] == ["job:1"]
    # a retry of a kept task runs again: it is kept again only when it completes
    manager.open_attempt("job", "job:1")
    assert manager.kept_tasks() == []
