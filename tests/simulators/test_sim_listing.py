"""``GET /_sim/``: each simulator lists its control routes and its current switches."""

from __future__ import annotations

import json
import logging
import shlex
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from daemon.simulators.clock import SimClock
from daemon.simulators.harness import SimPair
from daemon.simulators.ivanti import IvantiSimulator
from daemon.simulators.server import SimServer
from daemon.simulators.xmatters import XMattersSimulator


@pytest.fixture
def pair() -> Iterator[SimPair]:
    with SimPair(ivanti_kwargs={"recid_sort": "guid"}, flood_control=False) as p:
        yield p


def _listing(sim: SimServer, query: str = "") -> dict[str, Any]:
    r = httpx.get(f"{sim.url}/_sim/{query}", timeout=5)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/json")
    body: dict[str, Any] = r.json()
    return body


def _routes(listing: dict[str, Any]) -> set[tuple[str, str]]:
    return {(r["method"], r["path"]) for r in listing["control_routes"]}


def test_each_simulator_lists_every_control_route_with_a_description(pair: SimPair) -> None:
    for sim in (pair.ivanti, pair.xmatters):
        listing = _listing(sim)
        assert listing["simulator"] == sim.name
        registered = [r for r in sim._routes if r.control]
        assert len(listing["control_routes"]) == len(registered)
        for route in listing["control_routes"]:
            assert route["description"] != "undocumented", route  # add it to control_docs
            assert route["example"].startswith("curl -s ")
            assert sim.url in route["example"]
    assert {("GET", "/_sim/"), ("POST", "/_sim/faults"), ("POST", "/_sim/clock")} <= _routes(
        _listing(pair.ivanti)
    )
    assert ("POST", "/_sim/incidents") in _routes(_listing(pair.ivanti))
    assert ("POST", "/_sim/events/<eid>/responses") in _routes(_listing(pair.xmatters))
    assert ("POST", "/_sim/flood-control") not in _routes(_listing(pair.ivanti))


def _run_example(curl: str, substitutions: dict[str, str]) -> httpx.Response:
    """Do what an example curl line does (method, URL, JSON body), with httpx."""
    for placeholder, value in substitutions.items():
        curl = curl.replace(placeholder, value)
    args = shlex.split(curl)[2:]
    method, body, url = "GET", None, ""
    while args:
        a = args.pop(0)
        if a == "-X":
            method = args.pop(0)
        elif a == "-H":
            args.pop(0)
        elif a == "-d":
            body = json.loads(args.pop(0))
        else:
            url = a
    return httpx.request(method, url, json=body, timeout=5)


def test_every_example_works_as_written() -> None:
    """Each example, run on a fresh pair (with an incident and an event to name), answers 2xx."""
    with SimPair(clock=SimClock(frozen=True)) as p:
        listing = _listing(p.ivanti)
        for route in listing["control_routes"]:
            rec = p.ivanti.create_incident(Subject="for the example", Priority="1")["RecId"]
            r = _run_example(route["example"], {"<rec>": rec})
            assert r.status_code < 300, (route, r.text)
    with SimPair(clock=SimClock(frozen=True)) as p:
        for route in _listing(p.xmatters)["control_routes"]:
            trig = httpx.post(
                p.xmatters.form_trigger_url,
                auth=next(iter(p.xmatters.users.items())),
                json={
                    "properties": {"RecId": "R1", "Summary": "Disk full", "Type": "New Incident"},
                    "recipients": [{"id": "jsmith", "recipientType": "PERSON"}],
                    "responseOptions": [{"id": p.xmatters.user_response_options[0]["id"]}],
                },
                timeout=5,
            )
            events = p.xmatters.events()
            if not events:
                pytest.fail(f"no event to run the example on: {trig.status_code} {trig.text}")
            r = _run_example(route["example"], {"<eid>": events[-1]["id"]})
            assert r.status_code < 300, (route, r.text)


def test_switches_show_current_values_and_defaults(pair: SimPair) -> None:
    iv = _listing(pair.ivanti)["switches"]
    assert iv["recid_sort"] == {"value": "guid", "default": "text"}
    assert iv["quirks"] == {"value": True, "default": True}
    assert iv["subsecond_times"]["value"] is False
    xm = _listing(pair.xmatters)["switches"]
    assert xm["flood_control"] == {"value": False, "default": True}
    httpx.post(f"{pair.xmatters.url}/_sim/flows", json={"delay": 5}, timeout=5)
    httpx.post(f"{pair.xmatters.url}/_sim/budget", json={"limit": 10}, timeout=5)
    xm = _listing(pair.xmatters)["switches"]
    assert xm["flow_delay"]["value"] == 5.0  # read live, not as constructed
    assert xm["request_budget"]["value"]["limit"] == 10
    assert "default" not in xm["request_budget"]  # set at run time only


def test_a_new_constructor_switch_is_listed_without_code() -> None:
    class Stricter(IvantiSimulator):
        def __init__(self, *, made_up_switch: bool = True, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._made_up_switch = made_up_switch

    class Later(XMattersSimulator):
        def __init__(self, *args: Any, recipients_embedded: bool = False, **kw: Any) -> None:
            super().__init__(*args, **kw)  # stored nowhere: the listing reads the argument

    with Stricter(made_up_switch=False, quirks=False) as s:
        sw = _listing(s)["switches"]
        assert sw["made_up_switch"] == {"value": False, "default": True}
        assert sw["quirks"]["value"] is False
    with Later(SimClock(), recipients_embedded=True) as x:
        assert _listing(x)["switches"]["recipients_embedded"]["value"] is True


def test_no_credential_in_the_listing(pair: SimPair) -> None:
    texts = [
        httpx.get(f"{sim.url}/_sim/{q}", timeout=5).text
        for sim in (pair.ivanti, pair.xmatters)
        for q in ("", "?format=text")
    ]
    secrets = [pair.xmatters.trigger_api_key]
    secrets += [pw for pw, _roles in pair.ivanti.users.values()]
    secrets += list(pair.ivanti.api_keys) + list(pair.xmatters.users.values())
    secrets += list(pair.xmatters.api_keys) + list(pair.xmatters.api_keys.values())
    for text in texts:
        for secret in secrets:
            assert secret not in text
        assert "password" not in text.lower()


def test_text_format_for_people(pair: SimPair) -> None:
    r = httpx.get(f"{pair.ivanti.url}/_sim/", params={"format": "text"}, timeout=5)
    assert r.headers["Content-Type"].startswith("text/plain")
    assert "POST   /_sim/incidents" in r.text
    assert 'recid_sort = "guid"  (default "text")' in r.text
    assert httpx.get(f"{pair.ivanti.url}/_sim", timeout=5).status_code == 200  # no slash too


def test_control_requests_are_logged_but_not_recorded(caplog: pytest.LogCaptureFixture) -> None:
    with SimPair(log_requests=True) as p, caplog.at_level(logging.INFO, "daemon.simulators"):
        httpx.get(f"{p.ivanti.url}/_sim/", timeout=5)
        httpx.get(f"{p.ivanti.url}/api/odata/businessobject/incidents", timeout=5)
        lines = [r.getMessage() for r in caplog.records]
        assert any(line.startswith("ivanti GET /_sim/ -> 200") for line in lines), lines
        assert any("GET /api/odata/businessobject/incidents -> 401" in line for line in lines)
        assert [r.route for r in p.ivanti.requests()] == ["incidents.query"]
