"""Catalog: migrations, engines and the fenced data functions on both databases."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.orm import Session

from checkpoint import catalog as cat
from checkpoint.catalog import CheckpointRow, create_engine_for, upgrade_database
from checkpoint.errors import Fenced


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest):
    return request.getfixturevalue("sqlite_engine" if request.param == "sqlite" else "pg_engine")


def row(task: str, seq: int, epoch: int) -> CheckpointRow:
    return CheckpointRow(task_id=task, job_id="j", seq=seq, epoch=epoch, kind="base", base_seq=seq,
                         created_at=cat.utcnow(), progress_percent=None, raw_bytes=1,
                         stored_bytes=1, parts=[])


def test_migration_creates_tables_and_is_idempotent(engine, sqlite_url: str) -> None:
    assert {"tasks", "checkpoints", "blobs", "alembic_version"} <= set(
        inspect(engine).get_table_names())
    upgrade_database(sqlite_url)
    upgrade_database(sqlite_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == _head()
    # the migrations build exactly the columns the models declare
    for table in cat.Base.metadata.sorted_tables:
        migrated = {c["name"] for c in inspect(engine).get_columns(table.name)}
        assert migrated == {c.name for c in table.columns}, table.name


def _head() -> str:
    from alembic.script import ScriptDirectory

    from checkpoint.catalog._migrate import MIGRATIONS

    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    assert head is not None and head != "0001"
    return head


def test_sqlite_engine_settings(sqlite_engine) -> None:
    with sqlite_engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 60000


def test_sqlite_write_transactions_are_immediate(sqlite_url: str) -> None:
    from sqlalchemy.exc import OperationalError

    a, b = create_engine_for(sqlite_url), create_engine_for(sqlite_url)
    with a.connect() as ca, ca.begin(), b.connect() as cb:
        cb.connection.dbapi_connection.execute("PRAGMA busy_timeout=200")
        # even a transaction that only reads takes the write lock up front
        with pytest.raises(OperationalError, match="locked"), cb.begin():
            pass
    a.dispose()
    b.dispose()


def test_epochs_and_fenced_commit(engine) -> None:
    with Session(engine) as s, s.begin():
        assert cat.begin_attempt(s, "j", "t", 1) == 1
    with Session(engine) as s, s.begin():
        assert cat.begin_attempt(s, "j", "t", 2) == 2
    with Session(engine) as s, s.begin():
        cat.commit_checkpoint(s, row("t", 1, 2), {})
    with pytest.raises(Fenced), Session(engine) as s, s.begin():
        cat.commit_checkpoint(s, row("t", 2, 1), {})
    with pytest.raises(Fenced), Session(engine) as s, s.begin():  # seq must grow
        cat.commit_checkpoint(s, row("t", 1, 2), {})
    with Session(engine) as s:
        assert [r.seq for r in cat.chain_rows(s, "t")] == [1]
        task = cat.get_task(s, "t")
        assert (task.epoch, task.attempt, task.head_seq, task.checkpoint_count) == (2, 2, 1, 1)


def test_datetimes_are_utc_aware(engine) -> None:
    moment = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    with Session(engine) as s, s.begin():
        cat.ensure_task(s, "j", "t")
        cat.request_force(s, "t", moment)
    with Session(engine) as s:
        assert cat.get_task(s, "t").force_requested_at == moment


def test_force_on_unknown_task(engine) -> None:
    with Session(engine) as s, s.begin():
        assert cat.request_force(s, "missing", cat.utcnow()) is None
        assert cat.take_force(s, "missing") is False
