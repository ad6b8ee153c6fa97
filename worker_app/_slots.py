"""The activity slots of a worker's task queue: one per task process, a few more for short tasks.

A slot is taken before Temporal's worker polls, so every slot beyond the task
processes can bring a task that must wait inside this worker for a process —
while another worker with a free process idles, for as long as the tasks ahead
of it run. Without such slots, though, every task of a job of tiny tasks waits
a poll round trip after the one before it (the 10,000-item job of the test
suite took 142 s instead of 97 s). ``TaskSlots`` has both: a slot per task
process always, and up to ``prefetch`` more only while tasks are short — the
last ``streak`` attempts on this worker each ran for less than ``short``
seconds, the newest of them ended less than ``short`` seconds ago. A task
that waited for a process counts its wait, so a wait that grows turns the extra
slots off; so does a task that runs for long, within ``short`` seconds.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from temporalio.worker import (
    CustomSlotSupplier,
    SlotMarkUsedContext,
    SlotPermit,
    SlotReleaseContext,
    SlotReserveContext,
)

__all__ = ["TaskSlots"]


class _Permit(SlotPermit):
    def __init__(self) -> None:
        self.used_at: float | None = None
        self.task = False


class TaskSlots(CustomSlotSupplier):
    """Slots of the task queue's activities (see the module docstring).

    Temporal may call ``mark_slot_used`` and ``release_slot`` from threads of
    its own; ``reserve_slot`` runs on the worker's event loop.
    """

    def __init__(self, processes: int, *, prefetch: int = 4, short: float = 1.0, streak: int = 4,
                 task_type: str = "run_task", clock: Callable[[], float] = time.monotonic) -> None:
        if processes < 1 or prefetch < 0 or short <= 0 or streak < 1:
            raise ValueError("TaskSlots needs processes >= 1, prefetch >= 0, short > 0, streak >= 1")
        self.processes, self.prefetch, self.short, self.streak = processes, prefetch, short, streak
        self.task_type, self.clock = task_type, clock
        self.taken = 0                  # permits out, used or not
        self._quick = 0                 # attempts in a row that ran for less than ``short``
        self._last_end = float("-inf")  # when the newest of them ended
        self._lock = threading.Lock()
        self._freed: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def short_tasks(self) -> bool:
        """Whether tasks are short now (the extra slots are open)."""
        with self._lock:
            return self._short_now()

    def _short_now(self) -> bool:
        return self._quick >= self.streak and self.clock() - self._last_end < self.short

    def _may_take(self) -> bool:
        if self.taken < self.processes:
            return True
        return self.taken < self.processes + self.prefetch and self._short_now()

    async def reserve_slot(self, ctx: SlotReserveContext) -> SlotPermit:
        if self._freed is None:
            self._loop, self._freed = asyncio.get_running_loop(), asyncio.Event()
        while True:
            with self._lock:
                if self._may_take():
                    self.taken += 1
                    return _Permit()
                self._freed.clear()
            await self._freed.wait()

    def try_reserve_slot(self, ctx: SlotReserveContext) -> SlotPermit | None:
        with self._lock:
            if not self._may_take():
                return None
            self.taken += 1
        return _Permit()

    def mark_slot_used(self, ctx: SlotMarkUsedContext) -> None:
        permit = ctx.permit
        if isinstance(permit, _Permit):
            permit.used_at = self.clock()
            permit.task = getattr(ctx.slot_info, "activity_type", None) == self.task_type

    def release_slot(self, ctx: SlotReleaseContext) -> None:
        permit = ctx.permit
        now = self.clock()
        with self._lock:
            self.taken -= 1
            if isinstance(permit, _Permit) and permit.task and permit.used_at is not None:
                self._quick = self._quick + 1 if now - permit.used_at < self.short else 0
                self._last_end = now
        loop, freed = self._loop, self._freed
        if loop is not None and freed is not None:
            try:
                loop.call_soon_threadsafe(freed.set)
            except RuntimeError:   # the loop closed: nothing waits any more
                pass
