"""TaskSlots: one slot per task process, the extra ones only while tasks are short.

The end-to-end effects are tested with real workers: a worker holds no task it
cannot start (tests/test_checkpointed_jobs.py) and tiny tasks keep their pace
(tests/workflows/test_scale.py); these pin the rule itself on a fake clock.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest
from temporalio.worker import SlotPermit, SlotReleaseContext

from worker_app._slots import TaskSlots


@dataclass
class Info:
    activity_type: str


@dataclass
class Used:
    slot_info: Any
    permit: SlotPermit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run(slots: TaskSlots, clock: Clock, seconds: float, kind: str = "run_task") -> None:
    """One attempt of ``seconds`` through a slot of its own."""
    permit = slots.try_reserve_slot(None)  # type: ignore[arg-type]
    assert permit is not None
    slots.mark_slot_used(Used(Info(kind), permit))  # type: ignore[arg-type]
    clock.now += seconds
    slots.release_slot(SlotReleaseContext(Info(kind), permit))  # type: ignore[arg-type]


def take_all(slots: TaskSlots) -> list[SlotPermit]:
    out = []
    while (permit := slots.try_reserve_slot(None)) is not None:  # type: ignore[arg-type]
        out.append(permit)
    return out


def test_one_slot_per_process_until_tasks_prove_short() -> None:
    clock = Clock()
    slots = TaskSlots(2, prefetch=3, short=1.0, streak=4, clock=clock)
    assert len(take_all(slots)) == 2
    assert take_all(slots) == []


def test_short_tasks_open_the_extra_slots_and_time_closes_them() -> None:
    clock = Clock()
    slots = TaskSlots(2, prefetch=3, short=1.0, streak=4, clock=clock)
    for _ in range(3):
        run(slots, clock, 0.01)
    assert not slots.short_tasks()          # three short ones are not yet a streak
    run(slots, clock, 0.01)
    assert slots.short_tasks()
    held = take_all(slots)
    assert len(held) == 5                   # two processes + three prefetched
    clock.now += 1.5                        # nothing ended for longer than `short`
    assert not slots.short_tasks()
    for permit in held:
        slots.release_slot(SlotReleaseContext(None, permit))
    assert len(take_all(slots)) == 2


def test_a_long_task_or_a_long_wait_ends_the_streak() -> None:
    clock = Clock()
    slots = TaskSlots(1, prefetch=2, short=1.0, streak=2, clock=clock)
    run(slots, clock, 0.1)
    run(slots, clock, 0.1)
    assert slots.short_tasks()
    run(slots, clock, 5.0)                  # ran (or waited for a process) 5 s
    assert not slots.short_tasks()
    assert len(take_all(slots)) == 1


def test_other_activities_and_unused_slots_do_not_count() -> None:
    clock = Clock()
    slots = TaskSlots(1, prefetch=2, short=1.0, streak=1, clock=clock)
    run(slots, clock, 0.1, kind="cleanup_task")
    unused = slots.try_reserve_slot(None)  # type: ignore[arg-type]
    assert unused is not None
    slots.release_slot(SlotReleaseContext(None, unused))
    assert not slots.short_tasks()
    assert slots.taken == 0


async def test_a_full_worker_waits_for_a_freed_slot() -> None:
    slots = TaskSlots(1, prefetch=0)
    first = await slots.reserve_slot(None)  # type: ignore[arg-type]
    second = asyncio.ensure_future(slots.reserve_slot(None))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    assert not second.done()
    # Temporal may release from a thread of its own.
    await asyncio.to_thread(slots.release_slot, SlotReleaseContext(None, first))
    assert await asyncio.wait_for(second, 5) is not None
    assert slots.taken == 1


@pytest.mark.parametrize("args", [dict(processes=0), dict(processes=1, prefetch=-1),
                                  dict(processes=1, short=0.0), dict(processes=1, streak=0)])
def test_bad_arguments(args: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        TaskSlots(**args)
