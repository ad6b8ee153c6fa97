"""Tasks of one worker run at once, each in a task process of its own."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import tasks

import sdk
from worker_app.settings import Settings
from worker_app.worker import running_worker

PARTIES = 4


@pytest.fixture
async def wide_worker(settings: Settings, conn: sdk.Connection) -> AsyncIterator[None]:
    wide = settings.model_copy(update={"max_concurrent_tasks": PARTIES})
    async with running_worker(wide, conn.client):
        yield


async def test_max_tasks_run_at_once_each_in_its_own_process(
        wide_worker: None, tmp_path: Path) -> None:
    results = await sdk.map(tasks.meet, [{"dir": str(tmp_path), "parties": PARTIES}] * PARTIES)
    assert len({r["pid"] for r in results}) == PARTIES
    assert {r["ppid"] for r in results} == {os.getpid()}  # children of the in-process worker
