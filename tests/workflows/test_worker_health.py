"""A worker process stays healthy after a large job is cancelled or terminated.

Stopping a job of thousands of tasks once hung a worker for good: the stop
cancelled a batch's activity tasks without retrieving their exceptions, the
asyncio logger wrote a traceback for each of them inside one workflow
activation, the deadlock detector interrupted that activation while it held the
logging lock, and from then on every thread of the process waited for that lock
(a follow-up job never ran and SIGTERM was ignored). Before the fix both cases
failed here (30,000 items; with 10,000 only the terminate case did).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
import tasks
from _helpers import WorkerProcess, wait_for
from temporalio.client import Client, WorkflowExecutionStatus

import sdk

# Thirty batch children of 1,000 tasks, most of them still pending when the job
# stops; the whole test takes about 35 s per case on a two-core machine.
BIG_JOB = 30_000
RUN_BEFORE_STOP = 10.0
FOLLOW_UP_WITHIN = 30.0
EXIT_WITHIN = 30.0


async def _stop_big_job(client: Client, how: str) -> None:
    job = await sdk.submit(tasks.noop, range(BIG_JOB), job_id=f"big-{how}")
    await asyncio.sleep(RUN_BEFORE_STOP)
    handle = client.get_workflow_handle(job.job_id)
    if how == "cancel":
        await handle.cancel()
    else:
        await handle.terminate("test: stop a large job")

    async def stopped() -> bool:
        desc = await handle.describe()
        return desc.status != WorkflowExecutionStatus.RUNNING

    await wait_for(stopped, timeout=30)


async def _follow_up(how: str) -> float:
    start = time.monotonic()
    results = await asyncio.wait_for(
        sdk.map(tasks.square, [1, 2, 3], job_id=f"after-{how}"), FOLLOW_UP_WITHIN
    )
    assert results == [1, 4, 9]
    return time.monotonic() - start


@pytest.mark.slow
@pytest.mark.parametrize("how", ["cancel", "terminate"])
async def test_worker_healthy_after_stopping_a_large_job(
    how: str,
    worker_process: Callable[..., WorkerProcess],
    temporal_client: Client,
    conn: sdk.Connection,
) -> None:
    worker = worker_process()
    await _stop_big_job(temporal_client, how)
    elapsed = await _follow_up(how)
    start = time.monotonic()
    code = await asyncio.to_thread(worker.terminate, EXIT_WITHIN)
    print(f"{how}: follow-up job in {elapsed:.1f}s, SIGTERM exit in {time.monotonic() - start:.1f}s")
    assert code == 0
