"""The public surface of ``sdk`` changes only on purpose."""

from __future__ import annotations

import inspect

import sdk


def test_sdk_all_is_pinned() -> None:
    assert sorted(sdk.__all__) == sorted([
        "Connection", "JobCancelled", "JobFailed", "JobHandle", "JobInfo", "JobNotFound",
        "TaskContext", "TaskFailed", "TemporalUnreachable", "connect", "current_task", "get_job", "list_jobs",
        "SimulatedInterruption", "map", "run_local", "run_map", "submit",
    ])  # fmt: skip


def test_map_signature() -> None:
    params = inspect.signature(sdk.map).parameters
    assert list(params) == [
        "fn", "items", "checkpoint_interval", "job_id", "max_attempts",
        "heartbeat_timeout", "max_checkpoint_age", "progress", "checkpoint_every_steps",
        "keep", "warm_start_from", "return_exceptions",
    ]  # fmt: skip
    assert params["max_attempts"].default == 5
    # 8 s: a task whose worker died runs again elsewhere within ~15 s (issue 11 item 6).
    assert params["heartbeat_timeout"].default == 8.0
    assert params["return_exceptions"].default is False
    assert params["max_checkpoint_age"].default == 3600.0
    assert (params["keep"].default, params["warm_start_from"].default) == (None, None)
    assert list(inspect.signature(sdk.submit).parameters) == list(params)
