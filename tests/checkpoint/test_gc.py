"""Cleanup: delete_task, delete_job and the orphan sweeper."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from ckpt_helpers import all_blob_keys, build_manager, count_rows, make_state, mutate
from crash_helpers import crash_mid_put

from checkpoint import CheckpointManager
from checkpoint._ids import blob_key
from checkpoint.gc import select_orphans
from checkpoint.stores import BlobInfo, FsStore, SqlStore
from checkpoint.stores.s3 import S3Store


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


def fs_manager(sqlite_engine, root: Path) -> CheckpointManager:
    return build_manager((sqlite_engine, SqlStore(sqlite_engine), FsStore(root)),
                         db_size_limit=4096, max_deltas_per_base=5)


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_sweep_removes_temp_files_of_crashed_puts(sqlite_engine, tmp_path: Path) -> None:
    root = tmp_path / "objects"
    manager = fs_manager(sqlite_engine, root)
    fill(manager, "job", "a")
    committed = files_under(root)
    crash_mid_put(root, blob_key("ckpt", "job", "a", 1, 9, 1))
    crash_mid_put(root, "outside/prefix")  # not ours: never swept
    assert len(files_under(root)) == len(committed) + 2
    assert manager.sweep_orphans() == 0  # younger than the default grace period
    assert manager.sweep_orphans(grace_seconds=0) == 1
    assert [f for f in files_under(root) if not f.startswith("outside/")] == committed
    assert manager.restore("job", "a") is not None


def test_delete_task_removes_temp_files(sqlite_engine, tmp_path: Path) -> None:
    root = tmp_path / "objects"
    manager = fs_manager(sqlite_engine, root)
    fill(manager, "job", "a")
    fill(manager, "job", "b")
    crash_mid_put(root, blob_key("ckpt", "job", "a", 2, 1, 1))
    manager.delete_task("a")
    assert all(f.startswith("ckpt/job/b/") for f in files_under(root))
    manager.delete_task("b")
    assert files_under(root) == []


def s3_uploads(store: S3Store) -> list[str]:
    listing = store.client.list_multipart_uploads(Bucket=store.bucket)
    return sorted(u["Key"] for u in listing.get("Uploads", []))


def test_sweep_aborts_stale_multipart_uploads(pg_engine, s3_store: S3Store) -> None:
    manager = build_manager((pg_engine, SqlStore(pg_engine), s3_store), db_size_limit=4096)
    fill(manager, "job", "a")
    client = s3_store.client
    # what a process killed between creating an upload and completing it leaves
    for key in [blob_key("ckpt", "job", "a", 1, 9, 1), "outside/prefix"]:
        client.create_multipart_upload(Bucket=s3_store.bucket, Key=f"runs/a/{key}")
    assert manager.sweep_orphans(grace_seconds=0) == 1
    assert s3_uploads(s3_store) == ["runs/a/outside/prefix"]
    assert manager.restore("job", "a") is not None


def test_delete_task_aborts_its_multipart_uploads(pg_engine, s3_store: S3Store) -> None:
    manager = build_manager((pg_engine, SqlStore(pg_engine), s3_store), db_size_limit=4096)
    fill(manager, "job", "a")
    fill(manager, "job", "b")
    client = s3_store.client
    for key in [blob_key("ckpt", "job", "a", 3, 1, 1), blob_key("ckpt", "job", "b", 3, 1, 1)]:
        client.create_multipart_upload(Bucket=s3_store.bucket, Key=f"runs/a/{key}")
    manager.delete_task("a")
    assert s3_uploads(s3_store) == ["runs/a/" + blob_key("ckpt", "job", "b", 3, 1, 1)]
    assert all(k.startswith("ckpt/job/b/") for k in all_blob_keys(manager))
