"""A task that rewrites a directory of files every step and checkpoints it (file checkpoints).

Each step rewrites every file: ``static.bin`` with the same bytes every time (its chunks
must be stored once), ``weights.bin`` with new bytes, ``log/steps.txt`` with one line
more. What a retry found in ``restore_files()`` goes into the state (``restores``), so
the test compares it with :func:`expected_files` of the restored step.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from sdk import current_task


def expected_files(cfg: dict[str, Any], step: int) -> dict[str, bytes]:
    """The directory's contents after ``step`` steps."""
    static = np.random.default_rng(cfg["seed"]).bytes(cfg["static_bytes"])
    weights = np.random.default_rng([cfg["seed"], step]).bytes(64 << 10)
    log = "".join(f"step {i}\n" for i in range(1, step + 1)).encode()
    return {"static.bin": static, "weights.bin": weights, "log/steps.txt": log}


def digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _write(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _log(cfg: dict[str, Any], *words: object) -> None:
    with open(cfg["log"], "a") as f:
        f.write(" ".join(str(w) for w in words) + "\n")


def rewrite_files(cfg: dict[str, Any]) -> dict[str, Any]:
    ctx = current_task()
    work = Path(cfg["workdir"]) / f"{ctx.index}-attempt{ctx.attempt}"
    state = ctx.restore()
    restored = ctx.restore_files()
    if state is None:
        state = {"step": 0, "restores": []}
        _write(work, expected_files(cfg, 0))
    else:
        assert restored is not None
        state["restores"].append((state["step"], digests(Path(restored))))
        shutil.copytree(restored, work)
    _log(cfg, ctx.index, ctx.attempt, os.getppid(), "start", state["step"])
    ctx.checkpoint_files(work)
    while state["step"] < cfg["steps"]:
        state["step"] += 1
        _write(work, expected_files(cfg, state["step"]))
        _log(cfg, ctx.index, ctx.attempt, os.getppid(), "step", state["step"])
        time.sleep(cfg["step_seconds"])
        ctx.checkpoint(state)
    state["final"] = digests(work)
    return state


def count_up(cfg: dict[str, Any]) -> dict[str, Any]:
    """Counts ``cfg["steps"]`` steps further than where it starts (a kept checkpoint of an
    earlier job, with ``warm_start_from``), writing ``count.txt`` into a checkpointed
    directory. Returns where it started, what ``restore_files()`` held and where it ended."""
    ctx = current_task()
    state = ctx.restore()
    restored = ctx.restore_files()
    start = dict(state) if state is not None else None
    files = digests(Path(restored)) if restored is not None else None
    state = state or {"n": 0}
    work = Path(cfg["workdir"]) / f"{ctx.job_id}-{ctx.index}-{ctx.attempt}"
    work.mkdir(parents=True)
    ctx.checkpoint_files(work)
    for _ in range(cfg["steps"]):
        state["n"] += 1
        (work / "count.txt").write_text(f"{state['n']}\n")
        ctx.checkpoint(state)
    return {"start": start, "files": files, "end": state["n"]}
