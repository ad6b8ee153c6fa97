"""Synchronous task functions run concurrently, beyond the default executor's size."""

from __future__ import annotations

import os

import tasks

import sdk


async def test_more_sync_tasks_run_at_once_than_the_default_executor_has_threads(
        conn: sdk.Connection, worker: None) -> None:
    parties = min(32, (os.cpu_count() or 1) + 4) + 4  # the default pool would deadlock here
    results = await sdk.map(tasks.meet, [parties] * parties)
    assert sorted(results) == list(range(parties))
