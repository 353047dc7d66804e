"""The existing state DB, opened for the operations commands (and ``rules``).

Read commands open the DB without migrating and never create it: a missing DB is reported
(exit 1) with how to make one, instead of leaving an empty file behind that would hide a
wrong ``IXM_STATE_DB`` path.
"""

from __future__ import annotations

from daemon.config import Settings
from daemon.store import Store, current_revision, sqlite_file

NO_DB_HINT = "run the daemon once (it creates and migrates the DB) or `ivanti-xmatters db upgrade`"


class NoDatabase(Exception):
    """There is no state DB (or no schema in it) at the configured place."""


def shown_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def open_store(settings: Settings) -> Store:
    """The existing state DB, not migrated; ``NoDatabase`` if there is none yet."""
    url = settings.state_db_url
    path = sqlite_file(url)
    if path is not None and not path.exists():
        raise NoDatabase(f"no state DB at {path}: {NO_DB_HINT}")
    store = Store(url, migrate=False)
    try:
        revision = current_revision(store.engine)
    except Exception:
        store.close()
        raise
    if revision is None:
        store.close()
        raise NoDatabase(f"the state DB {shown_url(url)} has no schema yet: {NO_DB_HINT}")
    return store
