"""Deterministic, seeded training functions for the checkpointed-task tests.

Each function trains for ``cfg["steps"]`` steps, sleeping ``cfg["step_seconds"]``
per step, calls ``checkpoint()`` after every step, and appends one line per
event to ``cfg["log"]`` (``start``: the attempt began at this step; ``step``:
this step was executed), each flushed at once so a SIGKILL loses nothing. The
pid logged is the worker's (the task process's parent), the one a test kills.
``reference_*`` computes the uninterrupted result locally.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import numpy as np

from sdk import current_task


def _log(cfg: dict[str, Any], *words: object) -> None:
    with open(cfg["log"], "a") as f:
        f.write(" ".join(str(w) for w in words) + "\n")
        f.flush()


def _numpy_init(cfg: dict[str, Any]) -> dict[str, Any]:
    rng = np.random.default_rng(cfg["seed"])
    return {"step": 0, "w": rng.standard_normal(cfg.get("dim", 512)), "losses": []}


def _numpy_step(state: dict[str, Any], cfg: dict[str, Any]) -> None:
    rng = np.random.default_rng([cfg["seed"], state["step"]])
    grad = state["w"] * 0.1 + rng.standard_normal(state["w"].shape) * 0.01
    state["w"] = state["w"] - 0.05 * grad
    state["losses"].append(float(np.dot(state["w"], state["w"])))
    state["step"] += 1


def _run(cfg: dict[str, Any], init: Any, step: Any) -> dict[str, Any]:
    ctx = current_task()
    state = ctx.restore()
    resumed = state is not None
    if state is None:
        state = init(cfg)
    start = int(state["step"])
    _log(cfg, ctx.task_id, ctx.attempt, os.getppid(), "start", start)
    while state["step"] < cfg["steps"]:
        s = int(state["step"])
        step(state, cfg)
        _log(cfg, ctx.task_id, ctx.attempt, os.getppid(), "step", s)
        time.sleep(cfg["step_seconds"])
        ctx.checkpoint(state, progress_percent=100.0 * state["step"] / cfg["steps"])
    state["resumed_from"] = start if resumed else None
    return state


def _reference(cfg: dict[str, Any], init: Any, step: Any) -> dict[str, Any]:
    """The uninterrupted run of the same steps, computed locally."""
    state = init(cfg)
    while state["step"] < cfg["steps"]:
        step(state, cfg)
    return state


def train_numpy(cfg: dict[str, Any]) -> dict[str, Any]:
    return _run(cfg, _numpy_init, _numpy_step)


def reference_numpy(cfg: dict[str, Any]) -> dict[str, Any]:
    return _reference(cfg, _numpy_init, _numpy_step)


def _torch_model() -> Any:
    import torch

    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))


def _torch_init(cfg: dict[str, Any]) -> dict[str, Any]:
    import torch

    # A private generator: tasks run concurrently in one worker process, so the
    # global RNG (torch.manual_seed) would interleave between them.
    g = torch.Generator().manual_seed(cfg["seed"])
    model = _torch_model()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return {"step": 0, "model": model.state_dict(), "opt": opt.state_dict(), "losses": []}


def _torch_step(state: dict[str, Any], cfg: dict[str, Any]) -> None:
    import torch

    model = _torch_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    g = torch.Generator().manual_seed(cfg["seed"] * 100_003 + state["step"])
    x = torch.randn(64, 16, generator=g)
    y = x.sum(dim=1, keepdim=True).sin()
    loss = torch.nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    state["model"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state["opt"] = opt.state_dict()
    state["losses"].append(float(loss.detach()))
    state["step"] += 1


def train_torch(cfg: dict[str, Any]) -> dict[str, Any]:
    return _run(cfg, _torch_init, _torch_step)


def reference_torch(cfg: dict[str, Any]) -> dict[str, Any]:
    return _reference(cfg, _torch_init, _torch_step)


def _tf_init(cfg: dict[str, Any]) -> dict[str, Any]:
    import tensorflow as tf

    rng = np.random.default_rng(cfg["seed"])
    return {"step": 0, "w": tf.Variable(rng.standard_normal((8, 1)).astype(np.float32)),
            "losses": []}


def _tf_step(state: dict[str, Any], cfg: dict[str, Any]) -> None:
    import tensorflow as tf

    rng = np.random.default_rng([cfg["seed"], state["step"]])
    x = tf.constant(rng.standard_normal((32, 8)).astype(np.float32))
    y = tf.reduce_sum(x, axis=1, keepdims=True)
    w = state["w"]
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(tf.matmul(x, w) - y))
    w.assign_sub(0.05 * tape.gradient(loss, w))
    state["losses"].append(float(loss.numpy()))
    state["step"] += 1


def train_tf(cfg: dict[str, Any]) -> dict[str, Any]:
    out = _run(cfg, _tf_init, _tf_step)
    out["w"] = out["w"].numpy()
    return out


def reference_tf(cfg: dict[str, Any]) -> dict[str, Any]:
    state = _reference(cfg, _tf_init, _tf_step)
    state["w"] = state["w"].numpy()
    return state


def unpicklable_then_fine(cfg: dict[str, Any]) -> dict[str, Any]:
    """Checkpoints a state holding a lock (unpicklable) and then a good one."""
    ctx = current_task()
    time.sleep(cfg["interval"] * 1.2)
    results = {"bad": ctx.checkpoint({"lock": threading.Lock()}), "good": None}
    time.sleep(cfg["interval"] * 1.2)
    results["good"] = ctx.checkpoint({"x": np.arange(10)})
    return results


def big_state_roundtrip(cfg: dict[str, Any]) -> dict[str, Any]:
    """Checkpoint a state above the SQL size limit, hold it, return the big item back."""
    ctx = current_task()
    time.sleep(cfg["interval"] * 1.2)
    state = {"w": np.random.default_rng(cfg["seed"]).standard_normal(400_000)}  # 3.2 MB
    captured = ctx.checkpoint(state)
    time.sleep(cfg["hold"])
    return {"captured": captured, "item_sum": float(cfg["array"].sum()), "echo": cfg["array"]}


def _dropout_parts(cfg: dict[str, Any]) -> tuple[Any, Any, Any]:
    """Model, optimizer and an EMA copy, initialised from the process's global RNGs after
    seeding them."""
    import copy
    import random

    import torch

    random.seed(cfg["seed"])
    np.random.seed(cfg["seed"])
    torch.manual_seed(cfg["seed"])
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                                torch.nn.Linear(32, 1))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2), copy.deepcopy(model)


def _dropout_step(model: Any, opt: Any, ema: Any, state: dict[str, Any]) -> None:
    """One step drawing from every global RNG: torch (data, dropout), NumPy, Python; then
    the EMA idiom of much training code, through ``.data``, which no version counter sees."""
    import random

    import torch

    x = torch.randn(64, 16) + float(np.random.standard_normal()) * 0.01 + random.random() * 0.01
    y = x.sum(dim=1, keepdim=True).sin()
    model.train()
    loss = torch.nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.data.mul_(0.9).add_(p.data, alpha=0.1)
    state["model"], state["opt"], state["ema"] = model.state_dict(), opt.state_dict(), ema.state_dict()
    state["losses"].append(float(loss.detach()))
    state["step"] += 1


def train_torch_dropout(cfg: dict[str, Any]) -> dict[str, Any]:
    """Dropout, AdamW, an EMA through ``.data`` and global RNGs only: no generator in the
    checkpointed state."""
    ctx = current_task()
    model, opt, ema = _dropout_parts(cfg)
    state = ctx.restore()  # puts the global RNG states back when there is one
    resumed = state is not None
    if state is None:
        state = {"step": 0, "model": model.state_dict(), "opt": opt.state_dict(),
                 "ema": ema.state_dict(), "losses": []}
    else:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        ema.load_state_dict(state["ema"])
    start = int(state["step"])
    _log(cfg, ctx.task_id, ctx.attempt, os.getppid(), "start", start)
    while state["step"] < cfg["steps"]:
        s = int(state["step"])
        _dropout_step(model, opt, ema, state)
        _log(cfg, ctx.task_id, ctx.attempt, os.getppid(), "step", s)
        time.sleep(cfg["step_seconds"])
        ctx.checkpoint(state, progress_percent=100.0 * state["step"] / cfg["steps"])
    state["resumed_from"] = start if resumed else None
    return state


def reference_torch_dropout(cfg: dict[str, Any]) -> dict[str, Any]:
    model, opt, ema = _dropout_parts(cfg)
    state: dict[str, Any] = {"step": 0, "losses": []}
    while state["step"] < cfg["steps"]:
        _dropout_step(model, opt, ema, state)
    return state


def pausable(cfg: dict[str, Any]) -> dict[str, Any]:
    """Counts to ``cfg["steps"]``, logging ``start``/``step`` like ``_run``; stops when cancelled.

    Meant for a long ``checkpoint_interval``: only forced (final) checkpoints capture.
    """
    ctx = current_task()
    state = ctx.restore() or {"step": 0}
    _log(cfg, ctx.task_id, ctx.attempt, os.getppid(), "start", state["step"])
    while state["step"] < cfg["steps"]:
        if ctx.cancelled:
            raise RuntimeError(f"{ctx.task_id} attempt {ctx.attempt} stopped")
        time.sleep(cfg["step_seconds"])
        state["step"] += 1
        _log(cfg, ctx.task_id, ctx.attempt, os.getppid(), "step", state["step"])
        ctx.checkpoint(state)
    return {"steps": state["step"]}
