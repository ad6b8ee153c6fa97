"""Per-task checkpoint progress from the tasks' last heartbeats (``JobHandle.progress``).

A workflow never sees its activities' heartbeats, and telling it each checkpoint
(a signal) would grow its history with every checkpoint of every task. The server
keeps each running task's last heartbeat details with its pending activity, so the
client reads them from ``describe()`` of the workflow that runs the task: the
newest checkpoint's seq and progress, how long ago the heartbeat arrived, and
whether the task's checkpoints found the store full.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError

from workflows.models import TASK_RUNNING, TaskProgress

__all__ = ["TaskBeat", "task_beats", "with_heartbeats"]

TaskBeat = tuple[float | None, int | None, float | None, bool]
"""(progress_percent, seq, heartbeat_age_seconds, storage_full) of one task."""


def _beat(details: Any, age: float | None) -> TaskBeat:
    """What one task's heartbeat details say (see ``activities.tasks``)."""
    if not isinstance(details, dict):
        return None, None, age, False
    ckpt = details.get("checkpoint")
    ckpt = ckpt if isinstance(ckpt, dict) else {}
    pct = details.get("progress_percent", ckpt.get("progress_percent"))
    seq = ckpt.get("seq")
    return (float(pct) if isinstance(pct, (int, float)) else None,
            int(seq) if isinstance(seq, int) else None, age, details.get("storage_full") is True)


async def task_beats(client: Client, handle: WorkflowHandle[Any, Any]) -> dict[int, TaskBeat]:
    """The last heartbeat of every running task of one workflow, by task index."""
    try:
        desc = await handle.describe()
    except RPCError:
        return {}
    now = datetime.now(UTC)
    out: dict[int, TaskBeat] = {}
    for pending in desc.raw_description.pending_activities:
        if not pending.activity_id.isdigit():
            continue
        age = None
        if pending.HasField("last_heartbeat_time"):
            at = pending.last_heartbeat_time.ToDatetime(tzinfo=UTC)
            age = max(0.0, (now - at).total_seconds())
        details: Any = None
        if pending.heartbeat_details.payloads:
            try:
                decoded = await client.data_converter.decode(
                    list(pending.heartbeat_details.payloads))
                details = decoded[0] if decoded else None
            except Exception:  # noqa: BLE001 - progress detail is optional
                details = None
        out[int(pending.activity_id)] = _beat(details, age)
    return out


async def with_heartbeats(client: Client, handle: WorkflowHandle[Any, Any],
                          tasks: Sequence[TaskProgress]) -> list[TaskProgress]:
    """``tasks`` with the running ones' progress, seq, heartbeat age and storage-full flag filled in."""
    if not any(t.state == TASK_RUNNING for t in tasks):
        return list(tasks)
    beats = await task_beats(client, handle)
    out = []
    for t in tasks:
        beat = beats.get(t.index)
        if beat is not None:
            t = replace(t, progress_percent=beat[0], seq=beat[1], heartbeat_age_seconds=beat[2],
                        storage_full=beat[3])
        out.append(t)
    return out
