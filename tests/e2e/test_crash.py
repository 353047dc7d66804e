"""Crash tests: the daemon as a real process, killed with SIGKILL at each step of a cycle.

The simulators run in this process on a clock that follows real time; the daemon
runs as ``python -m daemon run`` against them with short intervals. Each test holds
one request with a fault, kills the daemon while it waits, restarts it, and checks
the outcome is the one an uninterrupted run would have had: exactly one event per
qualifying change, no note twice, no attempt left unfinished.

Waiting is always for a condition (a fault's hit count, a row in the state DB, a
trigger in the simulator) with a deadline, never a bare sleep.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.simulators.harness import SimPair
from tests.e2e.daemons import (
    IVANTI_QUERY,
    IVANTI_RECORD,
    NET,
    TRIGGERS,
    Daemon,
    StateDB,
    daemon_env,
    quiesce,
    started,
    trigger_log,
    wait_until,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def daemon(
    live_sims: SimPair, tmp_path: Path, state_db_url: str
) -> Iterator[tuple[Daemon, StateDB]]:
    d = Daemon(daemon_env(live_sims, state_db_url), tmp_path / "daemon.log")
    db = StateDB(state_db_url)
    try:
        yield d, db
    finally:
        d.cleanup()
        db.close()


def test_kill_while_fetching_changes(daemon: tuple[Daemon, StateDB], live_sims: SimPair) -> None:
    d, db = daemon
    started(d, db)
    hold = live_sims.ivanti.faults.inject("latency", IVANTI_QUERY, method="GET", delay=3.0)
    rec = live_sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)["RecId"]
    wait_until(lambda: hold.hits >= 1, what="the held Ivanti query")
    d.kill9()
    assert db.changes(rec) == 0 and live_sims.xmatters.triggers() == []
    d.start()
    quiesce(d, db, lambda: len(trigger_log(live_sims)) >= 1, "the page")
    assert trigger_log(live_sims) == [(rec, "New Incident", "created")]
    assert db.changes(rec) == 1
    assert db.actions() == [(rec, "page", "done")]


def test_kill_after_commit_before_the_peer_acted(
    daemon: tuple[Daemon, StateDB], live_sims: SimPair
) -> None:
    """The page is committed and its attempt started; the trigger never acts."""
    d, db = daemon
    started(d, db)
    hold = live_sims.xmatters.faults.inject("timeout", TRIGGERS, delay=5.0)
    rec = live_sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)["RecId"]
    wait_until(lambda: hold.hits >= 1, what="the held trigger")
    d.kill9()
    assert db.actions() == [(rec, "page", "pending")]
    assert db.unfinished_attempts() == 1
    d.start()
    quiesce(d, db, lambda: len(trigger_log(live_sims)) >= 1, "the page")
    assert trigger_log(live_sims) == [(rec, "New Incident", "created")]
    assert db.attempt_outcomes(rec) == ["unknown", "ok"]
    assert len(live_sims.xmatters.live_events(rec)) == 1


def test_kill_while_the_peer_is_still_acting_then_restart_at_once(
    daemon: tuple[Daemon, StateDB], live_sims: SimPair
) -> None:
    """The daemon dies with a trigger in flight that xMatters acts on only later, and is
    back before that: it must wait for the request's lifetime before checking, or its
    check finds nothing and pages twice."""
    d, db = daemon
    started(d, db)
    hold = live_sims.xmatters.faults.inject("latency", TRIGGERS, delay=4.0)
    rec = live_sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)["RecId"]
    wait_until(lambda: hold.hits >= 1, what="the held trigger")
    d.kill9()
    d.start()  # back while xMatters has not acted yet
    assert trigger_log(live_sims) == []
    quiesce(d, db, lambda: len(trigger_log(live_sims)) >= 1, "the page")
    assert trigger_log(live_sims) == [(rec, "New Incident", "created")]
    assert len(live_sims.xmatters.live_events(rec)) == 1
    assert db.attempt_outcomes(rec) == ["unknown", "ok"]


def test_kill_in_the_middle_of_delivery(daemon: tuple[Daemon, StateDB], live_sims: SimPair) -> None:
    """Three pages queued: the first delivered, the second in flight, the third not sent."""
    d, db = daemon
    started(d, db)
    hold = live_sims.xmatters.faults.inject("latency", TRIGGERS, delay=0.7, times=3)
    recs = [
        live_sims.ivanti.create_incident(Priority="1", Owner=owner)["RecId"]
        for owner in ("jsmith", "bwong", "apatel")
    ]
    wait_until(lambda: hold.hits >= 2, what="the second trigger in flight")
    # the first was answered and recorded before the second went out (one at a time);
    # the second is held before acting, and xMatters still acts after the daemon died
    d.kill9()
    wait_until(lambda: len(trigger_log(live_sims)) == 2, what="xMatters to act on the second")
    states = [state for _, _, state in db.actions()]
    # with asynchronous flows the first, accepted, still waited for its event
    first = "pending" if live_sims.xmatters.flow_delay else "done"
    assert states == [first, "pending", "pending"]
    d.start()
    quiesce(d, db, lambda: len(trigger_log(live_sims)) >= 3, "the third page")
    assert sorted(trigger_log(live_sims)) == sorted((r, "New Incident", "created") for r in recs)
    assert all(len(live_sims.xmatters.live_events(r)) == 1 for r in recs)
    assert [state for _, _, state in db.actions()] == ["done", "done", "done"]


def test_kill_after_the_peer_accepted_before_the_outbox_was_marked(
    daemon: tuple[Daemon, StateDB], live_sims: SimPair
) -> None:
    d, db = daemon
    started(d, db)
    live_sims.xmatters.faults.inject("stall_after", TRIGGERS, delay=10.0)
    rec = live_sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)["RecId"]
    wait_until(lambda: len(trigger_log(live_sims)) == 1, what="xMatters to accept the trigger")
    d.kill9()
    assert db.actions() == [(rec, "page", "pending")]
    d.start()
    quiesce(d, db, lambda: True, "the outbox to settle")
    assert trigger_log(live_sims) == [(rec, "New Incident", "created")]
    assert db.attempt_outcomes(rec) == ["unknown", "ok"]
    assert len(live_sims.xmatters.live_events(rec)) == 1


def test_kill_after_ivanti_accepted_a_note(
    daemon: tuple[Daemon, StateDB], live_sims: SimPair
) -> None:
    d, db = daemon
    started(d, db)
    rec = live_sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)["RecId"]
    wait_until(lambda: len(live_sims.xmatters.live_events(rec)) == 1, what="the event")
    live_sims.ivanti.faults.inject("stall_after", IVANTI_RECORD, method="PATCH|PUT", delay=10.0)
    (event,) = live_sims.xmatters.live_events(rec)
    live_sims.xmatters.respond(event["id"], person="bwong", response="Escalate", comment="1")
    wait_until(lambda: len(live_sims.ivanti.notes(rec)) == 1, what="Ivanti to take the note")
    d.kill9()
    d.start()
    quiesce(d, db, lambda: True, "the outbox to settle")
    notes = [n["NotesBody"] for n in live_sims.ivanti.notes(rec)]
    assert notes == ["[xMatters] Ben Wong | Mobile App responded [ Escalate ] with comment [ 1 ]"]
    assert db.actions() == [(rec, "page", "done"), (rec, "note", "done")]
    assert trigger_log(live_sims) == [(rec, "New Incident", "created")]


def test_sigterm_finishes_the_step_and_exits_0(
    daemon: tuple[Daemon, StateDB], live_sims: SimPair
) -> None:
    d, db = daemon
    started(d, db)
    hold = live_sims.xmatters.faults.inject("latency", TRIGGERS, delay=1.0)
    rec = live_sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)["RecId"]
    wait_until(lambda: hold.hits >= 1, what="the held trigger")
    assert d.terminate() == 0, d.log()
    assert db.unfinished_attempts() == 0
    # accepted; with an asynchronous flow its event was not seen before the stop
    assert db.actions() == [(rec, "page", "pending" if live_sims.xmatters.flow_delay else "done")]
    assert trigger_log(live_sims) == [(rec, "New Incident", "created")]
    assert "stopped" in d.log()
