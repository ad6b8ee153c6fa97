"""Engines for the catalog: SQLite tuned for many writers, PostgreSQL as is.

SQLite runs in WAL mode with a busy timeout, and every transaction starts with
``BEGIN IMMEDIATE`` so that writers queue on the busy timeout instead of
failing with "database is locked" when a deferred transaction tries to upgrade
its lock. Read-only work may opt into ``BEGIN DEFERRED`` with the execution
option ``sqlite_begin="DEFERRED"`` (see :func:`read_engine`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

__all__ = ["create_engine_for", "read_engine"]

SQLITE_BUSY_TIMEOUT_MS = 60_000


def create_engine_for(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url`` (``sqlite:///…`` or ``postgresql+psycopg://…``)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        kwargs.setdefault("pool_pre_ping", True)
        return create_engine(url, **kwargs)
    if parsed.database not in (None, "", ":memory:"):
        # a fresh state dir: the catalog file's directory is made, as the blob store's is
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    connect_args = dict(kwargs.pop("connect_args", {}))
    connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT_MS / 1000)
    connect_args.setdefault("check_same_thread", False)
    engine = create_engine(url, connect_args=connect_args, **kwargs)
    memory = parsed.database in (None, "", ":memory:")

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # let the begin hook below issue BEGIN itself (pysqlite's "do_begin" recipe)
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            if not memory:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {'DEFERRED' if mode == 'DEFERRED' else 'IMMEDIATE'}")

    return engine


def read_engine(engine: Engine) -> Engine:
    """A view of ``engine`` whose transactions do not take SQLite's write lock."""
    if engine.dialect.name == "sqlite":
        return engine.execution_options(sqlite_begin="DEFERRED")
    return engine
