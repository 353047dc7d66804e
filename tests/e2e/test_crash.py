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

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from daemon.simulators.clock import SimClock
from daemon.simulators.harness import SimPair

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
NET = "Network Operations"
TRIGGERS = "/triggers"
IVANTI_QUERY = r"/businessobject/incidents$"
IVANTI_RECORD = r"/businessobject/incidents\("
DEADLINE = 20.0


def wait_until(
    predicate: Callable[[], bool], timeout: float = DEADLINE, what: str = "condition"
) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


class StateDB:
    """Read-only looks into the daemon's SQLite state DB while it runs (WAL mode)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        if not self.path.exists():
            return []
        try:
            with sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5) as conn:
                return list(conn.execute(sql, params))
        except sqlite3.OperationalError:  # not migrated yet
            return []

    def baseline_done(self) -> bool:
        return bool(self.rows("SELECT 1 FROM poll_state WHERE name = 'baseline_done'"))

    def ok_polls_started_after(self, when: datetime) -> int:
        stamp = when.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ")
        return len(
            self.rows(
                "SELECT id FROM cycles WHERE kind = 'poll' AND ok = 1 AND started_at > ?", stamp
            )
        )

    def actions(self) -> list[tuple[str, str, str]]:
        return [
            (str(r), str(k), str(s))
            for r, k, s in self.rows("SELECT rec_id, kind, state FROM outbox ORDER BY id")
        ]

    def pending(self) -> int:
        return len(self.rows("SELECT id FROM outbox WHERE state = 'pending'"))

    def unfinished_attempts(self) -> int:
        return len(self.rows("SELECT id FROM attempts WHERE finished_at IS NULL"))

    def attempt_outcomes(self, rec_id: str) -> list[str]:
        return [
            str(o)
            for (o,) in self.rows(
                "SELECT a.outcome FROM attempts a JOIN outbox o ON o.id = a.outbox_id "
                "WHERE o.rec_id = ? ORDER BY a.id",
                rec_id,
            )
        ]

    def changes(self, rec_id: str) -> int:
        return len(self.rows("SELECT id FROM changes WHERE rec_id = ?", rec_id))


class Daemon:
    """``python -m daemon run`` as a child process, with its output kept in a file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start {self.starts} =====\n".encode())
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "daemon", "--env-file", os.devnull, "run"],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        assert self.proc is not None and self.alive(), self.log()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self) -> int:
        assert self.proc is not None and self.alive(), self.log()
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=DEADLINE)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def cleanup(self) -> None:
        if self.proc is not None and self.alive():
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def live_sims() -> Iterator[SimPair]:
    with SimPair(clock=SimClock(frozen=False)) as pair:
        yield pair


@pytest.fixture
def daemon(live_sims: SimPair, tmp_path: Path) -> Iterator[tuple[Daemon, StateDB]]:
    db_path = tmp_path / "state.db"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("IVANTI_", "XMATTERS_", "IXM_", "CREDENTIALS_DIRECTORY"))
    }
    env.update(live_sims.daemon_env(db_path))
    env.update(
        {
            "IXM_POLL_INTERVAL": "1",
            "IXM_DELIVERY_INTERVAL": "0.2",
            "IXM_WRITEBACK_INTERVAL": "1",
            "IXM_WORKFLOW_WRITEBACK_WAIT": "0",  # the journal check stays on; no 5 s wait
            "IXM_LOG_LEVEL": "INFO",
            "XMATTERS_RATE_LIMIT": "1000",
            # short request timeouts: an attempt cut short is checked after timeout + 5 s
            "IVANTI_TIMEOUT": "2",
            "XMATTERS_TIMEOUT": "2",
            "PYTHONUNBUFFERED": "1",
        }
    )
    d = Daemon(env, tmp_path / "daemon.log")
    try:
        yield d, StateDB(db_path)
    finally:
        d.cleanup()


def started(d: Daemon, db: StateDB) -> None:
    d.start()
    wait_until(lambda: db.baseline_done() or not d.alive(), what="the baseline")
    assert d.alive(), d.log()


def trigger_log(sims: SimPair) -> list[tuple[str, str, str]]:
    return [
        (str(t["payload"].get("RecId")), str(t["payload"].get("Type")), str(t["outcome"]))
        for t in sims.xmatters.triggers()
    ]


def quiesce(d: Daemon, db: StateDB, ready: Callable[[], bool], what: str) -> None:
    """Wait for ``ready`` and an empty outbox, then for a whole poll started after
    that (anything left to happen would have happened), then stop the daemon cleanly."""
    wait_until(lambda: (ready() and db.pending() == 0) or not d.alive(), what=what)
    assert d.alive(), d.log()
    since = datetime.now(UTC)
    wait_until(lambda: db.ok_polls_started_after(since) >= 1 or not d.alive(), what="one more poll")
    assert d.terminate() == 0, d.log()
    assert db.unfinished_attempts() == 0
    assert db.pending() == 0


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
    assert states == ["done", "pending", "pending"]
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
    live_sims.ivanti.faults.inject("stall_after", IVANTI_RECORD, method="PUT", delay=10.0)
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
    assert db.actions() == [(rec, "page", "done")]
    assert trigger_log(live_sims) == [(rec, "New Incident", "created")]
    assert "stopped" in d.log()
