"""Alembic environment: migrates the state DB described by ``daemon.models``.

The daemon runs this at start (``daemon.migrate.upgrade``) with the connection it
already holds; ``alembic upgrade head`` from the repo root works too and takes
the URL from IXM_STATE_DB (or alembic.ini's sqlalchemy.url).
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import engine_from_config, pool

from daemon.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    url = os.environ.get("IXM_STATE_DB") or config.get_main_option("sqlalchemy.url")
    context.configure(
        url=url, target_metadata=target_metadata, literal_binds=True, render_as_batch=True
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(
            connection=connection, target_metadata=target_metadata, render_as_batch=True
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    section = config.get_section(config.config_ini_section) or {}
    if os.environ.get("IXM_STATE_DB"):
        section["sqlalchemy.url"] = os.environ["IXM_STATE_DB"]
    engine = engine_from_config(section, prefix="sqlalchemy.", poolclass=pool.NullPool)
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
