"""Run the catalog's Alembic migrations from code."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from ..errors import StorageUnavailable
from ._engine import create_engine_for

__all__ = ["upgrade_database"]

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
_PG_LOCK_ID = 0x43_4B_50_54  # serialises concurrent upgrades on PostgreSQL


def upgrade_database(url_or_engine: str | Engine, revision: str = "head") -> None:
    """Bring the catalog at ``url_or_engine`` up to ``revision``; safe to repeat.

    Raises:
        StorageUnavailable: the database cannot be reached.
    """
    engine = create_engine_for(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
    cfg = Config(str(MIGRATIONS / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS))
    try:
        _upgrade(engine, cfg, revision)
    except OperationalError as exc:
        raise StorageUnavailable(
            f"CheckpointManager: cannot reach the catalog database {engine.url!r}: "
            f"{str(exc.orig).strip().splitlines()[0] if exc.orig else exc}") from exc
    finally:
        if isinstance(url_or_engine, str):
            engine.dispose()


def _upgrade(engine: Engine, cfg: Config, revision: str) -> None:
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_ID})
            conn.commit()
        try:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
            conn.commit()
        finally:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_ID})
                conn.commit()
