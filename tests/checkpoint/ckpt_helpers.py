"""Shared helpers for the checkpoint tests (states, raw catalog queries, allocations)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from checkpoint import CheckpointManager, ManagerConfig
from checkpoint.catalog import BlobRow, CheckpointRow, TaskRow
from checkpoint.stores import FsStore, MemoryStore, SqlStore


def make_state(seed: int = 0, arrays: int = 8, size: int = 2048) -> dict:
    rng = np.random.default_rng(seed)
    return {"weights": {f"w{i}": rng.standard_normal(size) for i in range(arrays)},
            "step": 0, "history": [0.0]}


def mutate(state: dict, step: int) -> None:
    """A small change: one element of one array, the step and a history entry."""
    w = state["weights"]
    name = sorted(w)[step % len(w)]
    w[name][step % w[name].size] += 1.0
    state["step"] = step
    state["history"].append(float(step))


def states_equal(a: dict, b: dict) -> bool:
    return (a["step"] == b["step"] and a["history"] == b["history"]
            and sorted(a["weights"]) == sorted(b["weights"])
            and all(np.array_equal(a["weights"][k], b["weights"][k]) for k in a["weights"]))


def copy_state(state: dict) -> dict:
    return {"weights": {k: v.copy() for k, v in state["weights"].items()},
            "step": state["step"], "history": list(state["history"])}


def count_rows(manager: CheckpointManager) -> dict[str, int]:
    with Session(manager.engine) as s:
        return {name: int(s.scalar(select(func.count()).select_from(model)) or 0)
                for name, model in (("tasks", TaskRow), ("checkpoints", CheckpointRow),
                                    ("blobs", BlobRow))}


def all_blob_keys(manager: CheckpointManager) -> list[str]:
    return sorted(manager.tiers.sql.list("") + manager.tiers.objects.list(""))


def chain(manager: CheckpointManager, task_id: str) -> list[CheckpointRow]:
    with Session(manager.engine, expire_on_commit=False) as s:
        return list(s.scalars(select(CheckpointRow).where(CheckpointRow.task_id == task_id)
                              .order_by(CheckpointRow.seq)))


STORE_KINDS = ["memory", "fs", "sql-sqlite", "sql-postgres", "s3"]


def make_store(kind: str, request: pytest.FixtureRequest, tmp_path: Path):
    if kind == "memory":
        return MemoryStore()
    if kind == "fs":
        return FsStore(tmp_path / "blobs")
    if kind == "sql-sqlite":
        return SqlStore(request.getfixturevalue("sqlite_engine"))
    if kind == "sql-postgres":
        return SqlStore(request.getfixturevalue("pg_engine"))
    return request.getfixturevalue("s3_store")


def build_manager(backend, **config) -> CheckpointManager:
    engine, sql, objects = backend
    return CheckpointManager(engine, sql, objects, ManagerConfig(**config))


def count_allocations(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Sizes of the capture / restore buffers made from now on (``_memory.empty``)."""
    from checkpoint import _memory

    made: list[int] = []
    real = _memory.empty

    def empty(nbytes: int, **how: Any) -> np.ndarray:
        made.append(nbytes)
        return real(nbytes, **how)

    monkeypatch.setattr(_memory, "empty", empty)
    return made
