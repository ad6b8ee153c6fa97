"""A terminal progress bar for ``map(..., progress=True)``."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:
    from sdk._jobs import JobHandle

POLL_SECONDS = 0.5


async def watch(job: JobHandle) -> list[Any]:
    """Draw the job's completed / total until it ends; return its results."""
    result = asyncio.ensure_future(job.result())
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=False) as bar:
        row = bar.add_task(job.job_id, total=None)
        while not result.done():
            try:
                prog = await job.progress()
                running = prog.counts.get("running", 0)
                bar.update(
                    row,
                    total=prog.total,
                    completed=prog.counts.get("completed", 0),
                    description=f"{job.job_id} ({running} running)",
                )
            except Exception:  # a query can fail while workers restart; keep drawing
                pass
            await asyncio.wait({result}, timeout=POLL_SECONDS)
        if not result.exception():
            bar.update(row, completed=bar.tasks[0].total or 0)
    return await result
