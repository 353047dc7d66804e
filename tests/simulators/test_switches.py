"""Each switch for an open question of the reference, in both (or all) its readings, and the
profiles that bundle them (daemon.simulators.profiles)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from daemon.simulators.clock import SimClock
from daemon.simulators.harness import SimPair
from daemon.simulators.ivanti import (
    DEFAULT_API_KEY,
    DEFAULT_PASSWORD,
    DEFAULT_USER,
    IvantiSimulator,
)
from daemon.simulators.profiles import STRICT, profile
from daemon.simulators.xmatters import XMattersSimulator

START = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)
INCIDENTS = "/api/odata/businessobject/incidents"
EVENTS = "/api/xm/1/events"
XM_USER = ("xmrest", "xmrest-pass")


@pytest.fixture
def ivanti(request: pytest.FixtureRequest) -> Iterator[IvantiSimulator]:
    kwargs: dict[str, Any] = getattr(request, "param", {})
    sim = IvantiSimulator(clock=SimClock(START), **kwargs)
    sim.start(port=0)
    yield sim
    sim.stop()


@pytest.fixture
def xm(request: pytest.FixtureRequest) -> Iterator[XMattersSimulator]:
    kwargs: dict[str, Any] = getattr(request, "param", {})
    sim = XMattersSimulator(clock=SimClock(START), **kwargs)
    sim.start()
    yield sim
    sim.stop()


def api(sim: IvantiSimulator) -> httpx.Client:
    return httpx.Client(
        base_url=sim.url, headers={"Authorization": f"rest_api_key={DEFAULT_API_KEY}"}, timeout=5
    )


def login(sim: IvantiSimulator, tenant: str) -> httpx.Response:
    body = {"tenant": tenant, "username": DEFAULT_USER, "password": DEFAULT_PASSWORD}
    with httpx.Client(base_url=sim.url, timeout=5) as c:
        return c.post("/api/rest/authentication/login", json={**body, "role": "Admin"})


# ----- Ivanti ------------------------------------------------------------------------
def test_tenant_is_the_host_the_simulator_is_reached_by(ivanti: IvantiSimulator) -> None:
    host_port = ivanti.url.removeprefix("http://")
    for tenant in ("127.0.0.1", host_port, f"http://{host_port}/"):
        resp = login(ivanti, tenant)
        assert resp.status_code == 200, (tenant, resp.text)
        assert resp.json().startswith("127.0.0.1")
    assert login(ivanti, "sim.ivanti.local").status_code == 400
    assert ivanti.tenant == "127.0.0.1"


@pytest.mark.parametrize("ivanti", [{"tenant": "acme.saasit.com"}], indirect=True)
def test_a_fixed_tenant_name_is_the_only_one_accepted(ivanti: IvantiSimulator) -> None:
    assert login(ivanti, "127.0.0.1").status_code == 400
    resp = login(ivanti, "https://acme.saasit.com")
    assert resp.status_code == 200 and resp.json().startswith("acme.saasit.com#")


@pytest.mark.parametrize("ivanti", [{"session_cap": 2, "session_idle_timeout": 60}], indirect=True)
def test_session_cap_refuses_the_next_login_until_one_times_out(ivanti: IvantiSimulator) -> None:
    assert [login(ivanti, "127.0.0.1").status_code for _ in range(2)] == [200, 200]
    refused = login(ivanti, "127.0.0.1")
    assert refused.status_code == 400 and "Maximum number of sessions" in refused.text
    assert isinstance(ivanti.clock, SimClock)
    ivanti.clock.advance(61)
    assert login(ivanti, "127.0.0.1").status_code == 200


def _edit(sim: IvantiSimulator, method: str, body: dict[str, Any]) -> dict[str, Any]:
    rec = sim.create_incident(Subject="Core switch down", Symptom="no link", Priority="2")
    with api(sim) as c:
        resp = c.request(method, f"{INCIDENTS}('{rec['RecId']}')", json=body)
    assert resp.status_code == 200, resp.text
    return sim.incident(rec["RecId"])


@pytest.mark.parametrize("ivanti", [{"put_semantics": "replace"}], indirect=True)
def test_put_as_replace_empties_what_the_body_omits_patch_does_not(
    ivanti: IvantiSimulator,
) -> None:
    replaced = _edit(ivanti, "PUT", {"NewNotes": "a note"})
    assert (replaced["Subject"], replaced["Symptom"]) == ("", "")
    patched = _edit(ivanti, "PATCH", {"NewNotes": "a note"})
    assert (patched["Subject"], patched["Symptom"]) == ("Core switch down", "no link")


def test_put_merges_by_default(ivanti: IvantiSimulator) -> None:
    assert _edit(ivanti, "PUT", {"NewNotes": "a note"})["Subject"] == "Core switch down"


@pytest.mark.parametrize("ivanti", [{"patch_allowed": False}], indirect=True)
def test_patch_can_be_refused_with_405(ivanti: IvantiSimulator) -> None:
    rec = ivanti.create_incident(Subject="x")
    with api(ivanti) as c:
        resp = c.patch(f"{INCIDENTS}('{rec['RecId']}')", json={"NewNotes": "n"})
    assert resp.status_code == 405
    assert ivanti.notes(rec["RecId"]) == []


@pytest.mark.parametrize(
    ("reading", "unasked", "asked"),
    [("always", 3, 3), ("asked", None, 3), ("never", None, None), ("unreliable", 0, 0)],
)
def test_odata_count_readings(reading: str, unasked: int | None, asked: int | None) -> None:
    sim = IvantiSimulator(clock=SimClock(START), odata_count=reading)
    with sim:
        for i in range(3):
            sim.create_incident(Subject=f"i{i}")
        with api(sim) as c:
            plain = c.get(INCIDENTS, params={"$top": "2"}).json()
            counted = c.get(INCIDENTS, params={"$top": "2", "$count": "true"}).json()
    assert plain.get("@odata.count") == unasked and counted.get("@odata.count") == asked
    assert len(plain["value"]) == 2


@pytest.mark.parametrize("reading", ["recid", "latest_first", "unordered"])
def test_default_order_readings_page_stably(reading: str) -> None:
    sim = IvantiSimulator(clock=SimClock(START), default_order=reading)
    with sim:
        made = []
        for i in range(12):
            sim.clock.advance(1)
            made.append(sim.create_incident(Subject=f"i{i}")["RecId"])
        with api(sim) as c:
            pages = [
                [
                    r["RecId"]
                    for r in c.get(INCIDENTS, params={"$top": "5", "$skip": str(s)}).json()["value"]
                ]
                for s in (0, 5, 10)
            ]
    served = [r for page in pages for r in page]
    assert sorted(served) == sorted(made)  # every row once across $skip pages
    if reading == "recid":
        assert served == sorted(made)
    elif reading == "latest_first":
        assert served == made[::-1]
    else:
        assert served not in (sorted(made), made, made[::-1])


def test_unknown_switch_values_are_refused() -> None:
    for kwargs in ({"put_semantics": "x"}, {"odata_count": "x"}, {"default_order": "x"}):
        with pytest.raises(ValueError, match="must be one of"):
            IvantiSimulator(**kwargs)
    with pytest.raises(ValueError, match="session_cap"):
        IvantiSimulator(session_cap=0)
    for xkwargs in (
        {"property_filter": "x"},
        {"property_keys": "x"},
        {"recipients": "x"},
        {"response_option": "x"},
        {"trigger_status": 201},
    ):
        with pytest.raises(ValueError):
            XMattersSimulator(**xkwargs)


# ----- xMatters ----------------------------------------------------------------------
def _fire(sim: XMattersSimulator, rec_id: str = "REC1") -> httpx.Response:
    payload = {
        "Type": "New Incident",
        "RecId": rec_id,
        "IncidentID": "10001",
        "Owner": "jsmith",
        "OwnerTeam": "Network Operations",
        "Priority": "1",
        "Status": "Logged",
        "Summary": "Core switch down",
    }
    with httpx.Client(auth=XM_USER, timeout=5) as c:
        return c.post(sim.trigger_url, json=payload)


def _events(sim: XMattersSimulator, **params: str) -> list[dict[str, Any]]:
    with httpx.Client(base_url=sim.url, auth=XM_USER, timeout=5) as c:
        resp = c.get(EVENTS, params=params)
    assert resp.status_code == 200, resp.text
    return list(resp.json()["data"])


@pytest.mark.parametrize(
    ("reading", "found_by"),
    [
        ("any", {"RecId", "RecId#en"}),
        ("plain", {"RecId"}),
        ("suffixed", {"RecId#en"}),
    ],
)
def test_property_filter_readings(reading: str, found_by: set[str]) -> None:
    with XMattersSimulator(SimClock(START), property_filter=reading) as sim:
        assert isinstance(sim, XMattersSimulator)
        _fire(sim)
        hits = {
            name
            for name in ("RecId", "RecId#en")
            if _events(sim, propertyName=name, propertyValue="REC1")
        }
    assert hits == found_by


@pytest.mark.parametrize(
    "xm", [{"property_keys": "suffixed", "recipients": "embedded"}], indirect=True
)
def test_suffixed_keys_and_recipients_only_when_embedded(xm: XMattersSimulator) -> None:
    _fire(xm)
    bare = _events(xm)[0]
    assert "recipients" not in bare
    assert bare["properties"]["RecId#en"] == "REC1" and "RecId" not in bare["properties"]
    embedded = _events(xm, embed="recipients")[0]
    assert [r["targetName"] for r in embedded["recipients"]["data"]] == ["jsmith"]


def test_recipients_always_served_by_default(xm: XMattersSimulator) -> None:
    _fire(xm)
    event = _events(xm)[0]
    assert "recipients" in event and event["properties"]["RecId"] == "REC1"


@pytest.mark.parametrize("reading", ["option", "options.data"])
def test_response_option_key_readings(reading: str) -> None:
    with XMattersSimulator(SimClock(START), response_option=reading) as sim:
        assert isinstance(sim, XMattersSimulator)
        _fire(sim)
        eid = sim.events()[0]["id"]
        sim.respond(eid, person="jsmith", response="Acknowledge")
        with httpx.Client(base_url=sim.url, auth=XM_USER, timeout=5) as c:
            audits = c.get(
                "/api/xm/1/audits", params={"eventId": eid, "auditType": "RESPONSE_RECEIVED"}
            ).json()["data"]
    response = audits[0]["response"]
    if reading == "option":
        assert response["option"]["text"] == "Acknowledge" and "options" not in response
    else:
        assert response["options"]["data"][0]["text"] == "Acknowledge"
        assert "option" not in response


@pytest.mark.parametrize("xm", [{"trigger_status": 200}], indirect=True)
def test_trigger_status_200_reading(xm: XMattersSimulator) -> None:
    resp = _fire(xm)
    assert resp.status_code == 200 and resp.json()["requestId"]


# ----- profiles ----------------------------------------------------------------------
def test_strict_profile_turns_every_switch_it_names_on_at_once() -> None:
    with SimPair(clock=SimClock(START), profile="strict") as pair:
        for name, value in STRICT.ivanti.items():
            assert getattr(pair.ivanti, name) == value, name
        assert pair.xmatters.property_filter == "plain"
        assert pair.xmatters.recipients_served == "embedded"
        assert pair.xmatters.response_option == "options.data"
        assert pair.xmatters.trigger_status == 200
        assert pair.profile == "strict"
    assert set(STRICT.why) == set(STRICT.ivanti) | set(STRICT.xmatters)


def test_explicit_arguments_win_over_the_profile() -> None:
    pair = SimPair(profile="strict", ivanti_kwargs={"recid_sort": "text"})
    assert pair.ivanti.recid_sort == "text" and pair.ivanti.subsecond_times is True


def test_unknown_profile_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="default, strict"):
        profile("pessimistic")
    assert profile("default").ivanti == {}
