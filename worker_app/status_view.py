"""``crowdcompute status JOB_ID [--watch]``: a job's checkpoint progress drawn with rich.

The view takes plain data — the JSON of ``GET /api/checkpoints/jobs/{job_id}``
(a dict, or the ``JobCheckpoints`` model) — so it works the same from the API
over HTTP or from :func:`fetch_status`, which reads the catalog and Temporal
directly.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

__all__ = ["fetch_status", "format_age", "format_bytes", "render_status", "show_status",
           "status_renderable", "watch_status"]

StatusData = Mapping[str, Any]
_FINAL = {"completed", "failed", "cancelled", "terminated", "timed_out"}
_STYLE = {"running": "cyan", "completed": "green", "failed": "red", "cancelled": "yellow",
          "terminated": "red", "timed_out": "red"}


def format_age(seconds: float | None) -> str:
    """``42s``, ``5m 03s``, ``2h 07m``, ``3d 04h``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def format_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # unreachable


def _as_dict(data: Any) -> dict[str, Any]:
    return data.model_dump(mode="json") if hasattr(data, "model_dump") else dict(data)


def _age(stamp: Any, now: datetime) -> float | None:
    if stamp is None:
        return None
    when = stamp if isinstance(stamp, datetime) else datetime.fromisoformat(str(stamp))
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (now - when).total_seconds()


def _bar(percent: float, width: int) -> ProgressBar:
    return ProgressBar(total=100.0, completed=max(0.0, min(100.0, percent)), width=width)


def status_renderable(data: StatusData | Any, *, now: datetime | None = None) -> RenderableType:
    """The job header, its overall bar and one bar per task, as one rich renderable."""
    job = _as_dict(data)
    now = now or datetime.now(UTC)
    status = str(job.get("job_status", "unknown"))
    avg = float(job.get("average_progress_percent") or 0.0)
    header = Table.grid(padding=(0, 1))
    header.add_row(
        Text(f"Job {job.get('job_id')}", style="bold"),
        Text(status, style=_STYLE.get(status, "magenta")),
        _bar(avg, 30),
        Text(f"{avg:5.1f}%"),
    )
    header.add_row(
        "",
        Text(
            f"{job.get('tasks_with_checkpoints', 0)}/{job.get('total_tasks', 0)} tasks checkpointed"
            f" · {job.get('total_checkpoints_taken', 0)} checkpoints"
            f" · {format_bytes(job.get('total_bytes_stored'))} stored",
            style="dim",
        ),
    )
    table = Table(expand=False, show_edge=False, header_style="bold")
    for name, justify in (("task", "left"), ("progress", "left"), ("%", "right"),
                          ("attempt", "right"), ("checkpoints", "right"),
                          ("last checkpoint", "right"), ("base", "right"), ("status", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for task in job.get("tasks") or []:
        pct = float(task.get("progress_percent") or 0.0)
        attempt = task.get("attempt")
        table.add_row(
            str(task.get("task_id")),
            _bar(pct, 24),
            f"{pct:.1f}",
            "-" if attempt is None else str(attempt),
            str(task.get("checkpoint_count", 0)),
            format_age(_age(task.get("last_checkpoint_at"), now)) + " ago"
            if task.get("last_checkpoint_at") else "never",
            format_bytes(task.get("base_checkpoint_size")),
            str(task.get("status") or "-"),
        )
    if not job.get("tasks"):
        return Group(header, Text("no task has checkpointed yet", style="dim"))
    return Group(header, table)


def render_status(
    data: StatusData | Any, *, console: Console | None = None, now: datetime | None = None
) -> None:
    """Print the job's progress once (``crowdcompute status JOB_ID``)."""
    (console or Console()).print(status_renderable(data, now=now))


async def watch_status(
    fetch: Callable[[], Awaitable[Any]] | Callable[[], Any],
    *,
    interval: float = 2.0,
    console: Console | None = None,
    max_updates: int | None = None,
) -> dict[str, Any]:
    """Redraw the view every ``interval`` s until the job reaches a final status.

    ``fetch`` returns the job data (sync or async). Returns the last data seen;
    stops early after ``max_updates`` fetches if given. Ctrl-C is the caller's.
    """
    async def get() -> dict[str, Any]:
        result = fetch()
        if inspect.isawaitable(result):
            result = await result
        return _as_dict(result)

    data = await get()
    updates = 1
    with Live(status_renderable(data), console=console, refresh_per_second=4,
              transient=False) as live:
        while data.get("job_status") not in _FINAL:
            if max_updates is not None and updates >= max_updates:
                break
            await asyncio.sleep(interval)
            data = await get()
            updates += 1
            live.update(status_renderable(data))
    return data


def _sources(settings: Any, manager: Any, client: Any) -> tuple[Any, Any]:
    from worker_app.api._queries import CatalogReader
    from worker_app.api._temporal import JobStatusSource
    from worker_app.api.app import _default_client_factory, _default_manager

    manager = manager if manager is not None else _default_manager(settings)
    factory: Callable[[], Awaitable[Any]]
    if client is not None:

        async def fixed() -> Any:
            return client

        factory = fixed
    else:
        factory = _default_client_factory(settings)
    return CatalogReader(manager), JobStatusSource(factory)


async def fetch_status(
    settings: Any, job_id: str, *, manager: Any = None, client: Any = None
) -> dict[str, Any]:
    """The job's data as the API returns it, read straight from the catalog and Temporal.

    Raises:
        ValueError: ``job_id`` is malformed.
        LookupError: neither Temporal nor the catalog knows the job.
        worker_app.api._temporal.TemporalUnavailable: Temporal is down and the
            catalog knows nothing of the job.
    """
    from worker_app.api._ids import is_job_id
    from worker_app.api._jobs import job_checkpoints

    if not is_job_id(job_id):
        raise ValueError(f"invalid job id {job_id!r}")
    reader, source = _sources(settings, manager, client)
    return (await job_checkpoints(reader, source, job_id)).model_dump(mode="json")


async def show_status(
    settings: Any,
    job_id: str,
    *,
    watch: bool = False,
    interval: float = 2.0,
    console: Console | None = None,
    manager: Any = None,
    client: Any = None,
) -> int:
    """``crowdcompute status JOB_ID [--watch]``; returns the exit code.

    0 shown (with ``watch``: until the job ended), 1 unknown job or Temporal
    unreachable with nothing in the catalog, 2 malformed job id.
    """
    from worker_app.api._ids import is_job_id
    from worker_app.api._jobs import JobNotFound, job_checkpoints
    from worker_app.api._temporal import TemporalUnavailable

    # Not a terminal (a pipe, a file, CI): don't cut the table at rich's default 80 columns.
    console = console or (Console() if sys.stdout.isatty() else Console(width=200))
    if not is_job_id(job_id):
        console.print(f"[red]invalid job id {job_id!r}[/red]")
        return 2
    reader, source = _sources(settings, manager, client)

    async def fetch() -> Any:
        return await job_checkpoints(reader, source, job_id)

    try:
        if watch:
            await watch_status(fetch, interval=interval, console=console)
        else:
            render_status(await fetch(), console=console)
    except JobNotFound:
        console.print(f"[red]no job {job_id!r}: Temporal and the checkpoint catalog "
                      "do not know it[/red]")
        return 1
    except TemporalUnavailable as exc:
        console.print(f"[red]{exc}[/red]")
        return 1
    return 0
