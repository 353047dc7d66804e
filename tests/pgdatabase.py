"""A throwaway PostgreSQL database on a server the tests (or a benchmark) administer:
created empty, dropped afterwards even while connections remain."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, make_url
from sqlalchemy.pool import NullPool


@contextmanager
def throwaway_database(admin_url: str, prefix: str) -> Iterator[str]:
    """Yields the URL of a new database named ``<prefix>_<random>``; drops it on exit."""
    name = f"{prefix}_{uuid.uuid4().hex[:16]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
