"""Example task functions imported by workers during the tests (module ``tasks``)."""

from __future__ import annotations

import asyncio
import ctypes
import os
import sys
import time
from typing import Any

import numpy as np

from sdk import current_task


def shout(s: str) -> str:
    return s.upper()


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
        "due": ctx.checkpoint_due(),
        "checkpoint": ctx.checkpoint({"x": x}, progress_percent=50.0),
    }


def array_stats(a: np.ndarray) -> np.ndarray:
    return a * 2


def fail_always(x: int) -> int:
    raise ValueError(f"bad item {x}")


def slow_pid(seconds: float) -> dict[str, Any]:
    """Sleep, then report which worker (the task process's parent), task process and
    attempt finished the task."""
    time.sleep(seconds)
    return {"pid": os.getppid(), "task_pid": os.getpid(), "attempt": current_task().attempt}


def sleep_until_cancelled(seconds: float) -> str:
    ctx = current_task()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not ctx.cancelled:
        time.sleep(0.05)
    return "cancelled" if ctx.cancelled else "finished"


def meet(cfg: dict[str, Any]) -> dict[str, int]:
    """Block until ``cfg["parties"]`` tasks wait together, proving they run at once.

    Each task writes a file named after its process into ``cfg["dir"]`` and waits
    until there are ``parties`` files; returns this task's process and its parent.
    """
    from pathlib import Path

    d = Path(cfg["dir"])
    (d / str(os.getpid())).touch()
    deadline = time.monotonic() + 30
    while sum(1 for _ in d.iterdir()) < cfg["parties"]:
        if time.monotonic() > deadline:
            raise TimeoutError("the other tasks did not run at the same time")
        time.sleep(0.05)
    return {"pid": os.getpid(), "ppid": os.getppid()}


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def segfault(x: int) -> int:
    """Crash the task's process with SIGSEGV (a read of address 0)."""
    _say(f"about to crash on item {x}")
    ctypes.string_at(0)
    return x


class _CrashingPath(list):  # type: ignore[type-arg]
    """A ``sys.path`` that kills the process (SIGSEGV) when it is written, as the reset
    between tasks does: a death after the task ended, before the next one begins."""

    def __setitem__(self, index: Any, value: Any) -> None:
        ctypes.string_at(0)


def die_after_returning(x: int) -> dict[str, Any]:
    """Return normally; the process dies in the reset after the task (it restores ``sys.path``)."""
    sys.path = _CrashingPath([*sys.path, "/nonexistent/left-by-the-task"])
    return {"item": x, "attempt": current_task().attempt, "pid": os.getpid()}


def segfault_on_first_attempt(x: int) -> dict[str, Any]:
    if current_task().attempt == 1:
        segfault(x)
    return {"item": x, "attempt": current_task().attempt, "pid": os.getppid()}


def exit_on_first_attempt(x: int) -> dict[str, Any]:
    if current_task().attempt == 1:
        _say(f"leaving with os._exit(3) on item {x}")
        os._exit(3)
    return {"item": x, "attempt": current_task().attempt}


def allocate(n_bytes: int) -> int:
    """Touch ``n_bytes`` of fresh memory; returns how many were allocated."""
    return int(np.ones(n_bytes, dtype=np.uint8).sum())


def checkpoint_probe(cfg: dict[str, Any]) -> dict[str, Any]:
    """Call ``checkpoint_due()`` and then ``checkpoint(callable)`` ``cfg["calls"]`` times,
    sleeping ``cfg["sleep"]`` between calls; record what was due, captured and built."""
    ctx = current_task()
    built: list[int] = []
    due, captured = [], []
    for i in range(1, cfg["calls"] + 1):
        time.sleep(cfg.get("sleep", 0.0))
        due.append(ctx.checkpoint_due())

        def state(i: int = i) -> dict[str, Any]:
            built.append(i)
            return {"i": i, "w": np.full(8, float(i))}

        if ctx.checkpoint(state):
            captured.append(i)
    return {"due": [i for i, d in enumerate(due, 1) if d], "captured": captured, "built": built}


def process_state(cfg: dict[str, Any]) -> dict[str, Any]:
    """What a task sees of its process, then change all of it (a warm process must be
    reset before the next task: fresh RNG seeds, environment, cwd, torch threads)."""
    import random

    import torch

    seen = {"leak": os.environ.get("CROWDCOMPUTE_TEST_LEAK"), "cwd": os.getcwd(),
            "python": random.random(), "numpy": float(np.random.random()),
            "torch": float(torch.rand(1)), "threads": torch.get_num_threads(), "pid": os.getpid()}
    os.environ["CROWDCOMPUTE_TEST_LEAK"] = "1"
    os.chdir(cfg["dir"])
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    return seen


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


def checkpoint_then(cfg: dict[str, Any]) -> dict[str, Any]:
    """Checkpoint ``cfg["checkpoints"]`` times (run it with ``checkpoint_every_steps=1``),
    touch ``cfg["dir"]/<value>`` and wait for the files of ``cfg["after"]`` (values of
    other items), wait ``cfg["delay"]`` s, then ``cfg["then"]``: ``return`` the item's
    ``value``, ``raise`` a ValueError, or ``wait`` until cancelled (at most 60 s)."""
    from pathlib import Path

    ctx = current_task()
    for i in range(cfg["checkpoints"]):
        ctx.checkpoint({"i": i, "w": np.full(4, float(i))}, progress_percent=10.0 * (i + 1))
    if "dir" in cfg:
        (Path(cfg["dir"]) / str(cfg["value"])).touch()
        deadline = time.monotonic() + 60
        while not all((Path(cfg["dir"]) / str(v)).exists() for v in cfg.get("after", [])):
            if time.monotonic() > deadline:
                raise TimeoutError("the other tasks did not start")
            time.sleep(0.05)
    time.sleep(cfg.get("delay", 0.0))
    if cfg["then"] == "raise":
        raise ValueError(f"item {cfg['value']} is bad")
    deadline = time.monotonic() + 60
    while cfg["then"] == "wait" and not ctx.cancelled and time.monotonic() < deadline:
        time.sleep(0.05)
    return {"value": cfg["value"], "attempt": ctx.attempt}


def checkpoint_big(cfg: dict[str, Any]) -> dict[str, Any]:
    """Checkpoint a ``cfg["mb"]`` MB array ``cfg["checkpoints"]`` times (run it with
    ``checkpoint_every_steps=1``); returns the process's resident MB when it started."""
    with open("/proc/self/statm", "rb") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20
    ctx = current_task()
    w = np.random.default_rng(0).standard_normal(cfg["mb"] << 17)  # float64: 8 bytes
    for step in range(cfg["checkpoints"]):
        w += 1.0
        ctx.checkpoint({"step": step, "w": w})
    return {"pid": os.getpid(), "rss_mb_at_start": rss}


def malloc_env(x: Any) -> dict[str, str | None]:
    """The allocator settings the task process was started with."""
    return {k: os.environ.get(k) for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")}
