"""``crowdcompute gc``: delete checkpoint data that no running job can use.

Cleanup normally happens inside the job (a cleanup activity per completed task
and one when the job ends). A workflow that was terminated, timed out or lost
its worker for good never runs those, so this sweep asks Temporal about every
job that still has checkpoint data and deletes the data of each job that is no
longer running (or that Temporal does not know), then removes orphaned blobs
(written but never committed) older than the grace period.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from sqlalchemy.orm import Session
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from checkpoint import CheckpointManager, catalog

log = logging.getLogger("checkpoint")


@dataclass(frozen=True)
class GcReport:
    jobs_checked: int
    jobs_deleted: tuple[str, ...]
    orphans_removed: int


def jobs_with_checkpoints(manager: CheckpointManager) -> list[str]:
    """Ids of jobs that still hold committed checkpoint rows."""
    with Session(manager.engine) as s:
        return catalog.jobs_with_checkpoints(s)


async def _is_running(client: Client, job_id: str) -> bool:
    try:
        desc = await client.get_workflow_handle(job_id).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return desc.status == WorkflowExecutionStatus.RUNNING


async def collect(manager: CheckpointManager, client: Client, grace_seconds: float) -> GcReport:
    """Delete the checkpoint data of jobs that are not running; sweep orphans."""
    job_ids = await asyncio.to_thread(jobs_with_checkpoints, manager)
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
    return GcReport(len(job_ids), tuple(deleted), orphans)
