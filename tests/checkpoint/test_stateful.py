"""A stateful property test of one task's checkpoints (hypothesis ``RuleBasedStateMachine``).

The machine drives a real manager on a SQLite file and a blob directory with
random saves (no change, one element, a whole array, rows, Python values, a new
shape, a new key), compaction (``max_deltas_per_base=3``, and large deltas that
outweigh their base), transient catalog faults injected inside the database
(a trigger that fails the next INSERT or DELETE on ``checkpoints`` or
``blobs``, dropped after one operation; or a second connection holding
``BEGIN IMMEDIATE`` while the manager's busy timeout is short), crash and
reopen (a fresh manager on the same files opens the next attempt; the old
writer lives on as a zombie whose saves must be fenced), restore and delete.

The model is the last state whose save *returned*: a save that raised must
not have committed (the catalog is asked), and after every step restore
returns exactly the model (never truncated). After a delete and the sweep, and
at the end of every run, no row, blob or file is left.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import event as tally
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from sqlalchemy import Engine, event, func, select, text
from sqlalchemy.orm import Session

from checkpoint import CheckpointError, CheckpointManager, Fenced, ManagerConfig
from checkpoint.catalog import (
    BlobRow,
    CheckpointRow,
    create_engine_for,
    read_engine,
    upgrade_database,
)
from checkpoint.stores import FsStore, SqlStore

JOB, TASK = "propjob", "proptask"
BIG = 140_000  # float64 elements: over 1 MiB, a part of its own
BUSY_MS = 200
MUTATIONS = ("none", "small", "big", "rows", "python", "shape", "keys", "alias")
FAULTS = ("insert_checkpoint", "delete_checkpoint", "insert_blob", "delete_blob", "busy")


def initial_state() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return {"a": rng.standard_normal(BIG), "b": rng.standard_normal((64, 32)).astype(np.float32),
            "step": 0, "tags": ["x"], "cfg": {"lr": 0.1}}


def mutate(state: dict[str, Any], kind: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    if kind == "small":
        state["a"][rng.integers(0, BIG, 3)] += 1.0
    elif kind == "big":
        state["a"] = rng.standard_normal(BIG)
    elif kind == "rows":
        state["b"][rng.integers(0, len(state["b"]))] = seed
    elif kind == "python":
        state["step"] += 1
        state["tags"].append(f"t{seed}")
        state["cfg"]["lr"] = seed / 7
    elif kind == "shape":
        state["b"] = rng.standard_normal((int(rng.integers(1, 80)), 32)).astype(np.float32)
    elif kind == "keys":
        key = f"k{seed % 3}"
        if key in state["cfg"]:
            del state["cfg"][key]
        else:
            state["cfg"][key] = [seed, str(seed)]
    elif kind == "alias":   # the same array under a second key, written through both
        if "same" in state:
            del state["same"]
        else:
            state["same"] = state["b"]


def same(a: Any, b: Any) -> bool:
    """Deep equality: arrays by dtype, shape and bytes; dicts by ordered keys."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and a.tobytes() == b.tobytes())
    if isinstance(a, dict):
        return (isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
                and sharing(a) == sharing(b))
    if isinstance(a, list):
        return (isinstance(b, list) and len(a) == len(b)
                and all(same(x, y) for x, y in zip(a, b, strict=True)))
    return type(a) is type(b) and a == b


def sharing(d: dict[str, Any]) -> list[list[int]]:
    """For each value, the earlier values that are the same array, list or dict."""
    values = list(d.values())
    return [[j for j in range(i) if values[j] is v and isinstance(v, (np.ndarray, list, dict))]
            for i, v in enumerate(values)]


def copy(state: Any) -> Any:
    return deepcopy(state)   # keeps shared references shared


class Faults:
    """Transient faults inside the catalog database, each healed after one operation."""

    def __init__(self, engine: Engine, url: str) -> None:
        self.engine, self.url = engine, url
        self.locker: Engine | None = None
        self.count = 0

    def inject(self, fault: str) -> Any:
        """Arm ``fault``; returns what :meth:`heal` needs."""
        if fault == "busy":  # another process holds the write lock
            self.locker = self.locker or create_engine_for(self.url)
            conn = self.locker.connect()
            conn.begin()  # BEGIN IMMEDIATE (see checkpoint.catalog._engine)
            return conn
        event_, table = fault.split("_")
        table = {"checkpoint": "checkpoints", "blob": "blobs"}[table]
        self.count += 1
        name = f"injected_{self.count}"
        with self.engine.begin() as conn:
            conn.execute(text(f"CREATE TRIGGER {name} BEFORE {event_.upper()} ON {table} "
                              "BEGIN SELECT RAISE(ABORT, 'injected: disk I/O error'); END"))
        return name

    def heal(self, handle: Any) -> None:
        if isinstance(handle, str):
            with self.engine.begin() as conn:
                conn.execute(text(f"DROP TRIGGER {handle}"))
        elif handle is not None:
            handle.rollback()
            handle.close()

    def triggers(self) -> list[str]:
        """Triggers in the file, read by a connection outside every pool."""
        raw = sqlite3.connect(self.url.removeprefix("sqlite:///"))
        try:
            return [name for (name,) in raw.execute(
                "SELECT name FROM sqlite_master WHERE type = 'trigger'")]
        finally:
            raw.close()

    def close(self) -> None:
        if self.locker is not None:
            self.locker.dispose()


def open_manager(url: str, blobs: Path) -> CheckpointManager:
    engine = create_engine_for(url)

    @event.listens_for(engine, "connect")
    def _short_busy_timeout(dbapi_conn: Any, _record: Any) -> None:
        # after the catalog's own hook: a held lock fails a write fast instead of after 60 s
        dbapi_conn.execute(f"PRAGMA busy_timeout={BUSY_MS}")

    return CheckpointManager(engine, SqlStore(engine), FsStore(blobs),
                             ManagerConfig(db_size_limit=4096, max_deltas_per_base=3))


class CheckpointMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="ckpt-stateful-"))
        self.url = f"sqlite:///{self.dir / 'catalog.db'}"
        upgrade_database(self.url)
        self.managers = [open_manager(self.url, self.dir / "blobs")]
        self.faults = Faults(self.manager.engine, self.url)
        self.attempt = 1
        self.writer: Any = self.manager.open_attempt(JOB, TASK, self.attempt).writer
        self.zombie: Any = None
        self.working = initial_state()
        self.committed: dict[str, Any] | None = None

    @property
    def manager(self) -> CheckpointManager:
        return self.managers[-1]

    # -- catalog views -----------------------------------------------------------------------

    def seqs(self) -> list[int]:
        with Session(read_engine(self.manager.engine)) as s:  # readable while a lock is held
            return list(s.scalars(select(CheckpointRow.seq).order_by(CheckpointRow.seq)))

    def leftovers(self) -> tuple[int, int, list[str]]:
        with Session(self.manager.engine) as s:
            rows = int(s.scalar(select(func.count()).select_from(CheckpointRow)) or 0)
            blobs = int(s.scalar(select(func.count()).select_from(BlobRow)) or 0)
        files = sorted(p.name for p in (self.dir / "blobs").rglob("*") if p.is_file())
        return rows, blobs, files

    # -- rules -------------------------------------------------------------------------------

    def _save(self, writer: Any, kind: str, seed: int) -> bool:
        """One save through ``writer``; the model follows what it returned. True if it did."""
        before = self.seqs()
        mutate(self.working, kind, seed)
        try:
            info = writer.save(writer.capture(self.working), progress_percent=float(seed % 100))
        except CheckpointError:
            assert self.seqs() == before  # raised, so nothing may have committed
            return False
        assert self.seqs()[-1] == info.seq
        self.committed = copy(self.working)
        return True

    @precondition(lambda self: self.writer is not None)
    @rule(kind=st.sampled_from(MUTATIONS), seed=st.integers(0, 10_000))
    def save(self, kind: str, seed: int) -> None:
        assert self._save(self.writer, kind, seed) is True
        tally(f"save: {kind}")

    @precondition(lambda self: self.writer is not None)
    @rule(fault=st.sampled_from(FAULTS), kind=st.sampled_from(MUTATIONS),
          seed=st.integers(0, 10_000))
    def save_with_fault(self, fault: str, kind: str, seed: int) -> None:
        handle = self.faults.inject(fault)
        try:
            saved = self._save(self.writer, kind, seed)
        finally:
            self.faults.heal(handle)
        tally(f"save with {fault}: {'committed' if saved else 'raised, not committed'}")
        if fault in ("insert_checkpoint", "busy"):  # every save inserts a row and writes
            assert saved is False
        if fault == "delete_checkpoint":  # retiring old chains is best effort
            assert saved is True

    @rule()
    def crash_and_reopen(self) -> None:
        """The process dies; a fresh one opens the next attempt on the same files."""
        self.zombie = self.writer
        self.managers.append(open_manager(self.url, self.dir / "blobs"))
        self.faults.engine = self.manager.engine
        self.attempt += 1
        attempt = self.manager.open_attempt(JOB, TASK, self.attempt)
        restored = attempt.restored.state if attempt.restored is not None else None
        assert (restored is None) == (self.committed is None)
        assert restored is None or same(restored, self.committed) is True
        tally("crash and reopen: " + ("resumed" if restored is not None else "nothing to resume"))
        self.writer = attempt.writer
        self.working = copy(restored) if restored is not None else initial_state()

    @precondition(lambda self: self.zombie is not None)
    @rule(kind=st.sampled_from(MUTATIONS), seed=st.integers(0, 10_000))
    def zombie_save(self, kind: str, seed: int) -> None:
        before = self.seqs()
        state = copy(self.working)
        mutate(state, kind, seed)
        with pytest.raises(Fenced):
            self.zombie.save(self.zombie.capture(state))
        tally("zombie save: fenced")
        assert self.seqs() == before

    @rule(fault=st.sampled_from((None, "delete_checkpoint", "delete_blob")))
    def delete(self, fault: str | None) -> None:
        before = self.seqs()
        handle = self.faults.inject(fault) if fault else None
        try:
            self.manager.delete_task(TASK)
        except CheckpointError:
            assert fault is not None
        finally:
            if fault:
                self.faults.heal(handle)
        after = self.seqs()
        tally(f"delete with {fault}: " + ("nothing to delete" if not before
                                          else "rows kept" if after else "rows gone"))
        assert after in (before, [])  # all of the task's rows or none
        if after:
            return
        self.committed = None
        self.writer = None  # a deleted task's attempt is over; a new one opens next
        self.manager.sweep_orphans(grace_seconds=0)
        assert self.leftovers() == (0, 0, [])

    @precondition(lambda self: self.writer is None)
    @rule()
    def next_attempt(self) -> None:
        self.attempt += 1
        attempt = self.manager.open_attempt(JOB, TASK, self.attempt)
        assert attempt.restored is None
        self.writer = attempt.writer
        self.working = initial_state()

    # -- invariants and the end of a run -------------------------------------------------------

    @invariant()
    def no_fault_left(self) -> None:
        assert self.faults.triggers() == []

    @invariant()
    def restore_is_the_model(self) -> None:
        restored = self.manager.restore(JOB, TASK, max_age=None)
        if self.committed is None:
            assert restored is None
            return
        assert restored is not None and restored.truncated is False
        assert same(restored.state, self.committed) is True

    def teardown(self) -> None:
        try:
            self.manager.delete_task(TASK)
            self.manager.sweep_orphans(grace_seconds=0)
            assert self.leftovers() == (0, 0, [])
        finally:
            self.faults.close()
            for manager in self.managers:
                manager.close()
            shutil.rmtree(self.dir, ignore_errors=True)


CheckpointMachine.TestCase.settings = settings(
    max_examples=20, stateful_step_count=25, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TestCheckpointMachine = CheckpointMachine.TestCase
