"""``crowdcompute gc`` against a real Temporal dev server and a real catalog."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tasks
from _helpers import worker_env

import sdk
from checkpoint import CheckpointManager
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
    assert manager.jobs_with_checkpoints() == ["gc-running", "gc-terminated", "gc-unknown"]
    blobs_before = sum(1 for p in orphan_dir.rglob("*") if p.is_file())

    out = subprocess.run(
        [str(Path(sys.executable).with_name("crowdcompute")), "gc", "--grace", "0"],
        env=worker_env(settings), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "deleted 2 that are not running (gc-terminated, gc-unknown)" in out.stdout

    assert manager.jobs_with_checkpoints() == ["gc-running"]
    assert manager.restore("gc-running", "gc-running:0") is not None
    blobs_after = sum(1 for p in orphan_dir.rglob("*") if p.is_file())
    assert (blobs_before, blobs_after) == (3, 1)
    await running.cancel()
    del terminated


async def test_gc_trims_the_job_item_store(settings: Settings, conn: sdk.Connection,
                                           worker: None) -> None:
    from sdk._job_items import ITEMS, RESULTS, JobItemsMissing, build_job_item_store
    from worker_app.gc import collect_job_items
    from workflows.payloads import json_payload, json_value, pack, unpack

    store = build_job_item_store(settings)
    done = await sdk.submit(tasks.square, [3], job_id="items-done")
    assert await done.result() == [9]
    # A big job that keeps running: its items are still being read.
    running = await sdk.submit(tasks.sleep_until_cancelled, [60.0] * 1001,
                               job_id="items-running")
    assert store.manifest("items-running") == {"count": 1001, "chunk_size": 1000, "format": "payloads"}
    # A finished job's entry (as a stored job leaves it), and one Temporal never knew.
    for job_id in ("items-done", "items-unknown"):
        store.put_items(job_id, [json_payload("a"), json_payload("b")], 1)
        store.put_payload(job_id, RESULTS, 0, pack([json_payload("r0")]))
        store.put_payload(job_id, RESULTS, 1, pack([json_payload("r1")]))

    def first_item(job_id: str, chunk: int) -> object:
        return json_value(unpack(store.get_payload(job_id, ITEMS, chunk))[0])

    # Within the grace period nothing goes: a client writes items before it starts a job.
    assert await collect_job_items(store, conn.client, grace_seconds=3600) == ([], [])
    assert first_item("items-unknown", 0) == "a"

    out = subprocess.run(
        [str(Path(sys.executable).with_name("crowdcompute")), "gc", "--grace", "0"],
        env=worker_env(settings), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert ("job item store: deleted the items of 1 finished job(s) (items-done) and "
            "everything of 1 job(s) Temporal no longer knows (items-unknown)") in out.stdout
    # result() still works
    assert [json_value(p) for p in store.read_results("items-done") or []] == ["r0", "r1"]
    with pytest.raises(JobItemsMissing):
        store.get_payload("items-done", ITEMS, 0)
    assert store.manifest("items-unknown") is None
    assert first_item("items-running", 1) == first_item("items-running", 0) == 60.0
    assert sorted(store.job_ages()) == ["items-done", "items-running"]
    await running.cancel()
