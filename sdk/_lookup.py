"""``get_job`` / ``list_jobs``: find jobs again after the client that started them is gone."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from sdk._connection import default_connection
from sdk._jobs import JobHandle
from sdk.errors import JobNotFound
from workflows.models import validate_job_id

__all__ = ["JOB_STATUSES", "JobInfo", "get_job", "list_jobs"]

_STATUS_NAMES = {
    WorkflowExecutionStatus.RUNNING: "running",
    WorkflowExecutionStatus.COMPLETED: "completed",
    WorkflowExecutionStatus.FAILED: "failed",
    WorkflowExecutionStatus.CANCELED: "cancelled",
    WorkflowExecutionStatus.TERMINATED: "terminated",
    WorkflowExecutionStatus.CONTINUED_AS_NEW: "continued_as_new",
    WorkflowExecutionStatus.TIMED_OUT: "timed_out",
}
_VISIBILITY_NAMES = {
    "running": "Running", "completed": "Completed", "failed": "Failed", "cancelled": "Canceled",
    "terminated": "Terminated", "continued_as_new": "ContinuedAsNew", "timed_out": "TimedOut",
}
JOB_STATUSES = tuple(_VISIBILITY_NAMES)


@dataclass(frozen=True)
class JobInfo:
    """One job as Temporal's visibility store lists it."""

    job_id: str
    status: str            # one of JOB_STATUSES
    started_at: datetime | None
    closed_at: datetime | None
    task_queue: str


async def get_job(job_id: str) -> JobHandle:
    """A handle (result, progress, cancel) on an existing job.

    Raises:
        ValueError: ``job_id`` is not a valid job id.
        JobNotFound: Temporal knows no job of that id.
    """
    validate_job_id(job_id)
    conn = await default_connection()
    handle = conn.client.get_workflow_handle(job_id)
    try:
        desc = await handle.describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise JobNotFound(f"no job {job_id!r} in namespace {conn.settings.namespace!r}") from None
        raise
    if desc.workflow_type != "JobWorkflow":
        raise JobNotFound(f"{job_id!r} is a {desc.workflow_type} workflow, not a job")
    return JobHandle(job_id, handle, conn)


async def list_jobs(status: str | None = None, limit: int = 100) -> list[JobInfo]:
    """The newest jobs first, at most ``limit``, optionally only those with ``status``.

    Uses Temporal's visibility store (``temporal workflow list`` sees the same).
    """
    if status is not None and status not in _VISIBILITY_NAMES:
        raise ValueError(f"unknown job status {status!r}; expected one of {', '.join(JOB_STATUSES)}")
    if limit < 1:
        raise ValueError("limit must be >= 1")
    query = "WorkflowType = 'JobWorkflow'"
    if status is not None:
        query += f" AND ExecutionStatus = '{_VISIBILITY_NAMES[status]}'"
    conn = await default_connection()
    jobs: list[JobInfo] = []
    async for wf in conn.client.list_workflows(query, limit=limit):
        jobs.append(JobInfo(wf.id, _STATUS_NAMES.get(wf.status, "unknown") if wf.status else "unknown",
                            wf.start_time, wf.close_time, wf.task_queue))
    return jobs
