"""The fault matrix: every way a peer can fail, and the exact outcome afterwards.

Each case drives the daemon through the simulators with one fault injected, then
keeps cycling until the outbox is empty and asserts the whole outcome: which
triggers xMatters received (and what became of them), which events are live,
which notes Ivanti holds — and that there is nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from daemon.models import Change, Cycle, OutboxAction
from daemon.service import Service
from daemon.simulators.harness import SimPair
from daemon.timeutil import parse_utc
from tests.conftest import MakeService

pytestmark = pytest.mark.e2e

NET = "Network Operations"
DB = "Database Team"
TRIGGERS = "/triggers"
IVANTI_QUERY = r"/businessobject/incidents$"
IVANTI_RECORD = r"/businessobject/incidents\("
XM_EVENTS = r"/api/xm/1/events$"
QUICK_TIMEOUTS = {"IVANTI_TIMEOUT": "0.5", "XMATTERS_TIMEOUT": "0.5"}


# ----- helpers shared by the fault, crash, paging and soak tests ---------------------------


def started(make_service: MakeService, sims: SimPair, **env: str) -> Service:
    """A daemon that has taken its (empty or existing) baseline, clock moved on 30 s."""
    svc = make_service(**env)
    report = svc.cycle()
    assert report.ok, report.error
    assert report.poll is not None and report.poll.kind == "baseline"
    sims.clock.advance(30)
    return svc


def trigger_log(sims: SimPair) -> list[tuple[str, str, str]]:
    """Every trigger xMatters received: (RecId, Type, outcome), in arrival order, once
    their flows have had time to run (``settle``: flows may be asynchronous)."""
    sims.settle()
    out = []
    for t in sims.xmatters.triggers():
        props = t["payload"].get("properties", t["payload"])
        out.append((str(props.get("RecId")), str(props.get("Type")), str(t["outcome"])))
    return out


def pending(svc: Service) -> list[OutboxAction]:
    with svc.store.unit() as u:
        return u.outbox(["pending"])


def settle(svc: Service, sims: SimPair, *, step: float = 61, rounds: int = 30) -> None:
    """Cycle, moving the clock on, until no action is pending (retries and flood waits)."""
    for _ in range(rounds):
        svc.cycle()
        if not pending(svc):
            sims.settle()  # the flows of the last triggers have run
            return
        sims.clock.advance(step)
    raise AssertionError(f"outbox never drained: {[(a.kind, a.outcome) for a in pending(svc)]}")


def actions(svc: Service, rec_id: str) -> list[tuple[str, str]]:
    with svc.store.unit() as u:
        return [(a.kind, a.state) for a in u.outbox_for(rec_id)]


def change_counts(svc: Service) -> dict[str, int]:
    counts: dict[str, int] = {}
    with svc.store.unit() as u:
        for c in u.s.scalars(select(Change)):
            counts[c.rec_id] = counts.get(c.rec_id, 0) + 1
    return counts


def note_texts(sims: SimPair, rec_id: str) -> list[str]:
    return [str(n["NotesBody"]) for n in sims.ivanti.notes(rec_id)]


def live_ids(sims: SimPair, rec_id: str) -> list[str]:
    return [e["id"] for e in sims.xmatters.live_events(rec_id)]


def db_event_ids(svc: Service, rec_id: str) -> list[str]:
    with svc.store.unit() as u:
        return sorted(e.event_id for e in u.events_for(rec_id))


def sim_event_ids(sims: SimPair, rec_id: str) -> list[str]:
    return sorted(e["id"] for e in sims.xmatters.events(rec_id))


def on_query(svc: Service, hook: Callable[[int], None]) -> list[int]:
    """Call ``hook(n)`` before the daemon's n-th Ivanti incident query (1-based).

    A spy on the daemon's own client, so a test can act "between the daemon's page
    requests" (expire a session, edit an incident, arm a fault) at an exact point.
    """
    client = svc.poller.ivanti
    real = client.query_incidents
    calls: list[int] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(len(calls) + 1)
        hook(len(calls))
        return real(*args, **kwargs)

    client.query_incidents = spy  # type: ignore[method-assign]
    return calls


def watermark(svc: Service) -> str | None:
    with svc.store.unit() as u:
        return u.get_state("watermark")


def respond(sims: SimPair, rec_id: str, person: str, response: str, **kw: Any) -> None:
    (event,) = sims.xmatters.live_events(rec_id)
    sims.xmatters.respond(event["id"], person=person, response=response, **kw)


# ----- xMatters trigger faults ------------------------------------------------------------

# (id, fault kwargs, did xMatters act on the faulted request)
TRIGGER_FAULTS: list[tuple[str, dict[str, Any], bool]] = [
    ("429-retry-after", {"kind": "status", "status": 429, "retry_after": 30}, False),
    ("429", {"kind": "status", "status": 429}, False),
    ("500", {"kind": "status", "status": 500}, False),
    ("503", {"kind": "status", "status": 503}, False),
    ("timeout", {"kind": "timeout", "delay": 1.2}, False),
    ("drop-before", {"kind": "drop_before"}, False),
    ("drop-after", {"kind": "drop_after"}, True),
    ("stall-after", {"kind": "stall_after", "delay": 1.2}, True),
    ("malformed", {"kind": "malformed"}, True),
    ("truncated", {"kind": "truncated"}, True),
]
PEOPLE = ("jsmith", "bwong", "apatel", "mgarcia", "lchen", "obrien")


def inject(sim: Any, spec: dict[str, Any], path: str, **extra: Any) -> None:
    kwargs = dict(spec)
    sim.faults.inject(kwargs.pop("kind"), path, **kwargs, **extra)


@pytest.mark.parametrize("mode", ["workflow", "direct"])
def test_trigger_faults_page_exactly_once(
    sims: SimPair, make_service: MakeService, mode: str
) -> None:
    """One incident per fault, one after the other in one daemon: each pages once."""
    svc = started(make_service, sims, mode=mode, **QUICK_TIMEOUTS)
    for n, (name, fault, acted) in enumerate(TRIGGER_FAULTS):
        sims.clock.advance(61)  # each recipient's flood-control minute starts afresh
        before = trigger_log(sims)
        owner = PEOPLE[n % len(PEOPLE)]
        rec = sims.ivanti.create_incident(Priority="1", OwnerTeam=NET, Owner=owner)["RecId"]
        inject(sims.xmatters, fault, TRIGGERS)
        first = svc.cycle()
        assert first.ok, (name, first.error)
        landed = [(rec, "New Incident", "created")] if acted else []
        assert trigger_log(sims)[len(before) :] == landed, name
        settle(svc, sims)
        assert trigger_log(sims)[len(before) :] == [(rec, "New Incident", "created")], name
        assert len(live_ids(sims, rec)) == 1, name
        assert db_event_ids(svc, rec) == sim_event_ids(sims, rec), name
        assert actions(svc, rec) == [("page", "done")], name
        with svc.store.unit() as u:
            (action,) = u.outbox_for(rec)
            outcomes = [a.outcome for a in u.attempts_for(action.id)]
            summary = action.outcome or ""
        if acted:  # the answer was lost; the second attempt looked and found the event
            assert outcomes == ["unknown", "ok"] and "landed" in summary, (name, outcomes)
        else:
            assert len(outcomes) == 2 and outcomes[-1] == "ok", (name, outcomes)
            assert "landed" not in summary, name
    assert sims.xmatters.suppressions() == []


def test_terminate_faults_end_the_event_with_one_request_each(
    sims: SimPair, make_service: MakeService
) -> None:
    """A Terminate trigger whose answer was lost is not sent again when nothing of the
    incident is live any more; one that was refused before acting is."""
    svc = started(make_service, sims, **QUICK_TIMEOUTS)
    for n, (name, fault, acted) in enumerate(TRIGGER_FAULTS):
        sims.clock.advance(61)
        rec = sims.ivanti.create_incident(Priority="1", Owner=PEOPLE[n % len(PEOPLE)])["RecId"]
        settle(svc, sims)
        before = trigger_log(sims)
        sims.ivanti.edit_incident(rec, Status="Resolved")
        inject(sims.xmatters, fault, TRIGGERS)
        svc.cycle()
        assert trigger_log(sims)[len(before) :] == (
            [(rec, "Terminate", "terminated_only")] if acted else []
        ), name
        settle(svc, sims)
        assert trigger_log(sims)[len(before) :] == [(rec, "Terminate", "terminated_only")], name
        assert live_ids(sims, rec) == [], name
        assert actions(svc, rec) == [("page", "done"), ("terminate", "done")], name
        with svc.store.unit() as u:
            assert u.live_events(rec) == [], name


def test_retry_after_is_honoured_exactly(sims: SimPair, make_service: MakeService) -> None:
    svc = started(make_service, sims)
    rec = sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)["RecId"]
    sims.xmatters.faults.inject("status", TRIGGERS, status=429, retry_after=30)
    t0 = sims.clock.now()
    svc.cycle()
    with svc.store.unit() as u:
        (action,) = u.outbox_for(rec)
        assert action.next_attempt_at == t0 + timedelta(seconds=30)
        assert action.last_error is not None and "429" in action.last_error
    sims.clock.advance(29)
    svc.deliver_job()
    assert trigger_log(sims) == []
    sims.clock.advance(1)
    svc.deliver_job()
    assert trigger_log(sims) == [(rec, "New Incident", "created")]


def test_429_without_retry_after_backs_off_exponentially(
    sims: SimPair, make_service: MakeService
) -> None:
    svc = started(make_service, sims)
    rec = sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)["RecId"]
    sims.xmatters.faults.inject("status", TRIGGERS, status=429, times=3)
    delays: list[float] = []
    for _ in range(3):
        now = sims.clock.now()
        if delays:
            svc.deliver_job()
        else:
            svc.cycle()
        with svc.store.unit() as u:
            (action,) = u.outbox_for(rec)
            delays.append((action.next_attempt_at - now).total_seconds())
        sims.clock.advance(delays[-1])
    # base 2 s doubling, jittered into [50 %, 100 %] of the step
    for n, delay in enumerate(delays):
        assert 2 * 2**n * 0.5 <= delay <= 2 * 2**n, delays
    svc.deliver_job()
    assert trigger_log(sims) == [(rec, "New Incident", "created")]


# ----- xMatters event look-up faults ------------------------------------------------------

LOOKUP_FAULTS: list[tuple[str, dict[str, Any]]] = [
    ("malformed", {"kind": "malformed"}),
    ("truncated", {"kind": "truncated"}),
    ("503", {"kind": "status", "status": 503}),
    ("drop-before", {"kind": "drop_before"}),
]


def test_event_lookup_fault_after_accepted_trigger_does_not_resend(
    sims: SimPair, make_service: MakeService
) -> None:
    """The trigger was accepted (202 + requestId); only the look-up of its event failed.
    The page happened: re-sending it would make a second event."""
    svc = started(make_service, sims)
    for n, (name, fault) in enumerate(LOOKUP_FAULTS):
        sims.clock.advance(61)
        before = trigger_log(sims)
        rec = sims.ivanti.create_incident(Priority="1", Owner=PEOPLE[n])["RecId"]
        inject(sims.xmatters, fault, XM_EVENTS, method="GET")
        settle(svc, sims)
        assert trigger_log(sims)[len(before) :] == [(rec, "New Incident", "created")], name
        assert actions(svc, rec) == [("page", "done")], name
        svc.cycle()  # the write-back job's discovery learns the event id
        assert db_event_ids(svc, rec) == sim_event_ids(sims, rec), name


def test_failed_check_after_unknown_outcome_still_checks_next_time(
    sims: SimPair, make_service: MakeService
) -> None:
    """Unknown outcome, then the look-up that should settle it fails too: the next
    attempt must look again, not re-send blindly."""
    svc = started(make_service, sims)
    for n, (name, fault) in enumerate(LOOKUP_FAULTS):
        sims.clock.advance(61)
        before = trigger_log(sims)
        rec = sims.ivanti.create_incident(Priority="1", Owner=PEOPLE[n])["RecId"]
        sims.xmatters.faults.inject("drop_after", TRIGGERS)
        svc.cycle()
        assert trigger_log(sims)[len(before) :] == [(rec, "New Incident", "created")], name
        inject(sims.xmatters, fault, XM_EVENTS, method="GET", times=2)
        settle(svc, sims)
        assert trigger_log(sims)[len(before) :] == [(rec, "New Incident", "created")], name
        assert actions(svc, rec) == [("page", "done")], name
        assert db_event_ids(svc, rec) == sim_event_ids(sims, rec), name


# ----- Ivanti query faults ----------------------------------------------------------------

QUERY_FAULTS: list[tuple[str, dict[str, Any]]] = [
    ("429-retry-after", {"kind": "status", "status": 429, "retry_after": 5}),
    ("429", {"kind": "status", "status": 429}),
    ("500", {"kind": "status", "status": 500}),
    ("503", {"kind": "status", "status": 503}),
    ("timeout", {"kind": "timeout", "delay": 1.2}),
    ("drop-before", {"kind": "drop_before"}),
    ("drop-after", {"kind": "drop_after"}),
    ("malformed", {"kind": "malformed"}),
    ("truncated", {"kind": "truncated"}),
]


def test_failed_poll_fails_cleanly_and_next_poll_recovers(
    sims: SimPair, make_service: MakeService
) -> None:
    known = sims.ivanti.create_incident(Priority="3", OwnerTeam=NET)["RecId"]
    svc = started(make_service, sims, **QUICK_TIMEOUTS)
    expected_changes = {known: 1}
    for n, (name, fault) in enumerate(QUERY_FAULTS):
        sims.clock.advance(61)
        before, mark = trigger_log(sims), watermark(svc)
        new = sims.ivanti.create_incident(Priority="1", Owner=PEOPLE[n % len(PEOPLE)])["RecId"]
        sims.ivanti.edit_incident(known, Priority="2" if n % 2 == 0 else "4")
        inject(sims.ivanti, fault, IVANTI_QUERY, method="GET")
        report = svc.cycle()
        assert not report.ok and report.error, name
        assert watermark(svc) == mark, name
        with svc.store.unit() as u:
            last = u.last_cycles("poll", limit=1)[0]
            assert last.ok is False and last.error, name
            assert u.outbox(["pending"]) == [], name
        assert trigger_log(sims) == before, name
        sims.clock.advance(30)
        settle(svc, sims)
        upgrade = (known, "Priority Upgrade", "created")
        downgrade = (known, "Terminate", "terminated_only")
        assert sorted(trigger_log(sims)[len(before) :]) == sorted(
            [(new, "New Incident", "created"), upgrade if n % 2 == 0 else downgrade]
        ), name
        expected_changes[known] += 1
        expected_changes[new] = 1
        assert change_counts(svc) == expected_changes, name


def test_fault_in_the_middle_of_paging_loses_and_doubles_nothing(
    sims: SimPair, make_service: MakeService
) -> None:
    svc = started(make_service, sims, IXM_PAGE_SIZE="10")
    recs = []
    for i in range(25):
        recs.append(sims.ivanti.create_incident(Priority="1" if i == 17 else "3")["RecId"])
        sims.clock.advance(1)

    def hook(n: int) -> None:
        if n == 2:
            sims.ivanti.faults.inject("status", IVANTI_QUERY, method="GET", status=503)

    on_query(svc, hook)
    report = svc.cycle()
    assert not report.ok
    committed = change_counts(svc)
    assert 0 < len(committed) < 25  # the first page was committed before the failure
    sims.clock.advance(30)
    settle(svc, sims)
    assert change_counts(svc) == {r: 1 for r in recs}
    assert trigger_log(sims) == [(recs[17], "New Incident", "created")]


# ----- authentication expiring mid-cycle ------------------------------------------------------


def test_ivanti_session_expiring_between_pages(sims: SimPair, make_service: MakeService) -> None:
    svc = started(make_service, sims, ivanti_auth="session", IXM_PAGE_SIZE="10")
    logins_before = len(sims.ivanti.requests("login"))
    recs = []
    for i in range(35):
        recs.append(sims.ivanti.create_incident(Priority="2" if i == 33 else "4")["RecId"])
        sims.clock.advance(1)
    on_query(svc, lambda n: sims.ivanti.expire_sessions() if n in (2, 3) else None)
    report = svc.cycle()
    assert report.ok, report.error
    assert change_counts(svc) == {r: 1 for r in recs}
    assert trigger_log(sims) == [(recs[33], "New Incident", "created")]
    # one fresh login per expiry, each followed by the refused request repeated once
    assert len(sims.ivanti.requests("login")) == logins_before + 2
    refused = [r for r in sims.ivanti.requests("incidents.query") if r.status == 401]
    assert len(refused) == 2


def test_oauth_token_expiring(sims: SimPair, make_service: MakeService) -> None:
    svc = started(make_service, sims, xmatters_auth="oauth")
    first = sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)["RecId"]
    settle(svc, sims)
    tokens_before = len(sims.xmatters.requests("xm.token"))
    sims.clock.advance(16 * 60)  # past the 15-minute access token
    second = sims.ivanti.create_incident(Priority="2", OwnerTeam=DB)["RecId"]
    settle(svc, sims)
    assert trigger_log(sims) == [
        (first, "New Incident", "created"),
        (second, "New Incident", "created"),
    ]
    rejected = [r for r in sims.xmatters.requests() if r.status == 401]
    assert len(rejected) == 1  # the expired token, once; then refreshed and repeated
    assert len(sims.xmatters.requests("xm.token")) == tokens_before + 1
    assert db_event_ids(svc, second) == sim_event_ids(sims, second)


# ----- values too long for the xMatters form ------------------------------------------------


@pytest.mark.parametrize("mode", ["direct", "workflow"])
def test_summary_too_long_for_the_form_is_truncated_and_pages(
    sims: SimPair, make_service: MakeService, mode: str
) -> None:
    """The form caps Summary at 255 characters. Direct mode would get a 400; workflow
    mode a 202 whose flow then fails silently. Either way nobody would be paged, so
    the daemon cuts the value to the documented maximum, with a visible marker."""
    svc = started(make_service, sims, mode=mode)
    subject = "Core switch down in building 7; " + "x" * 300
    rec = sims.ivanti.create_incident(Priority="1", OwnerTeam=NET, Subject=subject)["RecId"]
    settle(svc, sims)
    assert trigger_log(sims) == [(rec, "New Incident", "created")]
    (event,) = sims.xmatters.events(rec)
    summary = event["properties"]["Summary"]
    assert len(summary) == 255
    assert summary.startswith("Core switch down in building 7; xxx")
    assert summary.endswith("…[truncated]")
    assert actions(svc, rec) == [("page", "done")]


def test_form_validation_error_is_dead_lettered_with_its_reason(
    sims: SimPair, make_service: MakeService
) -> None:
    """A 400 the daemon cannot fix (a response option the form does not have): dead,
    with xMatters' errorDetails in the reason, and nothing retried."""
    svc = started(
        make_service,
        sims,
        mode="direct",
        XMATTERS_RESPONSES_GROUP="0b7e2f44-1d2c-4b8e-9d7a-6f5e4d3c2b1a",
    )
    rec = sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)["RecId"]
    svc.cycle()
    assert actions(svc, rec) == [("page", "dead")]
    with svc.store.unit() as u:
        (action,) = u.outbox_for(rec)
        reason = action.outcome or ""
    assert "refused" in reason and "400" in reason
    assert "responseOptions[0]/id" in reason
    sims.clock.advance(3600)
    svc.cycle()
    assert len(sims.xmatters.requests("xm.trigger")) == 1  # never re-sent
    assert sims.xmatters.events(rec) == []


# ----- Ivanti refusing or losing a write-back --------------------------------------------------


def test_ivanti_refusing_the_assignment_still_writes_the_note(
    sims: SimPair, make_service: MakeService
) -> None:
    svc = started(make_service, sims)
    rec = sims.ivanti.create_incident(Priority="1", OwnerTeam=NET, Category="")["RecId"]
    settle(svc, sims)
    respond(sims, rec, "jsmith", "Assign to me")
    sims.clock.advance(30)
    settle(svc, sims)
    notes = note_texts(sims, rec)
    assert notes[0] == "[xMatters] Jane Smith | Mobile App responded [ Assign to me ]"
    assert notes[1].startswith("[xMatters] Assignment to jsmith failed: Ivanti said:")
    assert "Category" in notes[1]
    assert len(notes) == 2
    assert sims.ivanti.incident(rec)["Owner"] == ""
    # the daemon's own note writes bumped LastModDateTime: no transition, no page
    sims.clock.advance(30)
    settle(svc, sims)
    assert trigger_log(sims) == [(rec, "New Incident", "created")]
    assert note_texts(sims, rec) == notes


def test_assignment_in_flight_is_not_read_back_as_a_change(
    sims: SimPair, make_service: MakeService
) -> None:
    """The daemon records its own Owner/Status write before sending it. While that
    write's outcome is unknown, the polls re-read the incident unchanged at the same
    LastModDateTime: that difference is the daemon's pending write, not an edit."""
    svc = started(make_service, sims)
    rec = sims.ivanti.create_incident(Priority="1", OwnerTeam=NET, Category="Network")["RecId"]
    settle(svc, sims)
    sims.ivanti.faults.inject("drop_before", IVANTI_RECORD, method="PATCH|PUT", times=2)
    respond(sims, rec, "jsmith", "Assign to me")
    sims.clock.advance(30)
    settle(svc, sims, step=20)
    sims.clock.advance(30)
    svc.cycle()  # reads the daemon's own write back
    assert sims.ivanti.incident(rec)["Owner"] == "jsmith"
    assert note_texts(sims, rec) == [
        "[xMatters] Jane Smith | Mobile App responded [ Assign to me ]"
    ]
    assert trigger_log(sims) == [(rec, "New Incident", "created")]
    with svc.store.unit() as u:
        owners = [(c.prev_owner, c.owner, c.transition) for c in u.changes_for(rec)]
    # first sighting, then the daemon's own write read back once: never a revert
    assert owners == [(None, "", "New Incident"), ("jsmith", "jsmith", None)]


def test_ivanti_refusing_a_note_dead_letters_it(sims: SimPair, make_service: MakeService) -> None:
    svc = started(make_service, sims)
    rec = sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)["RecId"]
    settle(svc, sims)
    sims.ivanti.faults.inject("status", IVANTI_RECORD, method="PATCH|PUT", status=400)
    respond(sims, rec, "bwong", "Escalate")
    sims.clock.advance(30)
    svc.cycle()
    assert actions(svc, rec) == [("page", "done"), ("note", "dead")]
    with svc.store.unit() as u:
        note = u.outbox_for(rec)[1]
        assert (note.outcome or "").startswith("refused: ivanti update: HTTP 400")
    assert note_texts(sims, rec) == []


WRITE_FAULTS: list[tuple[str, dict[str, Any]]] = [
    ("500", {"kind": "status", "status": 500}),
    ("503-retry-after", {"kind": "status", "status": 503, "retry_after": 10}),
    ("429", {"kind": "status", "status": 429}),
    ("timeout", {"kind": "timeout", "delay": 1.2}),
    ("drop-before", {"kind": "drop_before"}),
    ("drop-after", {"kind": "drop_after"}),
    ("malformed", {"kind": "malformed"}),
    ("truncated", {"kind": "truncated"}),
]


def test_note_write_faults_write_each_note_exactly_once(
    sims: SimPair, make_service: MakeService
) -> None:
    svc = started(make_service, sims, **QUICK_TIMEOUTS)
    rec = sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)["RecId"]
    settle(svc, sims)
    expected: list[str] = []
    for name, fault in WRITE_FAULTS:
        inject(sims.ivanti, fault, IVANTI_RECORD, method="PATCH|PUT")
        respond(sims, rec, "bwong", "Escalate", comment=f"fault {name}")
        sims.clock.advance(30)
        settle(svc, sims)
        expected.append(
            f"[xMatters] Ben Wong | Mobile App responded [ Escalate ] with comment [ fault {name} ]"
        )
        assert note_texts(sims, rec) == expected, name
    with svc.store.unit() as u:
        assert [(a.kind, a.state) for a in u.outbox_for(rec)] == [("page", "done")] + [
            ("note", "done")
        ] * len(WRITE_FAULTS)
    assert trigger_log(sims) == [(rec, "New Incident", "created")]


# ----- incidents that vanish or arrive broken -------------------------------------------------


def test_incident_deleted_between_polls_is_terminated_by_the_sweep(
    sims: SimPair, make_service: MakeService
) -> None:
    svc = started(make_service, sims)
    gone = sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)["RecId"]
    stays = sims.ivanti.create_incident(Priority="1", OwnerTeam=DB)["RecId"]
    settle(svc, sims)
    sims.ivanti.delete_incident(gone)
    sims.clock.advance(30)
    settle(svc, sims)
    assert live_ids(sims, gone) != []  # the incremental poll cannot see a deletion
    report = svc.reconcile_job()
    assert report.changes == 1
    settle(svc, sims)
    assert live_ids(sims, gone) == []
    assert len(live_ids(sims, stays)) == 1
    assert sorted(trigger_log(sims)) == sorted(
        [
            (gone, "New Incident", "created"),
            (stays, "New Incident", "created"),
            (gone, "Terminate", "terminated_only"),
        ]
    )
    assert [t["rec_id"] for t in sims.xmatters.terminations()] == [gone]
    svc.reconcile_job()
    settle(svc, sims)
    assert len(trigger_log(sims)) == 3  # a second sweep changes nothing
    with svc.store.unit() as u:
        row = u.incident(gone)
        assert row is not None and row.deleted and not row.alerting


CORRUPTIONS: list[tuple[dict[str, Any], str]] = [
    ({"drop": ["LastModDateTime"]}, "LastModDateTime is missing"),
    ({"drop": ["Status"]}, "Status is missing"),
    ({"drop": ["IncidentNumber"]}, "IncidentNumber is missing"),
    ({"IncidentNumber": "twelve"}, "IncidentNumber 'twelve' is not a whole number"),
    ({"LastModDateTime": "yesterday"}, "LastModDateTime 'yesterday' is not an ISO-8601"),
    ({"Priority": {"level": 1}}, "Priority is an object"),
]


def test_records_missing_required_fields_are_kept_aside(
    sims: SimPair, make_service: MakeService
) -> None:
    svc = started(make_service, sims)
    for n, (corruption, problem) in enumerate(CORRUPTIONS):
        sims.clock.advance(61)
        before = trigger_log(sims)
        good = sims.ivanti.create_incident(Priority="1", Owner=PEOPLE[n])["RecId"]
        bad = sims.ivanti.create_incident(Priority="1", OwnerTeam=DB)["RecId"]
        sims.ivanti.corrupt_incident(bad, **corruption)
        report = svc.cycle()
        assert report.ok, report.error
        assert trigger_log(sims)[len(before) :] == [(good, "New Incident", "created")], problem
        with svc.store.unit() as u:
            rejected = u.rejected(limit=1)
            assert u.incident(bad) is None, problem
        assert rejected[0].rec_id == bad and problem in rejected[0].problem, rejected[0].problem
        # once Ivanti serves it whole again the sweep picks it up: paged exactly once
        sims.ivanti.corrupt_incident(bad)
        sims.clock.advance(30)
        svc.reconcile_job()
        settle(svc, sims)
        assert trigger_log(sims)[len(before) :] == [
            (good, "New Incident", "created"),
            (bad, "New Incident", "created"),
        ], problem


def test_record_without_recid_is_kept_aside(sims: SimPair, make_service: MakeService) -> None:
    svc = started(make_service, sims)
    bad = sims.ivanti.create_incident(Priority="1", OwnerTeam=DB)["RecId"]
    sims.ivanti.corrupt_incident(bad, drop=["RecId"])
    assert svc.cycle().ok
    with svc.store.unit() as u:
        (rejected,) = u.rejected()
        assert u.list_incidents() == []
    assert rejected.rec_id is None and rejected.problem == "RecId is missing"
    assert trigger_log(sims) == []


# ----- the clock jumping ----------------------------------------------------------------------


def test_clock_jumping_forward_then_back_loses_and_doubles_nothing(
    sims: SimPair, make_service: MakeService
) -> None:
    svc = started(make_service, sims)
    early = sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)["RecId"]
    settle(svc, sims)
    sims.clock.advance(3600)
    ahead = sims.ivanti.create_incident(Priority="2", OwnerTeam=DB)["RecId"]
    settle(svc, sims)
    before_jump = watermark(svc)
    sims.clock.advance(-3600)
    # changes stamped an hour before what the daemon last saw
    behind = sims.ivanti.create_incident(Priority="1", OwnerTeam="Service Desk")["RecId"]
    sims.ivanti.edit_incident(ahead, Status="Resolved")
    sims.ivanti.edit_incident(early, OwnerTeam=DB)
    for _ in range(3):
        sims.clock.advance(30)
        settle(svc, sims)
    assert sorted(trigger_log(sims)) == sorted(
        [
            (early, "New Incident", "created"),
            (ahead, "New Incident", "created"),
            (behind, "New Incident", "created"),
            (ahead, "Terminate", "terminated_only"),
            (early, "Reassigned", "created"),
        ]
    )
    assert live_ids(sims, ahead) == []
    assert len(live_ids(sims, early)) == 1 and len(live_ids(sims, behind)) == 1
    wm = watermark(svc)
    assert before_jump is not None and wm is not None
    assert parse_utc(wm) <= sims.clock.now()  # the cursor followed the server back
    # and the clock catching up again replays nothing
    sims.clock.advance(3700)
    settle(svc, sims)
    assert len(trigger_log(sims)) == 5


def test_clock_jump_back_with_a_retry_pending(sims: SimPair, make_service: MakeService) -> None:
    """A retry scheduled before the clock went back must not wait for the lost hour."""
    svc = started(make_service, sims)
    sims.clock.advance(3600)
    rec = sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)["RecId"]
    sims.xmatters.faults.inject("status", TRIGGERS, status=503)
    svc.cycle()
    assert trigger_log(sims) == []
    sims.clock.advance(-3600)
    for _ in range(3):
        sims.clock.advance(61)
        svc.cycle()
    assert trigger_log(sims) == [(rec, "New Incident", "created")]


def test_cycles_table_records_every_failure(sims: SimPair, make_service: MakeService) -> None:
    svc = started(make_service, sims)
    sims.ivanti.faults.inject("status", IVANTI_QUERY, method="GET", status=503, times=2)
    assert not svc.cycle().ok
    assert not svc.cycle().ok
    assert svc.cycle().ok
    with svc.store.unit() as u:
        rows = list(u.s.scalars(select(Cycle).order_by(Cycle.id)))
    assert [(c.kind, c.ok) for c in rows] == [
        ("baseline", True),
        ("poll", False),
        ("poll", False),
        ("poll", True),
    ]
    assert all("503" in (c.error or "") for c in rows if c.ok is False)
