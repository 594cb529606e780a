"""Alembic's entry point for the prediction store's migrations.

There is no alembic.ini: ``genart.serve.store.alembic_config`` builds the configuration in code, and
``PredictionStore.upgrade`` hands over its open connection in ``config.attributes["connection"]`` so that the
migration runs in the store's own transaction (on PostgreSQL, under its advisory lock). ``sqlalchemy.url`` is
the fallback for commands run without one, such as ``command.revision(..., autogenerate=True)``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine, pool

from genart.serve.store import Base

config = context.config


def run(connection: Connection) -> None:
    # SQLite cannot ALTER most things; batch mode rebuilds the table instead, so later migrations run on both.
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(
        url=config.get_main_option("sqlalchemy.url"), target_metadata=Base.metadata, literal_binds=True
    )
    with context.begin_transaction():
        context.run_migrations()
elif (shared := config.attributes.get("connection")) is not None:
    run(shared)
else:
    engine = create_engine(config.get_main_option("sqlalchemy.url", ""), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            run(connection)
    finally:
        engine.dispose()
