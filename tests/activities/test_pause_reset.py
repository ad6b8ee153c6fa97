"""`temporal activity pause / unpause / reset` on a running checkpointed task.

The task checkpoints only when forced (a one-hour interval), so where an attempt
starts shows which checkpoint it resumed from: a pause or a reset takes a final
one before the attempt stops; ``reset --clear-heartbeat-details`` starts over.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import sdk
from worker_app.dev import find_temporal_binary

STEPS = 120


async def temporal(address: str, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        find_temporal_binary(), *args, "--address", address,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


def _starts(log: Path) -> list[tuple[int, int]]:
    """(attempt, first step) of every attempt that started, in order."""
    if not log.exists():
        return []
    words = [line.split() for line in log.read_text().splitlines()]
    return [(int(w[1]), int(w[4])) for w in words if w[3] == "start"]


def _last_step(log: Path) -> int:
    steps = [int(line.split()[4]) for line in log.read_text().splitlines() if " step " in line]
    return steps[-1] if steps else 0


async def _until(what: str, check: Any, timeout: float = 60.0) -> Any:
    for _ in range(int(timeout / 0.1)):
        got = check()
        if got:
            return got
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def _pending(address: str, job_id: str) -> dict[str, Any]:
    described = json.loads(await temporal(address, "workflow", "describe", "--workflow-id",
                                          job_id, "--output", "json"))
    [pending] = described.get("pendingActivities", [{}])
    result: dict[str, Any] = pending
    return result


async def _paused(address: str, job_id: str) -> bool:
    pending = await _pending(address, job_id)
    return pending.get("state") == "PENDING_ACTIVITY_STATE_PAUSED"


async def _pause(address: str, act: list[str], job_id: str) -> None:
    """``temporal activity pause`` and wait until the running attempt ended."""
    await temporal(address, "activity", "pause", *act)
    for _ in range(300):
        if await _paused(address, job_id):
            return
        await asyncio.sleep(0.2)
    raise AssertionError("the task was not paused")


async def test_pause_unpause_and_reset_resume_from_a_final_checkpoint(
        worker: None, conn: sdk.Connection, temporal_address: str, tmp_path: Path) -> None:
    log = tmp_path / "log"
    job_id = f"pause-{uuid.uuid4().hex[:8]}"
    job = await sdk.submit("ckpt_tasks:pausable", [{"steps": STEPS, "step_seconds": 0.05,
                                                    "log": str(log)}],
                           job_id=job_id, checkpoint_interval=3600.0, heartbeat_timeout=2.0)
    act = ["--workflow-id", job_id, "--activity-id", "0"]
    await _until("the task to run a while", lambda: log.exists() and _last_step(log) >= 10)
    await _pause(temporal_address, act, job_id)
    paused_at = _last_step(log)
    assert _starts(log) == [(1, 0)]

    await temporal(temporal_address, "activity", "unpause", *act)
    [_, (attempt, resumed)] = await _until("a second attempt", lambda: _starts(log)[1:] and
                                           _starts(log))
    # Resumed from the final checkpoint the pause took (the interval never elapsed);
    # steps computed while it committed are done again.
    assert attempt == 2
    assert 10 <= resumed <= paused_at
    await _until("progress after the unpause", lambda: _last_step(log) >= resumed + 10)

    # A reset of a running task resumes from the newest committed checkpoint:
    # the pause's (Temporal starts the new attempt at once, which fences the old
    # one), or a final one if the old attempt saw the reset in time.
    await temporal(temporal_address, "activity", "reset", *act)
    third = await _until("an attempt after the reset", lambda: _starts(log)[2:])
    assert third[0][1] >= resumed
    await _until("progress after the reset", lambda: _last_step(log) >= resumed + 10)

    # A fresh start: pause (a final checkpoint), then reset clearing the details.
    await _pause(temporal_address, act, job_id)
    assert len(_starts(log)) == 3
    await temporal(temporal_address, "activity", "reset", *act, "--clear-heartbeat-details")
    fourth = await _until("an attempt after the clearing reset", lambda: _starts(log)[3:])
    assert fourth[0] == (1, 0)  # started over
    assert await job.result() == [{"steps": STEPS}]
