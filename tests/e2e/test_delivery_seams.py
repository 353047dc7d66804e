"""Delivery at the seams, end to end: each scenario once lost or doubled a page or note.

Slow triggers and flood control, proof that a page landed, trigger-only setups,
transient 401s, notes that keep failing, and `retry` of a dead action. Each test
drives both simulators over real HTTP; time moves only through the shared sim clock
(a ``latency`` fault moves it too, as a slow real service would).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest

from daemon.config import load_settings
from daemon.ops.explain import gather_explain, render_explain
from daemon.ops.outbox import action_dict, retry_actions
from daemon.ops.status import gather_status, render_status
from daemon.service import Service
from daemon.simulators.harness import SimPair
from tests.conftest import MakeService

pytestmark = pytest.mark.e2e

NET = "Network Operations"
DB = "Database Team"
TRIGGERS = "/triggers"
IVANTI_RECORD = r"/businessobject/incidents\("


def tick(sims: SimPair, seconds: float = 30) -> None:
    sims.clock.advance(seconds)


def started(make_service: MakeService, sims: SimPair, **env: str) -> Service:
    svc = make_service(**env)
    report = svc.cycle()
    assert report.ok, report.error
    tick(sims)
    return svc


def created(sims: SimPair, rec: str | None = None) -> list[dict[str, Any]]:
    """The triggers whose flow created an event, once the flows have had time to run."""
    sims.settle()
    return [
        t
        for t in sims.xmatters.triggers()
        if t.get("outcome") == "created" and (rec is None or t["payload"].get("RecId") == rec)
    ]


def paged_event(svc: Service, sims: SimPair, rec: str) -> list[dict[str, Any]]:
    """The incident's live events once its flows ran and the daemon saw them (an
    asynchronous flow creates the event after the trigger answered)."""
    sims.settle()
    svc.deliver_job()
    return sims.xmatters.live_events(rec)


def actions(svc: Service, rec: str, kind: str | None = None) -> list[dict[str, Any]]:
    with svc.store.unit() as u:
        return [action_dict(a) for a in u.outbox_for(rec) if kind in (None, a.kind)]


def deliver_until(
    svc: Service, sims: SimPair, done: Any, *, step: float = 5, rounds: int = 60
) -> None:
    for _ in range(rounds):
        svc.deliver_job()
        if done():
            svc.deliver_job()  # the daemon sees the events the last flows made
            return
        tick(sims, step)
    raise AssertionError("delivery did not settle")


# ----- 1. flood control counts a page when xMatters accepts it ---------------------------


def test_a_slow_trigger_does_not_push_the_next_page_into_a_full_minute(
    sims: SimPair, make_service: MakeService
) -> None:
    svc = started(make_service, sims)
    sims.xmatters.faults.inject("latency", TRIGGERS, delay=1.0)  # the first page takes 1 s
    recs = [
        str(sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)["RecId"]) for _ in range(5)
    ]
    svc.poll_job()
    svc.deliver_job()
    assert len(created(sims)) == 4  # xMatters counted the first one 1 s late
    # 60.5 s after the first page *started*: only 59.5 s after xMatters counted it
    tick(sims, 59.5)
    svc.deliver_job()
    assert sims.xmatters.suppressions() == [], "paged into a full flood-control minute"
    deliver_until(svc, sims, lambda: len(created(sims)) == 5)
    assert sorted(t["payload"]["RecId"] for t in created(sims)) == sorted(recs)
    assert sims.xmatters.suppressions() == []


def test_a_suppressed_page_is_not_done_and_goes_out_again(
    sims: SimPair, make_service: MakeService, caplog: pytest.LogCaptureFixture
) -> None:
    # xMatters suppresses more than the daemon expects (a stricter rule on the tenant)
    sims.xmatters.set_flood_control(True, 1)
    svc = started(make_service, sims, IXM_EVENT_TIMEOUT="30")
    first = str(sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)["RecId"])
    second = str(sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)["RecId"])
    svc.poll_job()
    svc.deliver_job()
    sims.settle()
    [suppressed] = sims.xmatters.suppressions()
    # the one delivered second (same LastModDateTime: RecId order decides) was dropped
    if suppressed["rec_id"] == first:
        first, second = second, first
    [page] = actions(svc, second, "page")
    assert page["state"] == "pending" and page["accepted"], page  # not "done"
    with caplog.at_level(logging.WARNING, logger="daemon.deliverer"):
        deliver_until(svc, sims, lambda: len(created(sims, second)) == 1, step=31)
    assert any("no event appeared" in r.getMessage() for r in caplog.records)
    [page] = actions(svc, second, "page")
    assert page["state"] == "done", page
    assert len(created(sims, first)) == 1 and len(created(sims, second)) == 1
    with svc.store.unit() as u:
        story = render_explain(
            gather_explain(u, second, now=sims.clock.now()) or {}, sims.clock.now()
        )
    assert "no event for it appeared" in story


# ----- 2. proof that a page landed belongs to that page ----------------------------------


def _web_connection_page(svc: Service, sims: SimPair, inc: dict[str, Any]) -> None:
    """An event the old Web Connection left for the incident (the daemon never knew it)."""
    svc.xm.trigger(
        {
            "RecId": inc["RecId"],
            "IncidentID": str(inc["IncidentNumber"]),
            "Type": "New Incident",
            "Owner": "",
            "OwnerTeam": inc["OwnerTeam"],
            "Summary": inc.get("Subject", ""),
        }
    )
    sims.settle()  # its flow has run


def test_an_unknown_outcome_is_not_settled_by_another_pages_event(
    sims: SimPair, make_service: MakeService
) -> None:
    inc = sims.ivanti.create_incident(Priority="1", OwnerTeam=NET, Subject="disk full")
    rec = str(inc["RecId"])
    svc = started(make_service, sims)  # baseline: already open, nobody paged
    _web_connection_page(svc, sims, inc)
    assert len(sims.xmatters.live_events(rec)) == 1
    sims.ivanti.edit_incident(rec, OwnerTeam=DB)
    sims.xmatters.faults.inject("drop_before", TRIGGERS)  # the Reassigned trigger is lost
    svc.poll_job()
    svc.deliver_job()
    tick(sims, 60)  # past the request's lifetime: now the daemon looks
    deliver_until(svc, sims, lambda: actions(svc, rec, "page")[0]["state"] == "done")
    teams = [t["payload"]["OwnerTeam"] for t in created(sims, rec)]
    assert teams == [NET, DB], "the Reassigned page to the new team was never sent"
    [page] = actions(svc, rec, "page")
    assert "re-sent" in page["outcome"]


def test_a_landed_page_found_by_its_type_and_recipient_is_not_sent_twice(
    sims: SimPair, make_service: MakeService
) -> None:
    svc = started(make_service, sims)
    rec = str(sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)["RecId"])
    # xMatters acts, the answer is lost; and requestId look-ups find nothing (a flow)
    sims.xmatters.faults.inject("drop_after", TRIGGERS)
    svc.poll_job()
    svc.deliver_job()
    assert len(created(sims, rec)) == 1
    tick(sims, 60)
    deliver_until(svc, sims, lambda: actions(svc, rec, "page")[0]["state"] == "done")
    assert len(created(sims, rec)) == 1, "paged twice"
    [page] = actions(svc, rec, "page")
    assert "not re-sent" in page["outcome"]


# ----- 3. trigger-only setups ------------------------------------------------------------


def _trigger_only(sims: SimPair, tmp_path: Path) -> Service:
    env = sims.daemon_env(tmp_path / "state.db")
    for name in ("XMATTERS_BASE_URL", "XMATTERS_USERNAME", "XMATTERS_PASSWORD"):
        env.pop(name)
    env.pop("XMATTERS_FORM_TRIGGER_URL")
    env["XMATTERS_TRIGGER_URL"] = (
        f"{sims.xmatters.trigger_url}?apiKey={sims.xmatters.trigger_api_key}"
    )
    env["IXM_WRITEBACK"] = "false"
    env["XMATTERS_TIMEOUT"] = "1"
    return Service(load_settings(env, env_file=os.devnull), now=sims.clock.now)


@pytest.mark.parametrize("fault", ["status", "timeout", "drop_after"])
def test_trigger_only_setup_resends_after_a_failed_trigger(
    sims: SimPair, tmp_path: Path, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    svc = _trigger_only(sims, tmp_path)
    try:
        assert svc.cycle().ok
        tick(sims)
        rec = str(sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)["RecId"])
        spec: dict[str, Any] = {"status": 503} if fault == "status" else {}
        if fault == "timeout":
            spec["delay"] = 1.5  # past XMATTERS_TIMEOUT
        sims.xmatters.faults.inject(fault, TRIGGERS, **spec)  # type: ignore[arg-type]
        svc.poll_job()
        svc.deliver_job()
        tick(sims, 60)
        with caplog.at_level(logging.WARNING, logger="daemon.deliverer"):
            deliver_until(svc, sims, lambda: actions(svc, rec, "page")[0]["state"] != "pending")
        [page] = actions(svc, rec, "page")
        assert page["state"] == "done", page  # not dead-lettered for "no REST credentials"
        expected = 2 if fault == "drop_after" else 1  # the peer acted: said aloud, below
        assert len(created(sims, rec)) == expected
        assert "may have paged twice" in page["outcome"]
        assert any("may page twice" in r.getMessage() for r in caplog.records)
    finally:
        svc.close()


# ----- 4. a transient 401 --------------------------------------------------------------


def test_a_transient_401_from_xmatters_delays_the_page_and_loses_nothing(
    sims: SimPair, make_service: MakeService, caplog: pytest.LogCaptureFixture
) -> None:
    svc = started(make_service, sims)
    rec = str(sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)["RecId"])
    sims.xmatters.faults.inject("status", TRIGGERS, status=401, times=2)
    with caplog.at_level(logging.ERROR, logger="daemon.deliverer"):
        svc.poll_job()
        svc.deliver_job()
        with svc.store.unit() as u:
            status = gather_status(u, now=sims.clock.now())
        assert status["delivery"]["auth_failing"] == 1  # `status` shows it
        assert "retrying after a 401" in render_status(status, sims.clock.now())
        deliver_until(svc, sims, lambda: len(created(sims, rec)) == 1, step=10)
    assert [r for r in caplog.records if "401" in r.getMessage()], "no ERROR line for the 401"
    [page] = actions(svc, rec, "page")
    assert page["state"] == "done" and page["attempts"] == 3


def test_a_transient_401_from_ivanti_delays_the_note_and_loses_nothing(
    sims: SimPair, make_service: MakeService
) -> None:
    svc = started(make_service, sims)
    rec = str(sims.ivanti.create_incident(Priority="1", OwnerTeam=NET, Category="Network")["RecId"])
    svc.cycle()
    [ev] = paged_event(svc, sims, rec)
    sims.ivanti.faults.inject("status", IVANTI_RECORD, method="PATCH|PUT", status=401, times=2)
    sims.xmatters.respond(str(ev["id"]), person="jsmith", response="Escalate")
    tick(sims)
    svc.cycle()
    deliver_until(svc, sims, lambda: len(sims.ivanti.notes(rec)) == 1, step=10)
    [note] = actions(svc, rec, "note")
    assert note["state"] == "done", note


# ----- 5. notes never hold up pages --------------------------------------------------------


def test_a_failing_note_does_not_hold_up_a_page_and_falls_back_to_the_note_alone(
    sims: SimPair, make_service: MakeService
) -> None:
    svc = started(make_service, sims)
    rec = str(sims.ivanti.create_incident(Priority="1", OwnerTeam=NET, Category="Network")["RecId"])
    svc.cycle()
    [ev] = paged_event(svc, sims, rec)
    # Ivanti answers 500 to every write that sets an Owner (one that is not a valid login)
    sims.ivanti.faults.inject(
        "status", IVANTI_RECORD, method="PATCH|PUT", status=500, times=0, body='"Owner":'
    )
    sims.xmatters.respond(str(ev["id"]), person="jsmith", response="Assign to me")
    tick(sims)
    svc.cycle()  # the note fails
    [note] = actions(svc, rec, "note")
    assert note["state"] == "pending" and note["attempts"] >= 1
    sims.ivanti.edit_incident(rec, OwnerTeam=DB)
    tick(sims)
    svc.cycle()  # the Reassigned page goes at once, whatever the note does
    assert [t["payload"]["OwnerTeam"] for t in created(sims, rec)] == [NET, DB]
    deliver_until(svc, sims, lambda: actions(svc, rec, "note")[0]["state"] == "done", step=120)
    bodies = [str(n["NotesBody"]) for n in sims.ivanti.notes(rec)]
    assert any("Assign to me" in b for b in bodies), bodies
    deliver_until(svc, sims, lambda: len(sims.ivanti.notes(rec)) == 2, step=5)
    bodies = [str(n["NotesBody"]) for n in sims.ivanti.notes(rec)]
    assert any("Assignment to jsmith failed" in b for b in bodies), bodies
    assert sims.ivanti.incident(rec)["Owner"] != "jsmith"


# ----- 13. retry of a dead action ----------------------------------------------------------


def test_retry_keeps_an_unknown_outcome_and_checks_before_resending(
    sims: SimPair, make_service: MakeService
) -> None:
    svc = started(make_service, sims, IXM_MAX_ATTEMPTS="1")
    rec = str(sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)["RecId"])
    sims.xmatters.faults.inject("drop_after", TRIGGERS)  # landed, answer lost
    svc.poll_job()
    svc.deliver_job()
    tick(sims, 60)
    svc.deliver_job()
    [page] = actions(svc, rec, "page")
    assert page["state"] == "dead", page
    with svc.store.unit() as u:
        requeued, refusals = retry_actions(u, [page["id"]], now=sims.clock.now(), by="alice")
    assert requeued and not refusals
    deliver_until(svc, sims, lambda: actions(svc, rec, "page")[0]["state"] != "pending")
    assert len(created(sims, rec)) == 1, "retry re-sent blindly: paged twice"
    [page] = actions(svc, rec, "page")
    assert page["state"] == "done" and page["requeued_by"] == "alice"
    with svc.store.unit() as u:
        story = render_explain(gather_explain(u, rec, now=sims.clock.now()) or {}, sims.clock.now())
    assert "by alice" in story


def test_retry_after_a_weekend_outage_resets_the_age(
    sims: SimPair, make_service: MakeService
) -> None:
    svc = started(make_service, sims, IXM_MAX_AGE="3600")
    rec = str(sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)["RecId"])
    sims.xmatters.faults.inject("status", TRIGGERS, status=503, times=0)
    svc.poll_job()
    for _ in range(10):
        svc.deliver_job()
        tick(sims, 600)
    [page] = actions(svc, rec, "page")
    assert page["state"] == "dead"
    sims.xmatters.faults.clear()
    tick(sims, 2 * 86400)
    with svc.store.unit() as u:
        retry_actions(u, [page["id"]], now=sims.clock.now())
    deliver_until(svc, sims, lambda: actions(svc, rec, "page")[0]["state"] != "pending")
    [page] = actions(svc, rec, "page")
    assert page["state"] == "done", page
    assert len(created(sims, rec)) == 1


def test_a_dead_page_retried_after_the_incident_was_resolved_is_not_sent(
    sims: SimPair, make_service: MakeService
) -> None:
    svc = started(make_service, sims, IXM_MAX_ATTEMPTS="1")
    rec = str(sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)["RecId"])
    sims.xmatters.faults.inject("status", TRIGGERS, status=503)
    svc.cycle()
    [page] = actions(svc, rec, "page")
    tick(sims, 60)
    svc.deliver_job()
    [page] = actions(svc, rec, "page")
    assert page["state"] == "dead"
    sims.ivanti.edit_incident(
        rec, Status="Resolved", CauseCode="Fixed", Resolution="done", Symptom="x"
    )
    tick(sims)
    svc.cycle()
    with svc.store.unit() as u:
        retry_actions(u, [page["id"]], now=sims.clock.now())
    svc.deliver_job()
    [page] = actions(svc, rec, "page")
    assert page["state"] == "skipped" and "Resolved" in page["outcome"], page
    assert created(sims, rec) == []


def test_a_session_login_that_keeps_failing_backs_off(
    sims: SimPair, make_service: MakeService
) -> None:
    """A wrong password: polls fail, but Ivanti sees one login, not one per poll."""
    svc = make_service(ivanti_auth="session", IVANTI_PASSWORD="wrong-password")
    for _ in range(5):
        assert not svc.cycle().ok
        tick(sims)
    assert len(sims.ivanti.requests("login")) == 1


# ----- event look-ups by RecId: the tenant's spelling, once known, alone -------------------


@pytest.mark.parametrize("reading", ["plain", "suffixed"])
def test_event_lookups_use_the_spelling_that_found_events_alone(
    make_service: MakeService, sims: SimPair, reading: str
) -> None:
    """Whether xMatters' property filter wants ``RecId`` or ``RecId#en`` is open
    (XMATTERS_RECID_PROPERTY tries both). Once one has found events it is the tenant's,
    so looking up an incident that has none costs one request, not one per spelling.
    (Direct mode: each page first ends the incident's live events, found by RecId.)"""
    sims.xmatters.property_filter = reading
    svc = started(make_service, sims, mode="direct")
    first = sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)["RecId"]
    svc.cycle()
    tick(sims)
    sims.ivanti.edit_incident(first, OwnerTeam=DB)  # Reassigned: ends the first event
    svc.cycle()
    assert [e["status"] for e in sims.xmatters.events(first)] == ["TERMINATED", "ACTIVE"]
    tick(sims)
    sims.xmatters.clear_requests()
    second = sims.ivanti.create_incident(Priority="1", OwnerTeam=DB)["RecId"]
    svc.cycle()
    assert len(sims.xmatters.live_events(second)) == 1
    lookups = [
        r.query
        for r in sims.xmatters.requests()
        if r.method == "GET" and f"propertyValue={second}" in r.query
    ]
    want = "propertyName=RecId%23en&" if reading == "suffixed" else "propertyName=RecId&"
    assert len(lookups) == 1 and want in lookups[0] + "&", lookups
