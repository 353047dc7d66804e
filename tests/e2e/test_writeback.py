"""Closing the loop end to end: xMatters activity -> daemon -> notes and fields in Ivanti.

Every test drives both simulators over real HTTP and asserts the exact journal notes,
the exact API writes and the incident fields in Ivanti, and nothing else. People at
the xMatters end are played with the simulator's control API (``respond``,
``comment``, ``deliver``); time moves only through the shared sim clock.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from daemon.models import AuditSeen, OutboxAction
from daemon.notes import ResponseAction
from daemon.service import Service
from daemon.simulators.clock import SimClock
from daemon.simulators.harness import SimPair
from daemon.writeback import WriteBack, WritebackConfig
from tests.conftest import MakeService

pytestmark = pytest.mark.e2e

NET = "Network Operations"
JANE = "[xMatters] Jane Smith | Mobile App"
BEN = "[xMatters] Ben Wong | Work Email"
CATEGORY_REQUIRED = "Required field Incident.Category value must be provided"
# The Ivanti update route: PUT /api/odata/businessobject/incidents('<RecId>')
UPDATE_ROUTE = r"/businessobject/incidents\("


@pytest.fixture
def sims(clock: SimClock, request: pytest.FixtureRequest, sim_profile: str) -> Iterator[SimPair]:
    """Both simulators; indirect parametrisation passes extra Ivanti simulator arguments."""
    ivanti_kwargs: dict[str, Any] | None = getattr(request, "param", None)
    with SimPair(clock=clock, ivanti_kwargs=ivanti_kwargs, profile=sim_profile) as pair:
        yield pair


# ----- helpers ---------------------------------------------------------------------------


def tick(sims: SimPair, seconds: float = 30) -> None:
    sims.clock.advance(seconds)


def cycle(svc: Service, sims: SimPair, times: int = 1, seconds: float = 30) -> None:
    """``times`` full daemon cycles, ``seconds`` of sim time apart."""
    for _ in range(times):
        report = svc.cycle()
        assert report.ok, report.error
        tick(sims, seconds)


def started(make_service: MakeService, sims: SimPair, **env: str) -> Service:
    """A daemon that has taken its (empty) baseline."""
    svc = make_service(**env)
    cycle(svc, sims)
    return svc


def paged(svc: Service, sims: SimPair, **fields: Any) -> tuple[str, str]:
    """Create a critical incident, let the daemon page it; (RecId, event UUID)."""
    fields.setdefault("Priority", "1")
    fields.setdefault("OwnerTeam", NET)
    rec = str(sims.ivanti.create_incident(**fields)["RecId"])
    cycle(svc, sims)
    sims.settle()  # an asynchronous flow has run: the daemon learns its event, as it soon would
    svc.deliver_job()
    events = sims.xmatters.live_events(rec)
    assert len(events) == 1, events
    return rec, str(events[0]["id"])


def notes(sims: SimPair, rec: str) -> list[str]:
    return [str(n["NotesBody"]) for n in sims.ivanti.notes(rec)]


def writes(sims: SimPair, rec: str) -> list[dict[str, Any]]:
    """The API writes to one incident, refused ones included, in arrival order."""
    return [w for w in sims.ivanti.writes() if w["rec_id"] == rec]


def fields_written(sims: SimPair, rec: str) -> list[dict[str, Any]]:
    return [w["fields"] for w in writes(sims, rec)]


def owner_status(sims: SimPair, rec: str) -> tuple[str, str]:
    inc = sims.ivanti.incident(rec)
    return str(inc["Owner"]), str(inc["Status"])


def trigger_types(sims: SimPair) -> list[str]:
    return [str(t["payload"].get("Type")) for t in sims.xmatters.triggers()]


def audit_polls(sims: SimPair, event_id: str) -> int:
    return sum(1 for r in sims.xmatters.requests("xm.audits") if event_id in r.query)


# ----- 1. each response type -------------------------------------------------------------


def test_assign_to_me_writes_note_owner_and_status_in_one_write(
    sims: SimPair, make_service: MakeService
) -> None:
    svc = started(make_service, sims)
    plain, plain_ev = paged(svc, sims, Category="Network")
    commented, commented_ev = paged(svc, sims, Category="Network")
    sims.xmatters.respond(plain_ev, person="jsmith", response="Assign to me")
    sims.xmatters.respond(
        commented_ev, person="bwong", response="Assign to me", comment="on it, 10 min"
    )
    cycle(svc, sims)
    expected = {
        plain: (f"{JANE} responded [ Assign to me ]", "jsmith"),
        commented: (
            "[xMatters] Ben Wong | Mobile App responded [ Assign to me ] "
            "with comment [ on it, 10 min ]",
            "bwong",
        ),
    }
    for rec, (note, owner) in expected.items():
        assert notes(sims, rec) == [note]
        assert [(w["fields"], w["ok"]) for w in writes(sims, rec)] == [
            ({"NewNotes": note, "Owner": owner, "Status": "Active"}, True)
        ]
        assert owner_status(sims, rec) == (owner, "Active")


NOTE_ONLY: list[tuple[str, str, str, str, str | None, str]] = [
    # (incident Owner, responder, device, response, comment, expected note)
    ("jsmith", "jsmith", "Mobile App", "Acknowledge", None, f"{JANE} responded [ Acknowledge ]"),
    (
        "jsmith",
        "jsmith",
        "Mobile App",
        "Acknowledge",
        "looking now",
        f"{JANE} responded [ Acknowledge ] with comment [ looking now ]",
    ),
    ("", "bwong", "Work Email", "Escalate", None, f"{BEN} responded [ Escalate ]"),
    (
        "",
        "bwong",
        "Work Email",
        "Escalate",
        "not my area",
        f"{BEN} responded [ Escalate ] with comment [ not my area ]",
    ),
    (
        "jsmith",
        "jsmith",
        "Mobile App",
        "Acknowledge",
        " \n\t ",
        f"{JANE} responded [ Acknowledge ]",
    ),
]


def test_acknowledge_and_escalate_write_a_note_only(
    sims: SimPair, make_service: MakeService
) -> None:
    """Each case on its own incident, all in one daemon (the last: a blank comment is none)."""
    svc = started(make_service, sims)
    cases = []
    for owner, person, device, response, comment, expected in NOTE_ONLY:
        rec, ev = paged(svc, sims, Owner=owner, Category="Network")
        cases.append((rec, owner_status(sims, rec), expected))
        sims.xmatters.respond(ev, person=person, response=response, comment=comment, device=device)
    cycle(svc, sims)
    for rec, before, expected in cases:
        assert notes(sims, rec) == [expected]
        assert fields_written(sims, rec) == [{"NewNotes": expected}]
        assert owner_status(sims, rec) == before


# ----- 2. a comment on the event -----------------------------------------------------------


def test_comment_on_the_event(sims: SimPair, make_service: MakeService) -> None:
    svc = started(make_service, sims)
    rec, ev = paged(svc, sims)
    sims.xmatters.comment(ev, person="apatel", text="looking at replication lag")
    cycle(svc, sims)
    expected = "[xMatters] Asha Patel commented [ looking at replication lag ]"
    assert notes(sims, rec) == [expected]
    assert fields_written(sims, rec) == [{"NewNotes": expected}]


def test_response_and_comments_are_written_in_order(
    sims: SimPair, make_service: MakeService
) -> None:
    svc = started(make_service, sims)
    rec, ev = paged(svc, sims, Category="Network")
    sims.xmatters.comment(ev, person="apatel", text="first")
    sims.xmatters.respond(ev, person="bwong", response="Escalate", device="Work Email")
    sims.xmatters.comment(ev, person="lchen", text="third")
    cycle(svc, sims)
    assert notes(sims, rec) == [
        "[xMatters] Asha Patel commented [ first ]",
        f"{BEN} responded [ Escalate ]",
        "[xMatters] Li Chen commented [ third ]",
    ]


def test_notes_of_an_older_event_come_before_those_of_its_successor(
    sims: SimPair, make_service: MakeService
) -> None:
    """Reassigned: the workflow terminates the first event and makes a second. Activity on
    both, read in one cycle, is written in the order it happened."""
    svc = started(make_service, sims)
    rec, first = paged(svc, sims)
    sims.xmatters.comment(first, person="apatel", text="on the first event")
    sims.ivanti.edit_incident(rec, OwnerTeam="Database Team")
    svc.poll_job()
    svc.deliver_job()
    [second] = sims.xmatters.live_events(rec)
    tick(sims)
    sims.xmatters.comment(second["id"], person="apatel", text="on the second event")
    cycle(svc, sims)
    assert notes(sims, rec) == [
        "[xMatters] Asha Patel commented [ on the first event ]",
        "[xMatters] Asha Patel commented [ on the second event ]",
    ]


# ----- 3. delivery notes -------------------------------------------------------------------


def _deliveries(sims: SimPair, ev: str) -> None:
    sims.xmatters.deliver(ev, person="jsmith", device="Mobile App", status="DELIVERED")
    sims.xmatters.deliver(ev, person="bwong", device="Work Email", status="FAILED")


def test_delivery_notes_all_is_the_default(sims: SimPair, make_service: MakeService) -> None:
    svc = started(make_service, sims)
    rec, ev = paged(svc, sims)
    _deliveries(sims, ev)
    cycle(svc, sims)
    sims.xmatters.deliver(ev, person="jsmith", device="Work Email", status="DELIVERED")
    cycle(svc, sims)
    expected = [
        "[xMatters] Notification DELIVERED to Jane Smith | Mobile App",
        "[xMatters] Notification FAILED to bwong|Work Email",
        "[xMatters] Notification DELIVERED to Jane Smith | Work Email",
    ]
    assert notes(sims, rec) == expected
    assert fields_written(sims, rec) == [{"NewNotes": n} for n in expected]
    # jsmith's name was looked up once and cached; FAILED notes need no name
    assert [r.path.rsplit("/", 1)[-1] for r in sims.xmatters.requests("xm.people.get")] == [
        "jsmith"
    ]


def test_delivery_notes_failures_only(sims: SimPair, make_service: MakeService) -> None:
    svc = started(make_service, sims, IXM_DELIVERY_NOTES="failures")
    rec, ev = paged(svc, sims)
    _deliveries(sims, ev)
    cycle(svc, sims)
    expected = ["[xMatters] Notification FAILED to bwong|Work Email"]
    assert notes(sims, rec) == expected
    assert fields_written(sims, rec) == [{"NewNotes": n} for n in expected]
    assert sims.xmatters.requests("xm.people.get") == []  # no note names anybody


def test_delivery_notes_summary_rolls_with_the_counts(
    sims: SimPair, make_service: MakeService
) -> None:
    """Ivanti's journal is append-only, so "rolling" means one note per change of the counts,
    never one per delivery."""
    svc = started(make_service, sims, IXM_DELIVERY_NOTES="summary")
    rec, ev = paged(svc, sims)
    number = sims.xmatters.event(ev)["eventId"]
    _deliveries(sims, ev)
    cycle(svc, sims)
    first = f"[xMatters] Event {number} notifications: 1 delivered, 1 failed, 0 responded"
    assert notes(sims, rec) == [first]
    cycle(svc, sims, times=3)  # nothing new: no new summary
    assert notes(sims, rec) == [first]
    sims.xmatters.deliver(ev, person="bwong", device="Mobile App", status="DELIVERED")
    cycle(svc, sims)
    second = f"[xMatters] Event {number} notifications: 2 delivered, 1 failed, 0 responded"
    assert notes(sims, rec) == [first, second]
    # A response has its own note; it is counted, but does not add a summary by itself.
    sims.xmatters.respond(ev, person="jsmith", response="Escalate")
    cycle(svc, sims)
    escalate = f"{JANE} responded [ Escalate ]"
    assert notes(sims, rec) == [first, second, escalate]
    sims.xmatters.deliver(ev, person="jsmith", device="Work Email", status="FAILED")
    cycle(svc, sims)
    third = f"[xMatters] Event {number} notifications: 2 delivered, 2 failed, 1 responded"
    assert notes(sims, rec) == [first, second, escalate, third]
    assert fields_written(sims, rec) == [{"NewNotes": n} for n in notes(sims, rec)]


# ----- 4. an assignment Ivanti refuses --------------------------------------------------


def test_refused_assignment_still_writes_the_note_and_says_why(
    sims: SimPair, make_service: MakeService, caplog: pytest.LogCaptureFixture
) -> None:
    svc = started(make_service, sims)
    rec, ev = paged(svc, sims)  # no Category: Ivanti refuses Status=Active
    before = owner_status(sims, rec)
    sims.xmatters.respond(ev, person="jsmith", response="Assign to me")
    with caplog.at_level(logging.WARNING, logger="daemon.deliverer"):
        cycle(svc, sims)
    note = f"{JANE} responded [ Assign to me ]"
    why = f"[xMatters] Assignment to jsmith failed: Ivanti said: {CATEGORY_REQUIRED}"
    assert notes(sims, rec) == [note, why]
    assert [(w["fields"], w["ok"]) for w in writes(sims, rec)] == [
        ({"NewNotes": note, "Owner": "jsmith", "Status": "Active"}, False),
        ({"NewNotes": note}, True),
        ({"NewNotes": why}, True),
    ]
    assert owner_status(sims, rec) == before
    logged = [
        r for r in caplog.records if CATEGORY_REQUIRED in str(getattr(r, "fields", {}).get("error"))
    ]
    assert logged and logged[0].levelno == logging.WARNING
    # Nothing more follows: no retry of the refused write, no transition from the notes.
    cycle(svc, sims, times=4)
    assert notes(sims, rec) == [note, why]
    assert trigger_types(sims) == ["New Incident"]
    with svc.store.unit() as u:
        assert [(a.kind, a.state) for a in u.outbox_for(rec)] == [
            ("page", "done"),
            ("note", "done"),
            ("note", "done"),
        ]
        transitions = [c.transition for c in u.changes_for(rec)]
    assert transitions[0] == "New Incident" and set(transitions[1:]) <= {None}


def test_assignment_to_a_login_not_on_the_owner_list_is_refused(
    sims: SimPair, make_service: MakeService
) -> None:
    svc = started(make_service, sims, IXM_USER_MAP="jsmith=nobody.here")
    rec, ev = paged(svc, sims, Category="Network")
    sims.xmatters.respond(ev, person="jsmith", response="Assign to me")
    cycle(svc, sims)
    why = (
        "[xMatters] Assignment to nobody.here failed: Ivanti said: The value 'nobody.here' "
        "is not in the validation list of Incident.Owner"
    )
    assert notes(sims, rec) == [f"{JANE} responded [ Assign to me ]", why]
    assert owner_status(sims, rec) == ("", "Logged")


# ----- 5. events terminated within / after the grace period ------------------------------


def _respond_then_resolve(svc: Service, sims: SimPair, rec: str, ev: str) -> None:
    """A response lands, then the incident is resolved and the daemon terminates the event
    before its write-back job has read the response."""
    sims.xmatters.respond(ev, person="bwong", response="Escalate", device="Work Email")
    sims.ivanti.edit_incident(rec, Status="Resolved")
    svc.poll_job()
    svc.deliver_job()
    sims.settle()
    assert sims.xmatters.live_events(rec) == []
    with svc.store.unit() as u:
        assert [e.status for e in u.events_for(rec)] == ["TERMINATED"]


def test_response_on_an_event_terminated_minutes_ago_is_written(
    sims: SimPair, make_service: MakeService
) -> None:
    svc = started(make_service, sims, IXM_WRITEBACK_GRACE="30m")
    rec, ev = paged(svc, sims)
    _respond_then_resolve(svc, sims, rec, ev)
    tick(sims, 20 * 60)
    cycle(svc, sims)
    assert notes(sims, rec) == [f"{BEN} responded [ Escalate ]"]
    assert owner_status(sims, rec) == ("", "Resolved")


def test_event_terminated_longer_ago_than_the_grace_is_not_polled(
    sims: SimPair, make_service: MakeService
) -> None:
    svc = started(make_service, sims, IXM_WRITEBACK_GRACE="30m")
    rec, ev = paged(svc, sims)
    _respond_then_resolve(svc, sims, rec, ev)
    polls_before = audit_polls(sims, ev)
    tick(sims, 31 * 60)
    cycle(svc, sims, times=5)
    assert audit_polls(sims, ev) == polls_before
    assert notes(sims, rec) == []
    assert writes(sims, rec) == []


def test_event_terminated_in_xmatters_is_polled_for_the_grace_only(
    sims: SimPair, make_service: MakeService
) -> None:
    """Terminated by a person in xMatters, not by the daemon: the daemon learns it from the
    EVENT_TERMINATED record, and the grace period runs from then."""
    svc = started(make_service, sims, IXM_WRITEBACK_GRACE="30m")
    rec, ev = paged(svc, sims)
    sims.xmatters.comment(ev, person="apatel", text="closing this alert")
    login, password = next(iter(sims.xmatters.users.items()))
    ended = sims.clock.now()
    answer = httpx.post(
        f"{sims.xmatters.api_url}/events",
        json={"id": ev, "status": "TERMINATED"},
        auth=(login, password),
    )
    assert answer.status_code == 200, answer.text
    cycle(svc, sims)
    assert notes(sims, rec) == ["[xMatters] Asha Patel commented [ closing this alert ]"]
    with svc.store.unit() as u:
        [row] = u.events_for(rec)
        assert (row.status, row.terminated_at) == ("TERMINATED", ended)
    tick(sims, 20 * 60)
    polls = audit_polls(sims, ev)
    cycle(svc, sims, times=4)
    assert audit_polls(sims, ev) > polls  # within the grace: still read
    tick(sims, 11 * 60)
    polls = audit_polls(sims, ev)
    cycle(svc, sims, times=4)
    assert audit_polls(sims, ev) == polls
    assert trigger_types(sims) == ["New Incident"]


# ----- 6. repeated polling and restarts ----------------------------------------------------


def test_repeated_polling_writes_nothing_twice(sims: SimPair, make_service: MakeService) -> None:
    svc = started(make_service, sims)
    rec, ev = paged(svc, sims, Category="Network")
    sims.xmatters.deliver(ev, person="jsmith", status="DELIVERED")
    sims.xmatters.respond(ev, person="jsmith", response="Assign to me", comment="mine")
    sims.xmatters.comment(ev, person="apatel", text="fyi")
    cycle(svc, sims)
    expected = [
        "[xMatters] Notification DELIVERED to Jane Smith | Mobile App",
        f"{JANE} responded [ Assign to me ] with comment [ mine ]",
        "[xMatters] Asha Patel commented [ fyi ]",
    ]
    assert notes(sims, rec) == expected
    polls = audit_polls(sims, ev)
    cycle(svc, sims, times=12)
    assert audit_polls(sims, ev) > polls  # still polled (live event) ...
    assert notes(sims, rec) == expected  # ... and nothing written again
    assert len(writes(sims, rec)) == 3
    svc.close()
    again = make_service()  # a restart on the same state DB
    cycle(again, sims, times=5)
    assert notes(sims, rec) == expected
    assert len(writes(sims, rec)) == 3
    with again.store.unit() as u:
        seen = u.audits_for(rec)
    assert sorted(a.type for a in seen) == [
        "EVENT_ANNOTATED",
        "NOTIFICATION_DELIVERED",
        "RESPONSE_RECEIVED",
    ]
    # New activity after the restart is picked up, once.
    sims.xmatters.comment(ev, person="apatel", text="after restart")
    cycle(again, sims, times=3)
    assert notes(sims, rec) == [*expected, "[xMatters] Asha Patel commented [ after restart ]"]


def test_quiet_events_are_polled_every_nth_cycle(sims: SimPair, make_service: MakeService) -> None:
    svc = started(make_service, sims, IXM_QUIET_POLL_EVERY="4")
    rec, ev = paged(svc, sims)
    cycle(svc, sims, times=3)  # the first polls of a new event are always made
    tick(sims, 16 * 60)  # no activity for longer than the busy window: quiet
    polls = audit_polls(sims, ev)
    cycle(svc, sims, times=12)
    assert audit_polls(sims, ev) == polls + 3
    # Activity on a quiet event is still written, within N cycles, and makes it busy again.
    sims.xmatters.comment(ev, person="apatel", text="late comment")
    for _ in range(4):
        cycle(svc, sims)
        if notes(sims, rec):
            break
    assert notes(sims, rec) == ["[xMatters] Asha Patel commented [ late comment ]"]
    polls = audit_polls(sims, ev)
    cycle(svc, sims, times=3)
    assert audit_polls(sims, ev) == polls + 3


def test_record_read_again_while_its_note_waits_is_not_queued_twice(
    sims: SimPair, make_service: MakeService
) -> None:
    """Ivanti is down for a while: the response is read every cycle but queued once."""
    svc = started(make_service, sims)
    rec, ev = paged(svc, sims)
    sims.ivanti.faults.inject("status", UPDATE_ROUTE, status=503, method="PATCH|PUT", times=0)
    sims.xmatters.respond(ev, person="bwong", response="Escalate", device="Work Email")
    polls = audit_polls(sims, ev)
    cycle(svc, sims, times=6, seconds=5)
    assert audit_polls(sims, ev) >= polls + 6
    assert notes(sims, rec) == []
    with svc.store.unit() as u:
        assert [a.kind for a in u.outbox_for(rec)] == ["page", "note"]
    sims.ivanti.faults.clear()
    for _ in range(20):
        tick(sims, 120)
        svc.cycle()
        if notes(sims, rec):
            break
    assert notes(sims, rec) == [f"{BEN} responded [ Escalate ]"]
    cycle(svc, sims, times=3)
    assert notes(sims, rec) == [f"{BEN} responded [ Escalate ]"]


def test_restart_between_reading_and_writing(sims: SimPair, make_service: MakeService) -> None:
    svc = started(make_service, sims)
    rec, ev = paged(svc, sims)
    sims.xmatters.comment(ev, person="apatel", text="queued, then restarted")
    svc.poll_job()
    svc.writeback_job()  # read and queued, not written
    svc.close()
    assert notes(sims, rec) == []
    again = make_service()
    cycle(again, sims, times=3)
    assert notes(sims, rec) == ["[xMatters] Asha Patel commented [ queued, then restarted ]"]


# ----- 7. a crash in the middle of a write ------------------------------------------------


def test_dropped_answer_after_ivanti_wrote_the_note(
    sims: SimPair, make_service: MakeService
) -> None:
    svc = started(make_service, sims)
    rec, ev = paged(svc, sims, Category="Network")
    sims.ivanti.faults.inject("drop_after", UPDATE_ROUTE, method="PATCH|PUT")
    sims.xmatters.respond(ev, person="jsmith", response="Assign to me")
    cycle(svc, sims)
    note = f"{JANE} responded [ Assign to me ]"
    assert notes(sims, rec) == [note]  # Ivanti acted, the daemon got no answer
    with svc.store.unit() as u:
        action = u.outbox_for(rec)[-1]
        assert action.kind == "note" and action.state == "pending"
        assert action.outcome == "unknown"
    for _ in range(5):
        tick(sims, 120)
        cycle(svc, sims)
    assert notes(sims, rec) == [note]
    assert fields_written(sims, rec) == [{"NewNotes": note, "Owner": "jsmith", "Status": "Active"}]
    assert owner_status(sims, rec) == ("jsmith", "Active")
    assert trigger_types(sims) == ["New Incident"]
    with svc.store.unit() as u:
        action = u.outbox_for(rec)[-1]
        assert action.state == "done"
        assert "not re-sent" in (action.outcome or "")


def test_client_timeout_while_ivanti_writes(sims: SimPair, make_service: MakeService) -> None:
    svc = started(make_service, sims, IVANTI_TIMEOUT="0.5")
    rec, ev = paged(svc, sims)
    sims.ivanti.faults.inject("stall_after", UPDATE_ROUTE, method="PATCH|PUT", delay=1.5)
    sims.xmatters.comment(ev, person="apatel", text="slow ivanti")
    cycle(svc, sims)
    note = "[xMatters] Asha Patel commented [ slow ivanti ]"
    assert notes(sims, rec) == [note]
    with svc.store.unit() as u:
        assert u.outbox_for(rec)[-1].outcome == "unknown"
    for _ in range(5):
        tick(sims, 120)
        cycle(svc, sims)
    assert notes(sims, rec) == [note]
    assert fields_written(sims, rec) == [{"NewNotes": note}]


@pytest.mark.parametrize("landed", [True, False], ids=["after-ivanti-wrote", "before-sending"])
def test_daemon_killed_mid_write(
    sims: SimPair, make_service: MakeService, monkeypatch: pytest.MonkeyPatch, landed: bool
) -> None:
    """The process dies while writing, after Ivanti stored the note or before the request
    left: the attempt row stays unfinished, and the restarted daemon reads the journal to
    tell which, writing the note exactly once either way."""
    svc = started(make_service, sims)
    rec, ev = paged(svc, sims)
    sims.xmatters.respond(ev, person="bwong", response="Escalate", device="Work Email")
    real_update = svc.ivanti.update_incident

    def killed(rec_id: str, fields: Any, **kw: Any) -> dict[str, Any]:
        if landed:
            real_update(rec_id, fields, **kw)
        raise SystemExit("killed")

    monkeypatch.setattr(svc.ivanti, "update_incident", killed)
    svc.poll_job()
    svc.writeback_job()
    with pytest.raises(SystemExit):
        svc.deliver_job()
    note = f"{BEN} responded [ Escalate ]"
    assert notes(sims, rec) == ([note] if landed else [])
    with svc.store.unit() as u:
        action = u.outbox_for(rec)[-1]
        assert action.state == "pending"
        assert u.unfinished_attempt(action.id) is not None
    svc.close()
    again = make_service()
    cycle(again, sims, times=3)
    assert notes(sims, rec) == [note]
    assert fields_written(sims, rec) == [{"NewNotes": note}]
    with again.store.unit() as u:
        action = u.outbox_for(rec)[-1]
        assert action.state == "done"
        outcomes = [a.outcome for a in u.attempts_for(action.id)]
    assert outcomes == ["unknown", "ok"]
    assert ("not re-sent" in (action.outcome or "")) is landed


def test_lost_answer_then_a_second_identical_note_is_still_written(
    sims: SimPair, make_service: MakeService
) -> None:
    """The journal check counts: an earlier identical note already done does not make a
    new, not yet written one look written."""
    svc = started(make_service, sims)
    rec, ev = paged(svc, sims)
    sims.xmatters.comment(ev, person="apatel", text="same text")
    cycle(svc, sims)
    sims.ivanti.faults.inject("drop_before", UPDATE_ROUTE, method="PATCH|PUT")
    sims.xmatters.comment(ev, person="apatel", text="same text")
    cycle(svc, sims)
    note = "[xMatters] Asha Patel commented [ same text ]"
    assert notes(sims, rec) == [note]  # the second write never reached Ivanti
    for _ in range(5):
        tick(sims, 120)
        cycle(svc, sims)
    assert notes(sims, rec) == [note, note]


def test_lost_answer_assignment_is_explained_as_own_write(
    sims: SimPair, make_service: MakeService
) -> None:
    svc = started(make_service, sims)
    rec, ev = paged(svc, sims, Category="Network")
    sims.ivanti.faults.inject("drop_after", UPDATE_ROUTE, method="PATCH|PUT")
    sims.xmatters.respond(ev, person="jsmith", response="Assign to me")
    cycle(svc, sims)
    for _ in range(3):
        tick(sims, 120)
        cycle(svc, sims)
    assert trigger_types(sims) == ["New Incident"]
    with svc.store.unit() as u:
        changes = u.changes_for(rec)
    assert [c.transition for c in changes] == ["New Incident", None]
    assert "the daemon's own write-back" in changes[-1].reason


# ----- 8. the daemon's own writes are not transitions -------------------------------------


def test_assign_on_a_resolved_incident_is_not_a_reopen(
    sims: SimPair, make_service: MakeService
) -> None:
    """A late Assign to me on a resolved incident writes the note alone (Owner/Status
    would reopen it with nobody paged; see test_writeback_seams.py), and the daemon's
    notes are not read back as a transition."""
    svc = started(make_service, sims)
    rec, ev = paged(svc, sims, Category="Network")
    sims.xmatters.respond(ev, person="jsmith", response="Assign to me")
    sims.ivanti.edit_incident(rec, Status="Resolved")
    svc.poll_job()
    svc.deliver_job()  # the event is terminated before the response was read
    assert trigger_types(sims) == ["New Incident", "Terminate"]
    tick(sims, 5 * 60)
    cycle(svc, sims)
    note = f"{JANE} responded [ Assign to me ]"
    why = "[xMatters] Assignment to jsmith not applied: the incident is Resolved"
    assert notes(sims, rec) == [note, why]
    assert owner_status(sims, rec) == ("", "Resolved")
    cycle(svc, sims, times=5)
    assert trigger_types(sims) == ["New Incident", "Terminate"]
    with svc.store.unit() as u:
        changes = u.changes_for(rec)
        alerting = u.incident(rec).alerting  # type: ignore[union-attr]
    assert [c.transition for c in changes][:2] == ["New Incident", "Resolved"]
    assert {c.transition for c in changes[2:]} <= {None}
    assert not alerting
    # A person's later change is judged normally again.
    sims.ivanti.edit_incident(rec, Status="Active")
    cycle(svc, sims)
    assert trigger_types(sims) == ["New Incident", "Terminate", "Reopened"]


def test_assign_on_a_live_incident_is_not_a_transition(
    sims: SimPair, make_service: MakeService
) -> None:
    svc = started(make_service, sims)
    rec, ev = paged(svc, sims, Category="Network")
    sims.xmatters.respond(ev, person="jsmith", response="Assign to me")
    cycle(svc, sims, times=5)
    assert trigger_types(sims) == ["New Incident"]
    with svc.store.unit() as u:
        changes = u.changes_for(rec)
    assert [c.transition for c in changes] == ["New Incident", None]
    assert "the daemon's own write-back" in changes[-1].reason
    assert (changes[-1].prev_owner, changes[-1].owner) == ("jsmith", "jsmith")


# ----- 9. user map and configured response actions ----------------------------------------


@pytest.mark.parametrize(
    "sims",
    [{"owners": ["jsmith", "bwong", "apatel", "JSMITH_IVANTI", "xmapi"]}],
    indirect=True,
)
def test_user_map_sets_the_mapped_ivanti_login(sims: SimPair, make_service: MakeService) -> None:
    svc = started(make_service, sims, IXM_USER_MAP="jsmith=JSMITH_IVANTI")
    rec, ev = paged(svc, sims, Category="Network")
    sims.xmatters.respond(ev, person="jsmith", response="Assign to me")
    cycle(svc, sims)
    note = f"{JANE} responded [ Assign to me ]"  # the note names the xMatters person
    assert notes(sims, rec) == [note]
    assert fields_written(sims, rec) == [
        {"NewNotes": note, "Owner": "JSMITH_IVANTI", "Status": "Active"}
    ]
    assert owner_status(sims, rec) == ("JSMITH_IVANTI", "Active")


def test_user_map_ignores_the_case_of_the_xmatters_name(
    sims: SimPair, make_service: MakeService
) -> None:
    """xMatters compares targetNames case-blind, so the map does too."""
    svc = started(make_service, sims, IXM_USER_MAP="JSmith=bwong")
    rec, ev = paged(svc, sims, Category="Network")
    sims.xmatters.respond(ev, person="jsmith", response="Assign to me")
    cycle(svc, sims)
    assert owner_status(sims, rec) == ("bwong", "Active")


def test_response_actions_by_text(sims: SimPair, make_service: MakeService) -> None:
    svc = started(make_service, sims, IXM_RESPONSE_ACTIONS="escalate=assign;Assign to me=note")
    rec, ev = paged(svc, sims, Category="Network")
    sims.xmatters.respond(ev, person="jsmith", response="Assign to me")
    sims.xmatters.respond(ev, person="bwong", response="Escalate", device="Work Email")
    cycle(svc, sims)
    assign, escalate = f"{JANE} responded [ Assign to me ]", f"{BEN} responded [ Escalate ]"
    assert notes(sims, rec) == [assign, escalate]
    assert fields_written(sims, rec) == [
        {"NewNotes": assign},
        {"NewNotes": escalate, "Owner": "bwong", "Status": "Active"},
    ]
    assert owner_status(sims, rec) == ("bwong", "Active")


def test_response_actions_by_option_uuid(sims: SimPair, make_service: MakeService) -> None:
    ack = next(o for o in sims.xmatters.user_response_options if o["text"] == "Acknowledge")
    svc = started(make_service, sims, IXM_RESPONSE_ACTIONS=f"{ack['id'].upper()}=assign")
    rec, ev = paged(svc, sims, Owner="jsmith", Category="Network")
    sims.xmatters.respond(ev, person="jsmith", response="Acknowledge")
    cycle(svc, sims)
    note = f"{JANE} responded [ Acknowledge ]"
    assert fields_written(sims, rec) == [{"NewNotes": note, "Owner": "jsmith", "Status": "Active"}]
    assert owner_status(sims, rec) == ("jsmith", "Active")


# ----- 10. untrusted comments ------------------------------------------------------------


def test_comment_control_characters_are_stripped_markup_kept(
    sims: SimPair, make_service: MakeService
) -> None:
    svc = started(make_service, sims)
    rec, ev = paged(svc, sims, Owner="jsmith")
    evil = "line one\nline two\x00\x07\x1b[31m\u202e <b>bold</b> & <script>x()</script>\u200b"
    sims.xmatters.respond(ev, person="jsmith", response="Acknowledge", comment=evil)
    sims.xmatters.comment(ev, person="apatel", text="tab\there\r\nnext\x7f")
    cycle(svc, sims)
    assert notes(sims, rec) == [
        f"{JANE} responded [ Acknowledge ] with comment "
        "[ line one line two[31m <b>bold</b> & <script>x()</script> ]",
        "[xMatters] Asha Patel commented [ tab here next ]",
    ]


def test_huge_comment_is_capped_with_a_visible_marker(
    sims: SimPair, make_service: MakeService
) -> None:
    svc = started(make_service, sims, IXM_NOTE_MAX_CHARS="500")
    huge = "x" * 1_000_000
    response, response_ev = paged(svc, sims, Owner="jsmith")
    annotated, annotated_ev = paged(svc, sims, Owner="jsmith")
    sims.xmatters.respond(response_ev, person="jsmith", response="Acknowledge", comment=huge)
    sims.xmatters.comment(annotated_ev, person="jsmith", text=huge)
    cycle(svc, sims)
    marker = " …[truncated] ]"
    for rec, head in (
        (response, f"{JANE} responded [ Acknowledge ] with comment [ "),
        (annotated, "[xMatters] Jane Smith commented [ "),
    ):
        [note] = notes(sims, rec)
        assert note == head + "x" * (500 - len(head) - len(marker)) + marker
        assert len(note) == 500


# ----- 11. OAuth2 with an expiring token ---------------------------------------------------


def test_oauth_token_expiring_mid_run(sims: SimPair, make_service: MakeService) -> None:
    svc = started(make_service, sims, xmatters_auth="oauth")
    rec, ev = paged(svc, sims)
    sims.xmatters.comment(ev, person="apatel", text="before expiry")
    cycle(svc, sims)
    tokens = len(sims.xmatters.requests("xm.token"))
    assert tokens >= 1
    tick(sims, 16 * 60)  # the access token lives 15 minutes
    sims.xmatters.respond(ev, person="bwong", response="Escalate", device="Work Email")
    cycle(svc, sims)
    assert notes(sims, rec) == [
        "[xMatters] Asha Patel commented [ before expiry ]",
        f"{BEN} responded [ Escalate ]",
    ]
    assert len(sims.xmatters.requests("xm.token")) > tokens  # a new token mid-run


# ----- bookkeeping -----------------------------------------------------------------------


def test_every_record_is_remembered_with_its_note(sims: SimPair, make_service: MakeService) -> None:
    svc = started(make_service, sims)
    rec, ev = paged(svc, sims)
    sims.xmatters.comment(ev, person="apatel", text="one")
    sims.xmatters.respond(ev, person="bwong", response="Escalate", device="Work Email")
    cycle(svc, sims)
    with svc.store.unit() as u:
        seen = u.s.scalars(select(AuditSeen).order_by(AuditSeen.at)).all()
        note_ids = {a.id for a in u.outbox_for(rec) if a.kind == "note"}
        keys = {a.dedupe_key for a in u.s.scalars(select(OutboxAction)) if a.dedupe_key is not None}
    assert {s.type for s in seen} == {"EVENT_ANNOTATED", "RESPONSE_RECEIVED"}
    assert {s.outbox_id for s in seen} == note_ids
    assert keys == {f"audit:{s.audit_id}" for s in seen}


def test_response_option_as_a_list_is_read_too(sims: SimPair, make_service: MakeService) -> None:
    """The reference is unsure whether the chosen option comes as ``option`` or as
    ``options.data``; the simulator sends the first, so the second is fed in directly."""
    svc = make_service()
    wb = WriteBack(
        svc.store, svc.xm, WritebackConfig(response_actions={"opt-1": ResponseAction.ASSIGN})
    )
    record = {
        "id": "a1",
        "type": "RESPONSE_RECEIVED",
        "response": {
            "options": {"data": [{"id": "OPT-1", "text": "Take it"}]},
            "notification": {"recipient": {"targetName": "jsmith|Mobile App"}},
        },
    }
    note, assign, _, _ = wb._note_for(record, {"jsmith": ("Jane", "Smith")})
    assert note == f"{JANE} responded [ Take it ]"
    assert assign == {"owner": "jsmith", "status": "Active"}
