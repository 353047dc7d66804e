"""The daemon's main job end to end: Ivanti simulator -> daemon -> xMatters simulator."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from daemon.models import Change, OutboxAction
from daemon.simulators.harness import SimPair
from tests.conftest import MakeService

pytestmark = pytest.mark.e2e

NET = "Network Operations"
DB = "Database Team"


def tick(sims: SimPair, seconds: float = 30) -> None:
    sims.clock.advance(seconds)


def started(make_service: MakeService, sims: SimPair, **env: str) -> Any:
    """A daemon that has taken its (empty) baseline."""
    svc = make_service(**env)
    report = svc.cycle()
    assert report.ok, report.error
    assert report.poll is not None and report.poll.kind == "baseline"
    tick(sims)
    return svc


def created(sims: SimPair) -> list[dict[str, Any]]:
    """The triggers whose flow created an event, once the flows have had time to run."""
    sims.settle()
    return [t for t in sims.xmatters.triggers() if t.get("outcome") == "created"]


def trigger_types(sims: SimPair) -> list[str]:
    return [str(t["payload"].get("Type")) for t in sims.xmatters.triggers()]


def test_all_eight_transitions_drive_xmatters(sims: SimPair, make_service: MakeService) -> None:
    svc = started(make_service, sims)
    inc = sims.ivanti.create_incident(Priority="1", OwnerTeam=NET, Subject="Core switch down")
    rec = inc["RecId"]
    steps: list[tuple[dict[str, str], str]] = [
        ({}, "New Incident"),
        ({"OwnerTeam": DB}, "Reassigned"),
        ({"Priority": "4"}, "Terminate"),  # Priority Downgrade
        ({"Priority": "2"}, "Priority Upgrade"),
        ({"Status": "Resolved"}, "Terminate"),  # Resolved
        ({"Status": "Active", "Owner": "apatel", "Category": "Network"}, "Reopened"),
        ({"Status": "Closed"}, "Terminate"),  # Closed
    ]
    expected_kinds = [
        "New Incident",
        "Reassigned",
        "Priority Downgrade",
        "Priority Upgrade",
        "Resolved",
        "Reopened",
        "Closed",
    ]
    for fields, _ in steps:
        if fields:
            sims.ivanti.edit_incident(rec, **fields)
        report = svc.cycle()
        assert report.ok, report.error
        tick(sims)
    assert trigger_types(sims) == [t for _, t in steps]
    # a second incident for the eighth use case
    other = sims.ivanti.create_incident(Priority="2", OwnerTeam=NET)
    svc.cycle()
    tick(sims)
    sims.ivanti.edit_incident(other["RecId"], Status="Cancelled")
    svc.cycle()
    with svc.store.unit() as u:
        kinds = [
            c.transition for c in u.s.scalars(select(Change).order_by(Change.id)) if c.transition
        ]
    assert kinds == [*expected_kinds, "New Incident", "Canceled"]
    # the workflow superseded and terminated: nothing of the first incident is live
    sims.settle()
    assert sims.xmatters.live_events(rec) == []
    assert sims.xmatters.live_events(other["RecId"]) == []
    # recipients follow the original: Owner (person) when set, else Owner Team (group)
    reopened = next(t for t in sims.xmatters.triggers() if t["payload"].get("Type") == "Reopened")
    assert reopened["payload"]["Owner"] == "apatel"
    ev = sims.xmatters.events(rec)[-1]
    assert [r["targetName"] for r in ev["recipients"]["data"]] == ["apatel"]


def test_non_critical_changes_page_nobody(sims: SimPair, make_service: MakeService) -> None:
    svc = started(make_service, sims)
    inc = sims.ivanti.create_incident(Priority="3", OwnerTeam=NET)
    svc.cycle()
    tick(sims)
    sims.ivanti.edit_incident(inc["RecId"], OwnerTeam=DB)
    sims.ivanti.edit_incident(inc["RecId"], Status="Resolved", CauseCode="x", Resolution="y")
    svc.cycle()
    assert sims.xmatters.triggers() == []
    with svc.store.unit() as u:
        reasons = [c.reason for c in u.changes_for(inc["RecId"])]
    assert any("not critical" in r for r in reasons)


def test_several_changes_in_one_interval(sims: SimPair, make_service: MakeService) -> None:
    svc = started(make_service, sims)
    a = sims.ivanti.create_incident(Priority="3", OwnerTeam=NET)
    b = sims.ivanti.create_incident(Priority="3", OwnerTeam=NET)
    c = sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)
    svc.cycle()
    assert trigger_types(sims) == ["New Incident"]  # only c is critical
    tick(sims)
    # a: upgraded and reassigned in one interval -> one page, not two
    sims.ivanti.edit_incident(a["RecId"], Priority="1")
    sims.ivanti.edit_incident(a["RecId"], OwnerTeam=DB)
    # b: upgraded then resolved in one interval -> a terminal state wins: nobody paged
    sims.ivanti.edit_incident(b["RecId"], Priority="1")
    sims.ivanti.edit_incident(b["RecId"], Status="Resolved")
    # c: created critical earlier; now downgraded then back up within one interval: no change
    sims.ivanti.edit_incident(c["RecId"], Priority="4")
    sims.ivanti.edit_incident(c["RecId"], Priority="1")
    svc.cycle()
    assert trigger_types(sims) == ["New Incident", "Priority Upgrade"]
    assert sims.xmatters.triggers()[-1]["payload"]["RecId"] == a["RecId"]
    assert sims.xmatters.triggers()[-1]["payload"]["OwnerTeam"] == DB


def test_created_and_resolved_between_polls_pages_nobody(
    sims: SimPair, make_service: MakeService
) -> None:
    svc = started(make_service, sims)
    inc = sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)
    sims.ivanti.edit_incident(inc["RecId"], Status="Resolved")
    svc.cycle()
    assert sims.xmatters.triggers() == []


def test_burst_of_250_sharing_one_timestamp(sims: SimPair, make_service: MakeService) -> None:
    svc = started(make_service, sims)
    teams = [f"{NET}", DB, "Service Desk"]
    recs = [
        sims.ivanti.create_incident(Priority="1", OwnerTeam=teams[i % 3])["RecId"]
        for i in range(250)
    ]
    stamps = {sims.ivanti.incident(r)["LastModDateTime"] for r in recs}
    assert len(stamps) == 1  # frozen clock: all share one LastModDateTime
    report = svc.cycle()
    assert report.ok, report.error
    assert report.poll is not None
    with svc.store.unit() as u:
        pages = u.s.scalars(select(OutboxAction).where(OutboxAction.kind == "page")).all()
        assert sorted(a.rec_id for a in pages) == sorted(recs)  # none lost, none doubled
    # flood control: at most 4 alerts a minute per recipient reach xMatters; the rest wait
    assert len(created(sims)) == 12
    assert sims.xmatters.suppressions() == []
    for _ in range(100):
        tick(sims, 61)
        svc.deliver_job()
        if len(created(sims)) == 250:
            break
    assert sorted(t["payload"]["RecId"] for t in created(sims)) == sorted(recs)
    assert sims.xmatters.suppressions() == []


def test_first_start_takes_a_baseline(sims: SimPair, make_service: MakeService) -> None:
    sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)
    low = sims.ivanti.create_incident(Priority="4", OwnerTeam=NET)
    sims.ivanti.create_incident(Priority="1", OwnerTeam=DB, Status="Resolved")
    svc = make_service()
    report = svc.cycle()
    assert report.poll is not None and report.poll.kind == "baseline"
    assert sims.xmatters.triggers() == []
    tick(sims)
    sims.ivanti.edit_incident(low["RecId"], Priority="2")  # a later change pages as usual
    svc.cycle()
    assert trigger_types(sims) == ["Priority Upgrade"]


def test_baseline_option_pages_open_critical(sims: SimPair, make_service: MakeService) -> None:
    crit = sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)
    sims.ivanti.create_incident(Priority="4", OwnerTeam=NET)
    svc = make_service(IXM_BASELINE_PAGE_CRITICAL="true")
    svc.cycle()
    assert [t["payload"]["RecId"] for t in created(sims)] == [crit["RecId"]]


def test_restart_between_detection_and_delivery(sims: SimPair, make_service: MakeService) -> None:
    svc = started(make_service, sims)
    sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)
    svc.poll_job()  # detected and committed, not delivered
    svc.close()
    assert sims.xmatters.triggers() == []
    again = make_service()
    report = again.cycle()
    assert report.ok
    assert len(created(sims)) == 1
    again.cycle()
    assert len(created(sims)) == 1


def test_dropped_connection_after_xmatters_accepted(
    sims: SimPair, make_service: MakeService
) -> None:
    svc = started(make_service, sims)
    inc = sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)
    sims.xmatters.faults.inject("drop_after", "/triggers")
    svc.cycle()
    assert len(created(sims)) == 1  # xMatters made the event; the daemon got no answer
    with svc.store.unit() as u:
        action = u.outbox_for(inc["RecId"])[0]
        assert action.state == "pending" and action.outcome == "unknown"
    for _ in range(5):
        tick(sims, 120)
        svc.cycle()
    assert len(sims.xmatters.triggers()) == 1  # checked, found, never re-sent
    with svc.store.unit() as u:
        action = u.outbox_for(inc["RecId"])[0]
        assert action.state == "done"
        assert "landed" in (action.outcome or "")
        assert [e.event_id for e in u.events_for(inc["RecId"])] == [
            e["id"] for e in sims.xmatters.events(inc["RecId"])
        ]


def test_5xx_and_429_are_retried_with_backoff(sims: SimPair, make_service: MakeService) -> None:
    svc = started(make_service, sims)
    inc = sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)
    sims.xmatters.faults.inject("status", "/triggers", status=503)
    svc.cycle()
    assert created(sims) == []
    sims.xmatters.faults.inject("status", "/triggers", status=429, retry_after=30)
    for _ in range(10):
        tick(sims, 31)
        svc.deliver_job()
    assert len(created(sims)) == 1
    with svc.store.unit() as u:
        action = u.outbox_for(inc["RecId"])[0]
        outcomes = [a.outcome for a in u.attempts_for(action.id)]
    assert action.state == "done"
    assert outcomes[-1] == "ok" and len(outcomes) >= 2


def test_direct_mode_terminates_then_creates(sims: SimPair, make_service: MakeService) -> None:
    svc = started(make_service, sims, mode="direct")
    inc = sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)
    rec = inc["RecId"]
    svc.cycle()
    tick(sims)
    sims.ivanti.edit_incident(rec, OwnerTeam=DB)
    svc.cycle()
    events = sims.xmatters.events(rec)
    assert [e["status"] for e in events] == ["TERMINATED", "ACTIVE"]
    assert all(t["flavour"] == "form" for t in sims.xmatters.triggers())
    tick(sims)
    sims.ivanti.edit_incident(rec, Status="Resolved")
    svc.cycle()
    assert sims.xmatters.live_events(rec) == []
    with svc.store.unit() as u:
        assert {e.status for e in u.events_for(rec)} == {"TERMINATED"}


def test_dry_run_sends_and_writes_nothing(sims: SimPair, make_service: MakeService) -> None:
    svc = started(make_service, sims)
    sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)
    report = svc.cycle(dry_run=True)
    assert report.poll is not None
    assert [t.kind.value for t in report.poll.transitions] == ["New Incident"]
    assert sims.xmatters.triggers() == []
    with svc.store.unit() as u:
        assert u.outbox() == []
    svc.cycle()
    assert len(created(sims)) == 1


def test_malformed_record_is_kept_and_skipped(sims: SimPair, make_service: MakeService) -> None:
    svc = started(make_service, sims)
    good = sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)
    bad = sims.ivanti.create_incident(Priority="1", OwnerTeam=DB)
    sims.ivanti.corrupt_incident(bad["RecId"], Status=["not", "a", "string"])
    report = svc.cycle()
    assert report.ok
    assert [t["payload"]["RecId"] for t in created(sims)] == [good["RecId"]]
    with svc.store.unit() as u:
        rejected = u.rejected()
    assert len(rejected) == 1 and rejected[0].rec_id == bad["RecId"]
    assert "Status" in rejected[0].problem
