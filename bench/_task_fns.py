"""Task functions of ``bench/task_bench.py``; a worker imports them by path.

``train_w1`` trains the W1 MLP of ``bench/checkpoint_bench.py`` inside a task,
offering its state to ``current_task().checkpoint`` after every optimizer step
(a no-op when the job has no ``checkpoint_interval``), and optionally times
``torch.save`` + fsync of the same state afterwards.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from bench.checkpoint_bench import Sizes, _mlp, _torch_save


def train_w1(spec: dict[str, Any]) -> dict[str, Any]:
    """Train W1 for ``spec["steps"]`` steps (or ``spec["seconds"]`` of wall time).

    Spec keys: ``width``, ``layers``, ``threads`` (torch intra-op threads),
    ``steps`` or ``seconds``, ``saves`` (torch.save + fsync runs after training,
    default 0) and ``save_path``. Returns steps, loop seconds, checkpoints
    captured, the training thread's CPU seconds (captures included, and
    separately) and the save timings.
    """
    import torch

    import sdk

    torch.set_num_threads(int(spec["threads"]))
    sizes = Sizes(width=spec["width"], layers=spec["layers"], rows=0, batch=0, array_bytes=0)
    state, train = _mlp(sizes, frozen=0)
    train(1)  # AdamW allocates its moments on the first step
    ctx = sdk.current_task()
    steps, captured, capture_cpu = 0, 0, 0.0
    limit_steps = spec.get("steps")
    deadline = time.perf_counter() + float(spec.get("seconds") or 0.0)
    cpu0, t0 = time.thread_time(), time.perf_counter()
    while (steps < limit_steps) if limit_steps is not None else (time.perf_counter() < deadline):
        train(1)
        steps += 1
        c0 = time.thread_time()
        if ctx.checkpoint(state, progress_percent=_percent(steps, limit_steps)):
            captured += 1
            capture_cpu += time.thread_time() - c0
    seconds = time.perf_counter() - t0
    out: dict[str, Any] = {
        "steps": steps,
        "seconds": seconds,
        "checkpoints": captured,
        "train_thread_cpu_s": time.thread_time() - cpu0,
        "capture_cpu_s": capture_cpu,
    }
    if spec.get("saves"):
        out.update(_saves(state, Path(spec["save_path"]), int(spec["saves"])))
    return out


def _percent(steps: int, limit: int | None) -> float | None:
    return None if not limit else 100.0 * steps / limit


def _saves(state: dict[str, Any], path: Path, runs: int) -> dict[str, float]:
    """torch.save + fsync ``runs`` times: median wall and process CPU seconds."""
    walls, cpus = [], []
    for _ in range(runs):
        cpu0 = time.process_time()
        walls.append(_torch_save(state, path))
        cpus.append(time.process_time() - cpu0)
    nbytes = path.stat().st_size
    path.unlink()
    return {
        "save_wall_s": statistics.median(walls),
        "save_cpu_s": statistics.median(cpus),
        "save_bytes": nbytes,
    }
