"""``crowdcompute gc`` against a real Temporal dev server and a real catalog."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import tasks
from _helpers import worker_env

import sdk
from checkpoint import CheckpointManager
from worker_app.gc import jobs_with_checkpoints
from worker_app.settings import Settings
from worker_app.worker import build_checkpoints


def commit_one(manager: CheckpointManager, job_id: str) -> None:
    task_id = f"{job_id}:0"
    writer = manager.open_attempt(job_id, task_id).writer
    state = {"w": np.random.default_rng(0).standard_normal(300_000)}  # 2.4 MB: object store
    writer.save(writer.capture(state))


async def test_gc_deletes_data_of_jobs_that_are_not_running(settings: Settings,
                                                           conn: sdk.Connection) -> None:
    manager = build_checkpoints(settings).manager
    # No worker polls this test's task queue: the submitted job stays running.
    running = await sdk.submit(tasks.square, [1], job_id="gc-running")
    terminated = await sdk.submit(tasks.square, [2], job_id="gc-terminated")
    await conn.client.get_workflow_handle("gc-terminated").terminate("test")
    for job_id in ("gc-running", "gc-terminated", "gc-unknown"):
        commit_one(manager, job_id)
    orphan_dir = Path(settings.blob_url.removeprefix("file://"))
    assert jobs_with_checkpoints(manager) == ["gc-running", "gc-terminated", "gc-unknown"]
    blobs_before = sum(1 for p in orphan_dir.rglob("*") if p.is_file())

    out = subprocess.run(
        [str(Path(sys.executable).with_name("crowdcompute")), "gc", "--grace", "0"],
        env=worker_env(settings), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "deleted 2 that are not running (gc-terminated, gc-unknown)" in out.stdout

    assert jobs_with_checkpoints(manager) == ["gc-running"]
    assert manager.restore("gc-running", "gc-running:0") is not None
    blobs_after = sum(1 for p in orphan_dir.rglob("*") if p.is_file())
    assert (blobs_before, blobs_after) == (3, 1)
    await running.cancel()
    del terminated
