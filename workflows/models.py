"""Inputs, outputs and identifiers shared by the SDK, workflows and activities.

Sandbox-safe: standard library only. Every model is a dataclass whose fields are
only ever added (with defaults), never renamed, so running histories replay.
User items and results cross Temporal as payloads of their own encodings
(``workflows.payloads``): JSON values as JSON, inline in these models; others
as opaque payloads the workflow never decodes. Jobs started before that (their
``items`` are base64 strings of pickles) run on as they started.
"""

from __future__ import annotations

import functools
import json
import re
import typing
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, TypeVar

M = TypeVar("M")

JOB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")

# Tasks per workflow: a job with more items runs them in child BatchWorkflows of
# this size, which keeps each history near 4,000 events (< 10,240) and pending
# activities well under Temporal's 2,000 per workflow.
DEFAULT_BATCH_SIZE = 1000
# With a cleanup activity per task the history grows by ~3 events per task more.
CHECKPOINTED_BATCH_SIZE = 400
# A job whose items are in the item store keeps at most this many batches in
# flight (a sliding window) and continues as new after starting this many, so
# its own history stays near 1,000 events and each workflow task handles a few
# child events, at any job size.
DEFAULT_WINDOW = 10
BATCHES_PER_RUN = 100

TASK_PENDING = "pending"
TASK_RUNNING = "running"
TASK_COMPLETED = "completed"
TASK_FAILED = "failed"
TASK_CANCELLED = "cancelled"
TASK_STATES = (TASK_PENDING, TASK_RUNNING, TASK_COMPLETED, TASK_FAILED, TASK_CANCELLED)

# Seconds without a heartbeat before Temporal retries a task elsewhere. With the
# worker's heartbeats every 2 s (throttled to at most one per 2 s) a SIGKILLed
# worker's task runs again on another worker 9-11 s later (docs/performance.md).
DEFAULT_HEARTBEAT_TIMEOUT = 8.0

# A failed task's result when the job was started with ``return_exceptions``: this
# prefix then JSON (type, message, attempts, task_id, index). Encoded values are
# base64 or JSON text, neither of which can start with "!".
TASK_ERROR_PREFIX = "!crowdcompute-task-error:"

# What a completed task keeps of its checkpoints (``TaskOptions.keep``).
KEEP_NONE = "none"
KEEP_FINAL = "final"
KEEP_CHOICES = (KEEP_NONE, KEEP_FINAL)


_Field = tuple[str, Callable[[Any], Any] | None]

# Weak keys: the workflow sandbox imports this module afresh for each workflow
# run, so each run's classes get (and drop) their own entries.
_PLANS: weakref.WeakKeyDictionary[type, tuple[_Field, ...]] = weakref.WeakKeyDictionary()


def is_model(cls: Any) -> bool:
    """True for the dataclasses of this module (``model_from_json`` builds them)."""
    return isinstance(cls, type) and is_dataclass(cls) and cls.__module__ == __name__


def _plan(cls: type) -> tuple[_Field, ...]:
    """How to build ``cls`` from JSON: per init field, a converter or None.

    A field of another model (or a list of them) converts recursively; every
    other field of our models is a JSON value already (str, int, float, bool,
    None, lists and dicts of them) and is passed through. Type hints are
    resolved once per class (string annotations are evaluated then).
    """
    known = _PLANS.get(cls)
    if known is not None:
        return known
    hints = typing.get_type_hints(cls)
    plan: list[_Field] = []
    for f in fields(cls):
        if not f.init:
            continue
        hint = hints[f.name]
        inner = typing.get_args(hint)[0] if typing.get_origin(hint) is list else None
        if is_model(hint):
            plan.append((f.name, functools.partial(model_from_json, hint)))
        elif inner is not None and is_model(inner):
            plan.append((f.name, functools.partial(_models_from_json, inner)))
        else:
            plan.append((f.name, None))
    _PLANS[cls] = out = tuple(plan)
    return out


def model_from_json(cls: type[M], data: Any) -> M:
    """``cls`` (one of our models) from its JSON object.

    Keys it does not know are ignored and missing ones take their defaults, as
    Temporal's own dataclass conversion does (fields are only ever added).
    """
    if not is_model(cls) or not isinstance(data, dict):
        raise TypeError(f"cannot convert {type(data).__name__} to {cls.__name__}")
    kwargs = {}
    for name, convert in _plan(cls):
        if name in data:
            v = data[name]
            kwargs[name] = convert(v) if convert is not None and v is not None else v
    return cls(**kwargs)


def _models_from_json(cls: type[M], values: Any) -> list[M]:
    if not isinstance(values, list):
        raise TypeError(f"cannot convert {type(values).__name__} to a list of {cls.__name__}")
    return [model_from_json(cls, v) for v in values]


def validate_job_id(job_id: str) -> str:
    """Return ``job_id`` if it is a valid job id, else raise ``ValueError``."""
    if not isinstance(job_id, str) or not JOB_ID_PATTERN.fullmatch(job_id):
        raise ValueError(
            f"invalid job id {job_id!r}: use 1-200 characters from A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit"
        )
    return job_id


def task_id_for(job_id: str, index: int) -> str:
    """The globally unique id of task ``index`` of ``job_id`` (catalog, REST API)."""
    return f"{job_id}:{index}"


def batch_workflow_id(job_id: str, batch: int) -> str:
    """Workflow id of the child workflow that runs batch ``batch`` of a job."""
    return f"{job_id}--batch-{batch}"


def batch_size_for(batch_size: int, options: TaskOptions) -> int:
    """Tasks per batch workflow of a job (checkpointed jobs run smaller batches)."""
    size = max(1, batch_size)
    if options.checkpoint_interval is not None:
        size = min(size, CHECKPOINTED_BATCH_SIZE)
    return size


@dataclass
class TaskOptions:
    """Per-task execution options, identical for every task of a job."""

    max_attempts: int = 5
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT
    checkpoint_interval: float | None = None
    max_checkpoint_age: float | None = 3600.0
    checkpoint_every_steps: int | None = None
    # "final": a completed task's last checkpoint is kept (not deleted); "none": the default
    keep: str = KEEP_NONE
    # a job whose kept final checkpoints the tasks start from (same index)
    warm_start_from: str | None = None
    # A failed task's result is an error record (``task_error_result``) and the job
    # goes on, instead of the first failure failing the job.
    return_exceptions: bool = False


@dataclass
class JobInput:
    """Input of ``JobWorkflow``: ``items`` are JSON values, in input order.

    A job with other items (or more than one batch of them) has them in the job
    item store instead. Jobs of the first payload format carried base64 pickles
    here (``legacy_payloads``).
    """

    job_id: str
    fn: str
    items: list[Any]
    options: TaskOptions = field(default_factory=TaskOptions)
    batch_size: int = DEFAULT_BATCH_SIZE
    # > 0: the items are in the job item store (``items`` is empty), in chunks
    # of ``batch_size``; batches read their chunk and write their results there.
    item_count: int = 0
    window: int = DEFAULT_WINDOW
    batches_per_run: int = BATCHES_PER_RUN
    # Carried across continue-as-new: the next batch to start, tasks completed.
    next_batch: int = 0
    completed: int = 0
    # Set by a job of base64-pickle items for the runs and batches it starts.
    legacy_payloads: bool = False


@dataclass
class BatchInput:
    """Input of ``BatchWorkflow``: items ``offset .. offset+len(items)-1`` of a job."""

    job_id: str
    fn: str
    items: list[Any]
    offset: int = 0
    options: TaskOptions = field(default_factory=TaskOptions)
    # >= 0: ``items`` is empty; read chunk ``chunk`` from the job item store and
    # write the results there (the batch then returns an empty list).
    chunk: int = -1
    legacy_payloads: bool = False


@dataclass
class ChunkRef:
    """Input of the ``read_job_items`` activity: chunk ``chunk`` of a job's items."""

    job_id: str
    chunk: int
    # True: the chunk is one payload of payloads; False: base64 lines (first format).
    payloads: bool = False


@dataclass
class ChunkResults:
    """Input of the ``write_job_results`` activity: the results of one chunk.

    ``results`` holds base64 lines of the first format; today's batches send
    their results as a second, raw argument instead.
    """

    job_id: str
    chunk: int
    results: list[str] = field(default_factory=list)


@dataclass
class RunTaskInput:
    """Input of the ``run_task`` activity: one item of one job.

    The item is the activity's second argument, a payload of its own encoding;
    ``payload`` held a base64 pickle in the first format.
    """

    job_id: str
    index: int
    fn: str
    payload: str = ""
    checkpoint_interval: float | None = None
    max_checkpoint_age: float | None = 3600.0
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT
    checkpoint_every_steps: int | None = None
    keep: str = "none"
    warm_start_from: str | None = None


@dataclass
class CleanupTaskInput:
    """Input of the ``cleanup_task`` activity: the task ended with ``status``."""

    job_id: str
    task_id: str
    status: str = TASK_COMPLETED


@dataclass
class CleanupJobInput:
    """Input of the ``cleanup_job`` activity.

    ``outcome`` (completed / failed / cancelled; empty in older histories) is the
    job's end: tasks the catalog still has as pending or running get their final
    status from it. ``forget``: a new job starts under this id; every row an
    earlier job of the same id left is deleted first, counters included.
    """

    job_id: str
    outcome: str = ""
    forget: bool = False


@dataclass
class TaskStarted:
    """Signal payload: an attempt of task ``index`` started running."""

    index: int
    attempt: int


@dataclass
class TaskProgress:
    """State of one task as reported by the ``progress`` query."""

    index: int
    task_id: str
    state: str = TASK_PENDING
    attempt: int = 0
    error: str | None = None
    # Filled by the client (``JobHandle.progress``) from the task's last heartbeat:
    # the workflow never sees heartbeats, and a signal per checkpoint would grow
    # its history without bound.
    progress_percent: float | None = None
    seq: int | None = None
    heartbeat_age_seconds: float | None = None
    storage_full: bool = False   # its checkpoints found no room for a new base (deltas go on)


@dataclass
class BatchProgress:
    """A child batch as seen by its parent job."""

    workflow_id: str
    offset: int
    size: int
    state: str = TASK_PENDING


@dataclass
class JobProgress:
    """Result of the ``progress`` query.

    ``tasks`` lists the tasks this workflow runs itself. A large job runs its
    tasks in child batches instead: ``batches`` names them (query each for its
    tasks; ``JobHandle.progress()`` merges them). A job whose items are in the
    item store lists only its batches in flight; ``counts`` covers every task.
    """

    job_id: str
    total: int
    counts: dict[str, int] = field(default_factory=dict)
    tasks: list[TaskProgress] = field(default_factory=list)
    batches: list[BatchProgress] = field(default_factory=list)
    # Tasks per batch (batch k holds tasks k*batch_size ..), for a stored job.
    batch_size: int = 0
    # Set by ``JobHandle.progress()``: batches in flight that did not answer in
    # time (a worker busy starting them); their tasks are counted as pending.
    unanswered: int = 0


def task_error_body(error_type: str, message: str, attempts: int, task_id: str,
                    index: int) -> dict[str, Any]:
    """The error record of a failed task of a ``return_exceptions`` job."""
    return {"type": error_type, "message": message, "attempts": attempts, "task_id": task_id,
            "index": index}


def task_error_result(error_type: str, message: str, attempts: int, task_id: str,
                      index: int) -> str:
    """The result that stands for a failed task of a first-format ``return_exceptions`` job
    (a payload-format job's is ``workflows.payloads.task_error_payload``)."""
    body = task_error_body(error_type, message, attempts, task_id, index)
    return TASK_ERROR_PREFIX + json.dumps(body, sort_keys=True)


def parse_task_error(result: str) -> dict[str, Any] | None:
    """The error record of :func:`task_error_result`, or None for an ordinary result."""
    if not result.startswith(TASK_ERROR_PREFIX):
        return None
    body: dict[str, Any] = json.loads(result[len(TASK_ERROR_PREFIX):])
    return body
