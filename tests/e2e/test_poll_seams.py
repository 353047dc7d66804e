"""Seams of the poll: an edit in the second of a pending Assign-to-me write, the
reconcile sweep and the scope filter, a first-start baseline that is interrupted."""

from __future__ import annotations

import pytest

from daemon.simulators.harness import SimPair
from tests.conftest import MakeService
from tests.e2e.test_faults import (
    IVANTI_RECORD,
    respond,
    settle,
    started,
    trigger_log,
)

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
    respond(sims, rec, "jsmith", "Assign to me")
    svc.writeback_job()  # queues the note with Owner=jsmith, Status=Active
    if assignment == "outcome-unknown":
        sims.ivanti.faults.inject("drop_before", IVANTI_RECORD, method="PUT")
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
