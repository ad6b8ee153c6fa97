"""The chain store under the writer: tier routing, committed saves that stand, link references.

Catalog faults are injected in the real databases: a trigger makes the old-chain
DELETE fail (SQLite and PostgreSQL), exactly where a busy timeout or a dropped
connection would hit it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from ckpt_helpers import all_blob_keys, chain, copy_state, make_state, mutate, states_equal
from sqlalchemy import Engine, event, text
from sqlalchemy.orm import Session

from checkpoint import CheckpointManager, ManagerConfig
from checkpoint._chain import ChainStore, TierRouter
from checkpoint._delta import EncodedPart, encode
from checkpoint.catalog import CheckpointRow
from checkpoint.errors import Fenced
from checkpoint.stores import FsStore, MemoryStore, SqlStore


def _save(writer, state: dict, step: int):
    mutate(state, step)
    return writer.save(writer.capture(state), progress_percent=float(step))


# --- tier routing ----------------------------------------------------------------------------

@pytest.mark.parametrize("size,tier", [(0, "sql"), (999, "sql"), (1000, "object"), (5000, "object")])
def test_router_routes_by_size(size: int, tier: str) -> None:
    router = TierRouter(MemoryStore("sql"), MemoryStore("object"), db_size_limit=1000)
    assert router.tier_for(size) == tier


def test_parts_land_in_their_tier_at_the_threshold(sqlite_engine: Engine, s3_store) -> None:
    limit = 1 << 20
    store = ChainStore(sqlite_engine, TierRouter(SqlStore(sqlite_engine), s3_store, limit))
    parts = [EncodedPart(b"b" * (limit - 1), "none", limit - 1), EncodedPart(b"a" * limit, "none", limit)]
    refs = store.put_parts("job", "t", 1, 1, parts)
    assert [r.tier for r in refs] == ["sql", "object"]
    assert store.tiers.sql.list("ckpt/") == [refs[0].key]
    assert s3_store.list("ckpt/") == [refs[1].key]
    assert s3_store.get(refs[1].key) == b"a" * limit


def test_failed_put_leaves_nothing(sqlite_engine: Engine, tmp_path: Path) -> None:
    objects = FsStore(tmp_path / "blobs")
    store = ChainStore(sqlite_engine, TierRouter(SqlStore(sqlite_engine), objects, 10))
    objects.put("ckpt/job/t/e1/s1/p1", b"taken")  # the second part's key is already written
    with pytest.raises(Exception, match="already exists"):
        store.put_parts("job", "t", 1, 1, [EncodedPart(b"x" * 20, "none", 20)] * 2)
    assert objects.list("") == ["ckpt/job/t/e1/s1/p1"]


# --- a committed save stands whatever retiring the old chain does ------------------------------

class DatabaseFault:
    """Makes statements on the ``checkpoints`` table fail inside the database (a trigger)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.active: list[str] = []

    def fail(self, event: str) -> None:
        name = f"fail_{event.lower()}"
        with self.engine.begin() as conn:
            if self.engine.dialect.name == "sqlite":
                conn.execute(text(f"CREATE TRIGGER {name} BEFORE {event} ON checkpoints "
                                  "BEGIN SELECT RAISE(ABORT, 'injected: database is locked'); END"))
            else:
                conn.execute(text(f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger AS $$ "
                                  "BEGIN RAISE EXCEPTION 'injected: terminating connection'; END $$ "
                                  "LANGUAGE plpgsql"))
                conn.execute(text(f"CREATE TRIGGER {name} BEFORE {event} ON checkpoints "
                                  f"FOR EACH ROW EXECUTE FUNCTION {name}()"))
        self.active.append(name)

    def heal(self) -> None:
        with self.engine.begin() as conn:
            for name in self.active:
                sqlite = self.engine.dialect.name == "sqlite"
                conn.execute(text(f"DROP TRIGGER IF EXISTS {name}" + ("" if sqlite else " ON checkpoints")))
        self.active.clear()


@pytest.fixture(params=["sqlite", "postgres"])
def small_chain_manager(request: pytest.FixtureRequest, tmp_path: Path):
    engine = request.getfixturevalue("sqlite_engine" if request.param == "sqlite" else "pg_engine")
    fault = DatabaseFault(engine)
    try:
        yield CheckpointManager(engine, SqlStore(engine), FsStore(tmp_path / "blobs"),
                                ManagerConfig(db_size_limit=4096, max_deltas_per_base=2)), fault
    finally:
        fault.heal()


def test_failed_retirement_after_a_new_base_never_corrupts_the_chain(
        small_chain_manager) -> None:
    """The severity-1 bug: one error in the old-chain DELETE made later restores wrong."""
    manager, fault = small_chain_manager
    writer = manager.open_attempt("job", "t").writer
    state = make_state(arrays=4, size=4096)
    assert [_save(writer, state, s).kind for s in (1, 2, 3)] == ["base", "delta", "delta"]
    fault.fail("DELETE")
    info = _save(writer, state, 4)  # a new base; retiring seqs 1-3 fails in the database
    assert (info.kind, info.seq) == ("base", 4)
    assert [r.seq for r in chain(manager, "t")] == [1, 2, 3, 4]  # left for later, not lost
    expected = {}
    for step in (5, 6):
        assert _save(writer, state, step).kind == "delta"
        expected[step] = copy_state(state)
    restored = manager.restore("job", "t")
    assert restored is not None and restored.truncated is False
    assert (restored.seq, restored.chain) == (6, (4, 5, 6))
    assert states_equal(restored.state, expected[6]) is True
    fault.heal()
    assert _save(writer, state, 7).kind == "base"   # two deltas after base 4: compaction
    assert [r.seq for r in chain(manager, "t")] == [7]   # the next base retires everything older
    again = manager.open_attempt("job", "t", 2)
    assert states_equal(again.restored.state, state) is True
    manager.delete_task("t")
    assert all_blob_keys(manager) == []


def test_a_commit_that_fails_in_the_database_deletes_its_blobs(
        small_chain_manager) -> None:
    manager, fault = small_chain_manager
    writer = manager.open_attempt("job", "t").writer
    state = make_state(arrays=4, size=4096)
    _save(writer, state, 1)
    committed = copy_state(state)
    keys = all_blob_keys(manager)
    fault.fail("INSERT")  # every insert of a checkpoint row fails
    with pytest.raises(Exception, match="injected"):
        _save(writer, state, 2)
    assert all_blob_keys(manager) == keys
    assert states_equal(manager.restore("job", "t").state, committed) is True


# --- link references ---------------------------------------------------------------------------

def test_a_delta_encoded_against_another_link_truncates_the_restore(
        manager: CheckpointManager) -> None:
    """Defense in depth: a catalog-consistent chain whose delta was encoded against the
    wrong state (what the writer bug produced) restores the last consistent link."""
    attempt = manager.open_attempt("job", "t")
    writer = attempt.writer
    state = make_state()
    _save(writer, state, 1)
    first = writer.previous
    _save(writer, state, 2)
    at_two = copy_state(state)
    _save(writer, state, 3)
    rows = chain(manager, "t")
    # re-encode seq 3 against seq 1's state, as the buggy writer did, and commit it in place
    wrong = encode(first, writer.previous, against=(1, rows[0].parts[0]["sha256"]))
    refs = manager.chain.put_parts("job", "t", attempt.epoch, 99, wrong)
    with Session(manager.engine) as s, s.begin():
        row = s.get(CheckpointRow, ("t", 3))
        row.parts = [r.to_json() for r in refs]
    restored = manager.restore("job", "t")
    assert restored is not None and restored.truncated is True
    assert restored.chain == (1, 2)
    assert states_equal(restored.state, at_two) is True


def test_open_attempt_reads_once_and_continues_the_chain(manager: CheckpointManager) -> None:
    first = manager.open_attempt("job", "t")
    assert first.restored is None and first.epoch == 1
    state = make_state()
    for step in (1, 2):
        _save(first.writer, state, step)
    second = manager.open_attempt("job", "t", 2)
    assert second.epoch == 2 and second.restored.seq == 2
    info = _save(second.writer, state, 3)
    assert (info.kind, info.base_seq, info.seq) == ("delta", 1, 3)
    assert states_equal(manager.restore("job", "t").state, state) is True


def test_a_zombie_cannot_commit_after_its_task_was_cleaned_up(manager: CheckpointManager) -> None:
    """Found by the several-hosts test: a cut-off worker's attempt committed after cleanup."""
    zombie = manager.open_attempt("job", "t").writer
    state = make_state()
    _save(zombie, state, 1)
    manager.delete_task("t")            # the task's result was recorded elsewhere
    mutate(state, 2)
    with pytest.raises(Fenced):
        zombie.save(zombie.capture(state))
    assert all_blob_keys(manager) == [] and chain(manager, "t") == []


def test_open_attempt_reads_the_committed_rows_once(manager: CheckpointManager) -> None:
    first = manager.open_attempt("job", "t").writer
    state = make_state()
    for step in (1, 2, 3):
        _save(first, state, step)
    reads: list[str] = []

    def seen(conn, cursor, statement: str, *args) -> None:
        if statement.lstrip().upper().startswith("SELECT") and " checkpoints" in statement:
            reads.append(statement)

    event.listen(manager.engine, "before_cursor_execute", seen)
    try:
        second = manager.open_attempt("job", "t", 2)
    finally:
        event.remove(manager.engine, "before_cursor_execute", seen)
    assert second.restored is not None and second.restored.seq == 3
    assert len(reads) == 1   # the restore and the writer share the one read of the rows
    assert _save(second.writer, state, 4).kind == "delta"


def test_row_committed_tells_which_epoch_committed_a_seq(manager: CheckpointManager) -> None:
    writer = manager.open_attempt("job", "t").writer
    info = _save(writer, make_state(), 1)
    assert (info.seq, info.epoch) == (1, 1)
    assert [manager.chain.row_committed("t", 1, 1), manager.chain.row_committed("t", 1, 2),
            manager.chain.row_committed("t", 2, 1)] == [True, False, False]
