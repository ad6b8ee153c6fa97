"""``map(..., progress=True)`` draws a job progress bar while the job runs."""

from __future__ import annotations

import pytest
import tasks

import sdk


async def test_map_with_progress_draws_a_bar(conn: sdk.Connection, worker: None,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    results = await sdk.map(tasks.square, [1, 2, 3, 4], progress=True, job_id="bar-job")
    assert results == [1, 4, 9, 16]
    out = capsys.readouterr().out
    assert "bar-job" in out
    assert "4/4" in out
