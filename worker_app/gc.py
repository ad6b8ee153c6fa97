"""``crowdcompute gc``: delete checkpoint data that no running job can use.

Cleanup normally happens inside the job (a cleanup activity per completed task
and one when the job ends). A workflow that was terminated, timed out or lost
its worker for good never runs those, so this sweep asks Temporal about every
job that still has checkpoint data and deletes the data of each job that is no
longer running (or that Temporal does not know), then removes orphaned blobs
(written but never committed) older than the grace period. Final checkpoints
kept with ``keep="final"`` stay until ``--older-than DAYS`` deletes those kept
longer than that.

It also trims the job item store (a large job's items and results, kept
outside Temporal): a job that is no longer running loses its items (nothing
reads them again) and keeps its results for ``JobHandle.result()``; a job that
Temporal no longer knows (its history is past the namespace's retention, so no
result can be asked for) loses everything. Entries written within the grace
period are left alone: a client writes a job's items before it starts the job.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from checkpoint import CheckpointManager

if TYPE_CHECKING:
    from sdk._job_items import JobItemStore

log = logging.getLogger("checkpoint")


@dataclass(frozen=True)
class GcReport:
    jobs_checked: int
    jobs_deleted: tuple[str, ...]
    orphans_removed: int
    # Job item store: jobs whose items were deleted (results kept), and jobs
    # deleted whole (unknown to Temporal).
    items_trimmed: tuple[str, ...] = ()
    items_deleted: tuple[str, ...] = ()
    kept_deleted: tuple[str, ...] = ()


async def _status(client: Client, job_id: str) -> WorkflowExecutionStatus | None:
    """The job's newest run's status; None when Temporal does not know the job."""
    try:
        desc = await client.get_workflow_handle(job_id).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    return desc.status


async def _is_running(client: Client, job_id: str) -> bool:
    return await _status(client, job_id) == WorkflowExecutionStatus.RUNNING


async def collect_job_items(store: JobItemStore, client: Client,
                            grace_seconds: float) -> tuple[list[str], list[str]]:
    """Trim the job item store; return (jobs whose items went, jobs deleted whole)."""
    ages = await asyncio.to_thread(store.job_ages)
    trimmed, deleted = [], []
    for job_id, age in sorted(ages.items()):
        if age < grace_seconds:
            continue
        status = await _status(client, job_id)
        if status is None:
            await asyncio.to_thread(store.delete_job, job_id)
            deleted.append(job_id)
        elif status != WorkflowExecutionStatus.RUNNING:
            await asyncio.to_thread(store.delete_items, job_id)
            trimmed.append(job_id)
    return trimmed, deleted


async def collect(manager: CheckpointManager, client: Client, grace_seconds: float,
                  items: JobItemStore | None = None,
                  older_than_days: float | None = None) -> GcReport:
    """Delete the checkpoint data of jobs that are not running; sweep orphans.

    With ``items``, also trim the job item store (see the module docstring);
    with ``older_than_days`` the kept final checkpoints kept longer than that go too.
    """
    kept: list[str] = []
    if older_than_days is not None:
        kept = await asyncio.to_thread(manager.delete_kept, older_than_days * 86400.0)
    job_ids = await asyncio.to_thread(manager.jobs_with_checkpoints)
    deleted = []
    for job_id in job_ids:
        if not await _is_running(client, job_id):
            await asyncio.to_thread(manager.delete_job, job_id)
            # A job that left data behind ran no cleanup (terminated, say): what it
            # had running did not end on its own.
            await asyncio.to_thread(manager.finish_job, job_id, "cancelled")
            deleted.append(job_id)
    orphans = await asyncio.to_thread(manager.sweep_orphans, grace_seconds)
    log.info("CheckpointManager: gc checked %d jobs, deleted %d, removed %d orphaned blobs "
             "and unfinished writes",
             len(job_ids), len(deleted), orphans)
    trimmed: list[str] = []
    gone: list[str] = []
    if items is not None:
        trimmed, gone = await collect_job_items(items, client, grace_seconds)
        log.info("JobItemStore: gc deleted the items of %d finished jobs and everything of "
                 "%d jobs Temporal no longer knows", len(trimmed), len(gone))
    return GcReport(len(job_ids), tuple(deleted), orphans, tuple(trimmed), tuple(gone),
                    tuple(kept))
