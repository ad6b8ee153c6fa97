"""Runs the tasks of one workflow (a small job or one batch of a large job).

Shared by ``JobWorkflow`` and ``BatchWorkflow`` so both report progress the same
way. Activities are referenced by name: this module must not import the
activity implementations (they may pull in heavy dependencies).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.api.common.v1 import Payload
from temporalio.common import RawValue, RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, RetryState

from workflows.models import (
    TASK_CANCELLED,
    TASK_COMPLETED,
    TASK_FAILED,
    TASK_PENDING,
    TASK_RUNNING,
    TASK_STATES,
    CleanupTaskInput,
    RunTaskInput,
    TaskOptions,
    TaskProgress,
    task_error_body,
    task_error_result,
    task_id_for,
)
from workflows.payloads import json_payload, pack, task_error_payload

T = TypeVar("T")

# A task is bounded by its heartbeat timeout, not by its total run time.
TASK_START_TO_CLOSE = timedelta(days=365)
MAX_RETRY_INTERVAL = timedelta(seconds=10)
SCHEDULE_WAVE = 250
SCHEDULE_PAUSE = timedelta(milliseconds=1)
NON_RETRYABLE_TYPES = ["FunctionNotFound", "UnpicklableResult", "BadTaskInput"]
# Recorded when a stop first cancels tasks a wave at a time; histories written
# before it cancelled every task in one activation and replay that way.
CANCEL_IN_WAVES_PATCH = "cancel-tasks-in-waves"
# Recorded when a failed checkpointed task is first cleaned up (and marked failed in
# the catalog) as it fails; histories written before it left that to the job's end.
FAILED_TASK_CLEANUP_PATCH = "cleanup-failed-task"
# Recorded by a job (or batch) whose items and results are payloads of their own
# encodings; histories written before it carry base64 pickles and replay that way.
PAYLOADS_PATCH = "native-payloads"
# Recorded when a workflow first schedules a bookkeeping activity (task cleanup, the
# job item store) on its task queue's control queue; histories written before it
# scheduled them on the task queue itself, which is also where tasks wait.
CONTROL_QUEUE_PATCH = "control-queue"
CONTROL_QUEUE_SUFFIX = "-control"


def control_queue(task_queue: str) -> str:
    """The queue of ``task_queue``'s bookkeeping activities; every worker polls both.

    Tasks and bookkeeping have queues of their own so that a worker takes no
    more tasks than it has task processes (a task it cannot start yet would
    wait there while another worker idles) and bookkeeping never waits behind
    tasks.
    """
    return task_queue + CONTROL_QUEUE_SUFFIX


def bookkeeping() -> dict[str, Any]:
    """``execute_activity`` options of a bookkeeping activity: its queue."""
    if workflow.patched(CONTROL_QUEUE_PATCH):
        return {"task_queue": control_queue(workflow.info().task_queue)}
    return {}


def legacy_payloads(given: bool) -> bool:
    """True when this workflow carries base64-pickle items (call first in ``run``).

    ``given``: the input says so (a later run or a batch of such a job, which
    replays no old history of its own and must be told).
    """
    return given or not workflow.patched(PAYLOADS_PATCH)


def _observe(fut: asyncio.Future[Any]) -> None:
    # Reading the exception marks it retrieved. Unretrieved, each one is logged
    # (with its traceback) when the task is collected, inside the activation:
    # a thousand of those overran the deadlock detector while it held the
    # logging lock and hung the worker process for good.
    if not fut.cancelled():
        fut.exception()


def start_observed(coro: Coroutine[object, object, T]) -> asyncio.Future[T]:
    """``ensure_future(coro)`` whose exception is retrieved however the task ends."""
    fut = asyncio.ensure_future(coro)
    fut.add_done_callback(_observe)
    return fut


async def settled(gathered: asyncio.Future[T]) -> T:
    """The result of ``gathered``; a cancellation of the caller does not reach it.

    Cancelling a gather cancels all of its tasks at once, in the activation that
    delivered the stop; ``cancel_in_waves`` cancels them instead.
    """
    gathered.add_done_callback(_observe)
    await workflow.wait([gathered])
    return gathered.result()


async def cancel_in_waves(futures: Sequence[asyncio.Future[Any]]) -> None:
    """Cancel ``futures`` at most ``SCHEDULE_WAVE`` per activation.

    Each wave is awaited until it settled (its cancellations resolved), so one
    activation handles at most a wave of cancel commands and a wave of
    resolutions, however large the batch. While the workflow is being evicted
    ``workflow.patched`` raises and the SDK cancels every task itself.
    """
    pending = [f for f in futures if not f.done()]
    if not workflow.patched(CANCEL_IN_WAVES_PATCH):
        for fut in pending:
            fut.cancel()
        return
    for start in range(0, len(pending), SCHEDULE_WAVE):
        wave = pending[start : start + SCHEDULE_WAVE]
        for fut in wave:
            fut.cancel()
        await workflow.wait(wave)


def _cause(err: BaseException) -> tuple[str, str]:
    """The original exception's type name and message."""
    cause = err.cause if isinstance(err, ActivityError) and err.cause else err
    if isinstance(cause, ApplicationError):
        return cause.type or "Error", cause.message
    return type(cause).__name__, str(cause)


def describe_failure(task_id: str, err: BaseException) -> str:
    """One line naming the task and the original exception type and message."""
    kind, message = _cause(err)
    return f"task {task_id} failed: {kind}: {message}"


def attempts_made(err: BaseException, task: TaskProgress, max_attempts: int) -> int:
    """How many attempts a failed task had: all of them when its retries ran out.

    Otherwise (a non-retryable error) the last attempt the task reported, at least 1.
    """
    if isinstance(err, ActivityError) and err.retry_state == RetryState.MAXIMUM_ATTEMPTS_REACHED:
        return max_attempts
    return max(task.attempt, 1)


class TaskRunner:
    """Schedules one ``run_task`` activity per item and tracks their states.

    ``items`` are payloads (each task gets its own as a raw second argument and
    returns its result as one), or base64 strings of a first-format job
    (passed in ``RunTaskInput.payload``; their results are strings).
    """

    def __init__(
        self, job_id: str, fn: str, items: Sequence[Payload | str], offset: int,
        options: TaskOptions,
    ) -> None:
        self.job_id = job_id
        self.fn = fn
        self.items = list(items)
        self.offset = offset
        self.options = options
        self.tasks = [
            TaskProgress(index=offset + i, task_id=task_id_for(job_id, offset + i))
            for i in range(len(self.items))
        ]
        self.results: list[Any] = [None] * len(self.items)

    def mark_started(self, index: int, attempt: int) -> None:
        """Record that an attempt of task ``index`` is running (a signal)."""
        pos = index - self.offset
        if 0 <= pos < len(self.tasks):
            task = self.tasks[pos]
            if task.state in (TASK_PENDING, TASK_RUNNING) and attempt >= task.attempt:
                task.state, task.attempt = TASK_RUNNING, attempt

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(TASK_STATES, 0)
        for task in self.tasks:
            out[task.state] = out.get(task.state, 0) + 1
        return out

    def completed_results(self) -> RawValue:
        """The results of the tasks that completed so far (a failed task's error record
        counts when the job returns exceptions), for the ``partial_results`` query.

        One payload list: first a JSON header ``{"indexes": [...], "legacy": bool}``,
        then each result's payload in that order (a first-format job's strings as
        JSON strings).
        """
        done = [(self.tasks[pos].index, r) for pos, r in enumerate(self.results) if r is not None]
        legacy = any(isinstance(r, str) for _, r in done)
        header = json_payload({"indexes": [i for i, _ in done], "legacy": legacy})
        return RawValue(pack([header, *(json_payload(r) if isinstance(r, str) else r
                                        for _, r in done)]))

    async def run(self) -> list[Any]:
        """Run every task; on the first failure cancel the rest and fail.

        Returns the results in order: payloads (strings for a legacy job). With
        ``options.return_exceptions`` a failed task's result is its error record
        instead and the others go on.
        """
        # One gather rather than a wait() loop: re-waiting on every pending task after
        # each completion costs O(tasks) per activation, O(tasks²) per batch.
        futures: list[asyncio.Future[None]] = []
        try:
            for start in range(0, len(self.items), SCHEDULE_WAVE):
                if start:
                    # A timer ends the workflow task: each activation schedules at most
                    # one wave, so a loaded worker stays within the deadlock detector's
                    # 2 s per activation.
                    await workflow.sleep(SCHEDULE_PAUSE)
                stop = min(start + SCHEDULE_WAVE, len(self.items))
                futures.extend(start_observed(self._run_one(i)) for i in range(start, stop))
            await settled(asyncio.gather(*futures))
        except BaseException:
            await cancel_in_waves(futures)
            raise
        return [r for r in self.results if r is not None]

    async def _run_one(self, pos: int) -> None:
        task = self.tasks[pos]
        opts = self.options
        item = self.items[pos]
        arg = RunTaskInput(
            job_id=self.job_id,
            index=task.index,
            fn=self.fn,
            payload=item if isinstance(item, str) else "",
            checkpoint_interval=opts.checkpoint_interval,
            max_checkpoint_age=opts.max_checkpoint_age,
            heartbeat_timeout=opts.heartbeat_timeout,
            checkpoint_every_steps=opts.checkpoint_every_steps,
            keep=opts.keep,
            warm_start_from=opts.warm_start_from,
        )
        try:
            result = await self._execute(arg, item, task.index)
        except (ActivityError, CancelledError, asyncio.CancelledError) as err:
            if isinstance(err, ActivityError) and not isinstance(err.cause, CancelledError):
                await self._failed(pos, err)
                return
            task.state = TASK_CANCELLED
            raise
        task.state = TASK_COMPLETED
        task.attempt = max(task.attempt, 1)
        self.results[pos] = result
        if opts.checkpoint_interval is not None:
            await self._cleanup(task, TASK_COMPLETED)

    async def _failed(self, pos: int, err: ActivityError) -> None:
        """Record task ``pos``'s failure; raise it unless the job returns exceptions."""
        task = self.tasks[pos]
        task.state, task.error = TASK_FAILED, describe_failure(task.task_id, err)
        task.attempt = attempts_made(err, task, self.options.max_attempts)
        if self.options.checkpoint_interval is not None and workflow.patched(
                FAILED_TASK_CLEANUP_PATCH):
            await self._cleanup(task, TASK_FAILED)
        if not self.options.return_exceptions:
            raise ApplicationError(task.error, type="TaskFailed", non_retryable=True) from err
        kind, message = _cause(err)
        if isinstance(self.items[pos], str):  # a first-format job: a string record
            self.results[pos] = task_error_result(kind, message, task.attempt, task.task_id,
                                                  task.index)
        else:
            self.results[pos] = task_error_payload(
                task_error_body(kind, message, task.attempt, task.task_id, task.index))

    async def _cleanup(self, task: TaskProgress, status: str) -> None:
        """Delete the task's checkpoints and record its final status in the catalog."""
        await workflow.execute_activity(
            "cleanup_task",
            CleanupTaskInput(job_id=self.job_id, task_id=task.task_id, status=status),
            start_to_close_timeout=timedelta(minutes=5), **bookkeeping(),
        )

    async def _execute(self, arg: RunTaskInput, item: Payload | str, index: int) -> Any:
        """The ``run_task`` activity of one item; its result (a payload, or a legacy string)."""
        opts = self.options
        common: dict[str, Any] = {
            "activity_id": str(index),
            "start_to_close_timeout": TASK_START_TO_CLOSE,
            "heartbeat_timeout": timedelta(seconds=opts.heartbeat_timeout),
            "retry_policy": RetryPolicy(
                maximum_attempts=opts.max_attempts,
                # A retry after a worker died should not wait minutes: cap the backoff.
                maximum_interval=MAX_RETRY_INTERVAL,
                non_retryable_error_types=NON_RETRYABLE_TYPES,
            ),
        }
        if isinstance(item, str):
            return await workflow.execute_activity("run_task", arg, result_type=str, **common)
        raw: RawValue = await workflow.execute_activity(
            "run_task", args=[arg, RawValue(item)], result_type=RawValue,
            summary=f"task {index} of {self.fn}", **common)
        return raw.payload
