"""A worker process stays healthy after a large job is cancelled or terminated.

Stopping a job of thousands of tasks once hung a worker for good: a stop that
reached a batch while it still scheduled its waves cancelled hundreds of tasks
that no gather watched, without retrieving their exceptions; the asyncio logger
wrote a traceback for each of them inside one workflow activation, the deadlock
detector interrupted that activation while it held the logging lock, and from
then on every thread of the process waited for that lock (a follow-up job never
ran and SIGTERM was ignored). Before the fix both large-job cases failed here
(the job's batches never closed) and the early-stop case counted 1,248
unretrieved exceptions; with it, each large-job case takes 15-40 s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import pytest
import tasks
from _helpers import WorkerProcess, wait_for
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Replayer

import sdk
from worker_app.settings import Settings
from worker_app.worker import WORKFLOW_ACTIVATION_LIMIT, build_worker
from workflows import WORKFLOWS
from workflows._runner import CANCEL_IN_WAVES_PATCH
from workflows.models import DEFAULT_WINDOW

# Thirty batch children of 1,000 tasks, at most a window of them in flight.
BIG_JOB = 30_000
BATCHES = BIG_JOB // 1000
STOPPED_WITHIN = 120.0
FOLLOW_UP_WITHIN = 30.0
EXIT_WITHIN = 30.0


async def _stop_big_job(client: Client, how: str) -> None:
    job = await sdk.submit(tasks.noop, range(BIG_JOB), job_id=f"big-{how}")
    handle = client.get_workflow_handle(job.job_id)
    last = client.get_workflow_handle(f"{job.job_id}--batch-{DEFAULT_WINDOW - 1}")

    async def window_started() -> bool:
        # The window's last batch read its items and scheduled its first tasks.
        try:
            history = await last.fetch_history()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return False
            raise
        scheduled = EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        return sum(e.event_type == scheduled for e in history.events) > 1

    # Stop while the window's batches still schedule their waves of tasks: the
    # stop then cancels up to 750 tasks of each batch that no gather watches.
    await wait_for(window_started, timeout=60, every=0.1)
    if how == "cancel":
        await handle.cancel()
    else:
        await handle.terminate("test: stop a large job")

    # A terminated job's batches are cancelled by the server (parent close
    # policy), a cancelled job's by the job itself: wait until every one closed,
    # so the worker has handled all the cancellations before the follow-up job.
    ids = [job.job_id] + [f"{job.job_id}--batch-{k}" for k in range(BATCHES)]

    async def stopped() -> bool:
        for wid in ids:
            try:
                desc = await client.get_workflow_handle(wid).describe()
            except RPCError as err:  # a batch the job never started
                if err.status == RPCStatusCode.NOT_FOUND:
                    continue
                raise
            if desc.status == WorkflowExecutionStatus.RUNNING:
                return False
        return True

    await wait_for(stopped, timeout=STOPPED_WITHIN, every=1.0)


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
    start = time.monotonic()
    await _stop_big_job(temporal_client, how)
    print(f"{how}: job and batches closed {time.monotonic() - start:.1f}s after submission")
    elapsed = await _follow_up(how)
    start = time.monotonic()
    code = await asyncio.to_thread(worker.terminate, EXIT_WITHIN)
    print(f"{how}: follow-up job in {elapsed:.1f}s, SIGTERM exit in {time.monotonic() - start:.1f}s")
    assert code == 0
    await _cancelled_batch_replays(temporal_client, f"big-{how}")


async def _cancelled_batch_replays(client: Client, job_id: str) -> None:
    """A batch that the stop cancelled did so in waves (the patch is recorded),
    and its history replays with the same workflows."""
    for k in reversed(range(DEFAULT_WINDOW)):  # the last started was scheduling
        handle = client.get_workflow_handle(f"{job_id}--batch-{k}")
        try:
            status = (await handle.describe()).status
        except RPCError as err:  # terminated before the server created this child
            if err.status == RPCStatusCode.NOT_FOUND:
                continue
            raise
        if status == WorkflowExecutionStatus.CANCELED:
            break
    else:
        raise AssertionError("no batch was cancelled")
    history = await handle.fetch_history()
    markers = [e for e in history.events if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED]
    # (the other marker is the payload format's patch)
    assert [CANCEL_IN_WAVES_PATCH.encode() in e.SerializeToString() for e in markers].count(
        True) == 1
    result = await Replayer(workflows=WORKFLOWS).replay_workflow(history)
    assert result.replay_failure is None


async def test_stop_while_scheduling_leaves_no_exception_unretrieved(
    worker: None, caplog: pytest.LogCaptureFixture
) -> None:
    """A job stopped while it still schedules its waves of tasks: the cancelled
    tasks' exceptions are all retrieved, so the asyncio logger reports none."""
    caplog.set_level(logging.ERROR, logger="temporalio.worker._workflow_instance")
    for round_ in range(3):
        job = await sdk.submit(tasks.noop, range(1000), job_id=f"early-stop-{round_}")
        await job.cancel()
        with pytest.raises(sdk.JobCancelled):
            await job.result()
    unretrieved = [r for r in caplog.records if "never retrieved" in r.getMessage()]
    assert len(unretrieved) == 0


def test_a_slow_activation_is_not_called_a_deadlock(settings: Settings,
                                                    temporal_client: Client) -> None:
    # Temporal's 2 s deadlock timeout failed a loaded BatchWorkflow activation and left
    # its run stuck on the worker for good; ours is WORKFLOW_ACTIVATION_LIMIT. This reads
    # the SDK's private field: if the SDK renames it, this fails and the guard is redone.
    worker = build_worker(temporal_client, settings)
    assert worker._workflow_worker is not None
    assert worker._workflow_worker._deadlock_timeout_seconds == WORKFLOW_ACTIVATION_LIMIT > 2
