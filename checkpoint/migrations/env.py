"""Alembic environment: runs on a connection handed over by
``checkpoint.upgrade_database`` or on an engine built from ``-x url=…``."""

from __future__ import annotations

from alembic import context

from checkpoint.catalog import Base, create_engine_for

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url")
    if not url:
        raise SystemExit("pass the database URL with -x url=…")
    engine = create_engine_for(url)
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()
