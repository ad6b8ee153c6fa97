"""The worker process: hosts ``JobWorkflow`` / ``BatchWorkflow`` and ``TaskActivities``."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from temporalio.client import Client
from temporalio.worker import Worker

from activities import CheckpointProvider, CheckpointService, TaskActivities
from worker_app.job_items import JobItemActivities, build_job_item_store
from worker_app.settings import Settings
from worker_app.temporal import connect_client
from workflows import WORKFLOWS

if TYPE_CHECKING:
    from checkpoint import CheckpointManager

log = logging.getLogger(__name__)

MAX_CONCURRENT_ACTIVITIES = 200
SHUTDOWN_CANCEL_AFTER = 0.0


def open_manager(settings: Settings) -> CheckpointManager:
    """The checkpoint manager (catalog + blob stores) that ``settings`` describe."""
    from checkpoint import CheckpointManager, ManagerConfig

    assert settings.database_url is not None and settings.blob_url is not None
    if settings.database_url.startswith("sqlite:///"):
        # a fresh state dir (or any new SQLite location) is created, as `dev` does
        Path(settings.database_url.removeprefix("sqlite:///")).parent.mkdir(parents=True,
                                                                             exist_ok=True)
    return CheckpointManager.from_urls(
        settings.database_url,
        settings.blob_url,
        s3_endpoint_url=settings.s3_endpoint_url,
        config=ManagerConfig(
            db_size_limit=settings.db_size_limit,
            max_deltas_per_base=settings.max_deltas_per_base,
            # The persist runs beside the task: leave the task a core of its own.
            encode_threads=settings.checkpoint_encode_threads,
        ),
    )


def build_checkpoints(settings: Settings) -> CheckpointService:
    """The checkpoint service of a worker: catalog + blob stores from ``settings``."""
    from worker_app.metrics import PrometheusObserver

    return CheckpointService(
        open_manager(settings),
        memory_budget=settings.checkpoint_memory_budget,
        observer=PrometheusObserver(),
    )


def build_worker(
    client: Client, settings: Settings, checkpoints: CheckpointProvider | None = None
) -> Worker:
    """A Temporal worker for ``settings.task_queue`` (not yet running)."""
    acts = TaskActivities(
        settings,
        checkpoints=checkpoints or build_checkpoints(settings),
        task_threads=MAX_CONCURRENT_ACTIVITIES,
    )
    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=WORKFLOWS,
        activities=[
            *acts.activities(),
            *JobItemActivities(build_job_item_store(settings)).activities(),
        ],
        max_concurrent_activities=MAX_CONCURRENT_ACTIVITIES,
        # Final checkpoints are taken before shutdown starts (see ``serve``); what is
        # still running afterwards is cancelled at once so Temporal retries it.
        graceful_shutdown_timeout=timedelta(seconds=SHUTDOWN_CANCEL_AFTER),
    )


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
    checkpoints = build_checkpoints(settings)
    worker = build_worker(client, settings, checkpoints)
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
        await checkpoints.final_checkpoints(max(0.0, grace - 2.0))
        await worker.shutdown()
    await run


def exit_now(code: int = 0) -> None:
    """Exit without joining task threads: a cancelled synchronous task function
    keeps its thread until it returns, and its work is retried elsewhere."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
