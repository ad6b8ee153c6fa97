"""Re-attach to jobs after the client that started them is gone: get_job, list_jobs, `jobs`."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import tasks
from _helpers import wait_for, worker_env

import sdk
from worker_app.settings import Settings


async def test_get_job_from_a_fresh_connection(worker: None, settings: Settings) -> None:
    job_id = f"reattach-{uuid.uuid4().hex[:8]}"
    await sdk.submit(tasks.square, [1, 2, 3], job_id=job_id)
    await sdk.connect(settings=settings)          # as a new client would
    job = await sdk.get_job(job_id)
    assert job.job_id == job_id
    assert await job.result() == [1, 4, 9]
    progress = await job.progress()
    assert progress.counts["completed"] == 3


async def test_get_job_can_cancel(worker: None, settings: Settings) -> None:
    job_id = f"reattach-cancel-{uuid.uuid4().hex[:8]}"
    await sdk.submit(tasks.sleep_until_cancelled, [60.0], job_id=job_id)
    job = await sdk.get_job(job_id)
    await job.cancel()
    with pytest.raises(sdk.JobCancelled):
        await job.result()


async def test_get_job_errors(conn: sdk.Connection) -> None:
    with pytest.raises(sdk.JobNotFound, match="no job 'never-started'"):
        await sdk.get_job("never-started")
    with pytest.raises(ValueError, match="invalid job id"):
        await sdk.get_job("bad id")
    with pytest.raises(ValueError, match="unknown job status 'done'"):
        await sdk.list_jobs(status="done")


async def test_list_jobs_by_status_and_the_cli(worker: None, settings: Settings,
                                              tmp_path: Path) -> None:
    done, failed = f"ls-done-{uuid.uuid4().hex[:8]}", f"ls-failed-{uuid.uuid4().hex[:8]}"
    assert await sdk.map(tasks.square, [2], job_id=done) == [4]
    with pytest.raises(sdk.JobFailed):
        await sdk.map(tasks.fail_always, [1], job_id=failed, max_attempts=1)

    async def listed() -> bool:  # visibility is eventually consistent
        ids = {j.job_id: j.status for j in await sdk.list_jobs(limit=1000)}
        return ids.get(done) == "completed" and ids.get(failed) == "failed"

    await wait_for(listed, timeout=30)
    completed = {j.job_id for j in await sdk.list_jobs(status="completed", limit=1000)}
    assert done in completed and failed not in completed
    assert len(await sdk.list_jobs(limit=1)) == 1
    exe = str(Path(sys.executable).with_name("crowdcompute"))
    out = subprocess.run([exe, "jobs", "--status", "failed", "--limit", "1000"],
                         env=worker_env(settings), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert failed in out.stdout and done not in out.stdout
