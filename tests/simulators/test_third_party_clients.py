"""Public third-party clients of both APIs, driven against the simulators unchanged.

Issue 15: a simulator kinder than (or merely different from) the real service hides the
daemon's bugs; a client written by someone else against a real tenant shows where the
simulator differs. Each client gets the simulator's base URL and nothing else.

* **xMatters**: ``python-xmatters`` 1.1.1 (PyPI; hcallen/python-xmatters, whose tests
  were recorded against a real tenant; the reference's S-PYX). It builds ``https://``
  URLs whatever it is given, so the simulator serves TLS here (``SimServer.start(tls=)``,
  a throwaway CA from ``trustme``, trusted through ``REQUESTS_CA_BUNDLE``).
* **Ivanti ISM / Neurons for ITSM**: no public Python client is installable. Searched:
  PyPI (every name containing "ivanti": only ``datadog-ivanti-connect-secure`` and
  ``ivantauto``, both for Ivanti's VPN; also "heat", "ism", "saasit", "frontrange"), the
  npm registry (no Ivanti package), and GitHub: the reference's sources (rapid7
  insightconnect-plugins ``ivanti_service_manager``, netskope ``ivanti_itsm``, the n8n
  nodes, tyrunasj/ivanti-mcp-standalone) are plugins of their own frameworks or not
  Python, none is published to PyPI, and a git dependency cannot install here (pip
  reaches PyPI only). Generic OData v4 clients on PyPI (``python-odata``, ``pyodata``)
  read ``$metadata`` at the service root, ``/api/odata/businessobject/$metadata``, which
  a real tenant answers 404 ISM_4004 (ivanti-api.md §0: it lives at
  ``/api/odata/incidents/$metadata``), so none drives a real tenant unchanged either;
  a simulator that let one would be kinder than Ivanti. The Ivanti simulator keeps its
  own tests (test_ivanti_sim.py), ``$metadata`` by graph name among them.

Calls a client makes that fail for a reason of the simulator's that belongs to another
piece of work are marked xfail with that reason (not strict: they pass once it is done).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
import xmatters
import xmatters.errors

from daemon.simulators.clock import SimClock
from daemon.simulators.xmatters import XMattersSimulator


@pytest.fixture(scope="module")
def ca_bundle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[trustme.CA, Path]]:
    ca = trustme.CA()
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    yield ca, path


@pytest.fixture
def sim(
    ca_bundle: tuple[trustme.CA, Path], monkeypatch: pytest.MonkeyPatch
) -> Iterator[XMattersSimulator]:
    ca, path = ca_bundle
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(path))  # how requests is told to trust a CA
    s = XMattersSimulator(SimClock(frozen=True))
    s.start(tls=ctx)
    assert s.url.startswith("https://")
    yield s
    s.stop()


def _login(sim: XMattersSimulator) -> tuple[str, str]:
    return next(iter(sim.users.items()))


@pytest.fixture
def xm(sim: XMattersSimulator) -> Any:
    user, password = _login(sim)
    return xmatters.XMSession(sim.url).set_authentication(username=user, password=password)


def _trigger(sim: XMattersSimulator, rec_id: str, ca: Path) -> dict[str, Any]:
    """python-xmatters has no call for inbound integration triggers (only /api/xm/1):
    the event is made with the form trigger over httpx, as the daemon's form mode does."""
    r = httpx.post(
        sim.form_trigger_url,
        auth=_login(sim),
        verify=ssl.create_default_context(cafile=str(ca)),
        timeout=5,
        json={
            "properties": {"RecId": rec_id, "Summary": "Disk full", "Type": "New Incident"},
            "recipients": [{"id": "jsmith", "recipientType": "PERSON"}],
            "responseOptions": [{"id": o["id"]} for o in sim.user_response_options],
        },
    )
    assert r.status_code == 202, r.text
    event: dict[str, Any] = sim.events(rec_id)[-1]
    return event


@pytest.fixture
def event(sim: XMattersSimulator, ca_bundle: tuple[trustme.CA, Path]) -> dict[str, Any]:
    return _trigger(sim, "R1", ca_bundle[1])


def test_events_list_filter_and_get(xm: Any, sim: XMattersSimulator, event: Any) -> None:
    events = xm.events_endpoint()
    listed = list(events.get_events(status="ACTIVE"))
    assert [(e.id, e.status) for e in listed] == [(event["id"], "ACTIVE")]
    # the daemon's lookup: by property (python-xmatters turns property_name into propertyName)
    by_prop = list(events.get_events(property_name="RecId", property_value="R1"))
    assert [e.id for e in by_prop] == [event["id"]]
    assert events.get_events(property_name="RecId", property_value="nope") == []
    got = events.get_event_by_id(event["id"])
    assert (got.event_id, got.status, got.priority) == (event["eventId"], "ACTIVE", "MEDIUM")
    assert got.created.datetime().tzinfo is not None
    assert got.get_properties()["RecId"] == "R1"
    assert [o.text for o in got.get_response_options()] == ["Acknowledge"]
    assert len(list(got.get_recipients())) == 1
    with pytest.raises(xmatters.errors.NotFoundError):
        events.get_event_by_id("00000000-0000-0000-0000-000000000000")


def test_oauth_password_grant(sim: XMattersSimulator, event: Any) -> None:
    user, password = _login(sim)
    client_id = sorted(sim.oauth_clients)[0]
    xm = xmatters.XMSession(sim.url).set_authentication(
        username=user, password=password, client_id=client_id
    )
    assert xm.con.token["access_token"]
    assert [e.id for e in xm.events_endpoint().get_events()] == [event["id"]]
    assert sim.request_counts()["xm.token"] == 1


def test_responses_and_comments_through_audits(xm: Any, sim: XMattersSimulator, event: Any) -> None:
    sim.respond(event["id"], person="jsmith", response="Acknowledge", comment="on it")
    sim.comment(event["id"], person="jsmith", text="looking")
    got = xm.events_endpoint().get_event_by_id(event["id"])
    responses = list(got.get_audits(event_id=event["id"], audit_type="RESPONSE_RECEIVED"))
    assert [type(a).__name__ for a in responses] == ["AuditResponse"]
    r = responses[0].response
    assert (r.response, r.comment) == ("Acknowledge", "on it")
    assert r.notification is not None and r.received is not None
    everything = list(
        xm.audits_endpoint().get_audits(
            event_id=event["id"], audit_type="RESPONSE_RECEIVED,EVENT_ANNOTATED"
        )
    )
    assert [type(a).__name__ for a in everything] == ["AuditResponse", "AuditAnnotation"]
    assert everything[1].annotation.comment == "looking"


def test_comment_and_terminate(xm: Any, sim: XMattersSimulator, event: Any) -> None:
    got = xm.events_endpoint().get_event_by_id(event["id"])
    note = got.add_annotation({"comment": "Ivanti note: working on it"})
    assert note.comment == "Ivanti note: working on it"
    assert got.update_status("TERMINATED").status == "TERMINATED"
    assert sim.events("R1")[-1]["status"] == "TERMINATED"
    assert xm.events_endpoint().get_events(status="ACTIVE") == []


def test_people_and_groups(xm: Any, sim: XMattersSimulator) -> None:
    people = [p.target_name for p in xm.people_endpoint().get_people()]
    assert "jsmith" in people
    assert xm.people_endpoint().get_person_by_id("jsmith").target_name == "jsmith"
    groups = [g.target_name for g in xm.groups_endpoint().get_groups()]
    assert "Network Operations" in groups


def test_user_deliveries(xm: Any, sim: XMattersSimulator, event: Any) -> None:
    sim.deliver(event["id"], person="jsmith")
    got = xm.events_endpoint().get_event_by_id(event["id"])
    [mine] = [
        d
        for d in got.get_user_delivery_data(at=sim.clock.now().isoformat())
        if d.person.target_name == "jsmith"
    ]
    assert mine.delivery_status == "DELIVERED" and len(mine.notifications) == 1


def test_messages_embed(xm: Any, event: Any) -> None:
    got = xm.events_endpoint().get_event_by_id(event["id"])
    [message] = list(got.get_messages())
    assert message.subject and message.message_type == "STANDARD"


@pytest.mark.xfail(
    reason="python-xmatters reads the comments from an 'annotations' key; the reference "
    "(xmatters-api.md 5.2) documents /annotations as a plain {count,total,data} page, which "
    "the simulator serves, so the client finds none (comments are read through /audits)",
    strict=False,
)
def test_annotations_list(xm: Any, sim: XMattersSimulator, event: Any) -> None:
    sim.comment(event["id"], person="jsmith", text="looking")
    got = xm.events_endpoint().get_event_by_id(event["id"])
    assert [a.comment for a in got.get_annotations()] == ["looking"]


def test_client_retries_a_503_the_simulator_injects(
    xm: Any, sim: XMattersSimulator, event: Any, ca_bundle: tuple[trustme.CA, Path]
) -> None:
    """The simulator's fault answers parse as the real service's: python-xmatters' own
    retry (urllib3, Retry-After honoured) takes the 503 and the second answer is used."""
    sim.clear_requests()
    httpx.post(
        f"{sim.url}/_sim/faults",
        json={"kind": "status", "status": 503, "retry_after": 0, "path": "/events$"},
        verify=ssl.create_default_context(cafile=str(ca_bundle[1])),
        timeout=5,
    )
    assert [e.id for e in xm.events_endpoint().get_events()] == [event["id"]]
    assert [(r.route, r.status) for r in sim.requests()] == [
        ("xm.events.list", 503),
        ("xm.events.list", 200),
    ]
