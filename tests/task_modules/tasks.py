"""Example task functions imported by workers during the tests (module ``tasks``)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import numpy as np

from sdk import current_task


def square(x: int) -> int:
    return x * x


def noop(x: Any) -> Any:
    return x


async def async_double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


def context_info(x: int) -> dict[str, Any]:
    ctx = current_task()
    return {
        "job_id": ctx.job_id,
        "task_id": ctx.task_id,
        "index": ctx.index,
        "attempt": ctx.attempt,
        "restore": ctx.restore(),
        "checkpoint": ctx.checkpoint({"x": x}, progress_percent=50.0),
    }


def array_stats(a: np.ndarray) -> np.ndarray:
    return a * 2


def fail_always(x: int) -> int:
    raise ValueError(f"bad item {x}")


def slow_pid(seconds: float) -> dict[str, Any]:
    """Sleep, then report which worker process and attempt finished the task."""
    time.sleep(seconds)
    return {"pid": os.getpid(), "attempt": current_task().attempt}


def sleep_until_cancelled(seconds: float) -> str:
    ctx = current_task()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not ctx.cancelled:
        time.sleep(0.05)
    return "cancelled" if ctx.cancelled else "finished"


_barriers: dict[int, Any] = {}


def meet(parties: int) -> int:
    """Block until ``parties`` tasks of this process wait together (threads prove it)."""
    import threading

    barrier = _barriers.setdefault(parties, threading.Barrier(parties))
    return barrier.wait(timeout=30)


def noisy_sum(cfg: dict[str, Any]) -> dict[str, Any]:
    """A seeded random walk that checkpoints its generator with its state."""
    ctx = current_task()
    state = ctx.restore()
    resumed_at = state["step"] if state is not None else None
    if state is None:
        state = {"step": 0, "rng": np.random.default_rng(cfg["seed"]), "walk": []}
    while state["step"] < cfg["steps"]:
        state["walk"].append(float(state["rng"].standard_normal()))
        state["step"] += 1
        ctx.checkpoint(state, progress_percent=100.0 * state["step"] / cfg["steps"])
    return {"walk": state["walk"], "attempt": ctx.attempt, "resumed_at": resumed_at}
