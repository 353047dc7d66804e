"""PostgreSQL: two replicas run ``run`` on one state DB. Exactly one holds the leader
lease and works; the other stands by. When the leader dies (kill -9) or freezes past
its lease (SIGSTOP) the standby takes over where the last commit left off, and a
frozen leader that wakes up commits nothing more: every page once, none missing."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.lease import EX_TEMPFAIL
from daemon.simulators.harness import SimPair
from daemon.store import Store
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

pytestmark = pytest.mark.e2e

LEADS = "this replica is the leader now"


class Pair:
    def __init__(self, sims: SimPair, url: str, tmp_path: Path) -> None:
        self.env = daemon_env(sims, url, IXM_LEASE_TTL="2")
        self.a = Daemon(self.env, tmp_path / "a.log")
        self.b = Daemon(self.env, tmp_path / "b.log")
        self.db = StateDB(url)
        self.url = url

    def token(self) -> int | None:
        store = Store(self.url, migrate=False)
        try:
            lease = store.read_lease()
            return lease.token if lease else None
        finally:
            store.close()

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
        lambda: "lost the leader lease" in pair.a.log() or not pair.a.alive(), what="A to stand by"
    )
    # what A had in flight came back (or timed out) after it woke: refused, not committed
    wait_until(lambda: "fenced" in pair.a.log() or not pair.a.alive(), what="A's fenced unit")
    second = live_sims.ivanti.create_incident(Priority="1", Owner="bwong")["RecId"]
    quiesce(pair.b, pair.db, lambda: len(trigger_log(live_sims)) >= 2, "the second page")
    assert sorted(trigger_log(live_sims)) == sorted(
        [(first, "New Incident", "created"), (second, "New Incident", "created")]
    )
    assert len(live_sims.xmatters.live_events(first)) == 1
    assert len(live_sims.xmatters.live_events(second)) == 1
    assert pair.db.attempt_outcomes(first) == ["unknown", "ok"]
    assert "earlier attempt had landed" in pair.b.log()  # checked, not re-sent
    # B stopped cleanly and gave the lease up: A (awake, standing by) takes it
    wait_until(lambda: pair.a.log().count(LEADS) == 2 or not pair.a.alive(), what="A to lead")
    assert pair.token() == 3
    assert pair.a.terminate() == 0
