"""PostgreSQL: two or three replicas run ``run`` on one state DB. Exactly one holds the
leader lease and works; the others stand by. When the leader dies (kill -9), freezes
past its lease (SIGSTOP) or loses its database (a proxy the test cuts), a standby takes
over where the last commit left off, and the old leader commits nothing more when it
comes back; when the database goes away under all of them, one leads again once it is
back. Every page, termination and note once, none missing."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.lease import EX_TEMPFAIL
from daemon.simulators.harness import SimPair
from tests.e2e.daemons import (
    NET,
    TRIGGERS,
    Daemon,
    StateDB,
    daemon_env,
    quiesce,
    run_cli,
    started,
    trigger_log,
    wait_until,
)
from tests.e2e.tcpproxy import TcpProxy

pytestmark = pytest.mark.e2e

LEADS = "this replica is the leader now"


def whole_log(d: Daemon) -> str:
    """The whole log (``Daemon.log()`` is its last 4,000 characters)."""
    return d.log_path.read_text(errors="replace")


class Pair:
    def __init__(self, sims: SimPair, url: str, tmp_path: Path) -> None:
        self.env = daemon_env(sims, url, IXM_LEASE_TTL="2")
        self.a = Daemon(self.env, tmp_path / "a.log")
        self.b = Daemon(self.env, tmp_path / "b.log")
        self.db = StateDB(url)
        self.url = url

    def token(self) -> int | None:
        lease = self.db.lease()
        return lease.token if lease else None

    def start_both(self) -> None:
        """A first (it leads and takes the baseline), then B, which stands by."""
        started(self.a, self.db)
        wait_until(lambda: LEADS in self.a.log(), what="A to lead")
        self.b.start()
        wait_until(lambda: "daemon running" in self.b.log() or not self.b.alive(), what="B")
        assert self.b.alive(), self.b.log()
        assert LEADS not in self.b.log()


@pytest.fixture
def pair(live_sims: SimPair, pg_state_db_url: str, tmp_path: Path) -> Iterator[Pair]:
    p = Pair(live_sims, pg_state_db_url, tmp_path)
    try:
        yield p
    finally:
        for d in (p.a, p.b):
            if d.proc is not None and d.alive():
                d.proc.send_signal(signal.SIGCONT)
            d.cleanup()
        p.db.close()


def test_standby_refuses_nothing_but_does_nothing_and_once_is_refused(
    pair: Pair, live_sims: SimPair
) -> None:
    pair.start_both()
    once = run_cli(pair.env, "once")
    assert once.returncode == EX_TEMPFAIL, once.stderr
    assert "another replica leads this state DB" in once.stderr
    status = run_cli(pair.env, "status")
    assert status.returncode == 0 and "leader: " in status.stdout and "token 1" in status.stdout
    assert pair.b.proc is not None and pair.a.proc is not None
    (standbys,) = [line for line in status.stdout.splitlines() if line.startswith("standbys: ")]
    assert f" pid {pair.b.proc.pid} " in standbys and f" pid {pair.a.proc.pid} " not in standbys
    as_json = json.loads(run_cli(pair.env, "status", "--json").stdout)["leader"]
    assert f" pid {pair.a.proc.pid} " in as_json["holder"]
    assert [f" pid {pair.b.proc.pid} " in d["holder"] for d in as_json["standbys"]] == [True]
    rec = live_sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)["RecId"]
    wait_until(lambda: len(trigger_log(live_sims)) >= 1, what="the page")
    quiesce(pair.a, pair.db, lambda: True, "the outbox to settle")
    assert trigger_log(live_sims) == [(rec, "New Incident", "created")]
    # A stopped cleanly and gave the lease up: B takes over at its next try
    wait_until(lambda: LEADS in pair.b.log() or not pair.b.alive(), what="B to lead")
    assert pair.token() == 2
    assert pair.b.terminate() == 0


def test_kill_the_leader_mid_delivery(pair: Pair, live_sims: SimPair) -> None:
    """Three pages: the first delivered, the second in flight when the leader dies, the
    third not sent. The standby takes the lease, checks the second (xMatters acted on
    it) instead of re-sending, and sends the third."""
    pair.start_both()
    hold = live_sims.xmatters.faults.inject("latency", TRIGGERS, delay=0.7, times=3)
    recs = [
        live_sims.ivanti.create_incident(Priority="1", Owner=owner)["RecId"]
        for owner in ("jsmith", "bwong", "apatel")
    ]
    wait_until(lambda: hold.hits >= 2, what="the second trigger in flight")
    pair.a.kill9()
    wait_until(lambda: LEADS in pair.b.log() or not pair.b.alive(), what="B to take over")
    quiesce(pair.b, pair.db, lambda: len(trigger_log(live_sims)) >= 3, "the third page")
    assert sorted(trigger_log(live_sims)) == sorted((r, "New Incident", "created") for r in recs)
    assert all(len(live_sims.xmatters.live_events(r)) == 1 for r in recs)
    assert [state for _, _, state in pair.db.actions()] == ["done", "done", "done"]
    assert pair.token() == 2


def test_a_leader_frozen_past_its_lease_commits_nothing_when_it_wakes(
    pair: Pair, live_sims: SimPair
) -> None:
    """SIGSTOP with a trigger in flight, longer than the lease: B takes over and finds
    the event xMatters made; A wakes, gets its answer, and must not commit it (nor
    send anything more). Then a new incident is paged once, by B."""
    pair.start_both()
    hold = live_sims.xmatters.faults.inject("latency", TRIGGERS, delay=1.5, times=1)
    first = live_sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)["RecId"]
    wait_until(lambda: hold.hits >= 1, what="the held trigger")
    assert pair.a.proc is not None
    pair.a.proc.send_signal(signal.SIGSTOP)
    wait_until(lambda: LEADS in pair.b.log() or not pair.b.alive(), what="B to take over")
    assert pair.token() == 2
    wait_until(lambda: pair.db.pending() == 0, timeout=40, what="B to settle the page")
    pair.a.proc.send_signal(signal.SIGCONT)
    wait_until(
        lambda: "lost the leader lease" in whole_log(pair.a) or not pair.a.alive(),
        what="A to stand by",
    )
    # what A had in flight came back (or timed out) after it woke: refused, not committed
    wait_until(lambda: "fenced" in whole_log(pair.a) or not pair.a.alive(), what="A's fenced unit")
    second = live_sims.ivanti.create_incident(Priority="1", Owner="bwong")["RecId"]
    quiesce(pair.b, pair.db, lambda: len(trigger_log(live_sims)) >= 2, "the second page")
    assert sorted(trigger_log(live_sims)) == sorted(
        [(first, "New Incident", "created"), (second, "New Incident", "created")]
    )
    assert len(live_sims.xmatters.live_events(first)) == 1
    assert len(live_sims.xmatters.live_events(second)) == 1
    assert pair.db.attempt_outcomes(first) == ["unknown", "ok"]
    assert "earlier attempt had landed" in whole_log(pair.b)  # checked, not re-sent
    # B stopped cleanly and gave the lease up: A (awake, standing by) takes it
    wait_until(lambda: whole_log(pair.a).count(LEADS) == 2 or not pair.a.alive(), what="A to lead")
    assert pair.token() == 3
    assert pair.a.terminate() == 0


# ----------------------------------------------------------------- three replicas, proxied


class Replicas:
    """``n`` replicas on one PostgreSQL state DB, each through its own loopback proxy
    (so the test can take the database away from any one of them, or from all)."""

    def __init__(self, sims: SimPair, url: str, tmp_path: Path, n: int = 3) -> None:
        self.url = url
        self.db = StateDB(url)
        self.proxies: list[TcpProxy] = []
        self.daemons: list[Daemon] = []
        for i in range(n):
            proxy, through = TcpProxy.for_url(url)
            self.proxies.append(proxy)
            env = daemon_env(sims, through, IXM_LEASE_TTL="2")
            self.daemons.append(Daemon(env, tmp_path / f"{'abc'[i]}.log"))

    def token(self) -> int | None:
        lease = self.db.lease()
        return lease.token if lease else None

    def lease_expired(self) -> bool:
        """By the database's clock, read directly (not through the proxies)."""
        lease = self.db.lease()
        return lease is not None and lease.expires_at <= lease.now

    def start_all(self) -> Daemon:
        """The first leads and takes the baseline; the others stand by."""
        first, *rest = self.daemons
        started(first, self.db)
        wait_until(lambda: LEADS in first.log(), what="the first to lead")
        for d in rest:
            d.start()
        wait_until(
            lambda: all("daemon running" in d.log() or not d.alive() for d in rest),
            what="the standbys",
        )
        for d in rest:
            assert d.alive(), d.log()
            assert LEADS not in d.log()
        return first

    def leader(self) -> Daemon | None:
        """The replica holding a live lease, by the lease row (its holder names the pid)."""
        lease = self.db.lease()
        if lease is None or lease.expires_at <= lease.now:
            return None
        for d in self.daemons:
            if d.proc is not None and d.alive() and f" pid {d.proc.pid} " in lease.holder:
                return d
        return None

    def new_leader(self, among: list[Daemon], token: int = 2) -> Daemon:
        """Wait for one of ``among`` to hold the lease under ``token``."""
        wait_until(
            lambda: self.token() == token and self.leader() in among, what="a replica to take over"
        )
        new = self.leader()
        assert new is not None
        return new

    def close(self) -> None:
        for d in self.daemons:
            if d.proc is not None and d.alive():
                d.proc.send_signal(signal.SIGCONT)
            d.cleanup()
        for p in self.proxies:
            p.close()
        self.db.close()


@pytest.fixture
def three(live_sims: SimPair, pg_state_db_url: str, tmp_path: Path) -> Iterator[Replicas]:
    r = Replicas(live_sims, pg_state_db_url, tmp_path, 3)
    try:
        yield r
    finally:
        r.close()


def _event_of(sims: SimPair, rec: str) -> str:
    wait_until(lambda: len(sims.xmatters.live_events(rec)) == 1, what=f"the event of {rec}")
    return str(sims.xmatters.live_events(rec)[0]["id"])


def pages(sims: SimPair) -> list[tuple[str, str, str]]:
    return [t for t in trigger_log(sims) if t[1] != "Terminate"]


NOTE = "[xMatters] Ben Wong | Mobile App responded [ Escalate ] with comment [ 1 ]"


def test_three_replicas_kill_the_leader_mid_delivery(three: Replicas, live_sims: SimPair) -> None:
    """As with two, with two standbys racing for the lease: exactly one takes it."""
    a = three.start_all()
    hold = live_sims.xmatters.faults.inject("latency", TRIGGERS, delay=0.7, times=3)
    recs = [
        live_sims.ivanti.create_incident(Priority="1", Owner=owner)["RecId"]
        for owner in ("jsmith", "bwong", "apatel")
    ]
    wait_until(lambda: hold.hits >= 2, what="the second trigger in flight")
    a.kill9()
    standbys = three.daemons[1:]
    new = three.new_leader(standbys)
    quiesce(new, three.db, lambda: len(trigger_log(live_sims)) >= 3, "the third page")
    assert sorted(trigger_log(live_sims)) == sorted((r, "New Incident", "created") for r in recs)
    assert all(len(live_sims.xmatters.live_events(r)) == 1 for r in recs)
    assert [state for _, _, state in three.db.actions()] == ["done", "done", "done"]
    # the one in flight when A died was checked, not re-sent (the pages go out in any order)
    outcomes = sorted(three.db.attempt_outcomes(r) for r in recs)
    assert outcomes == [["ok"], ["ok"], ["unknown", "ok"]]
    assert "earlier attempt had landed" in whole_log(new)
    # explain names the replica that made each attempt: A the cut-short one, the new
    # leader the check that found it landed
    (checked,) = [r for r in recs if len(three.db.attempt_outcomes(r)) == 2]
    story = run_cli(new.env, "explain", checked)
    assert story.returncode == 0, story.stderr
    assert f"by {socket.gethostname()} pid {a.proc.pid} " in story.stdout, story.stdout
    assert f"by {socket.gethostname()} pid {new.proc.pid} " in story.stdout, story.stdout


@pytest.mark.parametrize("how", ["cut", "blackhole"])
def test_the_leader_loses_its_database(three: Replicas, live_sims: SimPair, how: str) -> None:
    """A's connection to PostgreSQL is lost with a trigger in flight (xMatters acts on
    it): reset and refused (``cut``), or silently, nothing passing either way
    (``blackhole``, a partition). While A is cut off a response and a resolve come in.
    A standby takes the lease, finds the in-flight page landed (not re-sent), writes
    the note and ends the first page; when A's connection is back it stands by and
    commits nothing."""
    a = three.start_all()
    first = live_sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)["RecId"]
    event = _event_of(live_sims, first)
    hold = live_sims.xmatters.faults.inject("latency", TRIGGERS, delay=1.5, times=1)
    second = live_sims.ivanti.create_incident(Priority="1", Owner="bwong")["RecId"]
    wait_until(lambda: hold.hits >= 1, what="the held trigger")
    if how == "cut":
        three.proxies[0].cut()
    else:
        three.proxies[0].blackhole()
    live_sims.xmatters.respond(event, person="bwong", response="Escalate", comment="1")
    live_sims.ivanti.edit_incident(first, Status="Resolved")
    standbys = three.daemons[1:]
    new = three.new_leader(standbys)
    wait_until(
        lambda: (
            len(live_sims.xmatters.terminations()) >= 1
            and len(live_sims.ivanti.notes(first)) >= 1
            and three.db.pending() == 0
        ),
        timeout=40,
        what="the new leader to settle the page, the note and the termination",
    )
    three.proxies[0].restore()
    wait_until(
        lambda: "lost the leader lease" in whole_log(a) or not a.alive(), what="A to stand by"
    )
    assert a.alive(), a.log()
    third = live_sims.ivanti.create_incident(Priority="1", Owner="apatel")["RecId"]
    quiesce(new, three.db, lambda: len(pages(live_sims)) >= 3, "the third page")
    assert sorted(pages(live_sims)) == sorted(
        (r, "New Incident", "created") for r in (first, second, third)
    )
    assert [t["rec_id"] for t in live_sims.xmatters.terminations()] == [first]
    assert len(trigger_log(live_sims)) == 4  # the three pages and one termination
    assert [n["NotesBody"] for n in live_sims.ivanti.notes(first)] == [NOTE]
    assert live_sims.ivanti.notes(second) == [] and live_sims.ivanti.notes(third) == []
    assert len(live_sims.xmatters.live_events(second)) == 1
    assert len(live_sims.xmatters.live_events(third)) == 1
    assert three.db.attempt_outcomes(second) == ["unknown", "ok"]
    assert "earlier attempt had landed" in whole_log(new)
    assert sorted((k, st) for _, k, st in three.db.actions()) == sorted(
        [("page", "done")] * 3 + [("terminate", "done"), ("note", "done")]
    )


def test_the_database_goes_away_under_every_replica(three: Replicas, live_sims: SimPair) -> None:
    """Every connection is reset and refused for longer than the lease, with a trigger
    in flight, as in a database restart; meanwhile a response comes in. When the
    database is back, exactly one replica leads (a new token), the in-flight page is
    checked, not re-sent, and the note is written once."""
    three.start_all()
    first = live_sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)["RecId"]
    event = _event_of(live_sims, first)
    hold = live_sims.xmatters.faults.inject("latency", TRIGGERS, delay=1.0, times=1)
    second = live_sims.ivanti.create_incident(Priority="1", Owner="bwong")["RecId"]
    wait_until(lambda: hold.hits >= 1, what="the held trigger")
    for p in three.proxies:
        p.cut()
    live_sims.xmatters.respond(event, person="bwong", response="Escalate", comment="1")
    wait_until(lambda: len(trigger_log(live_sims)) >= 2, what="xMatters to act on the held one")
    wait_until(
        lambda: (
            all("cannot reach the state DB" in whole_log(d) for d in three.daemons)
            and three.lease_expired()
        ),
        what="every replica to notice, and the lease to run out",
    )
    for p in three.proxies:
        p.restore()
    new = three.new_leader(three.daemons)
    third = live_sims.ivanti.create_incident(Priority="1", Owner="apatel")["RecId"]
    quiesce(
        new,
        three.db,
        lambda: len(trigger_log(live_sims)) >= 3 and len(live_sims.ivanti.notes(first)) >= 1,
        "the third page and the note",
    )
    assert sorted(trigger_log(live_sims)) == sorted(
        (r, "New Incident", "created") for r in (first, second, third)
    )
    assert [n["NotesBody"] for n in live_sims.ivanti.notes(first)] == [NOTE]
    assert all(len(live_sims.xmatters.live_events(r)) == 1 for r in (first, second, third))
    assert three.db.attempt_outcomes(second) == ["unknown", "ok"]
    assert sorted((k, st) for _, k, st in three.db.actions()) == sorted(
        [("page", "done")] * 3 + [("note", "done")]
    )


def test_the_database_restarts(three: Replicas, live_sims: SimPair) -> None:
    """A real restart of the PostgreSQL cluster (``pg_ctl restart -m fast``: every
    session ended, connections refused until it is back) with a trigger in flight and
    a response coming in. Afterwards one replica leads and everything happens once."""
    restart = os.environ.get("IXM_TEST_POSTGRES_RESTART")
    if not restart:
        pytest.skip("needs the throwaway cluster of ./dev test --postgres")
    three.start_all()
    first = live_sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)["RecId"]
    event = _event_of(live_sims, first)
    hold = live_sims.xmatters.faults.inject("latency", TRIGGERS, delay=1.0, times=1)
    second = live_sims.ivanti.create_incident(Priority="1", Owner="bwong")["RecId"]
    wait_until(lambda: hold.hits >= 1, what="the held trigger")
    done = subprocess.run(shlex.split(restart), capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    live_sims.xmatters.respond(event, person="bwong", response="Escalate", comment="1")
    third = live_sims.ivanti.create_incident(Priority="1", Owner="apatel")["RecId"]
    wait_until(
        lambda: (
            len(pages(live_sims)) >= 3
            and len(live_sims.ivanti.notes(first)) >= 1
            and three.db.pending() == 0
        ),
        timeout=40,
        what="the third page and the note",
    )
    leader = three.leader()
    assert leader is not None, [d.log() for d in three.daemons]
    quiesce(leader, three.db, lambda: True, "the outbox to settle")
    assert sorted(pages(live_sims)) == sorted(
        (r, "New Incident", "created") for r in (first, second, third)
    )
    assert [n["NotesBody"] for n in live_sims.ivanti.notes(first)] == [NOTE]
    assert all(len(live_sims.xmatters.live_events(r)) == 1 for r in (first, second, third))
    assert sorted((k, st) for _, k, st in three.db.actions()) == sorted(
        [("page", "done")] * 3 + [("note", "done")]
    )
