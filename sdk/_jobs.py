"""``submit`` / ``map`` / ``run_map`` and the ``JobHandle`` they return."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import timedelta
from typing import Any

from temporalio.api.common.v1 import Payload
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError, CancelledError, TerminatedError
from temporalio.service import RPCError

from sdk import _codec
from sdk._connection import Connection, connect, default_connection
from sdk._functions import function_path
from sdk._heartbeats import with_heartbeats
from sdk._job_items import JobItemsMissing, JobItemStore, build_job_item_store
from sdk._values import decode_value, encode_value
from sdk.errors import JobCancelled, JobFailed, TaskFailed
from workflows._runner import PAYLOADS_PATCH
from workflows.job import JobWorkflow
from workflows.models import (
    BATCHES_PER_RUN,
    DEFAULT_BATCH_SIZE,
    DEFAULT_HEARTBEAT_TIMEOUT,
    DEFAULT_WINDOW,
    KEEP_FINAL,
    KEEP_NONE,
    TASK_COMPLETED,
    TASK_PENDING,
    BatchProgress,
    JobInput,
    JobProgress,
    TaskOptions,
    TaskProgress,
    batch_size_for,
    batch_workflow_id,
    parse_task_error,
    task_id_for,
    validate_job_id,
)
from workflows.payloads import is_json, json_value, task_error_of, unpack

# Seconds: "checkpoint by steps only" (ten years, longer than any task runs).
STEPS_ONLY_INTERVAL = 10 * 365 * 86400.0
# Events of a job's history read to tell its payload format (the patch marker
# follows the first workflow task, within the first few events).
PATCH_LOOKAHEAD = 20
# How long progress() waits for each batch in flight to answer. A batch whose
# worker is busy scheduling its first waves can take many seconds to answer a
# query; its tasks then count as the job sees them (pending) and
# ``JobProgress.unanswered`` says how many batches that was.
BATCH_QUERY_TIMEOUT = timedelta(seconds=1)


class JobHandle:
    """A submitted job: ``await result()``, ``await progress()``, ``await cancel()``."""

    def __init__(self, job_id: str, handle: WorkflowHandle[Any, Any], conn: Connection) -> None:
        self.job_id = job_id
        self._handle = handle
        self._conn = conn

    def __repr__(self) -> str:
        return f"JobHandle(job_id={self.job_id!r})"

    async def result(self) -> list[Any]:
        """The results in input order; :class:`JobFailed` / :class:`JobCancelled` otherwise."""
        try:
            raw: RawValue = await self._result_handle().result()
        except WorkflowFailureError as err:
            cause = err.cause
            if isinstance(cause, (CancelledError, TerminatedError)):
                how = "cancelled" if isinstance(cause, CancelledError) else "terminated"
                raise JobCancelled(f"job {self.job_id} was {how}") from err
            msg = cause.message if isinstance(cause, ApplicationError) else str(cause)
            raise JobFailed(f"job {self.job_id} failed: {msg}") from err
        results: list[Payload] | list[str] = unpack(raw.payload)
        if not results:
            # A job with stored items returns nothing itself: its batches wrote
            # their results to the item store.
            store = build_job_item_store(self._conn.settings)
            results = await asyncio.to_thread(store.read_results, self.job_id) or []
        elif all(isinstance(r, Payload) and is_json(r) and isinstance(json_value(r), str)
                 for r in results) and not await self._payload_format():
            # A job started before payloads had their own encodings returns base64
            # pickles as JSON strings; strings of a payload-format job are just strings.
            return [_decode_result(str(json_value(r))) for r in results if isinstance(r, Payload)]
        return [_decode_result(r) for r in results]

    async def _payload_format(self) -> bool:
        """True when the job records the payload-format patch (its first workflow task does)."""
        handle = self._conn.client.get_workflow_handle(self.job_id, run_id=self._handle.run_id)
        seen_task = False
        async for event in handle.fetch_history_events(page_size=PATCH_LOOKAHEAD):
            attrs = event.marker_recorded_event_attributes
            if event.HasField("marker_recorded_event_attributes") and attrs.marker_name == "core_patch":
                data = attrs.details["patch-data"].payloads[0].data
                if json.loads(data).get("id") == PAYLOADS_PATCH:
                    return True
            elif event.HasField("workflow_task_completed_event_attributes"):
                if seen_task:  # the patch is marked in the first task's commands
                    return False
                seen_task = True
            if event.event_id >= PATCH_LOOKAHEAD:
                return False
        return False

    def _result_handle(self) -> WorkflowHandle[Any, RawValue]:
        return self._conn.client.get_workflow_handle(
            self.job_id, run_id=self._handle.run_id, result_type=RawValue)

    async def partial_results(self) -> dict[int, Any]:
        """The result of every task that completed, by item index, however the job ended.

        For a job that failed (without ``return_exceptions``) this is what its
        completed tasks returned before the failure stopped the rest; while a job
        runs, what has completed so far. Needs a worker to answer the queries of a
        job that has ended (Temporal replays it), within the namespace's retention.
        """
        top: JobProgress = await self._handle.query(JobWorkflow.progress)
        if top.batch_size > 0:
            store = build_job_item_store(self._conn.settings)
            manifest = await asyncio.to_thread(store.manifest, self.job_id)
            parts = await asyncio.gather(*(self._stored_batch_results(store, manifest, top, k)
                                           for k in range(-(-top.total // top.batch_size))))
        elif top.batches:
            parts = await asyncio.gather(*(self._query_results(b.workflow_id)
                                           for b in top.batches))
        else:
            parts = [await self._query_results(self.job_id)]
        return {i: value for part in parts for i, value in part.items()}

    async def _query_results(self, workflow_id: str) -> dict[int, Any]:
        """The ``partial_results`` query of one workflow, decoded (nothing if it never ran)."""
        try:
            handle = self._conn.client.get_workflow_handle(workflow_id)
            raw: RawValue = await handle.query("partial_results", result_type=RawValue)
        except RPCError:
            return {}
        header, *payloads = unpack(raw.payload)
        results: list[Payload | str] = list(payloads)
        head = json_value(header)
        # A first-format job's results are base64 strings, sent as JSON strings.
        legacy = bool(head["legacy"])
        if legacy:
            results = [str(json_value(p)) for p in payloads]
        values = [_decode_result(r) for r in results]
        return dict(zip(head["indexes"], values, strict=True))

    async def _stored_batch_results(self, store: JobItemStore, manifest: dict[str, Any] | None,
                                    top: JobProgress, chunk: int) -> dict[int, Any]:
        """A stored job's batch: its chunk of results once written, else its own query."""
        results: list[Payload | str]
        try:
            results = list(await asyncio.to_thread(store.read_result_chunk, self.job_id, chunk,
                                                      manifest))
        except JobItemsMissing:  # the batch has not written its results (yet)
            results = []
        if results:
            return {chunk * top.batch_size + i: _decode_result(r) for i, r in enumerate(results)}
        return await self._query_results(batch_workflow_id(self.job_id, chunk))

    async def progress(self, batch: int | None = None) -> JobProgress:
        """Per-state counts of every task, and the state and attempt of tasks.

        Args:
            batch: of a job with stored items (larger than one batch), only
                ``counts`` covers the whole job and ``tasks`` is empty unless
                ``batch`` names one batch (0, 1, ...): then it lists that
                batch's tasks. Smaller jobs list every task either way.
        """
        top: JobProgress = await self._handle.query(JobWorkflow.progress)
        # A job with stored items (it names its batch size) lists only its
        # batches in flight, no tasks.
        if top.batch_size > 0:
            return await self._windowed_progress(top, batch)
        if not top.batches:
            return replace(top, tasks=await with_heartbeats(self._conn.client, self._handle,
                                                            top.tasks))
        tasks: list[TaskProgress] = []
        for b in top.batches:
            tasks.extend(await self._batch_tasks(b))
        counts: dict[str, int] = {k: 0 for k in top.counts}
        for t in tasks:
            counts[t.state] = counts.get(t.state, 0) + 1
        return replace(top, counts=counts, tasks=tasks)

    async def _batch_tasks(self, batch: BatchProgress) -> list[TaskProgress]:
        """The tasks of one batch: its own query while it runs, else from its state."""
        if batch.state != TASK_COMPLETED:
            try:
                child = self._conn.client.get_workflow_handle(batch.workflow_id)
                part = await child.query("progress", result_type=JobProgress,
                                         rpc_timeout=BATCH_QUERY_TIMEOUT * 2)
            except RPCError:
                part = None
            if part is not None and part.tasks:
                return await with_heartbeats(self._conn.client, child, part.tasks)
        state = TASK_COMPLETED if batch.state == TASK_COMPLETED else TASK_PENDING
        return [
            TaskProgress(i, task_id_for(self.job_id, i), state, int(state == TASK_COMPLETED))
            for i in range(batch.offset, batch.offset + batch.size)
        ]

    async def _windowed_progress(self, top: JobProgress, batch: int | None) -> JobProgress:
        """Counts from the job plus its (few) batches in flight; tasks of ``batch`` only."""
        parts = await asyncio.gather(*(self._batch_counts(b) for b in top.batches))
        counts = dict(top.counts)
        for part in parts:
            for state, n in (part or {}).items():
                if state != TASK_PENDING:
                    counts[TASK_PENDING] -= n
                    counts[state] = counts.get(state, 0) + n
        tasks: list[TaskProgress] = []
        if batch is not None:
            tasks = await self._tasks_of_batch(top, batch)
        return replace(top, counts=counts, tasks=tasks,
                       unanswered=sum(1 for p in parts if p is None))

    async def _batch_counts(self, batch: BatchProgress) -> dict[str, int] | None:
        """Tasks per state of a batch in flight; None if it does not answer in time."""
        try:
            child = self._conn.client.get_workflow_handle(batch.workflow_id)
            counts: dict[str, int] = await child.query(
                "counts", result_type=dict[str, int], rpc_timeout=BATCH_QUERY_TIMEOUT)
        except RPCError:
            return None
        return counts

    async def _tasks_of_batch(self, top: JobProgress, batch: int) -> list[TaskProgress]:
        wid = batch_workflow_id(self.job_id, batch)
        for b in top.batches:
            if b.workflow_id == wid:
                return await self._batch_tasks(b)
        size = top.batch_size
        if batch < 0 or size <= 0 or batch * size >= top.total:
            raise ValueError(f"job {self.job_id} has no batch {batch}")
        # Batches start in order: one not in flight before the last one in flight
        # has finished, one after it has not started.
        last = max((b.offset for b in top.batches), default=-1)
        done = batch * size < last if top.batches else top.counts.get(TASK_COMPLETED) == top.total
        state = TASK_COMPLETED if done else TASK_PENDING
        stop = min(top.total, (batch + 1) * size)
        return [
            TaskProgress(i, task_id_for(self.job_id, i), state, int(state == TASK_COMPLETED))
            for i in range(batch * size, stop)
        ]

    async def cancel(self) -> None:
        """Cancel the job and its running tasks."""
        await self._handle.cancel()


def _options(
    max_attempts: int,
    heartbeat_timeout: float,
    checkpoint_interval: float | None,
    max_checkpoint_age: float | None,
    checkpoint_every_steps: int | None = None,
    keep: str | None = None,
    warm_start_from: str | None = None,
    return_exceptions: bool = False,
) -> TaskOptions:
    if max_attempts < 1:
        raise ValueError("max_attempts must be >= 1")
    if heartbeat_timeout <= 0:
        raise ValueError("heartbeat_timeout must be > 0 seconds")
    if checkpoint_interval is not None and checkpoint_interval <= 0:
        raise ValueError("checkpoint_interval must be > 0 seconds or None")
    if max_checkpoint_age is not None and max_checkpoint_age <= 0:
        raise ValueError("max_checkpoint_age must be > 0 seconds or None")
    if checkpoint_every_steps is not None and (
            isinstance(checkpoint_every_steps, bool) or not isinstance(checkpoint_every_steps, int)
            or checkpoint_every_steps < 1):
        raise ValueError("checkpoint_every_steps must be an int >= 1 or None")
    if keep not in (None, KEEP_NONE, KEEP_FINAL):
        raise ValueError(f"keep must be 'final' or None, got {keep!r}")
    if warm_start_from is not None:
        validate_job_id(warm_start_from)
    for name, value in (("keep='final'", keep == KEEP_FINAL),
                        ("warm_start_from", warm_start_from is not None)):
        if value and checkpoint_interval is None and checkpoint_every_steps is None:
            raise ValueError(f"{name} needs a checkpointed job: set checkpoint_interval or "
                             "checkpoint_every_steps")
    if checkpoint_every_steps is not None and checkpoint_interval is None:
        # Workflows treat a job as checkpointed (and clean its checkpoints up) when it
        # has an interval; a step-only job gets one that never elapses.
        checkpoint_interval = STEPS_ONLY_INTERVAL
    return TaskOptions(max_attempts, heartbeat_timeout, checkpoint_interval, max_checkpoint_age,
                       checkpoint_every_steps, keep or KEEP_NONE, warm_start_from,
                       return_exceptions=bool(return_exceptions))


def _decode_result(result: Payload | str) -> Any:
    """A task's result, or the :class:`TaskFailed` that stands for a failed task."""
    # A job started by an earlier version returns base64 pickles (JSON strings).
    if isinstance(result, str):
        error = parse_task_error(result)
        if error is None:
            return _codec.decode_value(result)
    else:
        error = task_error_of(result)
        if error is None:
            return decode_value(result)
    return TaskFailed(str(error["type"]), str(error["message"]), int(error["attempts"]),
                      str(error["task_id"]), int(error["index"]))


def _encode_items(items: Iterable[Any]) -> list[Payload]:
    """Every item encoded; an item that cannot be is named by its index."""
    encoded = []
    for index, item in enumerate(items):
        try:
            encoded.append(encode_value(item))
        except Exception as exc:
            raise ValueError(f"item {index} cannot be sent to the workers: "
                             f"{type(exc).__name__}: {exc}") from exc
    return encoded


async def submit(
    fn: Callable[..., Any] | str,
    items: Iterable[Any],
    *,
    checkpoint_interval: float | None = None,
    job_id: str | None = None,
    max_attempts: int = 5,
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT,
    max_checkpoint_age: float | None = 3600.0,
    progress: bool = False,
    checkpoint_every_steps: int | None = None,
    keep: str | None = None,
    warm_start_from: str | None = None,
    return_exceptions: bool = False,
) -> JobHandle:
    """Start a job running ``fn`` on every item; return without waiting.

    Args:
        fn: a top-level function of an importable module (or ``"module:function"``).
        items: inputs, one task each: JSON values travel as JSON (readable in the
            Temporal UI and CLI), NumPy arrays as ``.npy`` bytes, anything else pickled.
        checkpoint_interval: seconds between checkpoints; None disables them (unless
            ``checkpoint_every_steps`` is set).
        job_id: the workflow id (generated when omitted).
        max_attempts: attempts per task before the job fails.
        heartbeat_timeout: seconds without a heartbeat before a task is retried.
        max_checkpoint_age: older checkpoints are not resumed from (None: any age).
        progress: accepted for symmetry with ``map``; ``submit`` draws nothing.
        checkpoint_every_steps: also checkpoint at every N-th ``checkpoint()`` call
            (whichever of this and the interval comes first); None: by time only.
        keep: ``"final"`` keeps each completed task's final checkpoint (the state
            offered to its last ``checkpoint()`` call, as it is when the function
            returns, with its files) instead of deleting it; removed by
            ``crowdcompute gc --older-than DAYS``. None (default): deleted.
        warm_start_from: a job id: each task that has no checkpoint of its own
            starts from the kept final checkpoint of the same index in that job
            (``restore()`` / ``restore_files()`` return it). A task whose
            counterpart kept nothing fails with ``WarmStartNotFound`` (not
            retried) rather than silently starting from scratch.
        return_exceptions: a task that fails after its retries puts a
            :class:`~sdk.errors.TaskFailed` in its place in the results and the
            job goes on; False: the first such failure fails the job
            (``JobHandle.partial_results()`` still has what completed).
    """
    del progress
    path = function_path(fn)
    options = _options(max_attempts, heartbeat_timeout, checkpoint_interval, max_checkpoint_age,
                       checkpoint_every_steps, keep, warm_start_from, return_exceptions)
    job_id = validate_job_id(job_id) if job_id is not None else f"job-{uuid.uuid4().hex[:16]}"
    encoded = _encode_items(items)
    conn = await default_connection()
    return await start_job(conn, job_id, path, encoded, options)


async def start_job(
    conn: Connection,
    job_id: str,
    fn: str,
    encoded: list[Payload],
    options: TaskOptions,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    window: int = DEFAULT_WINDOW,
    batches_per_run: int = BATCHES_PER_RUN,
) -> JobHandle:
    """Start ``JobWorkflow``; items that are not all JSON, or more than one batch, go to the item store.

    A small job of JSON items keeps them in the workflow input (readable in the
    Temporal UI and CLI); any other writes them once, in chunks of its batch
    size, and passes only their count (each task's item is then its own payload).
    """
    size = batch_size_for(batch_size, options)
    arg = JobInput(job_id=job_id, fn=fn, items=[], options=options, batch_size=batch_size,
                   window=window, batches_per_run=batches_per_run)
    if len(encoded) <= size and all(is_json(p) for p in encoded):
        arg = replace(arg, items=[json_value(p) for p in encoded])
    else:
        store = build_job_item_store(conn.settings)
        await asyncio.to_thread(store.put_items, job_id, encoded, size)
        arg = replace(arg, item_count=len(encoded))
    handle = await conn.client.start_workflow(
        JobWorkflow.run, arg, id=job_id, task_queue=conn.settings.task_queue,
        static_summary=job_summary(fn, len(encoded), options),
    )
    return JobHandle(job_id, handle, conn)


def job_summary(fn: str, count: int, options: TaskOptions) -> str:
    """The job's line in the Temporal UI: function, item count, checkpointing."""
    if options.checkpoint_interval is None:
        how = "no checkpoints"
    elif options.checkpoint_interval >= STEPS_ONLY_INTERVAL:
        how = f"checkpoint every {options.checkpoint_every_steps} steps"
    else:
        how = f"checkpoint every {options.checkpoint_interval:g} s"
        if options.checkpoint_every_steps is not None:
            how += f" or {options.checkpoint_every_steps} steps"
    return f"{fn} over {count} item{'s' if count != 1 else ''}, {how}"


async def map(  # noqa: A001 - the public name is part of the API
    fn: Callable[..., Any] | str,
    items: Iterable[Any],
    *,
    checkpoint_interval: float | None = None,
    job_id: str | None = None,
    max_attempts: int = 5,
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT,
    max_checkpoint_age: float | None = 3600.0,
    progress: bool = False,
    checkpoint_every_steps: int | None = None,
    keep: str | None = None,
    warm_start_from: str | None = None,
    return_exceptions: bool = False,
) -> list[Any]:
    """Run ``fn`` over ``items`` as one durable job; the results in input order.

    Takes the arguments of :func:`submit` (``keep``, ``warm_start_from`` included).
    With ``return_exceptions=True`` a task that failed after its retries is a
    :class:`~sdk.errors.TaskFailed` in the list.
    """
    job = await submit(
        fn,
        items,
        checkpoint_interval=checkpoint_interval,
        job_id=job_id,
        max_attempts=max_attempts,
        heartbeat_timeout=heartbeat_timeout,
        max_checkpoint_age=max_checkpoint_age,
        checkpoint_every_steps=checkpoint_every_steps,
        keep=keep,
        warm_start_from=warm_start_from,
        return_exceptions=return_exceptions,
    )
    if not progress:
        return await job.result()
    from sdk._progress import watch

    return await watch(job)


def run_map(
    fn: Callable[..., Any] | str,
    items: Iterable[Any],
    *,
    address: str | None = None,
    **options: Any,
) -> list[Any]:
    """Synchronous ``map`` for scripts: connects (``address`` or the environment) and waits."""

    function_path(fn)  # fail before connecting

    async def main() -> list[Any]:
        await connect(address)
        return await map(fn, items, **options)

    return asyncio.run(main())
