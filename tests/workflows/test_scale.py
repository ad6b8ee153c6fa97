"""Large jobs stay within Temporal's history limits; big payloads go external."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tasks
from _helpers import job_histories
from temporalio.client import Client

import sdk

MAX_EVENTS = 10_240
MAX_PAYLOAD = 256 * 1024


@pytest.mark.slow
async def test_10000_item_job(worker_process: Callable[..., object], conn: sdk.Connection,
                              temporal_client: Client) -> None:
    # A worker process of its own, as in production: the in-process test worker
    # shares the test session's heap, whose collector pauses late in a full run
    # overran the 2 s deadlock detector during an activation of this job.
    worker_process()
    n = 10_000
    start = time.monotonic()
    results = await sdk.map(tasks.noop, range(n), job_id="big-job")
    elapsed = time.monotonic() - start
    assert results == list(range(n))
    histories = await job_histories(temporal_client, "big-job")
    assert len(histories) == 1 + n // 1000  # the job and its batches
    counts = {wid: len(h.events) for wid, h in histories.items()}  # type: ignore[attr-defined]
    assert max(counts.values()) < MAX_EVENTS, counts
    print(f"10,000 no-op tasks in {elapsed:.1f}s; events per workflow: {sorted(counts.values())}")


async def test_large_array_goes_through_external_storage(
    worker: None, temporal_client: Client, state_dir: Path
) -> None:
    arr = np.random.default_rng(0).standard_normal(5 * 1024 * 1024 // 8)  # 5 MB
    [out] = await sdk.map(tasks.array_stats, [arr], job_id="big-payload")
    np.testing.assert_array_equal(out, arr * 2)
    histories = await job_histories(temporal_client, "big-payload")
    for history in histories.values():
        for event in history.events:  # type: ignore[attr-defined]
            assert event.ByteSize() < MAX_PAYLOAD, event.event_type
    stored = [p for p in (state_dir / "payloads").rglob("*") if p.is_file()]
    assert stored, "the array should have been stored outside the history"
    assert max(p.stat().st_size for p in stored) > 5_000_000
