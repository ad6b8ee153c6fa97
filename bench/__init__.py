"""Benchmarks: each prints ratios against a baseline measured in the same run.

Register a benchmark with ``@register("name")`` on ``async def run(quick: bool) -> dict``;
``python -m bench [--quick] [--json OUT] [NAME ...]`` runs them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Benchmark = Callable[[bool], Awaitable[dict[str, Any]]]
REGISTRY: dict[str, Benchmark] = {}
MODULES = ["bench.fanout", "bench.checkpoint_bench", "bench.task_bench", "bench.resume"]


def register(name: str) -> Callable[[Benchmark], Benchmark]:
    def deco(fn: Benchmark) -> Benchmark:
        REGISTRY[name] = fn
        return fn

    return deco
