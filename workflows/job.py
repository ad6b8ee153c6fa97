"""``JobWorkflow`` (one per job) and ``BatchWorkflow`` (one per chunk of a big job)."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.api.common.v1 import Payload
from temporalio.common import RawValue
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    ChildWorkflowError,
)
from temporalio.workflow import ParentClosePolicy

from workflows._runner import (
    TaskRunner,
    bookkeeping,
    cancel_in_waves,
    legacy_payloads,
    settled,
    start_observed,
)
from workflows.models import (
    TASK_CANCELLED,
    TASK_COMPLETED,
    TASK_FAILED,
    TASK_PENDING,
    TASK_RUNNING,
    TASK_STATES,
    BatchInput,
    BatchProgress,
    ChunkRef,
    ChunkResults,
    CleanupJobInput,
    JobInput,
    JobProgress,
    TaskStarted,
    batch_size_for,
    batch_workflow_id,
)
from workflows.payloads import json_payload, list_result, pack, unpack

ITEM_STORE_TIMEOUT = timedelta(minutes=5)
CLEANUP_TIMEOUT = timedelta(minutes=10)
# Recorded when a checkpointed job first deletes, before its tasks start, whatever
# catalog rows an earlier job of the same id left (histories before it did not).
FORGET_EARLIER_JOB_PATCH = "forget-earlier-job-rows"
# Our workflows run outside Temporal's sandbox: on a 10,000-task job its per-activation
# import and builtins patching was half of the worker's CPU (docs/performance.md, "Job
# fan-out"). The code is deterministic without it (only workflow.* APIs, no I/O, no
# clocks), and tests/workflows/test_replay.py replays every recorded history both
# outside and inside the sandbox, which refuses what it would have refused before.
# CROWDCOMPUTE_WORKFLOW_SANDBOX=1 puts them back in it (read when this module is imported).
SANDBOXED = os.environ.get("CROWDCOMPUTE_WORKFLOW_SANDBOX", "") not in ("", "0")


class _RunsTasks:
    """The task runner of a workflow and the ``task_started`` signal that feeds it.

    A signal can arrive before ``run`` has built the runner; it is kept and
    applied when the runner starts.
    """

    def __init__(self) -> None:
        self._runner: TaskRunner | None = None
        self._early: list[TaskStarted] = []
        self._legacy = False  # items and results are base64 pickles (first format)

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

    @workflow.query
    def partial_results(self) -> RawValue:
        """This workflow's own tasks' results so far (see ``TaskRunner.completed_results``)."""
        if self._runner is not None:
            return self._runner.completed_results()
        return RawValue(pack([json_payload({"indexes": [], "legacy": self._legacy})]))


@workflow.defn(name="BatchWorkflow", sandboxed=SANDBOXED)
class BatchWorkflow(_RunsTasks):
    """Runs tasks ``offset .. offset+len(items)-1`` of a job; returns their results."""

    @workflow.run
    async def run(self, arg: BatchInput) -> Any:
        self._legacy = legacy = legacy_payloads(arg.legacy_payloads)
        if arg.chunk < 0:
            items = arg.items if legacy else [json_payload(v) for v in arg.items]
            runner = TaskRunner(arg.job_id, arg.fn, items, arg.offset, arg.options)
            results = await self._start_runner(runner).run()
            return results if legacy else list_result(results)
        if legacy:
            return await self._run_legacy_chunk(arg)
        ref = ChunkRef(job_id=arg.job_id, chunk=arg.chunk, payloads=True)
        raw: RawValue = await workflow.execute_activity(
            "read_job_items", ref, result_type=RawValue, start_to_close_timeout=ITEM_STORE_TIMEOUT,
            summary=f"items of batch {arg.chunk}", **bookkeeping())
        runner = TaskRunner(arg.job_id, arg.fn, unpack(raw.payload), arg.offset, arg.options)
        results = await self._start_runner(runner).run()
        await workflow.execute_activity(
            "write_job_results",
            args=[ChunkResults(job_id=arg.job_id, chunk=arg.chunk), RawValue(pack(results))],
            start_to_close_timeout=ITEM_STORE_TIMEOUT, summary=f"results of batch {arg.chunk}",
            **bookkeeping(),
        )
        return []

    async def _run_legacy_chunk(self, arg: BatchInput) -> list[str]:
        """A chunk of base64 lines (first payload format): read, run, write back."""
        ref = ChunkRef(job_id=arg.job_id, chunk=arg.chunk)
        items: list[str] = await workflow.execute_activity(
            "read_job_items", ref, result_type=list[str], start_to_close_timeout=ITEM_STORE_TIMEOUT,
            **bookkeeping(),
        )
        runner = TaskRunner(arg.job_id, arg.fn, items, arg.offset, arg.options)
        results = await self._start_runner(runner).run()
        await workflow.execute_activity(
            "write_job_results",
            ChunkResults(job_id=arg.job_id, chunk=arg.chunk, results=results),
            start_to_close_timeout=ITEM_STORE_TIMEOUT, **bookkeeping(),
        )
        return []

    @workflow.query
    def progress(self) -> JobProgress:
        runner = self._runner
        if runner is None:
            return JobProgress(job_id="", total=0)
        return JobProgress(
            job_id=runner.job_id, total=len(runner.tasks), counts=runner.counts(), tasks=runner.tasks
        )

    @workflow.query
    def counts(self) -> dict[str, int]:
        """Tasks per state, without the per-task list (a job's progress sums these)."""
        return self._runner.counts() if self._runner is not None else {}


@workflow.defn(name="JobWorkflow", sandboxed=SANDBOXED)
class JobWorkflow(_RunsTasks):
    """One job: runs its tasks itself, or in child ``BatchWorkflow`` s when large."""

    def __init__(self) -> None:
        super().__init__()
        self._input: JobInput | None = None
        self._batches: list[BatchProgress] = []
        # Tasks of finished batches, this run's and (carried) earlier runs'.
        self._completed = 0
        self._continuing = False
        self._legacy = False

    @workflow.run
    async def run(self, arg: JobInput) -> Any:
        self._input = arg
        self._completed = arg.completed
        self._legacy = legacy = legacy_payloads(arg.legacy_payloads)
        checkpointed = arg.options.checkpoint_interval is not None
        size = batch_size_for(arg.batch_size, arg.options)
        if arg.item_count == 0 and len(arg.items) <= size:
            # Built first, so the progress query lists the tasks (pending) meanwhile.
            items = arg.items if legacy else [json_payload(v) for v in arg.items]
            self._start_runner(TaskRunner(arg.job_id, arg.fn, items, 0, arg.options))
        if (checkpointed and workflow.info().continued_run_id is None
                and workflow.patched(FORGET_EARLIER_JOB_PATCH)):
            # A job id used again: the earlier job's task rows (statuses, counters)
            # must not show in this job's view, nor its checkpoints be resumed.
            await self._cleanup_job(CleanupJobInput(job_id=arg.job_id, forget=True))
        outcome = TASK_FAILED
        try:
            results = await self._run_tasks(arg, size)
            outcome = TASK_COMPLETED
            return results
        except (asyncio.CancelledError, CancelledError):
            outcome = TASK_CANCELLED
            raise
        except (ActivityError, ChildWorkflowError) as err:
            if isinstance(err.cause, CancelledError):
                outcome = TASK_CANCELLED
            raise
        finally:
            # A run that continues as new hands the job on; the last run cleans up.
            if checkpointed and not self._continuing:
                await self._cleanup_job(CleanupJobInput(job_id=arg.job_id, outcome=outcome))

    async def _run_tasks(self, arg: JobInput, size: int) -> Any:
        """The job's result: a list of JSON values, a payload list, or legacy strings."""
        if arg.item_count > 0:
            return await self._run_window(arg, size)  # results are in the item store
        if self._runner is not None:
            results = await self._runner.run()
        else:
            results = [r for part in await self._run_batches(arg, size) for r in part]
        return results if self._legacy else list_result(results)

    async def _run_window(self, arg: JobInput, size: int) -> list[str]:
        """Batches of stored items, at most ``arg.window`` in flight.

        After starting ``arg.batches_per_run`` batches (or when Temporal
        suggests it) the run lets its batches finish and continues as new, so
        no history grows with the job. Results stay in the item store.
        """
        chunks = -(-arg.item_count // size)
        next_chunk, started = arg.next_batch, 0
        flying: dict[int, asyncio.Future[None]] = {}
        try:
            while True:
                while (next_chunk < chunks and len(flying) < max(1, arg.window)
                       and started < max(1, arg.batches_per_run)
                       and not workflow.info().is_continue_as_new_suggested()):
                    batch = BatchProgress(
                        batch_workflow_id(arg.job_id, next_chunk),
                        next_chunk * size,
                        min(size, arg.item_count - next_chunk * size),
                    )
                    self._batches.append(batch)
                    flying[next_chunk] = start_observed(self._run_stored_batch(arg, batch, next_chunk))
                    next_chunk, started = next_chunk + 1, started + 1
                if not flying:
                    break
                await workflow.wait(list(flying.values()), return_when=asyncio.FIRST_COMPLETED)
                for chunk in [c for c, f in flying.items() if f.done()]:
                    flying.pop(chunk).result()  # the first failure stops the job
        except BaseException:
            await cancel_in_waves(list(flying.values()))
            raise
        if next_chunk < chunks:
            self._continuing = True
            workflow.continue_as_new(
                replace(arg, next_batch=next_chunk, completed=self._completed,
                        legacy_payloads=self._legacy)
            )
        return []

    async def _run_stored_batch(self, arg: JobInput, batch: BatchProgress, chunk: int) -> None:
        child = BatchInput(
            job_id=arg.job_id, fn=arg.fn, items=[], offset=batch.offset, options=arg.options,
            chunk=chunk, legacy_payloads=self._legacy,
        )
        await self._execute_batch(batch, child)
        self._completed += batch.size
        self._batches.remove(batch)

    async def _run_batches(self, arg: JobInput, size: int) -> list[list[Any]]:
        starts = range(0, len(arg.items), size)
        self._batches = [
            BatchProgress(batch_workflow_id(arg.job_id, k), off, len(arg.items[off : off + size]))
            for k, off in enumerate(starts)
        ]
        futures = [start_observed(self._run_batch(arg, b)) for b in self._batches]
        try:
            return await settled(asyncio.gather(*futures))
        except BaseException:
            await cancel_in_waves(futures)
            raise

    async def _run_batch(self, arg: JobInput, batch: BatchProgress) -> list[Any]:
        child = BatchInput(
            job_id=arg.job_id,
            fn=arg.fn,
            items=arg.items[batch.offset : batch.offset + batch.size],
            offset=batch.offset,
            options=arg.options,
            legacy_payloads=self._legacy,
        )
        return await self._execute_batch(batch, child)

    async def _execute_batch(self, batch: BatchProgress, child: BatchInput) -> list[Any]:
        """Run one child batch; its results (payloads, or strings of a legacy job)."""
        batch.state = TASK_RUNNING
        try:
            result = await self._child(batch, child)
        except ChildWorkflowError as err:
            batch.state = TASK_FAILED
            cause = err.cause
            if isinstance(cause, ApplicationError):
                raise ApplicationError(cause.message, type=cause.type, non_retryable=True) from err
            raise
        batch.state = TASK_COMPLETED
        return result

    async def _child(self, batch: BatchProgress, child: BatchInput) -> list[Any]:
        if self._legacy:
            legacy: list[str] = await workflow.execute_child_workflow(
                "BatchWorkflow", child, id=batch.workflow_id, result_type=list[str],
                parent_close_policy=ParentClosePolicy.REQUEST_CANCEL,
            )
            return legacy
        last = batch.offset + batch.size - 1
        raw: RawValue = await workflow.execute_child_workflow(
            "BatchWorkflow", child, id=batch.workflow_id, result_type=RawValue,
            parent_close_policy=ParentClosePolicy.REQUEST_CANCEL,
            static_summary=f"tasks {batch.offset}-{last} of {child.fn} (job {child.job_id})",
        )
        parts: list[Payload] = unpack(raw.payload)
        return parts

    async def _cleanup_job(self, arg: CleanupJobInput) -> None:
        await workflow.execute_activity(
            "cleanup_job", arg, start_to_close_timeout=CLEANUP_TIMEOUT, **bookkeeping()
        )

    @workflow.query
    def progress(self) -> JobProgress:
        arg = self._input
        if arg is None:
            return JobProgress(job_id="", total=0)
        if self._runner is not None:
            runner = self._runner
            return JobProgress(arg.job_id, len(runner.tasks), runner.counts(), runner.tasks)
        counts = dict.fromkeys(TASK_STATES, 0)
        if arg.item_count > 0:
            # Only the batches in flight are listed; the counts cover the whole job.
            counts[TASK_COMPLETED] = self._completed
            counts[TASK_PENDING] = arg.item_count - self._completed
            size = batch_size_for(arg.batch_size, arg.options)
            return JobProgress(arg.job_id, arg.item_count, counts, [], list(self._batches), size)
        for b in self._batches:
            counts[TASK_COMPLETED if b.state == TASK_COMPLETED else TASK_PENDING] += b.size
        return JobProgress(arg.job_id, len(arg.items), counts, [], self._batches)
