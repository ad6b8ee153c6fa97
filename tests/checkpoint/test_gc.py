"""Cleanup: delete_task, delete_job and the orphan sweeper."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ckpt_helpers import all_blob_keys, count_rows, make_state, mutate

from checkpoint import CheckpointManager
from checkpoint._ids import blob_key
from checkpoint.gc import select_orphans
from checkpoint.stores import BlobInfo


def fill(manager: CheckpointManager, job: str, task: str, steps: int = 3) -> None:
    writer = manager.open_attempt(job, task).writer
    state = make_state()
    for step in range(1, steps + 1):
        mutate(state, step)
        writer.save(writer.capture(state), progress_percent=10.0 * step)


def test_delete_task_leaves_no_rows_and_no_blobs(manager: CheckpointManager) -> None:
    fill(manager, "job", "a")
    fill(manager, "job", "b")
    # a stray blob of a fenced attempt under the task's prefix
    manager.tiers.objects.put(blob_key("ckpt", "job", "a", 9, 9, 0), b"zombie")
    manager.delete_task("a")
    assert all(k.startswith("ckpt/job/b/") for k in all_blob_keys(manager))
    assert [t.task_id for t in manager.job_tasks("job")] == ["a", "b"]
    detail = manager.task_view("a")
    assert (detail.checkpoint_count, detail.progress_percent, detail.chain) == (3, 30.0, ())
    assert manager.restore("job", "a") is None
    manager.delete_task("b")
    assert all_blob_keys(manager) == []
    assert count_rows(manager) == {"tasks": 2, "checkpoints": 0, "blobs": 0}


def test_delete_job(manager: CheckpointManager) -> None:
    fill(manager, "job/1", "a")
    fill(manager, "job/1", "b")
    fill(manager, "other", "c")
    manager.delete_job("job/1")
    assert all(k.startswith("ckpt/other/") for k in all_blob_keys(manager))
    assert count_rows(manager)["checkpoints"] == 1 * 3  # only "other" (no compaction in 3)
    assert sum(t.checkpoint_count for t in manager.job_tasks("job/1")) == 6
    manager.delete_job("job/1", forget=True)
    manager.delete_job("other", forget=True)
    assert all_blob_keys(manager) == []
    assert count_rows(manager) == {"tasks": 0, "checkpoints": 0, "blobs": 0}


def test_sweep_orphans(manager: CheckpointManager) -> None:
    fill(manager, "job", "a")
    committed = all_blob_keys(manager)
    orphan_sql = blob_key("ckpt", "job", "a", 7, 1, 0)
    orphan_obj = blob_key("ckpt", "job", "gone", 1, 1, 0)
    manager.tiers.sql.put(orphan_sql, b"x")
    manager.tiers.objects.put(orphan_obj, b"y" * 10_000)
    manager.tiers.objects.put("outside/prefix", b"z")  # not ours: never swept
    assert manager.sweep_orphans() == 0  # younger than the default grace period
    assert manager.sweep_orphans(grace_seconds=0) == 2
    assert all_blob_keys(manager) == sorted(committed + ["outside/prefix"])
    assert manager.restore("job", "a") is not None


def test_select_orphans_policy() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    old, new = now - timedelta(seconds=100), now - timedelta(seconds=10)
    blobs = [BlobInfo("a", 1, old), BlobInfo("b", 1, old), BlobInfo("c", 1, new)]
    assert select_orphans(blobs, {"a"}, now, 50) == ["b"]
    assert select_orphans(blobs, set(), now, 5) == ["a", "b", "c"]
    assert select_orphans(blobs, set(), now, 1000) == []
