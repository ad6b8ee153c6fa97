"""The commit / restore / fencing / compaction protocol of CheckpointManager."""

from __future__ import annotations

import types
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from ckpt_helpers import (
    all_blob_keys,
    build_manager,
    chain,
    copy_state,
    count_allocations,
    count_rows,
    make_state,
    mutate,
    states_equal,
)
from sqlalchemy import update
from sqlalchemy.orm import Session

import checkpoint
from checkpoint import CheckpointManager, ManagerConfig
from checkpoint._records import plan_kind
from checkpoint.catalog import CheckpointRow, utcnow
from checkpoint.errors import Fenced, InvalidId, StorageUnavailable
from checkpoint.stores import MemoryStore


def run_steps(writer, state: dict, steps: range, progress: bool = True) -> list:
    infos = []
    for step in steps:
        mutate(state, step)
        infos.append(writer.save(writer.capture(state),
                                 progress_percent=float(step) if progress else None))
    return infos


def test_public_api_is_pinned() -> None:
    assert checkpoint.__all__ == sorted([
        "Attempt", "BlobExists", "BlobNotFound", "BlobView", "CaptureError", "CatalogMismatch",
        "ChainLinkView", "CheckpointError", "CheckpointManager", "CommitInfo", "CorruptCheckpoint",
        "Fenced", "FileCapture", "InvalidId", "ManagerConfig", "MemoryBudgetExceeded", "Restored",
        "StaleCapture", "StaleCheckpoint", "StorageError", "StorageFull", "StorageUnavailable", "StorageView",
        "TaskView", "TaskWriter", "create_engine_for", "lower_thread_priority", "upgrade_database"])
    for name in checkpoint.__all__:
        assert getattr(checkpoint, name) is not None
    # every public name the package holds once all of it is loaded is in __all__ (or a subpackage)
    public = {name for name, value in vars(checkpoint).items()
              if not name.startswith("_") and not isinstance(value, types.ModuleType)}
    assert public - {"annotations", "importlib", "TYPE_CHECKING", "Any"} == set(checkpoint.__all__)


def test_save_and_restore_round_trip(manager: CheckpointManager) -> None:
    attempt = manager.open_attempt("job", "task-1")
    assert attempt.restored is None
    writer, epoch = attempt.writer, attempt.epoch
    state = make_state()
    infos = run_steps(writer, state, range(1, 5))
    assert [i.kind for i in infos] == ["base", "delta", "delta", "delta"]
    assert [i.seq for i in infos] == [1, 2, 3, 4]
    assert {i.epoch for i in infos} == {epoch}
    restored = manager.restore("job", "task-1")
    assert restored is not None
    assert (restored.seq, restored.truncated, restored.chain) == (4, False, (1, 2, 3, 4))
    assert restored.progress_percent == 4.0
    assert states_equal(restored.state, state)


def test_after_a_save_the_next_capture_finds_its_buffers_ready(manager: CheckpointManager,
                                                              monkeypatch) -> None:
    made = count_allocations(monkeypatch)
    writer = manager.open_attempt("job", "t").writer
    state = {"w": np.arange(500_000, dtype=np.float64)}
    writer.save(writer.capture(state))
    assert made == [4_000_000, 4_000_000]        # the capture's buffer, then the spare made by save
    made.clear()
    for step in range(3):
        state["w"][step] = -1.0
        writer.save(writer.capture(state))
    assert not [n for n in made if n == 4_000_000]   # no capture allocated its copy again
    restored = manager.restore("job", "t")
    assert restored is not None and np.array_equal(restored.state["w"], state["w"])


def test_a_save_stands_when_no_spare_buffers_can_be_made(manager: CheckpointManager,
                                                         monkeypatch, caplog) -> None:
    from checkpoint import _memory

    writer = manager.open_attempt("job", "t").writer
    state = {"w": np.arange(500_000, dtype=np.float64)}
    snapshot = writer.capture(state)

    def refuse(nbytes: int) -> np.ndarray:
        raise MemoryError(f"cannot allocate {nbytes} bytes")

    monkeypatch.setattr(_memory, "empty", refuse)
    info = writer.save(snapshot)                  # commits, and says why there are no spares
    assert info.seq == 1 and "no spare capture buffers" in caplog.text
    monkeypatch.undo()
    state["w"][0] = -1.0
    assert writer.save(writer.capture(state)).kind == "delta"
    restored = manager.restore("job", "t")
    assert restored is not None and restored.state["w"][0] == -1.0


def test_tiers_follow_the_size_limit(manager: CheckpointManager) -> None:
    writer = manager.open_attempt("job", "t").writer
    info = run_steps(writer, make_state(), range(1, 3))
    base, delta = info
    assert [p.tier for p in base.parts] == ["object" if p.size >= 4096 else "sql"
                                            for p in base.parts]
    assert "object" in base.tiers  # 128 KiB of random floats cannot fit under 4 KiB
    view = manager.storage_view("t")
    locations = {b.key: b.tier for b in view.blobs}
    for p in base.parts + delta.parts:
        assert locations[p.key] == p.tier
        store = manager.tiers.sql if p.tier == "sql" else manager.tiers.objects
        assert store.exists(p.key) is True


def test_fencing_rejects_the_stale_attempt(manager: CheckpointManager) -> None:
    first = manager.open_attempt("job", "t", attempt=1)
    e1, zombie = first.epoch, first.writer
    zstate = make_state(1)
    run_steps(zombie, zstate, range(1, 3))
    second = manager.open_attempt("job", "t", attempt=2)
    e2, restored, live = second.epoch, second.restored, second.writer
    assert e2 == e1 + 1
    assert restored is not None and restored.seq == 2
    state = copy_state(restored.state)
    run_steps(live, state, range(3, 5))
    keys_before = all_blob_keys(manager)
    mutate(zstate, 99)
    with pytest.raises(Fenced):
        zombie.save(zombie.capture(zstate))
    assert all_blob_keys(manager) == keys_before  # nothing of the stale write is visible
    rows = chain(manager, "t")
    assert [r.seq for r in rows] == [1, 2, 3, 4]
    assert [r.epoch for r in rows] == [e1, e1, e2, e2]
    again = manager.restore("job", "t")
    assert again is not None and again.seq == 4
    assert states_equal(again.state, state)
    assert manager.task_view("t").epoch == e2
    assert manager.task_view("t").attempt == 2


def test_compaction_after_max_deltas(manager: CheckpointManager) -> None:
    writer = manager.open_attempt("job", "t").writer
    state = make_state(arrays=16)
    infos = run_steps(writer, state, range(1, 14))  # max_deltas_per_base = 5
    assert [i.kind for i in infos] == (["base"] + ["delta"] * 5) * 2 + ["base"]
    rows = chain(manager, "t")
    assert [(r.seq, r.kind) for r in rows] == [(13, "base")]
    live = {p.key for p in infos[-1].parts}
    assert set(all_blob_keys(manager)) == live  # the old chains' blobs are gone
    restored = manager.restore("job", "t")
    assert restored is not None and states_equal(restored.state, state)
    detail = manager.task_view("t")
    assert (detail.checkpoint_count, detail.head_seq, len(detail.chain)) == (13, 13, 1)


def test_compaction_at_default_fifty(backend, tmp_path: Path) -> None:
    manager = build_manager(backend, db_size_limit=4096)
    assert manager.config.max_deltas_per_base == 50
    writer = manager.open_attempt("job", "t").writer
    state = make_state(arrays=64, size=512)
    infos = run_steps(writer, state, range(1, 53), progress=False)
    assert [i.kind for i in infos] == ["base"] + ["delta"] * 50 + ["base"]
    assert [r.seq for r in chain(manager, "t")] == [52]
    restored = manager.restore("job", "t")
    assert restored is not None and states_equal(restored.state, state)


def test_compaction_on_size(manager: CheckpointManager) -> None:
    writer = manager.open_attempt("job", "t").writer
    rng = np.random.default_rng(5)
    state = {"a": rng.standard_normal(4096), "b": rng.standard_normal(64)}
    infos = []
    for _ in range(6):
        state["a"] = rng.standard_normal(4096)  # every delta rewrites most of the base
        infos.append(writer.save(writer.capture(state)))
    base_bytes, delta_bytes, deltas = 0, 0, 0
    for n, info in enumerate(infos):
        expected = plan_kind(has_previous=n > 0, deltas_since_base=deltas,
                             delta_bytes_since_base=delta_bytes, base_bytes=base_bytes,
                             max_deltas_per_base=5)
        assert info.kind == expected
        if info.kind == "base":
            base_bytes, delta_bytes, deltas = info.stored_bytes, 0, 0
        else:
            delta_bytes, deltas = delta_bytes + info.stored_bytes, deltas + 1
    assert [i.kind for i in infos].count("base") >= 2  # size, not count, forced a base
    assert all(r.seq >= max(i.seq for i in infos if i.kind == "base") for r in chain(manager, "t"))
    restored = manager.restore("job", "t")
    assert restored is not None
    assert np.array_equal(restored.state["a"], state["a"])


def test_plan_kind_policy() -> None:
    kw = dict(deltas_since_base=0, delta_bytes_since_base=0, base_bytes=100, max_deltas_per_base=3)
    assert plan_kind(has_previous=False, **kw) == "base"
    assert plan_kind(has_previous=True, **kw) == "delta"
    assert plan_kind(has_previous=True, **{**kw, "deltas_since_base": 3}) == "base"
    assert plan_kind(has_previous=True, **{**kw, "delta_bytes_since_base": 100}) == "delta"
    assert plan_kind(has_previous=True, **{**kw, "delta_bytes_since_base": 101}) == "base"


def test_resumed_writer_continues_the_chain(manager: CheckpointManager) -> None:
    state = make_state()
    run_steps(manager.open_attempt("job", "t").writer, state, range(1, 3))
    second = manager.open_attempt("job", "t", attempt=2)
    restored, writer = second.restored, second.writer
    state = copy_state(restored.state)
    infos = run_steps(writer, state, range(3, 5))
    assert [(i.kind, i.base_seq) for i in infos] == [("delta", 1), ("delta", 1)]
    final = manager.restore("job", "t")
    assert final.chain == (1, 2, 3, 4) and states_equal(final.state, state)


def test_writer_with_nothing_restored_starts_a_new_base(manager: CheckpointManager) -> None:
    run_steps(manager.open_attempt("job", "t").writer, make_state(), range(1, 3))
    with Session(manager.engine) as s, s.begin():
        s.execute(update(CheckpointRow).values(created_at=utcnow() - timedelta(hours=2)))
    second = manager.open_attempt("job", "t", attempt=2, max_age=3600.0)
    assert second.restored is None  # too old: deleted, the task starts from scratch
    info = run_steps(second.writer, make_state(9), range(1, 2))[0]
    assert (info.kind, info.seq) == ("base", 3)
    assert [r.seq for r in chain(manager, "t")] == [3]


class FlakyStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__("object")
        self.fail_next = False

    def put(self, key: str, data: bytes) -> None:
        if self.fail_next:
            self.fail_next = False
            raise StorageUnavailable("simulated outage")
        super().put(key, data)


def test_failed_save_keeps_previous(sqlite_engine) -> None:
    from checkpoint.stores import SqlStore

    flaky = FlakyStore()
    manager = CheckpointManager(sqlite_engine, SqlStore(sqlite_engine), flaky,
                                ManagerConfig(db_size_limit=1024))
    writer = manager.open_attempt("job", "t").writer
    state = make_state()
    run_steps(writer, state, range(1, 3))
    committed = writer.previous
    flaky.fail_next = True
    mutate(state, 3)
    with pytest.raises(StorageUnavailable):
        writer.save(writer.capture(state), progress_percent=3.0)
    assert writer.previous is committed
    mutate(state, 4)
    info = writer.save(writer.capture(state), progress_percent=4.0)
    assert (info.kind, info.seq) == ("delta", 4)
    restored = manager.restore("job", "t")
    assert restored.chain == (1, 2, 4) and states_equal(restored.state, state)
    assert manager.task_view("t").checkpoint_count == 3


def test_staleness(manager: CheckpointManager) -> None:
    state = make_state()
    run_steps(manager.open_attempt("job", "t").writer, state, range(1, 3))
    with Session(manager.engine) as s, s.begin():
        s.execute(update(CheckpointRow).values(created_at=utcnow() - timedelta(hours=2)))
    kept = manager.restore("job", "t", max_age=None)
    assert kept is not None and kept.age_seconds > 7000 and states_equal(kept.state, state)
    assert manager.restore("job", "t", max_age=3600.0) is None
    assert count_rows(manager)["checkpoints"] == 0
    assert all_blob_keys(manager) == []
    assert manager.task_view("t").checkpoint_count == 2  # the summary stays


def test_force_requests(manager: CheckpointManager) -> None:
    manager.open_attempt("job", "t")
    assert manager.take_force("t") is False
    assert manager.request_force("t") is True
    assert manager.request_force("t") is False
    assert manager.task_view("t").force_requested_at is not None
    assert manager.take_force("t") is True
    assert manager.take_force("t") is False
    with pytest.raises(KeyError):
        manager.request_force("unknown")


def test_read_api(manager: CheckpointManager) -> None:
    for n, task in enumerate(["a", "b", "c"]):
        writer = manager.open_attempt("job", task).writer
        if task != "c":
            run_steps(writer, make_state(n), range(1, 3 + n))
    tasks = manager.job_tasks("job")
    assert [(t.task_id, t.checkpoint_count, t.progress_percent) for t in tasks] == [
        ("a", 2, 2.0), ("b", 3, 3.0), ("c", 0, None)]
    a = tasks[0]
    assert a.base_checkpoint_size > 0 and a.last_checkpoint_at.utcoffset() == timedelta(0)
    assert a.chain == ()  # job views carry no chains
    detail = manager.task_view("b")
    assert [(c.seq, c.kind) for c in detail.chain] == [(1, "base"), (2, "delta"), (3, "delta")]
    assert all(c.codecs for c in detail.chain)
    assert detail.stored_bytes == tasks[1].stored_bytes == sum(c.stored_bytes for c in detail.chain)
    assert 0 <= detail.age_seconds < 60
    view = manager.storage_view("b")
    assert view.stored_bytes == detail.stored_bytes
    assert view.stored_bytes == sum(view.bytes_by_tier.values()) == sum(b.stored_bytes for b in view.blobs)
    assert len(view.blobs) == sum(c.parts for c in detail.chain)
    assert manager.job_tasks("nope") == []
    assert manager.task_view("nope") is None and manager.storage_view("nope") is None
    with pytest.raises(InvalidId):
        manager.task_view("x" * 300)


def test_from_urls_sqlite_and_files(tmp_path: Path) -> None:
    m = CheckpointManager.from_urls(f"sqlite:///{tmp_path}/c.db", f"file://{tmp_path}/blobs",
                                    config=ManagerConfig(db_size_limit=1000))
    state = make_state()
    run_steps(m.open_attempt("j", "t").writer, state, range(1, 3))
    assert states_equal(m.restore("j", "t").state, state)
    assert any(p.is_file() for p in (tmp_path / "blobs").rglob("*"))
    m.close()


def test_from_urls_postgres_and_s3(pg_engine, pg_url: str, moto_url: str, s3_store) -> None:
    m = CheckpointManager.from_urls(pg_url, "s3://ckpt-bucket/other", s3_endpoint_url=moto_url,
                                    config=ManagerConfig(db_size_limit=1000))
    state = make_state()
    run_steps(m.open_attempt("j", "t").writer, state, range(1, 3))
    assert states_equal(m.restore("j", "t").state, state)
    assert m.tiers.objects.list("ckpt/") != []
    m.close()


def test_a_lost_catalog_raises_checkpoint_errors_only(tmp_path: Path) -> None:
    # The one choke point: callers (the API, the task runtime, gc) see StorageUnavailable,
    # never a SQLAlchemy error, whichever door they come in by.
    db = tmp_path / "catalog.db"
    manager = CheckpointManager.from_urls(f"sqlite:///{db}", (tmp_path / "blobs").as_uri())
    writer = manager.open_attempt("job", "t").writer
    writer.save(writer.capture(make_state()))
    manager.engine.dispose()
    db.rename(tmp_path / "moved-away.db")
    db.mkdir()   # a directory: SQLite cannot open it
    calls = {
        "open_attempt": lambda: manager.open_attempt("job", "t", 2),
        "restore": lambda: manager.restore("job", "t"),
        "job_tasks": lambda: manager.job_tasks("job"),
        "task_view": lambda: manager.task_view("t"),
        "storage_view": lambda: manager.storage_view("t"),
        "kept_tasks": lambda: manager.kept_tasks(),
        "request_force": lambda: manager.request_force("t"),
        "delete_job": lambda: manager.delete_job("job"),
        "jobs_with_checkpoints": manager.jobs_with_checkpoints,
        "sweep_orphans": lambda: manager.sweep_orphans(0),
    }
    raised = {}
    for name, call in calls.items():
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - the type is what is checked
            raised[name] = type(exc).__name__
    assert raised == dict.fromkeys(calls, "StorageUnavailable")
    manager.close()
