"""The page's bulk writes (``store._bulk``): one driver executemany of a statement
compiled once, on both backends. What they store must be what Core's own execute
stores, ids must come back in order and never collide with ids the ORM takes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.dialects import postgresql, sqlite

import daemon.snapshot as snapshot_module
from daemon.domain import Policy, Snapshot
from daemon.models import Change, UTCDateTime
from daemon.snapshot import snapshot_to_json
from daemon.store import Store, Unit

NOW = datetime(2026, 11, 27, 10, 0, 0, 250_000, tzinfo=UTC)


def _change(n: int, **extra: object) -> dict[str, object]:
    row: dict[str, object] = {
        "cycle_id": None,
        "rec_id": f"REC{n:029d}",
        "incident_number": n,
        "seen_at": NOW,
        "last_mod": NOW - timedelta(seconds=n),
        "last_mod_by": "someone",
        "prev_status": None,
        "status": "Active",
        "prev_priority": None,
        "priority": "3",
        "prev_owner_team": None,
        "owner_team": "Network",
        "prev_owner": None,
        "owner": "",
        "transition": None,
        "reason": f"change {n}",
        "source": "poll",
    }
    row.update(extra)
    return row


def _snap(n: int, status: str = "Active") -> Snapshot:
    return Snapshot(
        rec_id=f"REC{n:029d}",
        incident_number=n,
        status=status,
        priority="3",
        owner="",
        owner_team="Network",
        last_mod=NOW + timedelta(seconds=n),
        payload_fields={"Subject": f"subject {n}"},
    )


def test_change_ids_come_back_in_order_and_follow_the_orm_s(state_db_url: str) -> None:
    store = Store(state_db_url)
    with store.unit() as u:
        first = u.insert_changes([_change(n) for n in range(5)])
    with store.unit() as u:
        orm = u.add_change(Change(**_change(5)), need_id=True).id  # the table's own default
    with store.unit() as u:
        second = u.insert_changes([_change(n) for n in range(6, 9)])
    assert first == sorted(first) and second == sorted(second)
    assert len({*first, orm, *second}) == 9
    assert max(first) < orm < min(second)
    with store.unit() as u:  # (a rollback would expire what it read)
        stored = {c.id: c for c in u.changes_since(0)}
    for i, n in zip(first + second, [*range(5), *range(6, 9)], strict=True):
        assert stored[i].reason == f"change {n}"
        assert stored[i].last_mod == NOW - timedelta(seconds=n)
        assert stored[i].seen_at == NOW
    store.close()


def test_an_update_sets_the_columns_given_and_no_other(state_db_url: str) -> None:
    store = Store(state_db_url)
    policy = Policy()
    with store.unit() as u:
        u.insert_incidents(
            [
                {
                    **Unit.snapshot_values(_snap(n), policy, NOW),
                    "rec_id": _snap(n).rec_id,
                    "first_seen_at": NOW,
                    "baseline": True,
                    "alerting": n == 1,
                }
                for n in range(3)
            ]
        )
    later = NOW + timedelta(minutes=5)
    with store.unit() as u:
        u.update_incidents(
            [
                {
                    "rec_id": _snap(0).rec_id,
                    **Unit.snapshot_values(_snap(0, "Resolved"), policy, later),
                },
                {"rec_id": _snap(1).rec_id, "alerting": False},
            ]
        )
    with store.unit() as u:  # (a rollback would expire what it read)
        rows = {i.rec_id: i for i in u.list_incidents()}
    zero, one, two = (rows[_snap(n).rec_id] for n in range(3))
    assert (zero.status, zero.status_class, zero.updated_at) == ("Resolved", "resolved", later)
    assert zero.snapshot["status"] == "Resolved"
    assert (zero.alerting, zero.baseline, zero.first_seen_at) == (False, True, NOW)
    assert (one.alerting, one.status, one.updated_at) == (False, "Active", NOW)
    assert (two.status, two.updated_at, two.alerting) == ("Active", NOW, False)
    store.close()


def test_snapshots_read_back_as_written_by_either_path(state_db_url: str) -> None:
    """A snapshot the bulk writes store as text is the JSON the ORM reads, and one the
    ORM stores is read by ``incident_states``, whether remembered or decoded."""
    store = Store(state_db_url)
    policy = Policy()
    bulk, orm = _snap(1), _snap(2, "Waiting")
    with store.unit() as u:
        u.insert_incidents(
            [
                {
                    **Unit.snapshot_values(bulk, policy, NOW),
                    "rec_id": bulk.rec_id,
                    "first_seen_at": NOW,
                    "baseline": False,
                    "alerting": False,
                }
            ]
        )
        u.save_snapshot(orm, policy, NOW)
    for forget in (False, True):
        if forget:
            snapshot_module._TEXTS.clear()
        with store.unit() as u:
            states = u.incident_states([bulk.rec_id, orm.rec_id, "NOT" + "0" * 29])
            rows = {i.rec_id: i for i in u.list_incidents()}
        assert set(states) == {bulk.rec_id, orm.rec_id}
        assert states[bulk.rec_id].snapshot == bulk and states[orm.rec_id].snapshot == orm
        assert rows[bulk.rec_id].snapshot == snapshot_to_json(bulk)
        assert Unit.snapshot_of(rows[bulk.rec_id]) == bulk
    store.close()


def test_inserted_actions_take_the_column_defaults_in_order(state_db_url: str) -> None:
    store = Store(state_db_url)
    rows = [
        Unit.action_values(
            rec_id=f"REC{n:029d}",
            incident_number=n,
            kind="page",
            payload={"n": n},
            reason=f"action {n}",
            now=NOW,
        )
        for n in range(4)
    ]
    with store.unit() as u:
        u.insert_actions(rows)
    with store.unit() as u:  # (a rollback would expire what it read)
        stored = sorted(u.outbox(), key=lambda a: a.id)
    assert [a.reason for a in stored] == [f"action {n}" for n in range(4)]
    assert all(a.unsettled is False and a.requeues == 0 for a in stored)
    assert [a.payload for a in stored] == [{"n": n} for n in range(4)]
    assert all(a.created_at == NOW and a.state == "pending" for a in stored)
    store.close()


@given(
    st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=-7)), timezone(timedelta(hours=13))]
        ),
    )
)
def test_sqlite_times_are_stored_as_sqlalchemy_s_datetime_stores_them(value: datetime) -> None:
    """``UTCDateTime`` formats SQLite's text itself (one step, not a dict a value): the
    text is the one SQLAlchemy's own SQLite DATETIME makes of the naive UTC value."""
    dialect = sqlite.dialect()
    ours = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    theirs = sqlite.DATETIME().bind_processor(dialect)
    assert ours is not None and theirs is not None
    assert ours(value) == theirs(value.astimezone(UTC).replace(tzinfo=None))


def test_a_naive_time_is_refused_on_either_dialect() -> None:
    """A datetime without a zone is a bug upstream (whose local time?): it is never stored."""
    for dialect in (sqlite.dialect(), postgresql.dialect()):
        with pytest.raises(ValueError, match="naive datetime"):
            UTCDateTime().process_bind_param(datetime(2026, 1, 1), dialect)
