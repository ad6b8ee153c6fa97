"""Fixtures for the checkpoint library tests: real stores and real databases.

PostgreSQL tests run in a private schema of the shared test database so that
they never touch tables other suites create there.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests._servers import moto_server, postgres_url, reset_moto  # noqa: E402

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


from ckpt_helpers import build_manager  # noqa: E402

from checkpoint import CheckpointManager  # noqa: E402
from checkpoint.catalog import create_engine_for, upgrade_database  # noqa: E402
from checkpoint.stores import FsStore, SqlStore  # noqa: E402
from checkpoint.stores.s3 import S3Store  # noqa: E402

PG_SCHEMA = f"ckpt_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"


def pg_schema_url(schema: str = PG_SCHEMA) -> str:
    return f"{postgres_url()}?options=-csearch_path%3D{schema}"


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A migrated private schema on the real PostgreSQL server."""
    admin = create_engine_for(postgres_url())
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{PG_SCHEMA}"'))
    url = pg_schema_url()
    upgrade_database(url)
    yield url
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{PG_SCHEMA}" CASCADE'))
    admin.dispose()


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    engine = create_engine_for(pg_url)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE tasks, checkpoints, blobs"))
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    upgrade_database(url)
    return url


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    engine = create_engine_for(sqlite_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture
def s3_store(moto_url: str) -> S3Store:
    reset_moto(moto_url)
    return S3Store("ckpt-bucket", "runs/a", endpoint_url=moto_url, create_bucket=True)


@pytest.fixture(params=["sqlite-fs", "postgres-s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path):
    """(engine, sql store, object store) for a manager; two real combinations."""
    if request.param == "sqlite-fs":
        engine = request.getfixturevalue("sqlite_engine")
        return engine, SqlStore(engine), FsStore(tmp_path / "objects")
    engine = request.getfixturevalue("pg_engine")
    return engine, SqlStore(engine), request.getfixturevalue("s3_store")


@pytest.fixture
def manager(backend) -> CheckpointManager:
    """A manager with a small SQL limit so tests exercise both tiers."""
    return build_manager(backend, db_size_limit=4096, max_deltas_per_base=5)
