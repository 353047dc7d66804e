"""The simulated xMatters over real HTTP: auth, the original workflow, the REST API, faults."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from daemon.simulators.clock import SimClock
from daemon.simulators.xmatters import XMattersSimulator

START = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
USER = ("xmrest", "xmrest-pass")
CLIENT_ID = "ivanti-bridge-client"
EVENTS = "/api/xm/1/events"


@pytest.fixture(scope="module")
def running() -> Iterator[XMattersSimulator]:
    simulator = XMattersSimulator(clock=SimClock(START))
    simulator.start()
    yield simulator
    simulator.stop()


@pytest.fixture
def sim(running: XMattersSimulator) -> XMattersSimulator:
    """One server per module (stopping one costs up to 0.5 s); state is reset per test."""
    running.reset()
    running.clock.set(START)
    return running


@pytest.fixture
def rest(sim: XMattersSimulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.url, auth=USER, timeout=5) as client:
        yield client


@pytest.fixture
def anon(sim: XMattersSimulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.url, timeout=5) as client:
        yield client


def incident(rec_id: str, kind: str = "New Incident", **fields: str) -> dict[str, str]:
    payload = {
        "Category": "Network",
        "IncidentID": "10001",
        "Owner": "",
        "OwnerTeam": "Network Operations",
        "Phone": "555-0100",
        "RecId": rec_id,
        "RequestedBy": "Pat Caller",
        "Status": "Logged",
        "Summary": "Core switch down",
        "Type": kind,
    }
    payload.update(fields)
    return payload


def fire(rest: httpx.Client, sim: XMattersSimulator, payload: dict[str, Any]) -> str:
    resp = rest.post(sim.trigger_url, json=payload)
    assert resp.status_code == 202, resp.text
    return str(resp.json()["requestId"])


def event_for(rest: httpx.Client, request_id: str) -> dict[str, Any]:
    data = rest.get(EVENTS, params={"requestId": request_id}).json()["data"]
    assert len(data) == 1, data
    return dict(data[0])


def all_pages(client: httpx.Client, first: httpx.Response) -> list[dict[str, Any]]:
    body = first.json()
    items = list(body["data"])
    while "next" in body["links"]:
        nxt = body["links"]["next"]
        assert nxt.startswith("/api/xm/1/")
        body = client.get(nxt).json()
        items.extend(body["data"])
    return items


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def assert_error(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["code"] == status
    assert isinstance(body["reason"], str) and body["reason"]
    assert isinstance(body["message"], str) and body["message"]
    return dict(body)


# ----- authentication ---------------------------------------------------------------------


def test_basic_user_auth_and_bad_credentials(sim: XMattersSimulator, anon: httpx.Client) -> None:
    assert anon.get("/api/xm/1/people", auth=USER).status_code == 200
    assert_error(anon.get("/api/xm/1/people", auth=("xmrest", "wrong")), 401)
    assert_error(anon.get("/api/xm/1/people"), 401)
    assert_error(anon.post(sim.trigger_url, json=incident("R1"), auth=("nobody", "x")), 401)
    assert sim.events() == []


def test_api_key_and_secret_work_as_basic_credentials(
    sim: XMattersSimulator, anon: httpx.Client
) -> None:
    key, secret = next(iter(sim.api_keys.items()))
    assert anon.get(EVENTS, auth=(key, secret)).status_code == 200
    assert anon.post(sim.trigger_url, json=incident("R1"), auth=(key, secret)).status_code == 202
    assert_error(anon.get(EVENTS, auth=(key, secret + "x")), 401)
    assert len(sim.events("R1")) == 1


def test_url_api_key_authenticates_triggers_only(
    sim: XMattersSimulator, anon: httpx.Client
) -> None:
    ok = anon.post(sim.trigger_url, params={"apiKey": sim.trigger_api_key}, json=incident("R1"))
    assert ok.status_code == 202
    bad = anon.post(sim.trigger_url, params={"apiKey": "nope"}, json=incident("R2"))
    assert_error(bad, 401)
    assert_error(anon.get(EVENTS, params={"apiKey": sim.trigger_api_key}), 401)
    assert [e["properties"]["RecId"] for e in sim.events()] == ["R1"]


def test_unknown_trigger_is_404(sim: XMattersSimulator, rest: httpx.Client) -> None:
    url = "/api/integration/1/functions/00000000-0000-4000-8000-000000000000/triggers"
    assert_error(rest.post(url, json=incident("R1")), 404)
    assert sim.triggers() == []


def token(client: httpx.Client, **form: str) -> httpx.Response:
    return client.post("/api/xm/1/oauth2/token", data=form)


def test_oauth_password_grant_expiry_and_refresh(
    sim: XMattersSimulator, anon: httpx.Client
) -> None:
    resp = token(
        anon, grant_type="password", client_id=CLIENT_ID, username=USER[0], password=USER[1]
    )
    assert resp.status_code == 200
    tok = resp.json()
    assert tok["token_type"] == "bearer" and tok["expires_in"] == 900 and tok["jti"]

    def bearer(access: str) -> httpx.Response:
        return anon.get(EVENTS, headers={"Authorization": f"Bearer {access}"})

    assert bearer(tok["access_token"]).status_code == 200
    sim.clock.advance(899)
    assert bearer(tok["access_token"]).status_code == 200
    sim.clock.advance(1)
    assert_error(bearer(tok["access_token"]), 401)

    refreshed = token(
        anon, grant_type="refresh_token", refresh_token=tok["refresh_token"], client_id=CLIENT_ID
    )
    assert refreshed.status_code == 200
    new = refreshed.json()
    assert new["refresh_token"] != tok["refresh_token"]
    assert bearer(new["access_token"]).status_code == 200
    # the rotated refresh token is honoured once more, then refused
    again = dict(
        grant_type="refresh_token", refresh_token=tok["refresh_token"], client_id=CLIENT_ID
    )
    assert token(anon, **again).status_code == 200
    assert token(anon, **again).json()["error"] == "invalid_grant"


def test_oauth_rejects_bad_client_and_bad_password(anon: httpx.Client) -> None:
    bad_client = token(
        anon, grant_type="password", client_id="other", username=USER[0], password=USER[1]
    )
    assert bad_client.status_code == 401
    assert bad_client.json()["error"] == "invalid_client"
    bad_pw = token(anon, grant_type="password", client_id=CLIENT_ID, username=USER[0], password="x")
    assert bad_pw.status_code == 400
    assert bad_pw.json()["error"] == "invalid_grant"
    bad_refresh = token(anon, grant_type="refresh_token", refresh_token="zz", client_id=CLIENT_ID)
    assert bad_refresh.json()["error"] == "invalid_grant"


# ----- the original workflow --------------------------------------------------------------


def test_owner_gets_person_recipient_and_user_options(
    sim: XMattersSimulator, rest: httpx.Client
) -> None:
    rid = fire(rest, sim, incident("R1", Owner="jsmith"))
    event = event_for(rest, rid)
    assert event["status"] == "ACTIVE" and event["priority"] == "MEDIUM"
    assert event["form"]["name"] == "Incident"
    assert event["plan"]["name"] == "Ivanti Service Manager | 1.0"
    assert event["requestId"] == rid and event["eventId"].isdigit()
    assert event["properties"]["Owner"] == "jsmith"
    assert [(r["targetName"], r["recipientType"]) for r in event["recipients"]["data"]] == [
        ("jsmith", "PERSON")
    ]
    full = rest.get(f"{EVENTS}/{event['id']}", params={"embed": "responseOptions"}).json()
    assert [o["text"] for o in full["responseOptions"]["data"]] == ["Acknowledge"]
    assert sim.respond(event["id"], person="jsmith", response="Acknowledge")
    with pytest.raises(ValueError, match="not offered"):
        sim.respond(event["id"], person="jsmith", response="Assign to me")
    with pytest.raises(ValueError, match="not a recipient"):
        sim.respond(event["id"], person="bwong", response="Acknowledge")
    assert sim.events("R1")[0]["status"] == "ACTIVE"


def test_no_owner_gets_group_recipient_and_group_options(
    sim: XMattersSimulator, rest: httpx.Client
) -> None:
    event = event_for(rest, fire(rest, sim, incident("R1", OwnerTeam="Database Team")))
    assert [(r["targetName"], r["recipientType"]) for r in event["recipients"]["data"]] == [
        ("Database Team", "GROUP")
    ]
    full = rest.get(f"{EVENTS}/{event['eventId']}", params={"embed": "responseOptions"}).json()
    options = {o["text"]: o["action"] for o in full["responseOptions"]["data"]}
    assert options == {"Assign to me": "END", "Escalate": "ESCALATE"}
    sim.respond(event["id"], person="apatel", response="Assign to me")
    sim.respond(event["id"], person="mgarcia", response="Escalate")
    with pytest.raises(ValueError):
        sim.respond(event["id"], person="jsmith", response="Assign to me")
    assert sim.events("R1")[0]["status"] == "ACTIVE"


def test_new_event_supersedes_live_events_of_the_same_incident(
    sim: XMattersSimulator, rest: httpx.Client
) -> None:
    first = event_for(rest, fire(rest, sim, incident("R1")))
    other = event_for(rest, fire(rest, sim, incident("R2", OwnerTeam="Service Desk")))
    sim.clock.advance(120)
    second = event_for(rest, fire(rest, sim, incident("R1", "Reassigned", Owner="bwong")))
    statuses = {e["id"]: e["status"] for e in sim.events()}
    assert statuses == {first["id"]: "TERMINATED", other["id"]: "ACTIVE", second["id"]: "ACTIVE"}
    terminated = rest.get(f"{EVENTS}/{first['id']}").json()
    assert terminated["terminated"].endswith("Z")
    assert sim.terminations() == [
        {"event_id": first["id"], "rec_id": "R1", "at": terminated["terminated"], "by": "workflow"}
    ]
    assert sim.triggers()[-1]["terminated"] == [first["id"]]


def test_terminate_type_only_terminates(sim: XMattersSimulator, rest: httpx.Client) -> None:
    fire(rest, sim, incident("R1"))
    fire(rest, sim, incident("R1", "Terminate"))
    assert [e["status"] for e in sim.events()] == ["TERMINATED"]
    assert sim.triggers()[-1]["outcome"] == "terminated_only"
    assert sim.live_events("R1") == []


def test_unknown_type_is_a_flow_error_visible_in_control_api(
    sim: XMattersSimulator, rest: httpx.Client, anon: httpx.Client
) -> None:
    fire(rest, sim, incident("R1"))
    rid = fire(rest, sim, incident("R1", "Resolved"))
    assert [e["status"] for e in sim.events()] == ["ACTIVE"]
    triggers = anon.get("/_sim/triggers").json()
    assert triggers[-1]["requestId"] == rid
    assert triggers[-1]["outcome"].startswith("error: unknown Type")
    assert triggers[-1]["event_id"] is None


def test_workflow_too_long_property_terminates_but_creates_nothing(
    sim: XMattersSimulator, rest: httpx.Client
) -> None:
    fire(rest, sim, incident("R1"))
    fire(rest, sim, incident("R1", "Reopened", Summary="x" * 256))
    assert [e["status"] for e in sim.events()] == ["TERMINATED"]
    assert "properties/Summary" in sim.triggers()[-1]["outcome"]
    fire(rest, sim, incident("R1", "Reopened", Summary="x" * 255))
    assert len(sim.live_events("R1")) == 1


# ----- form flavour -----------------------------------------------------------------------


def form_body(rec_id: str, **props: str) -> dict[str, Any]:
    return {
        "properties": {"RecId": rec_id, "Summary": "Disk full", "Type": "New Incident", **props},
        "recipients": [{"id": "lchen", "recipientType": "PERSON"}],
        "priority": "HIGH",
    }


def test_form_trigger_creates_without_terminating(
    sim: XMattersSimulator, rest: httpx.Client
) -> None:
    fire(rest, sim, incident("R1"))
    option = sim.user_response_options[0]["id"]
    body = form_body("R1") | {"responseOptions": [{"id": option}]}
    resp = rest.post(sim.form_trigger_url, json=body)
    assert resp.status_code == 202
    created = event_for(rest, resp.json()["requestId"])
    assert created["priority"] == "HIGH"
    assert [e["status"] for e in sim.events("R1")] == ["ACTIVE", "ACTIVE"]
    assert sim.terminations() == []


def test_form_trigger_rejects_values_over_the_form_limits(
    sim: XMattersSimulator, rest: httpx.Client
) -> None:
    resp = rest.post(sim.form_trigger_url, json=form_body("R1", Phone="5" * 31))
    body = assert_error(resp, 400)
    assert body["errorDetails"] == [
        {
            "jsonPath": "properties/Phone",
            "details": "Exceeded the specified maximum number of characters",
        }
    ]
    assert sim.events() == []
    ok = rest.post(sim.form_trigger_url, json=form_body("R1", Phone="5" * 30))
    assert ok.status_code == 202


def test_form_trigger_unknown_recipient_creates_event_that_fails_delivery(
    sim: XMattersSimulator, rest: httpx.Client
) -> None:
    body = form_body("R1") | {"recipients": [{"id": "ghost", "recipientType": "PERSON"}]}
    event = event_for(rest, rest.post(sim.form_trigger_url, json=body).json()["requestId"])
    audits = rest.get(
        "/api/xm/1/audits", params={"eventId": event["id"], "auditType": "NOTIFICATION_FAILED"}
    ).json()["data"]
    assert [a["notification"]["recipient"]["targetName"] for a in audits] == ["ghost"]
    assert_error(rest.post(sim.form_trigger_url, json={"properties": {"RecId": "R2"}}), 400)


# ----- flood control ----------------------------------------------------------------------


def test_flood_control_suppresses_fifth_alert_within_a_minute(
    sim: XMattersSimulator, rest: httpx.Client, anon: httpx.Client
) -> None:
    ids = [fire(rest, sim, incident(f"R{i}")) for i in range(5)]
    assert len(sim.events()) == 4
    assert rest.get(EVENTS, params={"requestId": ids[4]}).json()["total"] == 0
    suppressed = anon.get("/_sim/suppressions").json()
    assert [s["requestId"] for s in suppressed] == [ids[4]]
    assert sim.triggers()[-1]["outcome"] == "suppressed"
    # other recipients are counted separately
    event_for(rest, fire(rest, sim, incident("R9", OwnerTeam="Service Desk")))
    sim.clock.advance(59)
    fire(rest, sim, incident("R5"))
    assert len(sim.suppressions()) == 2
    sim.clock.advance(1)
    event_for(rest, fire(rest, sim, incident("R6")))


def test_flood_control_off(sim: XMattersSimulator, rest: httpx.Client, anon: httpx.Client) -> None:
    resp = anon.post("/_sim/flood-control", json={"enabled": False})
    assert resp.json() == {"enabled": False, "limit": 4}
    for i in range(6):
        fire(rest, sim, incident(f"R{i}"))
    assert len(sim.events()) == 6 and sim.suppressions() == []
    sim.set_flood_control(True, limit=2)
    sim.clock.advance(60)
    for i in range(3):
        fire(rest, sim, incident(f"S{i}"))
    assert len(sim.suppressions()) == 1


# ----- /events ----------------------------------------------------------------------------


@pytest.fixture
def seven_events(sim: XMattersSimulator, rest: httpx.Client) -> list[str]:
    sim.set_flood_control(False)
    ids = []
    for i in range(7):
        ids.append(event_for(rest, fire(rest, sim, incident(f"REC-{i}")))["id"])
        sim.clock.advance(10)
    return ids


def test_events_paging_follows_links_next_to_the_end(
    rest: httpx.Client, seven_events: list[str]
) -> None:
    first = rest.get(EVENTS, params={"limit": 3, "status": "ACTIVE,SUSPENDED"})
    assert first.json()["count"] == 3 and first.json()["total"] == 7
    assert [e["id"] for e in all_pages(rest, first)] == seven_events
    last = rest.get(EVENTS, params={"limit": 3, "offset": 6}).json()
    assert last["count"] == 1 and "next" not in last["links"]
    exact = rest.get(EVENTS, params={"limit": 7}).json()
    assert exact["count"] == 7 and "next" not in exact["links"]
    desc = rest.get(EVENTS, params={"sortBy": "START_TIME", "sortOrder": "DESCENDING"}).json()
    assert [e["id"] for e in desc["data"]] == seven_events[::-1]
    assert_error(rest.get(EVENTS, params={"limit": 1001}), 400)
    assert rest.get(EVENTS, params={"limit": 1000}).status_code == 200


def test_events_filters(
    sim: XMattersSimulator, rest: httpx.Client, seven_events: list[str]
) -> None:
    rest.post(EVENTS, json={"id": seven_events[0], "status": "TERMINATED"})
    active = rest.get(EVENTS, params={"status": "ACTIVE"}).json()
    assert active["total"] == 6
    window = {"from": "2025-03-01T12:00:10Z", "to": "2025-03-01T12:00:30.000Z"}
    got = rest.get(EVENTS, params=window).json()["data"]
    assert [e["id"] for e in got] == seven_events[1:4]
    assert_error(rest.get(EVENTS, params={"status": "OPEN"}), 400)


@pytest.mark.parametrize("name", ["RecId", "RecId#en", "recid#en"])
def test_property_filter_with_and_without_language_suffix(
    rest: httpx.Client, seven_events: list[str], name: str
) -> None:
    params = {"propertyName": name, "propertyValue": "REC-3", "status": "ACTIVE,SUSPENDED"}
    assert [e["id"] for e in rest.get(EVENTS, params=params).json()["data"]] == [seven_events[3]]
    lower = rest.get(EVENTS, params=params | {"propertyValue": "rec-3"}).json()
    assert lower["total"] == 0


def test_property_filter_contains_and_pairs(rest: httpx.Client, seven_events: list[str]) -> None:
    params = {
        "propertyName": "RecId#en,Summary",
        "propertyValue": "REC-,switch",
        "propertyValueOperator": "CONTAINS,CONTAINS",
    }
    assert rest.get(EVENTS, params=params).json()["total"] == 7
    assert_error(rest.get(EVENTS, params={"propertyName": "RecId"}), 400)


def test_terminate_then_terminate_again_is_409(sim: XMattersSimulator, rest: httpx.Client) -> None:
    event = event_for(rest, fire(rest, sim, incident("R1")))
    resp = rest.post(EVENTS, json={"id": event["id"], "status": "TERMINATED"})
    assert resp.status_code == 200
    assert resp.json()["status"] == "TERMINATED" and "terminated" in resp.json()
    assert_error(rest.post(EVENTS, json={"id": event["id"], "status": "TERMINATED"}), 409)
    assert [t["by"] for t in sim.terminations()] == ["api"]
    assert_error(rest.get(f"{EVENTS}/00000000-0000-4000-8000-000000000000"), 404)
    assert_error(rest.post(EVENTS, json={"id": "nope", "status": "TERMINATED"}), 404)


def test_suspended_events_are_live_and_superseded(
    sim: XMattersSimulator, rest: httpx.Client
) -> None:
    event = event_for(rest, fire(rest, sim, incident("R1")))
    assert rest.post(EVENTS, json={"id": event["id"], "status": "SUSPENDED"}).status_code == 200
    assert rest.post(EVENTS, json={"id": event["id"], "status": "ACTIVE"}).status_code == 200
    assert rest.post(EVENTS, json={"id": event["id"], "status": "SUSPENDED"}).status_code == 200
    assert [e["status"] for e in sim.live_events("R1")] == ["SUSPENDED"]
    types = rest.get("/api/xm/1/audits", params={"eventId": event["id"]}).json()["data"]
    assert [a["type"] for a in types][1:] == ["EVENT_SUSPENDED", "EVENT_RESUMED", "EVENT_SUSPENDED"]
    fire(rest, sim, incident("R1", "Terminate"))
    assert sim.events("R1")[0]["status"] == "TERMINATED"


# ----- audits and annotations -------------------------------------------------------------


def test_audits_of_all_four_kinds_with_paging(sim: XMattersSimulator, rest: httpx.Client) -> None:
    event = event_for(rest, fire(rest, sim, incident("R1")))
    eid = event["id"]
    sim.clock.advance(5)
    sim.deliver(eid, person="jsmith")
    sim.deliver(eid, person="bwong", device="Work Email", status="FAILED")
    sim.respond(eid, person="jsmith", response="Assign to me", comment="on it")
    sim.comment(eid, person="bwong", text="need a hand?")
    kinds = "RESPONSE_RECEIVED,EVENT_ANNOTATED,NOTIFICATION_DELIVERED,NOTIFICATION_FAILED"
    params = {"eventId": eid, "auditType": kinds, "sortOrder": "ASCENDING", "limit": 3}
    audits = all_pages(rest, rest.get("/api/xm/1/audits", params=params))
    assert [a["type"] for a in audits] == [
        "NOTIFICATION_DELIVERED",
        "NOTIFICATION_FAILED",
        "RESPONSE_RECEIVED",
        "EVENT_ANNOTATED",
    ]
    orders = [a["orderId"] for a in audits]
    assert orders == sorted(orders) and len(set(orders)) == 4
    assert all(a["event"]["id"] == eid and a["at"] == "2025-03-01T12:00:05.000Z" for a in audits)
    delivered, failed, response, annotated = audits
    assert delivered["notification"]["recipient"]["targetName"] == "jsmith|Mobile App"
    assert failed["notification"]["deliveryStatus"] == "FAILED"
    assert failed["notification"]["recipient"]["recipientType"] == "DEVICE"
    r = response["response"]
    assert (r["response"], r["comment"], r["source"]) == ("Assign to me", "on it", "MOBILE")
    assert r["option"]["action"] == "END"
    assert r["notification"]["recipient"]["targetName"] == "jsmith|Mobile App"
    assert r["notification"]["id"] == delivered["notification"]["id"]
    author = annotated["annotation"]["author"]
    assert (author["firstName"], author["lastName"], author["targetName"]) == (
        "Ben",
        "Wong",
        "bwong",
    )
    assert annotated["annotation"]["comment"] == "need a hand?"
    desc = rest.get("/api/xm/1/audits", params=params | {"sortOrder": "DESCENDING", "limit": 10})
    assert [a["id"] for a in desc.json()["data"]] == [a["id"] for a in reversed(audits)]
    everything = rest.get("/api/xm/1/audits", params={"eventId": event["eventId"]}).json()
    assert everything["data"][0]["type"] == "EVENT_CREATED" and everything["total"] == 5


def test_audits_need_event_id(rest: httpx.Client) -> None:
    body = assert_error(
        rest.get("/api/xm/1/audits", params={"auditType": "RESPONSE_RECEIVED"}), 400
    )
    assert body["errorDetails"][0]["jsonPath"] == "eventId"


def test_response_without_comment_omits_it(sim: XMattersSimulator, rest: httpx.Client) -> None:
    event = event_for(rest, fire(rest, sim, incident("R1", Owner="lchen")))
    record = sim.respond(event["id"], person="lchen", response="acknowledge", source="EMAIL")
    assert "comment" not in record["response"]
    sim.clock.advance(30)
    rest.post(EVENTS, json={"id": event["id"], "status": "TERMINATED"})
    with pytest.raises(ValueError, match="TERMINATED"):
        sim.respond(event["id"], person="lchen", response="Acknowledge")


def test_annotations_endpoint(sim: XMattersSimulator, rest: httpx.Client) -> None:
    event = event_for(rest, fire(rest, sim, incident("R1")))
    for i in range(3):
        sim.comment(event["id"], person="jsmith", text=f"note {i}")
    added = rest.post(f"{EVENTS}/{event['id']}/annotations", json={"comment": "from REST"})
    assert added.status_code == 201 and added.json()["author"]["targetName"] == "xmrest"
    first = rest.get(f"{EVENTS}/{event['id']}/annotations", params={"limit": 2})
    comments = [a["comment"] for a in all_pages(rest, first)]
    assert comments == ["note 0", "note 1", "note 2", "from REST"]


def test_control_http_routes(
    sim: XMattersSimulator, rest: httpx.Client, anon: httpx.Client
) -> None:
    event = event_for(rest, fire(rest, sim, incident("R1", Owner="jsmith")))
    base = f"/_sim/events/{event['eventId']}"
    assert anon.post(base + "/deliveries", json={"person": "jsmith"}).status_code == 201
    resp = anon.post(base + "/responses", json={"person": "jsmith", "response": "Acknowledge"})
    assert resp.status_code == 201 and resp.json()["type"] == "RESPONSE_RECEIVED"
    assert anon.post(base + "/comments", json={"person": "jsmith", "text": "hi"}).status_code == 201
    assert_error(anon.post(base + "/responses", json={"person": "ghost", "response": "x"}), 400)
    assert_error(
        anon.post("/_sim/events/nope/comments", json={"person": "jsmith", "text": "x"}), 404
    )
    listed = anon.get("/_sim/events", params={"rec_id": "R1", "status": "ACTIVE"}).json()
    assert [e["id"] for e in listed] == [event["id"]]
    assert anon.get("/_sim/terminations").json() == []


# ----- people, groups, errors, faults -----------------------------------------------------


def test_people_and_groups(rest: httpx.Client) -> None:
    person = rest.get("/api/xm/1/people/jsmith").json()
    assert (person["firstName"], person["lastName"], person["recipientType"]) == (
        "Jane",
        "Smith",
        "PERSON",
    )
    assert rest.get(f"/api/xm/1/people/{person['id']}").json()["targetName"] == "jsmith"
    found = rest.get("/api/xm/1/people", params={"webLogin": "jsmith"}).json()
    assert [p["id"] for p in found["data"]] == [person["id"]]
    assert rest.get("/api/xm/1/people", params={"search": "garcia"}).json()["total"] == 1
    assert_error(rest.get("/api/xm/1/people/nobody"), 404)
    group = rest.get("/api/xm/1/groups/Service Desk").json()
    assert group["recipientType"] == "GROUP"
    members = rest.get(f"/api/xm/1/groups/{group['id']}/members").json()["data"]
    assert sorted(m["member"]["targetName"] for m in members) == ["lchen", "mgarcia", "obrien"]
    first = rest.get("/api/xm/1/groups", params={"limit": 1})
    assert len(all_pages(rest, first)) == 3
    assert_error(rest.get("/api/xm/1/groups/Nope"), 404)


def test_unknown_path_has_xmatters_error_body(rest: httpx.Client) -> None:
    body = assert_error(rest.get("/api/xm/1/nothing-here"), 404)
    assert body["reason"] == "Not Found"


def test_injected_429_uses_error_shape_and_retry_after(
    sim: XMattersSimulator, rest: httpx.Client
) -> None:
    sim.faults.inject("status", "/triggers", status=429, retry_after=7)
    resp = rest.post(sim.trigger_url, json=incident("R1"))
    assert_error(resp, 429)
    assert resp.headers["Retry-After"] == "7"
    assert sim.triggers() == [] and sim.events() == []
    fire(rest, sim, incident("R1"))
    assert len(sim.events()) == 1


def test_drop_after_on_trigger_still_creates_the_event(
    sim: XMattersSimulator, rest: httpx.Client
) -> None:
    sim.faults.inject("drop_after", "/triggers")
    with pytest.raises(httpx.TransportError):
        rest.post(sim.trigger_url, json=incident("R1"))
    events = sim.events("R1")
    assert len(events) == 1
    assert events[0]["requestId"] == sim.triggers()[0]["requestId"]
    # the server logs the request after closing the socket, so the client may be faster
    assert wait_for(lambda: [r.status for r in sim.requests("xm.trigger")] == [None])


def test_timestamps_come_from_the_sim_clock(sim: XMattersSimulator, rest: httpx.Client) -> None:
    sim.clock.advance(timedelta(hours=2).total_seconds())
    event = event_for(rest, fire(rest, sim, incident("R1")))
    assert event["created"] == "2025-03-01T14:00:00.000Z"


def test_reset_forgets_state_but_keeps_configuration(
    sim: XMattersSimulator, rest: httpx.Client
) -> None:
    trigger_url = sim.trigger_url
    sim.set_flood_control(False)
    fire(rest, sim, incident("R1"))
    sim.faults.inject("status", "/events", status=503)
    sim.reset()
    assert sim.events() == [] and sim.triggers() == [] and sim.requests() == []
    assert sim.faults.pending() == []
    assert sim.config()["flood_control"] == {"enabled": True, "limit": 4}
    assert sim.trigger_url == trigger_url
    assert rest.get(EVENTS).json()["total"] == 0


def test_user_deliveries_per_person_need_at_and_roll_up_each_person(
    sim: XMattersSimulator, rest: httpx.Client
) -> None:
    eid = event_for(
        rest, fire(rest, sim, incident("R-UD", Owner="", OwnerTeam="Network Operations"))
    )["id"]
    path = f"{EVENTS}/{eid}/user-deliveries"
    assert_error(rest.get(path), 400)  # `at` is required (a historical-data endpoint)
    sim.deliver(eid, person="jsmith", device="Mobile App")
    sim.deliver(eid, person="bwong", device="Work Email", status="FAILED")
    sim.respond(eid, person="jsmith", response="Escalate")
    at = {"at": "2025-03-01T12:00:00Z"}
    items = {i["person"]["targetName"]: i for i in rest.get(path, params=at).json()["data"]}
    assert {n: i["deliveryStatus"] for n, i in items.items()} == {
        "jsmith": "RESPONDED",
        "bwong": "FAILED",
    }
    [note] = items["jsmith"]["notifications"]["data"]
    assert note["responses"]["data"][0]["text"] == "Escalate"
    assert items["jsmith"]["response"]["text"] == "Escalate"
    failed = rest.get(path, params={**at, "deliveryStatus": "FAILED"}).json()["data"]
    assert [i["person"]["targetName"] for i in failed] == ["bwong"]


def test_the_event_object_has_the_reference_fields_and_embeds(
    sim: XMattersSimulator, rest: httpx.Client
) -> None:
    eid = event_for(rest, fire(rest, sim, incident("R-EV")))["id"]
    sim.comment(eid, person="bwong", text="on it")
    event = rest.get(f"{EVENTS}/{eid}", params={"embed": "annotations,messages"}).json()
    for name in (
        "expirationInMinutes",
        "bypassPhoneIntro",
        "escalationOverride",
        "requirePhonePassword",
        "responseCountsEnabled",
        "voicemailOptions",
    ):
        assert name in event, name
    assert [a["comment"] for a in event["annotations"]["data"]] == ["on it"]
    assert event["messages"]["data"][0]["subject"] == "Core switch down"
    assert "annotations" not in rest.get(f"{EVENTS}/{eid}").json()
