"""Many processes committing at once: no "database is locked", nothing lost."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from checkpoint import CheckpointManager, ManagerConfig
from checkpoint.catalog import TaskRow

PROCESSES = 8
COMMITS = 100


def _worker(db_url: str, blob_url: str, index: int, queue) -> None:  # runs in a child process
    errors: list[str] = []
    done = 0
    try:
        manager = CheckpointManager.from_urls(db_url, blob_url, migrate=False,
                                              config=ManagerConfig(max_deltas_per_base=20))
        writer = manager.open_attempt("job", f"task-{index}").writer
        state = {"x": np.zeros(64), "i": 0}
        for step in range(COMMITS):
            state["x"][step % 64] = step
            state["i"] = step
            try:
                writer.save(writer.capture(state), progress_percent=float(step + 1))
                done += 1
            except Exception as exc:  # collected and reported by the parent
                errors.append(f"{type(exc).__name__}: {exc}")
        restored = manager.restore("job", f"task-{index}")
        if restored is None or restored.state["i"] != COMMITS - 1:
            errors.append("restore mismatch")
        manager.close()
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    queue.put((index, done, errors))


def run_workers(db_url: str, blob_url: str) -> dict[int, tuple[int, list[str]]]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(db_url, blob_url, i, queue))
             for i in range(PROCESSES)]
    for p in procs:
        p.start()
    results = {}
    for _ in procs:
        index, done, errors = queue.get(timeout=240)
        results[index] = (done, errors)
    for p in procs:
        p.join(timeout=30)
    return results


def check(results, engine) -> None:
    errors = [e for _done, errs in results.values() for e in errs]
    assert [e for e in errors if "locked" in e] == []
    assert errors == []
    assert sorted(results) == list(range(PROCESSES))
    assert {done for done, _ in results.values()} == {COMMITS}
    with Session(engine) as s:
        counts = s.execute(select(TaskRow.task_id, TaskRow.checkpoint_count)).all()
        assert sorted(c for _t, c in counts) == [COMMITS] * PROCESSES
        assert s.scalar(select(func.count()).select_from(TaskRow)) == PROCESSES


def test_sqlite_many_processes(sqlite_url: str, sqlite_engine, tmp_path: Path) -> None:
    check(run_workers(sqlite_url, f"file://{tmp_path}/blobs"), sqlite_engine)


def test_postgres_many_processes(pg_url: str, pg_engine, tmp_path: Path) -> None:
    check(run_workers(pg_url, f"file://{tmp_path}/blobs"), pg_engine)


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_racing_attempts_get_distinct_epochs(db: str, request: pytest.FixtureRequest) -> None:
    from concurrent.futures import ThreadPoolExecutor

    engine = request.getfixturevalue("sqlite_engine" if db == "sqlite" else "pg_engine")
    from checkpoint.stores import MemoryStore

    manager = CheckpointManager(engine, MemoryStore("sql"), MemoryStore())
    with ThreadPoolExecutor(8) as pool:
        epochs = list(pool.map(lambda i: manager.open_attempt("job", "shared", i).epoch, range(16)))
    assert sorted(epochs) == list(range(1, 17))
