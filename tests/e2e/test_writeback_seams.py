"""Write-back at the seams (issue 10, items 9-12): asynchronous flows, late answers, the
original workflow's own write-back, and events that end by themselves.

Each test drives both simulators over real HTTP, as in ``test_writeback.py``, with the
xMatters simulator switched to the reading of the reference that stages the scenario.
"""

from __future__ import annotations

import pytest

from daemon.simulators.harness import SimPair
from tests.conftest import MakeService
from tests.e2e.test_writeback import (
    BEN,
    JANE,
    NET,
    audit_polls,
    cycle,
    fields_written,
    notes,
    owner_status,
    paged,
    started,
    tick,
    trigger_types,
    writes,
)

pytestmark = pytest.mark.e2e

ESCALATE = f"{BEN} responded [ Escalate ]"


# ----- item 9: an event discovered after it already ended -------------------------------


def test_event_discovered_after_it_ended_is_still_read(
    sims: SimPair, make_service: MakeService
) -> None:
    """An asynchronous flow creates the event 10 s after the 202. A person responds, the
    incident is resolved and the event terminated, all before the write-back job first
    looks the event up: it is found TERMINATED, and its records must still be read (the
    response made while it was live, and a comment made after the end)."""
    sims.xmatters.set_flows(delay=10)
    svc = started(make_service, sims, IXM_WRITEBACK_GRACE="30m")
    rec = str(sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)["RecId"])
    svc.poll_job()
    svc.deliver_job()  # trigger accepted; the flow has not run yet
    with svc.store.unit() as u:
        assert u.events_for(rec) == []
    tick(sims, 15)
    [event] = sims.xmatters.live_events(rec)  # the flow ran
    ev = str(event["id"])
    sims.xmatters.respond(ev, person="bwong", response="Escalate", device="Work Email")
    sims.ivanti.edit_incident(rec, Status="Resolved")
    svc.poll_job()
    svc.deliver_job()  # Terminate sent; its flow runs 10 s later
    tick(sims, 15)
    assert sims.xmatters.live_events(rec) == []
    sims.xmatters.comment(ev, person="apatel", text="after the end")
    cycle(svc, sims, times=3)
    assert notes(sims, rec) == [ESCALATE, "[xMatters] Asha Patel commented [ after the end ]"]
    assert trigger_types(sims) == ["New Incident", "Terminate"]
    with svc.store.unit() as u:
        [row] = u.events_for(rec)
        assert row.status == "TERMINATED" and row.terminated_at is not None
    # Still read for the grace period only, from when the daemon learned of the end.
    tick(sims, 31 * 60)
    polls = audit_polls(sims, ev)
    cycle(svc, sims, times=4)
    assert audit_polls(sims, ev) == polls


def test_flow_that_creates_nothing_leaves_nothing_to_read(
    sims: SimPair, make_service: MakeService
) -> None:
    """The flow errors after the 202: no event ever carries the requestId. The page is
    not done: it waits for its event, writes nothing, and after IXM_EVENT_TIMEOUT it is
    sent again (and this time the flow makes the event)."""
    sims.xmatters.set_flows(delay=5, fail_next=1)
    svc = started(make_service, sims, IXM_WRITEBACK_GRACE="30m")
    rec = str(sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)["RecId"])
    cycle(svc, sims, times=3)
    assert sims.xmatters.events(rec) == []
    assert sims.xmatters.triggers()[-1]["outcome"].startswith("error:")
    with svc.store.unit() as u:
        assert u.events_for(rec) == []
        [page] = u.outbox_for(rec)
        assert page.state == "pending" and page.accepted_at is not None
        assert "waiting for its event" in (page.outcome or "")
    assert writes(sims, rec) == []
    cycle(svc, sims, times=3)  # past the 120 s the event may take
    assert len(sims.xmatters.events(rec)) == 1
    with svc.store.unit() as u:
        [page] = u.outbox_for(rec)
        assert page.state == "done" and len(u.events_for(rec)) == 1


# ----- item 12: events that end by themselves ----------------------------------------------


@pytest.mark.parametrize(
    ("end", "expiry_audit"),
    [
        ("complete", "EVENT_COMPLETED"),
        ("expire", "EVENT_COMPLETED"),
        ("expire", "EVENT_TERMINATED"),
    ],
    ids=["completed", "expired-audited-completed", "expired-audited-terminated"],
)
def test_event_that_ends_by_itself_is_recorded_and_read_for_the_grace_only(
    sims: SimPair, make_service: MakeService, end: str, expiry_audit: str
) -> None:
    sims.xmatters.expiry_audit = expiry_audit
    svc = started(make_service, sims, IXM_WRITEBACK_GRACE="30m")
    rec, ev = paged(svc, sims)
    sims.xmatters.respond(ev, person="bwong", response="Escalate", device="Work Email")
    ended = sims.clock.now()
    getattr(sims.xmatters, end)(ev)
    cycle(svc, sims)
    assert notes(sims, rec) == [ESCALATE]
    with svc.store.unit() as u:
        [row] = u.events_for(rec)
        assert (row.status, row.terminated_at) == ("TERMINATED", ended)
        assert u.live_events(rec) == []
        how = expiry_audit if end == "expire" else "EVENT_COMPLETED"
        assert how in {a.type for a in u.audits_for(rec)}
    tick(sims, 20 * 60)
    sims.xmatters.comment(ev, person="apatel", text="post-mortem tomorrow")
    cycle(svc, sims, times=4)  # within the grace: still read
    assert notes(sims, rec) == [
        ESCALATE,
        "[xMatters] Asha Patel commented [ post-mortem tomorrow ]",
    ]
    tick(sims, 11 * 60)
    polls = audit_polls(sims, ev)
    cycle(svc, sims, times=4)
    assert audit_polls(sims, ev) == polls  # no longer polled
    assert trigger_types(sims) == ["New Incident"]


# ----- item 10: a late "Assign to me" --------------------------------------------------------

ASSIGN = f"{JANE} responded [ Assign to me ]"


def _not_applied(why: str) -> str:
    return f"[xMatters] Assignment to jsmith not applied: {why}"


def test_late_assign_to_me_on_a_resolved_incident_writes_the_note_alone(
    sims: SimPair, make_service: MakeService
) -> None:
    """The response is read after the incident was resolved (and its event terminated):
    the note is written, Owner and Status are not (that would reopen the incident, and
    nobody would be paged for it), and a second note says why."""
    svc = started(make_service, sims)
    rec, ev = paged(svc, sims, Category="Network")
    sims.xmatters.respond(ev, person="jsmith", response="Assign to me")
    sims.ivanti.edit_incident(rec, Status="Resolved")
    svc.poll_job()
    svc.deliver_job()  # the event is terminated before the response was read
    tick(sims, 5 * 60)
    cycle(svc, sims, times=3)
    why = _not_applied("the incident is Resolved")
    assert notes(sims, rec) == [ASSIGN, why]
    assert fields_written(sims, rec) == [{"NewNotes": ASSIGN}, {"NewNotes": why}]
    assert owner_status(sims, rec) == ("", "Resolved")
    assert trigger_types(sims) == ["New Incident", "Terminate"]


def test_resolve_between_planning_and_delivery_is_honoured(
    sims: SimPair, make_service: MakeService
) -> None:
    """The note with its assignment is queued while the incident is open; the next poll
    sees it resolved before the note goes out: the decision is taken at delivery."""
    svc = started(make_service, sims)
    rec, ev = paged(svc, sims, Category="Network")
    sims.xmatters.respond(ev, person="jsmith", response="Assign to me")
    svc.writeback_job()  # queued with Owner/Status
    with svc.store.unit() as u:
        assert u.outbox_for(rec)[-1].payload["assign"]["owner"] == "jsmith"
    sims.ivanti.edit_incident(rec, Status="Resolved")
    svc.poll_job()
    svc.deliver_job()
    cycle(svc, sims, times=2)
    why = _not_applied("the incident is Resolved")
    assert notes(sims, rec) == [ASSIGN, why]
    assert owner_status(sims, rec) == ("", "Resolved")
    assert trigger_types(sims) == ["New Incident", "Terminate"]


def test_late_assign_to_me_after_a_page_to_another_team_writes_the_note_alone(
    sims: SimPair, make_service: MakeService
) -> None:
    """jsmith (Network Operations) answers the first event after the incident was
    reassigned to the Database Team and paged there: the Database Team's page stands."""
    svc = started(make_service, sims)
    rec, first = paged(svc, sims, Category="Network")
    number = sims.xmatters.event(first)["eventId"]
    sims.xmatters.respond(first, person="jsmith", response="Assign to me")
    sims.ivanti.edit_incident(rec, OwnerTeam="Database Team")
    svc.poll_job()
    svc.deliver_job()  # Reassigned: the workflow supersedes the first event
    sims.settle()
    [second] = sims.xmatters.live_events(rec)
    cycle(svc, sims, times=2)
    why = _not_applied(f"event {number} was superseded by a newer page")
    assert notes(sims, rec) == [ASSIGN, why]
    inc = sims.ivanti.incident(rec)
    assert (inc["Owner"], inc["OwnerTeam"], inc["Status"]) == ("", "Database Team", "Logged")
    assert trigger_types(sims) == ["New Incident", "Reassigned"]
    # An answer to the current event is applied as always.
    sims.xmatters.respond(second["id"], person="apatel", response="Assign to me")
    cycle(svc, sims)
    assert owner_status(sims, rec) == ("apatel", "Active")


# ----- item 11: the original workflow's own write-back ---------------------------------------


def _workflow_writes_back(sims: SimPair) -> None:
    # The original workflow writes with partial PUTs, so a tenant where it still writes back
    # is one where a PUT merges (under the strict profile's PUT-as-replace it would empty
    # the incident's Category, and a site would have noticed).
    sims.ivanti.put_semantics = "merge"
    user, (password, _roles) = next(iter(sims.ivanti.users.items()))
    sims.xmatters.set_workflow_writeback(
        sims.ivanti.url, tenant=sims.ivanti.tenant, username=user, password=password
    )


def _activity(sims: SimPair, ev: str) -> None:
    sims.xmatters.deliver(ev, person="bwong", device="Work Email", status="FAILED")
    sims.xmatters.respond(ev, person="jsmith", response="Assign to me", comment="on it")
    sims.xmatters.comment(ev, person="apatel", text="fyi")


WORKFLOW_NOTES = [
    "[xMatters] Notification FAILED to bwong|Work Email",
    f"{JANE} responded [ Assign to me ]",
    "[xMatters] Jane Smith commented [ on it ]",
    "[xMatters] Asha Patel commented [ fyi ]",
]


def test_workflow_that_still_writes_back_gets_no_second_note_by_default(
    sims: SimPair, make_service: MakeService
) -> None:
    """A site kept the original workflow's write-back steps, and its xMatters reaches
    Ivanti: every response, comment and failed delivery is written by the workflow. The
    daemon, by default, looks in the journal first and writes none of them again, nor
    the assignment; it still learns the event ids and says so in `explain`."""
    _workflow_writes_back(sims)
    svc = started(make_service, sims)
    rec, ev = paged(svc, sims, Category="Network")
    _activity(sims, ev)
    for _ in range(4):
        cycle(svc, sims)
    assert notes(sims, rec) == WORKFLOW_NOTES
    assert owner_status(sims, rec) == ("jsmith", "Active")
    assert [w["rec_id"] for w in sims.ivanti.writes()] == [rec] * 4  # the workflow's only
    assert trigger_types(sims) == ["New Incident"]
    with svc.store.unit() as u:
        notes_done = [a for a in u.outbox_for(rec) if a.kind == "note"]
        assert len(notes_done) == 3 and all(a.state == "done" for a in notes_done)
        assert all("workflow" in (a.outcome or "") for a in notes_done)


def test_without_the_workflow_steps_the_daemon_writes_every_note(
    sims: SimPair, make_service: MakeService
) -> None:
    """The same activity where the workflow does not write back: nothing is lost by the
    default's journal check, only delayed by IXM_WORKFLOW_WRITEBACK_WAIT."""
    svc = started(make_service, sims, IXM_WORKFLOW_WRITEBACK_WAIT="30")
    rec, ev = paged(svc, sims, Category="Network")
    _activity(sims, ev)
    cycle(svc, sims, seconds=29)
    cycle(svc, sims, seconds=1)
    assert notes(sims, rec) == []  # waiting 30 s for a workflow write-back that never comes
    cycle(svc, sims)
    assert notes(sims, rec) == [
        "[xMatters] Notification FAILED to bwong|Work Email",
        f"{JANE} responded [ Assign to me ] with comment [ on it ]",
        "[xMatters] Asha Patel commented [ fyi ]",
    ]
    assert owner_status(sims, rec) == ("jsmith", "Active")


def test_workflow_writeback_on_leaves_the_notes_to_the_workflow_but_learns_events(
    sims: SimPair, make_service: MakeService
) -> None:
    """IXM_WORKFLOW_WRITEBACK=on: the daemon writes nothing back, yet it still learns the
    ids of asynchronously created events, so the incident's end still terminates them."""
    _workflow_writes_back(sims)
    sims.xmatters.set_flows(delay=5)
    svc = started(make_service, sims, IXM_WORKFLOW_WRITEBACK="on")
    rec = str(sims.ivanti.create_incident(Priority="1", OwnerTeam=NET, Category="Network")["RecId"])
    cycle(svc, sims, times=2)
    [event] = sims.xmatters.live_events(rec)
    _activity(sims, str(event["id"]))
    cycle(svc, sims, times=2)
    assert notes(sims, rec) == WORKFLOW_NOTES
    with svc.store.unit() as u:
        assert [e.event_id for e in u.events_for(rec)] == [event["id"]]
        assert [a.kind for a in u.outbox_for(rec)] == ["page"]


@pytest.mark.parametrize("setting", [{"IXM_WRITEBACK": "false"}], ids=["writeback-off"])
def test_event_ids_are_learned_with_write_back_off(
    sims: SimPair, make_service: MakeService, setting: dict[str, str]
) -> None:
    sims.xmatters.set_flows(delay=5)
    svc = started(make_service, sims, **setting)
    rec = str(sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)["RecId"])
    cycle(svc, sims, times=2)
    [event] = sims.xmatters.live_events(rec)
    sims.xmatters.comment(str(event["id"]), person="apatel", text="nobody writes this")
    cycle(svc, sims, times=2)
    assert notes(sims, rec) == []
    with svc.store.unit() as u:
        assert [e.event_id for e in u.events_for(rec)] == [event["id"]]
