"""``crowdcompute status JOB_ID [--watch]``: per-task progress in the terminal."""

from __future__ import annotations

import asyncio

from rich.console import Console
from rich.table import Table

from worker_app.settings import Settings
from workflows.models import JobProgress

WATCH_SECONDS = 1.0


def render(progress: JobProgress) -> Table:
    counts = ", ".join(f"{k} {v}" for k, v in progress.counts.items())
    table = Table(title=f"job {progress.job_id}: {progress.total} tasks ({counts})")
    for col in ("task", "state", "attempt"):
        table.add_column(col)
    for t in progress.tasks:
        table.add_row(t.task_id, t.state, str(t.attempt))
    return table


async def show_status(settings: Settings, job_id: str, *, watch: bool = False) -> int:
    import sdk
    from sdk._jobs import JobHandle

    conn = await sdk.connect(settings=settings)
    job = JobHandle(job_id, conn.client.get_workflow_handle(job_id), conn)
    console = Console()
    while True:
        progress = await job.progress()
        console.print(render(progress))
        desc = await conn.client.get_workflow_handle(job_id).describe()
        status = desc.status.name.lower() if desc.status else "unknown"
        console.print(f"workflow status: {status}")
        if not watch or status != "running":
            return 0
        await asyncio.sleep(WATCH_SECONDS)
