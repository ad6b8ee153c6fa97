"""Running tasks: visibility, progress query, cancellation, worker death."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest
import tasks
from _helpers import wait_for
from temporalio.client import Client

import sdk
from worker_app.dev import find_temporal_binary
from workflows.models import JobProgress


async def _temporal_cli(*args: str) -> str:
    """Run the `temporal` CLI without blocking the loop (the worker shares it)."""
    proc = await asyncio.create_subprocess_exec(
        find_temporal_binary(), *args, "-o", "json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return out.decode()


def _running(progress: JobProgress) -> list[int]:
    return [t.index for t in progress.tasks if t.state == "running"]


async def test_describe_query_and_cancel(worker: None, temporal_address: str, task_queue: str) -> None:
    job = await sdk.submit(
        tasks.sleep_until_cancelled, [60.0, 60.0], job_id="watch-me", heartbeat_timeout=5.0
    )

    async def both_running() -> bool:
        return len(_running(await job.progress())) == 2

    await wait_for(both_running, timeout=30)
    prog = await job.progress()
    assert [t.attempt for t in prog.tasks] == [1, 1]
    assert prog.counts["running"] == 2

    describe = await _temporal_cli("workflow", "describe", "-w", "watch-me", "--address", temporal_address)
    pending = json.loads(describe)["pendingActivities"]
    assert sorted(p["activityId"] for p in pending) == ["0", "1"]
    query = await _temporal_cli(
        "workflow", "query", "-w", "watch-me", "--type", "progress", "--address", temporal_address
    )
    assert '"running"' in query

    await job.cancel()
    with pytest.raises(sdk.JobCancelled):
        await job.result()


async def test_killed_worker_task_retried_elsewhere(
    worker_process: Callable[..., object], temporal_client: Client, conn: sdk.Connection
) -> None:
    first = worker_process()
    job = await sdk.submit(tasks.slow_pid, [6.0], job_id="survivor", heartbeat_timeout=2.0)

    async def running() -> bool:
        return bool(_running(await job.progress()))

    await wait_for(running, timeout=30)
    second = worker_process()
    first.kill()  # type: ignore[attr-defined]
    [result] = await job.result()
    assert result["pid"] == second.pid  # type: ignore[attr-defined]
    assert result["attempt"] == 2
