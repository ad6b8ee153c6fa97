"""``TaskActivities``: the ``run_task`` activity and the cleanup pair.

Dependencies come in through the constructor: the settings and, optionally, a
:class:`CheckpointProvider` that opens a :class:`CheckpointSession` per attempt
and deletes a task's or a job's checkpoint data.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities._resolve import resolve_function
from activities.codec import decode_value, encode_value
from activities.context import CheckpointSession, TaskContext, bind, unbind
from workflows.models import (
    CleanupJobInput,
    CleanupTaskInput,
    RunTaskInput,
    TaskStarted,
    task_id_for,
)

if TYPE_CHECKING:
    from worker_app.settings import Settings

log = logging.getLogger(__name__)

# A task that finishes sooner than this never signals "running": short tasks
# cost no extra history events, long ones show up as running in the query.
START_SIGNAL_DELAY = 1.0
# Threads for synchronous task functions: one per concurrently running activity
# (the worker's max_concurrent_activities), so blocking tasks do not queue behind
# the event loop's default executor (min(32, cpus + 4) threads).
DEFAULT_TASK_THREADS = 200


class CheckpointProvider(Protocol):
    """What ``TaskActivities`` needs from the checkpointing layer."""

    async def open_session(self, ctx: TaskContext, arg: RunTaskInput) -> CheckpointSession: ...

    async def cleanup_task(self, job_id: str, task_id: str) -> None: ...

    async def cleanup_job(self, job_id: str) -> None: ...


class TaskActivities:
    """Activities of a worker; register ``activities()`` with the Temporal worker."""

    def __init__(
        self,
        settings: Settings,
        checkpoints: CheckpointProvider | None = None,
        *,
        task_threads: int = DEFAULT_TASK_THREADS,
    ) -> None:
        self.settings = settings
        self.checkpoints = checkpoints
        # Threads start on demand and are never joined by exit_now(); see worker.py.
        self._threads = ThreadPoolExecutor(task_threads, thread_name_prefix="crowdcompute-task")

    def activities(self) -> list[Callable[..., Any]]:
        return [self.run_task, self.cleanup_task, self.cleanup_job]

    @activity.defn(name="run_task")
    async def run_task(self, arg: RunTaskInput) -> str:
        """Run the user function on one item; return its pickled result."""
        info = activity.info()
        fn = resolve_function(arg.fn)
        try:
            item = decode_value(arg.payload)
        except Exception as exc:
            raise ApplicationError(
                f"cannot unpickle item {arg.index}: {type(exc).__name__}: {exc}",
                type="BadTaskInput",
                non_retryable=True,
            ) from exc
        ctx = TaskContext(arg.job_id, task_id_for(arg.job_id, arg.index), arg.index, info.attempt)
        if self.checkpoints is not None:
            ctx.session = await self.checkpoints.open_session(ctx, arg)
        result = await self._execute(ctx, fn, item)
        try:
            return encode_value(result)
        except Exception as exc:
            raise ApplicationError(
                f"result of task {ctx.task_id} cannot be pickled: {type(exc).__name__}: {exc}",
                type="UnpicklableResult",
                non_retryable=True,
            ) from exc

    async def _execute(self, ctx: TaskContext, fn: Callable[..., Any], item: Any) -> Any:
        token = bind(ctx)
        loop = asyncio.get_running_loop()
        # No heartbeat task at once: a task shorter than the first delay costs neither
        # an RPC nor an asyncio task (most tasks of a big job are that short).
        beat: list[asyncio.Task[None]] = []
        timer = loop.call_later(
            min(START_SIGNAL_DELAY, self.settings.heartbeat_interval),
            lambda: beat.append(loop.create_task(self._heartbeat_loop(ctx))),
        )
        succeeded = False
        try:
            if inspect.iscoroutinefunction(fn):
                result = await fn(item)
            else:
                # Run in a copy of this context, so current_task() works in the thread.
                call = functools.partial(contextvars.copy_context().run, fn, item)
                result = await loop.run_in_executor(self._threads, call)
            succeeded = True
            return result
        except asyncio.CancelledError:
            ctx._cancelled.set()
            raise
        finally:
            timer.cancel()
            for task in beat:
                task.cancel()
            unbind(token)
            await ctx.session.close(succeeded=succeeded)

    async def _heartbeat_loop(self, ctx: TaskContext) -> None:
        """Heartbeat on a fixed schedule whatever the user code does (from the first delay on)."""
        interval = self.settings.heartbeat_interval
        await self._signal_started(ctx)
        while True:
            activity.heartbeat(ctx.heartbeat_details())
            await asyncio.sleep(interval)

    async def _signal_started(self, ctx: TaskContext) -> None:
        info = activity.info()
        try:
            handle = activity.client().get_workflow_handle(info.workflow_id, run_id=info.workflow_run_id)
            await handle.signal("task_started", TaskStarted(index=ctx.index, attempt=ctx.attempt))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # progress reporting must never fail a task
            log.warning("could not report task %s as running: %s", ctx.task_id, exc)

    @activity.defn(name="cleanup_task")
    async def cleanup_task(self, arg: CleanupTaskInput) -> None:
        """Delete the checkpoint data of a task whose result is recorded."""
        if self.checkpoints is not None:
            await self.checkpoints.cleanup_task(arg.job_id, arg.task_id)

    @activity.defn(name="cleanup_job")
    async def cleanup_job(self, arg: CleanupJobInput) -> None:
        """Delete whatever checkpoint data remains for a finished job."""
        if self.checkpoints is not None:
            await self.checkpoints.cleanup_job(arg.job_id)
