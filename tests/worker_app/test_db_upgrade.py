"""``crowdcompute db upgrade`` creates the catalog schema on a fresh PostgreSQL
database (what the deployment runs before workers start) and is idempotent."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from _helpers import clean_env
from _servers import postgres_url
from sqlalchemy import create_engine, inspect, text

EXE = str(Path(sys.executable).with_name("crowdcompute"))


@pytest.fixture
def fresh_database() -> Iterator[str]:
    admin_url = postgres_url()
    name = f"cc_migrate_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


def upgrade(url: str, state: Path) -> subprocess.CompletedProcess[str]:
    env = clean_env(CROWDCOMPUTE_DATABASE_URL=url, CROWDCOMPUTE_STATE_DIR=str(state))
    return subprocess.run([EXE, "db", "upgrade"], env=env, capture_output=True, text=True,
                          timeout=120)


def test_db_upgrade_creates_the_catalog_on_postgresql(fresh_database: str, tmp_path: Path) -> None:
    first = upgrade(fresh_database, tmp_path)
    assert first.returncode == 0, first.stderr
    assert "is up to date" in first.stdout
    engine = create_engine(fresh_database)
    try:
        tables = set(inspect(engine).get_table_names())
        assert {"tasks", "checkpoints", "blobs", "alembic_version"} <= tables
        with engine.connect() as c:
            version = c.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    finally:
        engine.dispose()
    again = upgrade(fresh_database, tmp_path)
    assert again.returncode == 0, again.stderr
    engine = create_engine(fresh_database)
    try:
        with engine.connect() as c:
            assert c.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == version
    finally:
        engine.dispose()


def test_db_upgrade_reports_an_unreachable_database_clearly(tmp_path: Path) -> None:
    out = upgrade("postgresql+psycopg://cc:cc@127.0.0.1:1/none", tmp_path)
    assert out.returncode != 0
    assert out.stderr.startswith("crowdcompute: ")
    assert "Traceback" not in out.stderr
