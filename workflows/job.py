"""``JobWorkflow`` (one per job) and ``BatchWorkflow`` (one per chunk of a big job)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError, ChildWorkflowError
from temporalio.workflow import ParentClosePolicy

from workflows._runner import TaskRunner, cancel_in_waves, settled, start_observed
from workflows.models import (
    TASK_COMPLETED,
    TASK_FAILED,
    TASK_PENDING,
    TASK_RUNNING,
    BatchInput,
    BatchProgress,
    CleanupJobInput,
    JobInput,
    JobProgress,
    TaskStarted,
    batch_workflow_id,
)

# With a cleanup activity per task the history grows by ~3 events per task more.
CHECKPOINTED_BATCH_SIZE = 400


class _RunsTasks:
    """The task runner of a workflow and the ``task_started`` signal that feeds it.

    A signal can arrive before ``run`` has built the runner; it is kept and
    applied when the runner starts.
    """

    def __init__(self) -> None:
        self._runner: TaskRunner | None = None
        self._early: list[TaskStarted] = []

    def _start_runner(self, runner: TaskRunner) -> TaskRunner:
        self._runner = runner
        for sig in self._early:
            runner.mark_started(sig.index, sig.attempt)
        self._early.clear()
        return runner

    @workflow.signal
    def task_started(self, sig: TaskStarted) -> None:
        if self._runner is None:
            self._early.append(sig)
        else:
            self._runner.mark_started(sig.index, sig.attempt)


@workflow.defn(name="BatchWorkflow")
class BatchWorkflow(_RunsTasks):
    """Runs tasks ``offset .. offset+len(items)-1`` of a job; returns their results."""

    @workflow.run
    async def run(self, arg: BatchInput) -> list[str]:
        runner = TaskRunner(arg.job_id, arg.fn, arg.items, arg.offset, arg.options)
        return await self._start_runner(runner).run()

    @workflow.query
    def progress(self) -> JobProgress:
        runner = self._runner
        if runner is None:
            return JobProgress(job_id="", total=0)
        return JobProgress(
            job_id=runner.job_id, total=len(runner.tasks), counts=runner.counts(), tasks=runner.tasks
        )


@workflow.defn(name="JobWorkflow")
class JobWorkflow(_RunsTasks):
    """One job: runs its tasks itself, or in child ``BatchWorkflow`` s when large."""

    def __init__(self) -> None:
        super().__init__()
        self._input: JobInput | None = None
        self._batches: list[BatchProgress] = []

    @workflow.run
    async def run(self, arg: JobInput) -> list[str]:
        self._input = arg
        try:
            size = self._batch_size(arg)
            if len(arg.items) <= size:
                runner = TaskRunner(arg.job_id, arg.fn, arg.items, 0, arg.options)
                return await self._start_runner(runner).run()
            return await self._run_batches(arg, size)
        finally:
            if arg.options.checkpoint_interval is not None:
                await self._cleanup_job(arg.job_id)

    @staticmethod
    def _batch_size(arg: JobInput) -> int:
        size = max(1, arg.batch_size)
        if arg.options.checkpoint_interval is not None:
            size = min(size, CHECKPOINTED_BATCH_SIZE)
        return size

    async def _run_batches(self, arg: JobInput, size: int) -> list[str]:
        starts = range(0, len(arg.items), size)
        self._batches = [
            BatchProgress(batch_workflow_id(arg.job_id, k), off, len(arg.items[off : off + size]))
            for k, off in enumerate(starts)
        ]
        futures = [start_observed(self._run_batch(arg, b)) for b in self._batches]
        try:
            parts = await settled(asyncio.gather(*futures))
        except BaseException:
            await cancel_in_waves(futures)
            raise
        return [r for part in parts for r in part]

    async def _run_batch(self, arg: JobInput, batch: BatchProgress) -> list[str]:
        child = BatchInput(
            job_id=arg.job_id,
            fn=arg.fn,
            items=arg.items[batch.offset : batch.offset + batch.size],
            offset=batch.offset,
            options=arg.options,
        )
        batch.state = TASK_RUNNING
        try:
            result: list[str] = await workflow.execute_child_workflow(
                BatchWorkflow.run,
                child,
                id=batch.workflow_id,
                parent_close_policy=ParentClosePolicy.REQUEST_CANCEL,
            )
        except ChildWorkflowError as err:
            batch.state = TASK_FAILED
            cause = err.cause
            if isinstance(cause, ApplicationError):
                raise ApplicationError(cause.message, type=cause.type, non_retryable=True) from err
            raise
        batch.state = TASK_COMPLETED
        return result

    async def _cleanup_job(self, job_id: str) -> None:
        await workflow.execute_activity(
            "cleanup_job",
            CleanupJobInput(job_id=job_id),
            start_to_close_timeout=timedelta(minutes=10),
        )

    @workflow.query
    def progress(self) -> JobProgress:
        arg = self._input
        if arg is None:
            return JobProgress(job_id="", total=0)
        if self._runner is not None:
            runner = self._runner
            return JobProgress(arg.job_id, len(runner.tasks), runner.counts(), runner.tasks)
        counts = {TASK_PENDING: 0, TASK_RUNNING: 0, TASK_COMPLETED: 0, TASK_FAILED: 0}
        for b in self._batches:
            counts[TASK_COMPLETED if b.state == TASK_COMPLETED else TASK_PENDING] += b.size
        return JobProgress(arg.job_id, len(arg.items), counts, [], self._batches)
