"""The rich status view: rendered into a recording console and read back."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest
from rich.console import Console
from temporalio.client import Client

from worker_app.settings import Settings
from worker_app.status_view import format_age, format_bytes, render_status, watch_status

from .conftest import ProbeJob, write_checkpoints

if TYPE_CHECKING:
    from checkpoint import CheckpointManager

NOW = datetime(2026, 1, 7, 10, 32, 50, tzinfo=UTC)

SPEC_EXAMPLE = {
    "job_id": "job_123",
    "job_status": "running",
    "total_tasks": 10,
    "tasks_with_checkpoints": 2,
    "average_progress_percent": 65.5,
    "total_checkpoints_taken": 452,
    "total_bytes_stored": 3 * 1024 * 1024,
    "tasks": [
        {"task_id": "job_123:1", "progress_percent": 75.0, "checkpoint_count": 45,
         "last_checkpoint_at": "2026-01-07T10:30:45Z", "base_checkpoint_size": 524288,
         "attempt": 2, "status": "running"},
        {"task_id": "job_123:2", "progress_percent": 0.0, "checkpoint_count": 0,
         "last_checkpoint_at": None, "base_checkpoint_size": None, "attempt": None},
    ],
}


def recording_console() -> Console:
    return Console(record=True, width=160, file=io.StringIO(), color_system=None)


def test_render_shows_job_and_tasks() -> None:
    console = recording_console()
    render_status(SPEC_EXAMPLE, console=console, now=NOW)
    text = console.export_text()
    assert "Job job_123" in text and "running" in text
    assert "65.5%" in text
    assert "2/10 tasks checkpointed" in text and "452 checkpoints" in text
    assert "3.0 MiB stored" in text
    rows = [line for line in text.splitlines() if line.strip().startswith("job_123:")]
    lines = {line.split()[0]: line for line in rows}
    assert set(lines) == {"job_123:1", "job_123:2"}
    first = lines["job_123:1"]
    assert "75.0" in first and " 2 " in first and "45" in first
    assert "2m 05s ago" in first and "512.0 KiB" in first
    assert "never" in lines["job_123:2"]
    assert "━" in text  # progress bars were drawn


def test_render_without_tasks() -> None:
    console = recording_console()
    done = {**SPEC_EXAMPLE, "tasks": [], "job_status": "completed"}
    render_status(done, console=console, now=NOW)
    text = console.export_text()
    assert "completed" in text and "no task has checkpointed yet" in text


def test_formatters() -> None:
    assert [format_age(s) for s in (None, 5, 125, 7260, 90000)] == \
        ["-", "5s", "2m 05s", "2h 01m", "1d 01h"]
    assert [format_bytes(n) for n in (None, 512, 2048, 5 * 1024**3)] == \
        ["-", "512 B", "2.0 KiB", "5.0 GiB"]


async def test_watch_stops_at_final_status() -> None:
    states = iter(["running", "running", "completed", "running"])

    def fetch() -> dict:
        return {**SPEC_EXAMPLE, "job_status": next(states)}

    console = recording_console()
    last = await watch_status(fetch, interval=0.01, console=console)
    assert last["job_status"] == "completed"
    assert "completed" in console.export_text()


async def test_fetch_status_reads_catalog_and_temporal(
    api_settings: Settings, manager: CheckpointManager, temporal_client: Client, probe_job: ProbeJob
) -> None:
    from worker_app.status_view import fetch_status

    write_checkpoints(manager, probe_job.job_id, 1, [42.0, 84.0])
    data = await fetch_status(api_settings, probe_job.job_id, manager=manager,
                              client=temporal_client)
    assert data["job_status"] == "running" and data["total_tasks"] == 3
    assert data["tasks"][0]["checkpoint_count"] == 2
    console = recording_console()
    render_status(data, console=console)
    text = console.export_text()
    assert f"{probe_job.job_id}:1" in text and "84.0" in text


async def test_show_status_exit_codes(
    api_settings: Settings, manager: CheckpointManager, temporal_client: Client, probe_job: ProbeJob
) -> None:
    from worker_app.status_view import show_status

    write_checkpoints(manager, probe_job.job_id, 0, [12.5])
    common = {"manager": manager, "client": temporal_client}
    console = recording_console()
    assert await show_status(api_settings, probe_job.job_id, console=console, **common) == 0
    assert f"{probe_job.job_id}:0" in console.export_text()

    console = recording_console()
    assert await show_status(api_settings, "no-such-job-anywhere", console=console, **common) == 1
    assert "no job" in console.export_text()

    console = recording_console()
    assert await show_status(api_settings, "../etc", console=console, **common) == 2
    assert "invalid job id" in console.export_text()


async def test_status_is_not_cut_at_80_columns_when_piped(
    api_settings: Settings, manager: CheckpointManager, temporal_client: Client,
    probe_job: ProbeJob, capsys: pytest.CaptureFixture[str]
) -> None:
    from worker_app.status_view import show_status

    write_checkpoints(manager, probe_job.job_id, 2, [33.0])
    code = await show_status(api_settings, probe_job.job_id, manager=manager, client=temporal_client)
    out = capsys.readouterr().out
    assert code == 0
    assert max(len(line) for line in out.splitlines()) > 80
    assert f"{probe_job.job_id}:2" in out and "…" not in out
