"""True task status and per-item failures (issue 11, items 4 and 7), end to end: the
session's dev server, an in-process worker with a real SQLite catalog, the REST API
built from the same settings, and the task functions of ``tasks``.

- a task's catalog status ends as completed / failed / cancelled, as the REST API,
  ``crowdcompute status`` and ``JobHandle.progress()`` show;
- a job id used again shows only the new job's rows;
- ``return_exceptions=True`` puts a ``TaskFailed`` in a failed item's place, and a
  failed job's ``partial_results()`` has every completed result.
"""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import tasks
from rich.console import Console
from temporalio.worker import Replayer

import sdk
from sdk._jobs import start_job
from sdk._payloads import build_data_converter
from sdk._values import encode_value
from worker_app.api import create_app
from worker_app.settings import Settings
from worker_app.status_view import fetch_status, render_status
from workflows import WORKFLOWS
from workflows.models import TaskOptions

pytestmark = pytest.mark.timeout(180)

BASE = "/api/checkpoints"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # Room for every task of a test at once, on any number of cores.
    return settings.model_copy(update={"max_concurrent_tasks": 4})


@pytest.fixture
async def api(settings: Settings, worker: None) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        yield http


def cfg(value: int, then: str, checkpoints: int = 1, delay: float = 0.0) -> dict[str, Any]:
    return {"value": value, "then": then, "checkpoints": checkpoints, "delay": delay}


async def job_view(http: httpx.AsyncClient, job_id: str, job_status: str) -> dict[str, Any]:
    """The API's view once the job has ``job_status`` (the job id is the workflow id)."""
    for _ in range(100):
        body: dict[str, Any] = (await http.get(f"{BASE}/jobs/{job_id}")).json()
        if body.get("job_status") == job_status:
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} never {job_status}: {body}")


def statuses(body: dict[str, Any]) -> dict[str, str]:
    return {t["task_id"]: t["status"] for t in body["tasks"]}


async def replays(conn: sdk.Connection, settings: Settings, job_id: str) -> None:
    """The job's history (with the new patches' markers) replays on today's code."""
    history = await conn.client.get_workflow_handle(job_id).fetch_history()
    replayer = Replayer(workflows=WORKFLOWS, data_converter=build_data_converter(settings))
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None


async def test_completed_job_shows_completed_tasks(settings: Settings, api: httpx.AsyncClient,
                                                   conn: sdk.Connection) -> None:
    job_id = f"done-{uuid.uuid4().hex[:8]}"
    results = await sdk.map(tasks.checkpoint_then, [cfg(0, "return", 2), cfg(1, "return", 2)],
                            checkpoint_every_steps=1, job_id=job_id)
    assert [r["value"] for r in results] == [0, 1]
    body = await job_view(api, job_id, "completed")
    assert statuses(body) == {f"{job_id}:0": "completed", f"{job_id}:1": "completed"}
    assert [t["progress_percent"] for t in body["tasks"]] == [100.0, 100.0]
    assert body["average_progress_percent"] == 100.0
    # `crowdcompute status` renders the same data (no terminal: plain text).
    console = Console(width=200, record=True, file=io.StringIO())
    render_status(await fetch_status(settings, job_id), console=console)
    text = console.export_text()
    rows = [line for line in text.splitlines() if f"{job_id}:" in line]
    assert len(rows) == 2 and all("completed" in r and "running" not in r for r in rows), text
    progress = await (await sdk.get_job(job_id)).progress()
    assert [t.state for t in progress.tasks] == ["completed", "completed"]


async def test_failed_job_marks_the_failed_task_and_cancels_the_rest(
        settings: Settings, api: httpx.AsyncClient, conn: sdk.Connection, tmp_path: Path) -> None:
    job_id = f"fail-{uuid.uuid4().hex[:8]}"
    # Item 2 fails once the others run (and item 0 had a second to complete).
    meet = {"dir": str(tmp_path)}
    items = [{**cfg(0, "return"), **meet}, {**cfg(1, "wait"), **meet},
             {**cfg(2, "raise", delay=1.5), **meet, "after": [0, 1]}]
    job = await sdk.submit(tasks.checkpoint_then, items, checkpoint_every_steps=1,
                           max_attempts=1, job_id=job_id)
    with pytest.raises(sdk.JobFailed, match=f"task {job_id}:2 failed: ValueError"):
        await job.result()
    body = await job_view(api, job_id, "failed")
    assert statuses(body) == {f"{job_id}:0": "completed", f"{job_id}:1": "cancelled",
                              f"{job_id}:2": "failed"}
    progress = await job.progress()
    assert [t.state for t in progress.tasks] == ["completed", "cancelled", "failed"]
    assert progress.counts["failed"] == 1 and progress.counts["cancelled"] == 1
    # Without return_exceptions the job failed, but what completed is still there.
    partial = await job.partial_results()
    assert list(partial) == [0]
    assert partial[0] == {"value": 0, "attempt": 1}
    await replays(conn, settings, job_id)


async def test_cancelled_job_marks_its_tasks_cancelled(settings: Settings, api: httpx.AsyncClient,
                                                       conn: sdk.Connection) -> None:
    job_id = f"cancel-{uuid.uuid4().hex[:8]}"
    job = await sdk.submit(tasks.checkpoint_then, [cfg(0, "wait"), cfg(1, "wait")],
                           checkpoint_every_steps=1, job_id=job_id)
    running = await job_view(api, job_id, "running")
    for _ in range(100):
        if len(running["tasks"]) == 2:
            break
        await asyncio.sleep(0.1)
        running = await job_view(api, job_id, "running")
    assert statuses(running) == {f"{job_id}:0": "running", f"{job_id}:1": "running"}
    await job.cancel()
    with pytest.raises(sdk.JobCancelled):
        await job.result()
    body = await job_view(api, job_id, "cancelled")
    assert statuses(body) == {f"{job_id}:0": "cancelled", f"{job_id}:1": "cancelled"}
    await replays(conn, settings, job_id)


async def test_a_reused_job_id_shows_only_the_new_jobs_rows(
        settings: Settings, api: httpx.AsyncClient, conn: sdk.Connection) -> None:
    job_id = f"again-{uuid.uuid4().hex[:8]}"
    first = [cfg(i, "return", checkpoints=3) for i in range(3)]
    await sdk.map(tasks.checkpoint_then, first, checkpoint_every_steps=1, job_id=job_id)
    before = await job_view(api, job_id, "completed")
    assert len(before["tasks"]) == 3
    assert before["tasks"][0]["checkpoint_count"] >= 1

    (again,) = await sdk.map(tasks.checkpoint_then, [cfg(7, "return", checkpoints=1)],
                             checkpoint_every_steps=1, job_id=job_id)
    assert again == {"value": 7, "attempt": 1}
    body = await job_view(api, job_id, "completed")
    assert body["total_tasks"] == 1
    assert [t["task_id"] for t in body["tasks"]] == [f"{job_id}:0"]
    (task,) = body["tasks"]
    assert (task["checkpoint_count"], task["attempt"], task["status"]) == (1, 1, "completed")
    assert body["total_checkpoints_taken"] == 1
    await replays(conn, settings, job_id)


async def test_return_exceptions_puts_the_error_in_place(
        settings: Settings, api: httpx.AsyncClient, conn: sdk.Connection) -> None:
    job_id = f"errs-{uuid.uuid4().hex[:8]}"
    items = [cfg(0, "return"), cfg(1, "raise"), cfg(2, "return")]
    results = await sdk.map(tasks.checkpoint_then, items, checkpoint_every_steps=1,
                            max_attempts=2, job_id=job_id, return_exceptions=True)
    assert results[0] == {"value": 0, "attempt": 1}
    assert results[2] == {"value": 2, "attempt": 1}
    err = results[1]
    assert isinstance(err, sdk.TaskFailed)
    assert (err.type, err.message, err.attempts) == ("ValueError", "item 1 is bad", 2)
    assert (err.task_id, err.index) == (f"{job_id}:1", 1)
    body = await job_view(api, job_id, "completed")
    assert statuses(body) == {f"{job_id}:0": "completed", f"{job_id}:1": "failed",
                              f"{job_id}:2": "completed"}
    job = await sdk.get_job(job_id)
    assert (await job.progress()).counts["failed"] == 1
    assert sorted(await job.partial_results()) == [0, 1, 2]
    await replays(conn, settings, job_id)


async def test_return_exceptions_without_checkpoints(worker: None, conn: sdk.Connection) -> None:
    results = await sdk.map(tasks.fail_always, [1, 2], return_exceptions=True, max_attempts=1)
    assert [type(r) for r in results] == [sdk.TaskFailed, sdk.TaskFailed]
    assert [(r.message, r.attempts, r.index) for r in results] == [
        ("bad item 1", 1, 0), ("bad item 2", 1, 1)]
    with pytest.raises(sdk.JobFailed, match="bad item"):
        await sdk.map(tasks.fail_always, [1], max_attempts=1)


@pytest.mark.parametrize("return_exceptions", [False, True])
async def test_failed_item_of_a_job_in_stored_batches(worker: None, conn: sdk.Connection,
                                                      return_exceptions: bool) -> None:
    """Batches of two, one at a time: the first two batches completed (results in the
    item store) when the last one's item fails."""
    job_id = f"stored-{uuid.uuid4().hex[:8]}"
    items = [cfg(i, "raise" if i == 4 else "return") for i in range(5)]
    options = TaskOptions(max_attempts=1, return_exceptions=return_exceptions)
    job = await start_job(conn, job_id, "tasks:checkpoint_then",
                          [encode_value(i) for i in items], options, batch_size=2, window=1)
    want = {i: {"value": i, "attempt": 1} for i in range(4)}
    if not return_exceptions:
        with pytest.raises(sdk.JobFailed, match=f"task {job_id}:4 failed"):
            await job.result()
        assert await job.partial_results() == want
        return
    results = await job.result()
    assert results[:4] == list(want.values())
    assert isinstance(results[4], sdk.TaskFailed) and results[4].index == 4
    partial = await job.partial_results()
    assert sorted(partial) == [0, 1, 2, 3, 4] and partial[0] == want[0]
