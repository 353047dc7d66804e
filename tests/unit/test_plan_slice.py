"""The settle read's slices (daemon.poller.plan_slice): sized by the versions already
read so that a slice fits beside a page's new rows, a crowded second in parts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from daemon.poller import Settle, Slice, plan_slice

T = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)


def s(n: int) -> datetime:
    return T + timedelta(seconds=n)


def test_nothing_to_settle_before_the_limit() -> None:
    assert plan_slice(s(10), None, s(10), [], 50) is None
    assert plan_slice(s(10), None, s(5), [], 50) is None


def test_a_range_holding_few_known_rows_is_one_slice() -> None:
    known = [(s(11), 1), (s(12), 2)]
    sl = plan_slice(s(10), None, s(40), known, 50)
    assert sl == Slice(s(10), s(40))
    assert sl.end() == (s(40), None)
    assert sl.expr(s(0)) == (
        "LastModDateTime ge 2026-11-27T10:00:10Z and LastModDateTime lt 2026-11-27T10:00:40Z"
    )
    assert sl.expr(s(40)) is None


def test_a_slice_ends_before_the_second_that_would_overflow_it() -> None:
    known = [(s(10), n) for n in range(30)] + [(s(12), 100 + n) for n in range(30)]
    sl = plan_slice(s(10), None, s(40), known, 50)
    assert sl == Slice(s(10), s(12))


def test_a_crowded_second_is_taken_in_parts_by_incident_number() -> None:
    known = [(s(10), 1000 + n) for n in range(51)]
    first = plan_slice(s(10), None, s(40), known, 50)
    assert first == Slice(s(10), s(11), None, 1049, partial=True)
    assert first.end() == (s(10), 1049)
    assert first.expr(s(10)) == (
        "LastModDateTime ge 2026-11-27T10:00:10Z and LastModDateTime lt 2026-11-27T10:00:11Z"
        " and IncidentNumber le 1049"
    )
    rest = plan_slice(s(10), 1049, s(40), [(s(10), 1050), (s(11), 7)], 50)
    assert rest == Slice(s(10), s(11), 1049, None, partial=True)
    assert rest.end() == (s(11), None)
    assert rest.expr(s(11)) is None


def test_settle_state_round_trips_and_defaults_to_the_cursor() -> None:
    st = Settle(s(10), 1049, s(70))
    assert Settle.loads(st.dumps(), s(0)) == st
    assert Settle.loads(None, s(3)) == Settle(s(3), None, s(3))
    assert Settle.loads("{not json", s(3)) == Settle(s(3), None, s(3))
