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

from temporalio.client import Client
from temporalio.worker import Worker

from activities import CheckpointManager, TaskActivities
from workflows import WORKFLOWS
from worker_app.settings import Settings
from worker_app.temporal import connect_client

log = logging.getLogger(__name__)

MAX_CONCURRENT_ACTIVITIES = 200


def build_worker(
    client: Client, settings: Settings, checkpoints: CheckpointManager | None = None
) -> Worker:
    """A Temporal worker for ``settings.task_queue`` (not yet running)."""
    acts = TaskActivities(settings, checkpoints=checkpoints)
    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=WORKFLOWS,
        activities=acts.activities(),
        max_concurrent_activities=MAX_CONCURRENT_ACTIVITIES,
        # On SIGTERM running tasks get this long (final checkpoint) before cancel.
        graceful_shutdown_timeout=timedelta(seconds=settings.shutdown_grace_seconds),
    )


@asynccontextmanager
async def running_worker(settings: Settings, client: Client | None = None) -> AsyncIterator[Worker]:
    """Run a worker in this event loop for the duration of the ``async with``."""
    client = client or await connect_client(settings)
    worker = build_worker(client, settings)
    async with worker:
        yield worker


async def serve(settings: Settings) -> None:
    """Run a worker until SIGTERM / SIGINT, then shut down gracefully."""
    # Like `python -m`: task functions in the current directory are importable.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
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
        log.info("shutting down (grace %.0fs)", settings.shutdown_grace_seconds)
        await worker.shutdown()
    await run
