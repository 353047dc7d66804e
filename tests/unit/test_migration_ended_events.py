"""Revision 0004: events stored TERMINATED without an end time get one, so they are read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from alembic import command
from alembic.config import Config

from daemon.store import MIGRATIONS_DIR, Store, make_engine


def test_ended_event_without_an_end_time_is_read_again_after_the_upgrade(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    engine = make_engine(url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0003")
    engine.dispose()
    then = datetime(2026, 11, 1, tzinfo=UTC)
    old = Store(url, migrate=False)
    with old.unit() as u:  # as the code before 0004 stored it
        for event_id, status in (("stuck", "TERMINATED"), ("live", "ACTIVE")):
            row = u.add_event(
                event_id=event_id,
                rec_id="R1",
                outbox_id=None,
                request_id=None,
                number=None,
                status=status,
                now=then,
            )
            row.terminated_at = None
    old.close()
    before = datetime.now(UTC)
    store = Store(url)  # the daemon upgrades at start
    with store.unit() as u:
        due = {e.event_id for e in u.events_to_poll(datetime.now(UTC), timedelta(hours=1))}
        stuck = u.event("stuck")
        assert stuck is not None and stuck.terminated_at is not None
        assert stuck.terminated_at >= before - timedelta(seconds=1)
    assert due == {"stuck", "live"}
    store.close()
