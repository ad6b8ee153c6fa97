"""Assemble a job's checkpoint summary from the catalog and Temporal.

Shared by ``GET /api/checkpoints/jobs/{job_id}`` and ``crowdcompute status``.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool

from ._queries import CatalogReader
from ._temporal import JobStatusSource, TemporalUnavailable
from .schemas import JobCheckpoints

__all__ = ["JobNotFound", "job_checkpoints"]


class JobNotFound(LookupError):
    """Neither Temporal nor the catalog knows the job."""


async def job_checkpoints(
    reader: CatalogReader, source: JobStatusSource, job_id: str
) -> JobCheckpoints:
    """The job's summary.

    ``job_status`` is ``unknown`` when Temporal is unreachable or no longer
    knows the workflow but the catalog still has its tasks. ``total_tasks`` is
    the workflow's own count while it runs (``progress`` query), else the
    number of tasks in the catalog.

    Raises:
        JobNotFound: neither source knows ``job_id``.
        TemporalUnavailable: Temporal is unreachable and the catalog has nothing.
    """
    tasks = await run_in_threadpool(reader.job_tasks, job_id)
    try:
        facts = await source.facts(job_id)
    except TemporalUnavailable:
        if tasks is None:
            raise
        facts = None
    if tasks is None and facts is not None and facts.status is None:
        raise JobNotFound(job_id)
    tasks = tasks or []
    total = max(len(tasks), (facts.total_tasks if facts else None) or 0)
    return JobCheckpoints(
        job_id=job_id,
        job_status=(facts.status if facts else None) or "unknown",  # type: ignore[arg-type]
        total_tasks=total,
        tasks_with_checkpoints=sum(1 for t in tasks if t.checkpoint_count > 0),
        average_progress_percent=(
            round(sum(t.progress_percent for t in tasks) / total, 3) if total else 0.0
        ),
        total_checkpoints_taken=sum(t.checkpoint_count for t in tasks),
        total_bytes_stored=sum(t.bytes_stored for t in tasks),
        tasks=tasks,
    )
