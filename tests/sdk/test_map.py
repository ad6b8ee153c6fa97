"""End to end through a real dev server: map, context, errors, payloads."""

from __future__ import annotations

import numpy as np
import pytest
import tasks

import sdk
from sdk._task import NotInTaskError


async def test_map_square(worker: None) -> None:
    assert await sdk.map(tasks.square, [1, 2, 3, 4, 5]) == [1, 4, 9, 16, 25]


async def test_map_empty(worker: None) -> None:
    assert await sdk.map(tasks.square, []) == []


async def test_async_function_and_string_path(worker: None) -> None:
    assert await sdk.map("tasks:async_double", [1, 2]) == [2, 4]


async def test_current_task_inside(worker: None) -> None:
    out = await sdk.map(tasks.context_info, [7, 8], job_id="ctx-job")
    assert [o["task_id"] for o in out] == ["ctx-job:0", "ctx-job:1"]
    assert out[0]["job_id"] == "ctx-job"
    assert out[1]["index"] == 1
    assert out[0]["attempt"] == 1
    assert out[0]["restore"] is None
    assert out[0]["checkpoint"] is False


def test_current_task_outside() -> None:
    with pytest.raises(NotInTaskError, match="only available inside"):
        sdk.current_task()


async def test_numpy_array_round_trip(worker: None) -> None:
    arr = np.arange(12.0).reshape(3, 4)
    [out] = await sdk.map(tasks.array_stats, [arr])
    np.testing.assert_array_equal(out, arr * 2)
