"""The xMatters simulator's switches for the write-back seams: asynchronous flows, events
that end by themselves, and the original workflow's own write-back to Ivanti."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from daemon.simulators.clock import SimClock
from daemon.simulators.harness import SimPair
from daemon.simulators.xmatters import XMattersSimulator
from tests.simulators.test_xmatters_sim import EVENTS, START, USER, fire, incident


@pytest.fixture
def sim() -> Iterator[XMattersSimulator]:
    simulator = XMattersSimulator(clock=SimClock(START))
    simulator.start()
    yield simulator
    simulator.stop()


@pytest.fixture
def rest(sim: XMattersSimulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.url, auth=USER, timeout=5) as client:
        yield client


def by_request(rest: httpx.Client, request_id: str) -> list[dict[str, object]]:
    return list(rest.get(EVENTS, params={"requestId": request_id}).json()["data"])


def test_synchronous_flow_is_the_default(sim: XMattersSimulator, rest: httpx.Client) -> None:
    rid = fire(rest, sim, incident("R1"))
    assert len(by_request(rest, rid)) == 1


def test_asynchronous_flow_creates_the_event_after_its_delay(
    sim: XMattersSimulator, rest: httpx.Client
) -> None:
    sim.set_flows(delay=10)
    rid = fire(rest, sim, incident("R1"))
    assert by_request(rest, rid) == []
    assert sim.triggers()[-1]["outcome"] == "pending"
    terminate = fire(rest, sim, incident("R1", "Terminate"))  # queued behind the create
    sim.clock.advance(9.9)
    assert by_request(rest, rid) == []
    sim.clock.advance(0.1)
    [event] = by_request(rest, rid)
    assert event["status"] == "TERMINATED"  # the Terminate flow ran right after it
    assert event["created"] == "2025-03-01T12:00:10.000Z"
    assert [t["outcome"] for t in sim.triggers()] == ["created", "terminated_only"]
    assert by_request(rest, terminate) == []


def test_flow_that_fails_creates_nothing(sim: XMattersSimulator, rest: httpx.Client) -> None:
    response = rest.post(f"{sim.url}/_sim/flows", json={"delay": 0, "fail_next": 1})
    assert response.json() == {"delay": 0.0, "fail_next": 1}
    rid = fire(rest, sim, incident("R1"))
    assert by_request(rest, rid) == []
    assert sim.triggers()[-1]["outcome"].startswith("error:")
    assert len(by_request(rest, fire(rest, sim, incident("R1")))) == 1  # only the next one


@pytest.mark.parametrize("expiry_audit", ["EVENT_COMPLETED", "EVENT_TERMINATED"])
def test_events_complete_and_expire(expiry_audit: str) -> None:
    sim = XMattersSimulator(clock=SimClock(START), expiry_audit=expiry_audit)
    with sim, httpx.Client(base_url=sim.url, auth=USER, timeout=5) as rest:
        done, gone = (by_request(rest, fire(rest, sim, incident(r)))[0] for r in ("R1", "R2"))
        sim.clock.advance(60)
        assert rest.post(f"{sim.url}/_sim/events/{done['id']}/complete").status_code == 200
        assert rest.post(f"{sim.url}/_sim/events/{gone['id']}/expire").status_code == 200
        again = rest.post(f"{sim.url}/_sim/events/{done['id']}/complete")
        assert again.status_code == 409  # an ended event cannot end again
        for event, audit in ((done, "EVENT_COMPLETED"), (gone, expiry_audit)):
            body = rest.get(f"{EVENTS}/{event['id']}").json()
            assert (body["status"], body["terminated"]) == (
                "TERMINATED",
                "2025-03-01T12:01:00.000Z",
            )
            records = rest.get(
                "/api/xm/1/audits", params={"eventId": event["id"], "auditType": audit}
            ).json()["data"]
            assert [r["at"] for r in records] == ["2025-03-01T12:01:00.000Z"]


def test_workflow_writes_back_to_ivanti_when_switched_on() -> None:
    with SimPair(clock=SimClock(START)) as pair:
        user, (password, _) = next(iter(pair.ivanti.users.items()))
        pair.xmatters.set_workflow_writeback(
            pair.ivanti.url, tenant=pair.ivanti.tenant, username=user, password=password
        )
        rec = str(
            pair.ivanti.create_incident(
                Priority="1", OwnerTeam="Network Operations", Category="Network"
            )["RecId"]
        )
        with httpx.Client(base_url=pair.xmatters.url, auth=USER, timeout=5) as rest:
            rid = fire(rest, pair.xmatters, incident(rec))
            [event] = by_request(rest, rid)
        ev = str(event["id"])
        pair.xmatters.deliver(ev, person="bwong", device="Work Email", status="FAILED")
        pair.xmatters.respond(ev, person="jsmith", response="Assign to me", comment="mine")
        pair.xmatters.comment(ev, person="apatel", text="fyi")
        assert [str(n["NotesBody"]) for n in pair.ivanti.notes(rec)] == [
            "[xMatters] Notification FAILED to bwong|Work Email",
            "[xMatters] Jane Smith | Mobile App responded [ Assign to me ]",
            "[xMatters] Jane Smith commented [ mine ]",
            "[xMatters] Asha Patel commented [ fyi ]",
        ]
        inc = pair.ivanti.incident(rec)
        assert (inc["Owner"], inc["Status"]) == ("jsmith", "Active")
        assert [w["ok"] for w in pair.xmatters.workflow_writes()] == [True] * 4
