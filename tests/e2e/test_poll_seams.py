"""Seams of the poll: an edit in the second of a pending Assign-to-me write, the
reconcile sweep and the scope filter, a first-start baseline that is interrupted."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from daemon.config import load_settings
from daemon.service import Service
from daemon.simulators.harness import SimPair
from tests.conftest import MakeService
from tests.e2e.test_faults import (
    IVANTI_RECORD,
    change_counts,
    on_query,
    respond,
    settle,
    started,
    trigger_log,
)
from tests.e2e.test_service_run import FakeSystemd, systemd  # noqa: F401 (fixture)

pytestmark = pytest.mark.e2e

NET = "Network Operations"
DB = "Database Team"


@pytest.mark.parametrize("assignment", ["queued", "outcome-unknown"])
def test_same_second_save_while_an_assignment_is_pending(
    sims: SimPair, make_service: MakeService, assignment: str
) -> None:
    """Two saves in one second, P2 then P4, with a poll between, while the daemon's
    Assign-to-me write is queued (or sent with its answer lost): the second save is a
    person's edit, not the daemon's pending write. Priority Downgrade, the event ends."""
    svc = started(make_service, sims)
    rec = sims.ivanti.create_incident(Priority="3", OwnerTeam=NET, Category="Network")["RecId"]
    assert svc.cycle().ok
    sims.clock.advance(30)
    sims.ivanti.edit_incident(rec, Priority="2")  # the first save of second T
    svc.poll_job()
    svc.deliver_job()
    assert trigger_log(sims) == [(rec, "Priority Upgrade", "created")]
    svc.deliver_job()  # the daemon sees its page's event (the flow may run after the 202)
    respond(sims, rec, "jsmith", "Assign to me")
    svc.writeback_job()  # queues the note with Owner=jsmith, Status=Active
    if assignment == "outcome-unknown":
        sims.ivanti.faults.inject("drop_before", IVANTI_RECORD, method="PATCH|PUT")
        svc.deliver_job()  # sent; no answer: recorded on the snapshot, outcome unknown
        with svc.store.unit() as u:
            assert u.outbox_for(rec)[-1].outcome == "unknown"
    sims.ivanti.edit_incident(rec, Priority="4")  # the second save, same second T
    svc.poll_job()
    with svc.store.unit() as u:
        changes = u.changes_for(rec)
    assert [c.transition for c in changes][-1] == "Priority Downgrade"
    assert (changes[-1].prev_priority, changes[-1].priority) == ("2", "4")
    sims.clock.advance(30)
    settle(svc, sims)
    sims.clock.advance(30)
    assert svc.cycle().ok  # reads the assignment back
    assert [t[1] for t in trigger_log(sims)] == ["Priority Upgrade", "Terminate"]
    assert sims.xmatters.live_events(rec) == []
    inc = sims.ivanti.incident(rec)
    assert (inc["Priority"], inc["Owner"], inc["Status"]) == ("4", "jsmith", "Active")
    with svc.store.unit() as u:
        row = u.incident(rec)
        assert row is not None and not row.alerting
        transitions = [c.transition for c in u.changes_for(rec)]
    # the assignment read back once it landed is the daemon's own write, nothing more
    assert transitions == [None, "Priority Upgrade", "Priority Downgrade", None]


def test_reconcile_honours_the_scope_filter(sims: SimPair, make_service: MakeService) -> None:
    """An incident moved to a team out of IVANTI_SCOPE_FILTER drops out of the polls;
    the reconcile sweep finds it missing and must not judge it anyway (that paged the
    team out of scope with a Reassigned): it stops following it and ends its page."""
    svc = started(make_service, sims, IVANTI_SCOPE_FILTER="OwnerTeam ne 'Service Desk'")
    rec = sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)["RecId"]
    resolved = sims.ivanti.create_incident(Priority="1", OwnerTeam=DB)["RecId"]
    settle(svc, sims)
    assert len(sims.xmatters.live_events(rec)) == 1
    sims.clock.advance(30)
    sims.ivanti.edit_incident(rec, OwnerTeam="Service Desk")
    sims.ivanti.edit_incident(resolved, Status="Resolved")
    settle(svc, sims)  # the poll sees the resolve; the move is out of its sight
    sims.clock.advance(30)
    svc.reconcile_job()
    settle(svc, sims)
    teams = [str(t["payload"].get("OwnerTeam")) for t in sims.xmatters.triggers()]
    assert "Service Desk" not in teams
    assert sorted(trigger_log(sims)) == sorted(
        [
            (rec, "New Incident", "created"),
            (resolved, "New Incident", "created"),
            (resolved, "Terminate", "terminated_only"),
            (rec, "Terminate", "terminated_only"),
        ]
    )
    assert sims.xmatters.live_events(rec) == []
    with svc.store.unit() as u:
        changes = u.changes_for(rec)
    assert "left IVANTI_SCOPE_FILTER" in changes[-1].reason
    # Back in scope: followed again, as a first sighting.
    sims.clock.advance(30)
    sims.ivanti.edit_incident(rec, OwnerTeam=DB)
    settle(svc, sims)
    assert trigger_log(sims)[-1] == (rec, "New Incident", "created")


def test_first_start_baseline_resumes_after_a_restart(
    sims: SimPair, make_service: MakeService
) -> None:
    """The daemon dies half-way through its first-start baseline (250 incidents, 10 a
    page). Restarted, it carries on after the last page it committed instead of
    starting over; nobody is paged for what was open, while a change made while it was
    down to an incident it had already recorded, and an incident created meanwhile,
    are paged."""
    recs = sims.ivanti.bulk_create(240, Priority="3", OwnerTeam=NET)
    recs += sims.ivanti.bulk_create(10, Priority="1", OwnerTeam=DB)
    svc = make_service(IXM_PAGE_SIZE="10")

    def killed(n: int) -> None:
        if n == 13:
            raise SystemExit("killed")

    on_query(svc, killed)
    with pytest.raises(SystemExit):
        svc.poll_job()
    svc.close()
    assert len(change_counts(svc)) == 120  # twelve pages committed
    sims.clock.advance(600)  # down for ten minutes, while someone works
    sims.ivanti.edit_incident(recs[5], Priority="1")
    born = sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)["RecId"]
    again = make_service(IXM_PAGE_SIZE="10")
    filters: list[str] = []
    real = again.poller.ivanti.query_incidents

    def spy(flt: str, *args: Any, **kwargs: Any) -> Any:
        filters.append(flt)
        return real(flt, *args, **kwargs)

    again.poller.ivanti.query_incidents = spy  # type: ignore[method-assign]
    report = again.cycle()
    assert report.ok, report.error
    assert report.poll is not None and report.poll.kind == "baseline"
    # the 131 incidents after the 120th: 13 full pages and a short one that ends it
    assert report.poll.requests == 14
    with again.store.unit() as u:
        numbers = sorted(i.incident_number for i in u.list_incidents())
    assert f"IncidentNumber gt {numbers[119]}" in filters[0]
    assert change_counts(again) == {r: 1 for r in [*recs, born]}
    assert [t.kind.value for t in report.poll.transitions] == ["New Incident"]
    sims.clock.advance(30)
    settle(again, sims)
    assert sorted(trigger_log(sims)) == sorted(
        [(born, "New Incident", "created"), (recs[5], "Priority Upgrade", "created")]
    )


def test_a_poll_and_its_page_go_out_between_the_pages_of_a_reconcile(
    sims: SimPair, make_service: MakeService
) -> None:
    """The reconcile sweep holds the job lock one page at a time: a new critical
    incident is polled and paged while the sweep is still going, not after it."""
    svc = started(make_service, sims, IXM_PAGE_SIZE="10")
    sims.ivanti.bulk_create(35, Priority="3", OwnerTeam=NET)
    assert svc.cycle().ok
    sims.clock.advance(30)
    new = sims.ivanti.create_incident(Priority="1", OwnerTeam=DB)["RecId"]
    paged_during: list[bool] = []

    def between_pages() -> None:
        if paged_during:
            return
        worker = threading.Thread(target=svc.scheduled_poll, daemon=True)
        worker.start()
        worker.join(timeout=15)
        sims.settle()
        paged_during.append(len(sims.xmatters.live_events(new)) == 1)

    svc.poller.on_progress = between_pages
    report = svc.reconcile_job()
    assert report.requests == 4  # 36 open incidents, 10 a page, nothing missing
    assert paged_during == [True]
    settle(svc, sims)
    assert trigger_log(sims) == [(new, "New Incident", "created")]  # once


def test_a_long_baseline_does_not_trip_the_watchdog(
    sims: SimPair,
    tmp_path: Path,
    systemd: FakeSystemd,  # noqa: F811
) -> None:
    """A first-start baseline that takes longer than IXM_DEADMAN (no poll can finish
    before it does) still feeds the watchdog: each page it commits is progress."""
    sims.ivanti.bulk_create(200, Priority="3", OwnerTeam=NET)
    env = sims.daemon_env(tmp_path / "state.db")
    env.update(
        {
            "IXM_POLL_INTERVAL": "1",
            "IXM_DEADMAN": "3",
            "IXM_PAGE_SIZE": "10",
            "IXM_DELIVERY_INTERVAL": "0.2",
        }
    )
    svc = Service(load_settings(env, env_file=os.devnull), now=sims.clock.now)

    def slow_page(n: int) -> None:
        sims.clock.advance(1)  # each page a simulated second: 21 s for the baseline
        time.sleep(0.05)

    on_query(svc, slow_page)
    stop = threading.Event()
    thread = threading.Thread(target=svc.run, args=(stop,), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while svc.last_poll_ok is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert svc.last_poll_ok is not None  # the baseline finished
        systemd.wait_for(lambda m: any(x.startswith("READY=1") for x in m))
    finally:
        stop.set()
        thread.join(timeout=20)
        svc.close()
    messages = systemd.drain()
    assert not any("IXM_DEADMAN" in m for m in messages)
    assert messages.count("WATCHDOG=1") >= 5
