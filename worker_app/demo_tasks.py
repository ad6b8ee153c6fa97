"""The demo's task: fit a small linear model by gradient descent (numpy only)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from sdk._task import current_task

STEPS = 400
STEP_SECONDS = 0.02  # make each model take ~8 s, so there is time to kill a worker


def train(seed: int) -> dict[str, Any]:
    """Fit y = X·w on synthetic data drawn from ``seed``; return the fit's summary."""
    ctx = current_task()
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((512, 8))
    true_w = rng.standard_normal(8)
    y = x @ true_w + 0.01 * rng.standard_normal(512)
    restored = ctx.restore()
    state = restored or {"step": 0, "w": np.zeros(8)}
    resumed_from = state["step"] if restored is not None else None
    while state["step"] < STEPS:
        grad = x.T @ (x @ state["w"] - y) / len(y)
        state["w"] = state["w"] - 0.1 * grad
        state["step"] += 1
        time.sleep(STEP_SECONDS)
        ctx.checkpoint(state, progress_percent=100.0 * state["step"] / STEPS)
    loss = float(np.mean((x @ state["w"] - y) ** 2))
    return {
        "seed": seed,
        "loss": loss,
        "weight_error": float(np.abs(state["w"] - true_w).max()),
        "attempt": ctx.attempt,
        "resumed_from": resumed_from,
        "steps": STEPS,
    }
