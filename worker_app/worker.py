"""The worker process: hosts ``JobWorkflow`` / ``BatchWorkflow`` and ``TaskActivities``."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from temporalio.client import Client
from temporalio.worker import FixedSizeSlotSupplier, Worker, WorkerTuner

from activities import CheckpointProvider, CheckpointService, TaskActivities, TaskRuntime
from activities.job_items import JobItemActivities
from sdk._job_items import build_job_item_store
from sdk._temporal import connect_client
from worker_app._slots import TaskSlots
from worker_app.settings import Settings
from workflows import WORKFLOWS, control_queue

if TYPE_CHECKING:
    from checkpoint import CheckpointManager

log = logging.getLogger(__name__)

SHUTDOWN_CANCEL_AFTER = 0.0
# Slots of the control queue's bookkeeping activities (task cleanup, job item store),
# beside one slot per task process on the task queue.
CONTROL_ACTIVITY_SLOTS = 4
# Task-queue slots beyond the task processes while tasks are short (worker_app._slots).
PREFETCH_SLOTS = 4
DEFAULT_SLOTS = 100   # Temporal's own default for the other kinds of slots


def task_runtime(settings: Settings) -> TaskRuntime:
    """What the activities and task processes need of ``settings`` (they import none)."""
    assert settings.database_url is not None and settings.blob_url is not None
    return TaskRuntime(
        database_url=settings.database_url, blob_url=settings.blob_url,
        s3_endpoint_url=settings.s3_endpoint_url, heartbeat_interval=settings.heartbeat_interval,
        max_tasks=settings.max_tasks, task_stop_grace_seconds=settings.task_stop_grace_seconds,
        task_memory_limit=settings.task_memory_limit,
        shutdown_grace_seconds=settings.shutdown_grace_seconds,
        checkpoint_memory_budget=settings.checkpoint_memory_budget,
        db_size_limit=settings.db_size_limit, max_deltas_per_base=settings.max_deltas_per_base,
        # The persist runs beside the task: leave the task a core of its own.
        encode_threads=settings.checkpoint_encode_threads)


def open_manager(settings: Settings) -> CheckpointManager:
    """The checkpoint manager (catalog + blob stores) that ``settings`` describe."""
    return task_runtime(settings).open_manager()


def build_checkpoints(settings: Settings) -> CheckpointService:
    """The checkpoint service of a worker: catalog + blob stores from ``settings``."""
    from worker_app.metrics import PrometheusObserver

    return CheckpointService(
        open_manager(settings),
        memory_budget=settings.checkpoint_memory_budget,
        observer=PrometheusObserver(),
    )


# Seconds one workflow activation may run before the worker calls it a deadlock.
WORKFLOW_ACTIVATION_LIMIT = 8.0


class TaskWorker(Worker):
    """A Temporal worker of the task queue and, inside it, one of its control queue.

    The task queue's worker takes one activity per task process and only while
    tasks are short a few more (``worker_app._slots.TaskSlots``), so that it
    does not hold tasks it cannot start while another worker has a free
    process; bookkeeping activities come from the control queue
    (``workflows.control_queue``) with slots of their own, so they never wait
    behind tasks. The task queue's worker also registers them, for the jobs
    that scheduled them there before the control queue existed. Running,
    shutting down (which also ends the task processes) and failing are of
    both together.
    """

    def __init__(self, client: Client, settings: Settings, acts: TaskActivities,
                 extra_activities: Sequence[Callable[..., Any]] = ()) -> None:
        bookkeeping = [*acts.bookkeeping(), *extra_activities]
        super().__init__(
            client,
            task_queue=settings.task_queue,
            workflows=WORKFLOWS,
            activities=[acts.run_task, *bookkeeping],
            # One activity slot per task process, and a few more while tasks are short.
            tuner=WorkerTuner.create_composite(
                workflow_supplier=FixedSizeSlotSupplier(DEFAULT_SLOTS),
                activity_supplier=TaskSlots(acts.pool.size, prefetch=PREFETCH_SLOTS),
                local_activity_supplier=FixedSizeSlotSupplier(DEFAULT_SLOTS),
                nexus_supplier=FixedSizeSlotSupplier(DEFAULT_SLOTS)),
            # Final checkpoints are taken before shutdown starts (see ``serve``); what is
            # still running afterwards is cancelled at once so Temporal retries it.
            graceful_shutdown_timeout=timedelta(seconds=SHUTDOWN_CANCEL_AFTER),
            # Temporal would hold a task's heartbeats back to one per 0.8 x its timeout,
            # so the server's details trailed the newest checkpoint by most of that; one
            # per heartbeat interval (2 s by default, CROWDCOMPUTE_HEARTBEAT_INTERVAL)
            # keeps them within seconds at one small RPC per running task per interval.
            max_heartbeat_throttle_interval=timedelta(seconds=settings.heartbeat_interval),
        )
        self.task_activities = acts
        self.control = Worker(
            client, task_queue=control_queue(settings.task_queue), activities=bookkeeping,
            max_concurrent_activities=CONTROL_ACTIVITY_SLOTS,
            graceful_shutdown_timeout=timedelta(seconds=SHUTDOWN_CANCEL_AFTER))
        # Temporal's Python worker fails an activation that runs past 2 s as a deadlock
        # and interrupts its thread; that run can then never be evicted, and its workflow
        # makes no progress on this worker again (seen in the suite: a BatchWorkflow
        # scheduling a wave of 250 activities on a loaded 2-core machine, "[TMPRL1101] Potential
        # deadlock detected", then every workflow task of it timed out and the job never
        # closed). Our workflow code makes no blocking call: a slow activation is CPU
        # contention, so it gets WORKFLOW_ACTIVATION_LIMIT, below the server's 10 s
        # workflow task timeout. The SDK has no public setting for it.
        workflows = getattr(self, "_workflow_worker", None)
        if getattr(workflows, "_deadlock_timeout_seconds", None) is not None:
            workflows._deadlock_timeout_seconds = WORKFLOW_ACTIVATION_LIMIT  # type: ignore[union-attr]

    async def run(self) -> None:
        """Run both workers until both stopped; when one stops (or fails), the other is
        shut down too. Raises the first failure."""
        runs = [asyncio.ensure_future(super().run()), asyncio.ensure_future(self.control.run())]
        try:
            await asyncio.wait(runs, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not all(r.done() for r in runs):
                await self.shutdown()
            outcomes = await asyncio.gather(*runs, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def shutdown(self) -> None:
        try:
            await asyncio.gather(super().shutdown(), self.control.shutdown())
        finally:
            await self.task_activities.close()


def build_worker(
    client: Client, settings: Settings, checkpoints: CheckpointProvider | None = None
) -> TaskWorker:
    """A Temporal worker for ``settings.task_queue`` (not yet running).

    It runs at most ``settings.max_tasks`` tasks at once, each in a process of its own,
    and reads / writes the stored items and results of large jobs.
    """
    acts = TaskActivities(task_runtime(settings),
                          checkpoints=checkpoints or build_checkpoints(settings))
    items = JobItemActivities(build_job_item_store(settings))
    return TaskWorker(client, settings, acts, extra_activities=items.activities())


@asynccontextmanager
async def running_worker(settings: Settings, client: Client | None = None) -> AsyncIterator[Worker]:
    """Run a worker in this event loop for the duration of the ``async with``."""
    client = client or await connect_client(settings)
    worker = build_worker(client, settings)
    async with worker:
        yield worker


async def serve(settings: Settings) -> None:
    """Run a worker until SIGTERM / SIGINT, then shut down gracefully.

    On the signal every running checkpointed task is asked for a final
    checkpoint (its next ``checkpoint()`` call captures, whatever the interval);
    the worker waits for those commits up to ``shutdown_grace_seconds``, then
    cancels what still runs so Temporal retries it elsewhere, and exits.
    """
    # Like `python -m`: task functions in the current directory are importable.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    if settings.metrics_port is not None:
        from worker_app.metrics import start_metrics_server

        start_metrics_server(settings.metrics_port, temporal_port=settings.metrics_port + 1)
    client = await connect_client(settings)
    worker = build_worker(client, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    run = asyncio.create_task(worker.run())
    print(
        f"worker ready: task queue {settings.task_queue!r} on {settings.temporal_address} "
        f"(pid {os.getpid()})",
        flush=True,
    )
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({run, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if not run.done():
        grace = settings.shutdown_grace_seconds
        log.warning("stopping: final checkpoints (grace %.0f s), then shutdown", grace)
        await worker.task_activities.final_checkpoints(max(0.0, grace - 2.0))
        await worker.shutdown()
    await run


def exit_now(code: int = 0) -> None:
    """Exit at once, without interpreter finalization (the Temporal client's native
    threads may still run); task processes die with this one (``PR_SET_PDEATHSIG``)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
