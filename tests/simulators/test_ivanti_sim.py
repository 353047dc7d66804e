"""The simulated Ivanti Service Manager, exercised over real HTTP with httpx."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from daemon.simulators.clock import SimClock
from daemon.simulators.ivanti import (
    DEFAULT_API_KEY,
    DEFAULT_PASSWORD,
    DEFAULT_USER,
    IvantiSimulator,
)
from daemon.simulators.server import BadRequest

PAYLOADS = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "ivanti-payloads"
START = datetime(2026, 11, 27, 10, 15, 30, tzinfo=UTC)  # PST: served as 02:15:30-08:00
INCIDENTS = "/api/odata/businessobject/incidents"
NOTES = "/api/odata/businessobject/journal__Notess"
LOGIN = "/api/rest/authentication/login"
LOGOUT = "/api/rest/authentication/logout"

SimFactory = Callable[..., IvantiSimulator]


@pytest.fixture
def make_sim() -> Iterator[SimFactory]:
    started: list[IvantiSimulator] = []

    def factory(**kwargs: Any) -> IvantiSimulator:
        kwargs.setdefault("clock", SimClock(START))
        sim = IvantiSimulator(**kwargs)
        sim.start(port=0)
        started.append(sim)
        return sim

    yield factory
    for sim in started:
        sim.stop()


@pytest.fixture
def sim(make_sim: SimFactory) -> IvantiSimulator:
    return make_sim()


@pytest.fixture
def plain(make_sim: SimFactory) -> IvantiSimulator:
    return make_sim(quirks=False)


def client(
    sim: IvantiSimulator, auth: str | None = f"rest_api_key={DEFAULT_API_KEY}"
) -> httpx.Client:
    headers = {"Authorization": auth} if auth is not None else {}
    return httpx.Client(base_url=sim.url, headers=headers, timeout=5.0)


def query(sim: IvantiSimulator, path: str = INCIDENTS, **params: str) -> httpx.Response:
    with client(sim) as c:
        return c.get(path, params={f"${k}": v for k, v in params.items()})


def rows(sim: IvantiSimulator, **params: str) -> list[dict[str, Any]]:
    resp = query(sim, **params)
    assert resp.status_code == 200, resp.text
    if not resp.content:
        return []
    values: list[dict[str, Any]] = resp.json()["value"]
    return values


def numbers(sim: IvantiSimulator, flt: str, **params: str) -> set[int]:
    return {r["IncidentNumber"] for r in rows(sim, filter=flt, top="100", **params)}


def ivanti_error(resp: httpx.Response, status: int, code: str) -> list[str]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"code", "description", "message", "help"}
    assert body["code"] == code
    assert body["help"] == ""
    assert isinstance(body["message"], list)
    return list(body["message"])


def login(sim: IvantiSimulator, **overrides: str) -> httpx.Response:
    body = {
        "tenant": sim.tenant,
        "username": DEFAULT_USER,
        "password": DEFAULT_PASSWORD,
        "role": "Admin",
    }
    body.update(overrides)
    with client(sim, auth=None) as c:
        return c.post(LOGIN, json=body)


def session_key(sim: IvantiSimulator) -> str:
    resp = login(sim)
    assert resp.status_code == 200
    key: str = resp.json()
    return key


# ----- authentication ---------------------------------------------------------------
def test_login_returns_session_key_as_json_string(sim: IvantiSimulator) -> None:
    resp = login(sim)
    assert resp.status_code == 200
    assert resp.text.startswith('"') and resp.text.endswith('"')
    assert re.fullmatch(r"127\.0\.0\.1#[A-Z0-9]{32}#1", resp.json())


def test_login_accepts_tenant_url_as_well_as_host(sim: IvantiSimulator) -> None:
    assert login(sim, tenant=f"https://{sim.tenant}/").status_code == 200


@pytest.mark.parametrize(
    "overrides",
    [
        {"password": "wrong"},
        {"tenant": "other.ivanti.local"},
        {"username": "nobody"},
        {"role": "SelfService"},
    ],
)
def test_login_refusals_use_ivanti_400(sim: IvantiSimulator, overrides: dict[str, str]) -> None:
    resp = login(sim, **overrides)
    assert resp.json() == {
        "code": "ISM_4000",
        "description": "Bad Request",
        "message": [
            "Unhandled system exception: Tenant Not Found or wrong Password or OpenID not "
            "Configured Properly."
        ],
        "help": "",
    }
    assert resp.status_code == 400
    assert DEFAULT_PASSWORD not in resp.text


def test_session_key_works_as_header_and_as_cookie(sim: IvantiSimulator) -> None:
    sim.create_incident()
    key = session_key(sim)
    with client(sim, auth=key) as c:
        assert c.get(INCIDENTS).status_code == 200
    with httpx.Client(base_url=sim.url, timeout=5.0) as c:
        resp = c.get(INCIDENTS, headers={"Cookie": f"SID={key}"})
    assert resp.status_code == 200


def test_missing_or_unknown_session_is_401(sim: IvantiSimulator) -> None:
    with client(sim, auth=None) as c:
        messages = ivanti_error(c.get(INCIDENTS), 401, "ISM_4001")
    assert messages == ["Authentication required"]
    bogus = f"{sim.tenant}#{'A' * 32}#1"
    with client(sim, auth=bogus) as c:
        resp = c.get(INCIDENTS)
    assert ivanti_error(resp, 401, "ISM_4001") == ["Authentication required"]
    assert resp.json()["description"] == "Invalid session key or session timed out"
    assert bogus not in resp.text


def test_bad_api_key_is_401_with_its_own_text(sim: IvantiSimulator) -> None:
    with client(sim, auth="rest_api_key=NOTAKEY") as c:
        resp = c.get(INCIDENTS)
    messages = ivanti_error(resp, 401, "ISM_4001")
    assert messages == ["Invalid Session key or Authentication token or Host"]
    assert "NOTAKEY" not in resp.text


def test_session_expires_after_idle_time_and_each_request_extends_it(
    make_sim: SimFactory,
) -> None:
    sim = make_sim(session_idle_timeout=600)
    key = session_key(sim)
    with client(sim, auth=key) as c:
        for _ in range(3):
            sim.clock.advance(590)
            assert c.get(INCIDENTS).status_code == 200
        sim.clock.advance(601)
        ivanti_error(c.get(INCIDENTS), 401, "ISM_4001")


def test_expire_sessions_python_and_control_route(sim: IvantiSimulator) -> None:
    first, second = session_key(sim), session_key(sim)
    sim.expire_sessions()
    with client(sim, auth=first) as c:
        ivanti_error(c.get(INCIDENTS), 401, "ISM_4001")
    third = session_key(sim)
    with client(sim, auth=None) as c:
        assert c.post("/_sim/sessions/expire").status_code == 204
    for key in (second, third):
        with client(sim, auth=key) as c:
            ivanti_error(c.get(INCIDENTS), 401, "ISM_4001")


def test_logout_ends_the_session(sim: IvantiSimulator) -> None:
    key = session_key(sim)
    with client(sim, auth=key) as c:
        resp = c.request("DELETE", LOGOUT, json={"tenant": sim.tenant})
        assert resp.status_code == 200
        ivanti_error(c.get(INCIDENTS), 401, "ISM_4001")


def test_heat_prefix_and_entity_set_case(sim: IvantiSimulator) -> None:
    inc = sim.create_incident()
    with client(sim) as c:
        assert c.get("/HEAT/api/odata/businessobject/Incidents").status_code == 200
        got = c.get(f"/HEAT/api/odata/businessobject/INCIDENTS('{inc['RecId']}')").json()
    assert got["@odata.context"].endswith("/HEAT/api/odata/$metadata#incidents/$entity")


def test_unknown_path_and_singular_set_are_404_no_service(sim: IvantiSimulator) -> None:
    inc = sim.create_incident()
    with client(sim) as c:
        for path in ("/api/odata/businessobject/incident", f"/api/odata/x('{inc['RecId']}')"):
            messages = ivanti_error(c.get(path), 404, "ISM_4004")
            assert messages == ["No service for the resource is registered."]


# ----- the collection query ---------------------------------------------------------
def test_envelope_count_and_context(sim: IvantiSimulator) -> None:
    for _ in range(3):
        sim.create_incident(Priority="2")
    sim.create_incident(Priority="4")
    resp = query(sim, filter="Priority eq '2'", top="2")
    body = resp.json()
    assert list(body) == ["@odata.context", "@odata.count", "value"]
    assert body["@odata.context"] == f"{sim.url}/api/odata/$metadata#incidents"
    assert body["@odata.count"] == 3
    assert len(body["value"]) == 2
    assert all("@odata.context" not in v for v in body["value"])


def test_empty_match_is_200_with_empty_body(sim: IvantiSimulator) -> None:
    sim.create_incident(Priority="3")
    resp = query(sim, filter="Priority eq '1'")
    assert resp.status_code == 200
    assert resp.content == b""


def test_comparison_operators_on_numbers(sim: IvantiSimulator) -> None:
    nums = [sim.create_incident()["IncidentNumber"] for _ in range(5)]
    mid = nums[2]
    assert numbers(sim, f"IncidentNumber eq {mid}") == {mid}
    assert numbers(sim, f"IncidentNumber ne {mid}") == set(nums) - {mid}
    assert numbers(sim, f"IncidentNumber lt {mid}") == set(nums[:2])
    assert numbers(sim, f"IncidentNumber le {mid}") == set(nums[:3])
    assert numbers(sim, f"IncidentNumber gt {mid}") == set(nums[3:])
    assert numbers(sim, f"IncidentNumber ge {mid}") == set(nums[2:])
    assert numbers(sim, f"IncidentNumber eq {nums[0]} or IncidentNumber eq {nums[4]}") == {
        nums[0],
        nums[4],
    }
    assert numbers(sim, f"IncidentNumber gt {nums[0]} and IncidentNumber lt {nums[2]}") == {nums[1]}


def test_string_quoting_and_case_insensitive_eq(sim: IvantiSimulator) -> None:
    a = sim.create_incident(Subject="O'Brien's laptop")["IncidentNumber"]
    b = sim.create_incident(Subject="Printer")["IncidentNumber"]
    assert numbers(sim, "Subject eq 'O''Brien''s laptop'") == {a}
    assert numbers(sim, "Subject eq 'o''brien''S LAPTOP'") == {a}
    assert numbers(sim, "Status eq 'LOGGED'") == {a, b}
    assert numbers(sim, "Subject ne 'printer'") == {a}


def test_datetime_literals_are_utc_instants(sim: IvantiSimulator) -> None:
    early = sim.create_incident()["IncidentNumber"]  # 10:15:30Z
    sim.clock.advance(60)
    late = sim.create_incident()["IncidentNumber"]  # 10:16:30Z
    assert numbers(sim, "LastModDateTime ge 2026-11-27T10:16:30Z") == {late}
    assert numbers(sim, "LastModDateTime gt 2026-11-27T10:15:30Z") == {late}
    assert numbers(sim, "LastModDateTime ge 2026-11-27T10:15:30.000Z") == {early, late}
    # the same instants written with other offsets (the + must arrive as %2B)
    assert numbers(sim, "LastModDateTime ge 2026-11-27T12:16:30+02:00") == {late}
    assert numbers(sim, "LastModDateTime lt 2026-11-27T02:16:30-08:00") == {early}
    assert numbers(sim, "CreatedDateTime ge 2026-11-27") == {early, late}
    assert numbers(sim, "CreatedDateTime lt 2026-11-28 and CreatedDateTime gt 2026-11-26") == {
        early,
        late,
    }
    assert numbers(sim, "CreatedDateTime ge 2026-11-28") == set()


def test_null_text_marker(sim: IvantiSimulator, plain: IvantiSimulator) -> None:
    made: dict[int, tuple[int, int]] = {}
    for s in (sim, plain):
        unowned = s.create_incident(Owner="")["IncidentNumber"]
        owned = s.create_incident(Owner="jsmith")["IncidentNumber"]
        made[id(s)] = (unowned, owned)
        assert numbers(s, "Owner eq '$NULL'") == {unowned}
        messages = ivanti_error(query(s, filter="LastModDateTime eq '$NULL'"), 400, "ISM_4000")
        assert "No such entry exists" in messages[0]
    # quirk: ne '$NULL' still matches empty owners; standard reading excludes them
    assert numbers(sim, "Owner ne '$NULL'") == set(made[id(sim)])
    assert numbers(plain, "Owner ne '$NULL'") == {made[id(plain)][1]}


@pytest.mark.parametrize(
    ("flt", "blamed"),
    [
        ("NoSuchField eq 'x'", "NoSuchField"),
        ("LastModDateTime ge datetime'2026-11-27T10:15:30Z'", "LastModDateTime"),
        ("LastModDateTime ge '2026-11-27T10:15:30Z'", "LastModDateTime"),
        ("substringof('x', Subject)", "substringof"),
        ("not Status eq 'Logged'", "not"),
        ("Status eq", ""),
        ("IsVIP eq 'yes'", "IsVIP"),
    ],
)
def test_filter_refusals_are_400(
    sim: IvantiSimulator, plain: IvantiSimulator, flt: str, blamed: str
) -> None:
    for s in (sim, plain):
        s.create_incident()
        messages = ivanti_error(query(s, filter=flt), 400, "ISM_4000")
        assert blamed in messages[0]
        if "datetime'" in flt:
            assert "datetime" not in messages[0].replace("LastModDateTime", "")


def test_functions_dropped_with_quirks_and_honoured_without(
    sim: IvantiSimulator, plain: IvantiSimulator
) -> None:
    for s in (sim, plain):
        s.create_incident(Subject="disk full", Priority="1")
        s.create_incident(Subject="printer jam", Priority="1")
        s.create_incident(Subject="disk slow", Priority="2")
    flt = "contains(Subject,'disk') and Priority eq '1'"
    assert {r["Subject"] for r in rows(sim, filter=flt)} == {"disk full", "printer jam"}
    assert {r["Subject"] for r in rows(plain, filter=flt)} == {"disk full"}
    only_fn = "startswith(Subject,'printer')"
    assert len(rows(sim, filter=only_fn)) == 3
    assert [r["Subject"] for r in rows(plain, filter=only_fn)] == ["printer jam"]
    year = "year(CreatedDateTime) eq 1999 or Priority eq '2'"
    assert len(rows(sim, filter=year)) == 1
    assert len(rows(plain, filter=year)) == 1
    assert len(rows(plain, filter="year(CreatedDateTime) eq 2026")) == 3


def test_not_group_dropped_with_quirks_negates_without(
    sim: IvantiSimulator, plain: IvantiSimulator
) -> None:
    for s in (sim, plain):
        s.create_incident(Priority="1")
        s.create_incident(Priority="2", Status="Active", Owner="jsmith", Category="HW")
    flt = "Priority ne '9' and not (Status eq 'Active')"
    assert len(rows(sim, filter=flt)) == 2
    assert [r["Priority"] for r in rows(plain, filter=flt)] == ["1"]


def _abc_data(s: IvantiSimulator) -> dict[str, int]:
    """Incidents telling apart three readings of A or B and C.

    A = Priority eq '1', B = Status eq 'Active', C = Category eq 'Net'.
    """
    made = {
        "A": s.create_incident(Priority="1"),
        "B": s.create_incident(Priority="3", Status="Active", Owner="bwong", Category="HW"),
        "AC": s.create_incident(Priority="1", Category="Net"),
        "BC": s.create_incident(Priority="3", Status="Active", Owner="bwong", Category="Net"),
        "C": s.create_incident(Priority="3", Category="Net"),
        "ABC": s.create_incident(Priority="1", Status="Active", Owner="bwong", Category="Net"),
    }
    return {k: v["IncidentNumber"] for k, v in made.items()}


def test_and_after_or_is_misread_with_quirks(sim: IvantiSimulator, plain: IvantiSimulator) -> None:
    q, p = _abc_data(sim), _abc_data(plain)
    flt = "Priority eq '1' or Status eq 'Active' and Category eq 'Net'"
    correct = {p["A"], p["AC"], p["ABC"], p["BC"]}
    assert numbers(plain, flt) == correct
    misread = numbers(sim, flt)
    assert misread == {q["ABC"]}  # read as A and B and C
    as_grouped_left = {q["AC"], q["BC"], q["ABC"]}
    assert misread != {q[k] for k, v in p.items() if v in correct}
    assert misread != as_grouped_left
    # an and before an or keeps normal precedence in both readings
    flt2 = "Status eq 'Active' and Category eq 'Net' or Priority eq '1'"
    assert numbers(sim, flt2) == {q["BC"], q["ABC"], q["A"], q["AC"]}
    assert numbers(plain, flt2) == correct


def test_parentheses_only_honoured_at_start_with_quirks(
    sim: IvantiSimulator, plain: IvantiSimulator
) -> None:
    q, p = _abc_data(sim), _abc_data(plain)
    leading = "(Priority eq '1' or Status eq 'Active') and Category eq 'Net'"
    assert numbers(sim, leading) == {q["AC"], q["BC"], q["ABC"]}
    assert numbers(plain, leading) == {p["AC"], p["BC"], p["ABC"]}
    trailing = "Category eq 'Net' and (Priority eq '1' or Status eq 'Active')"
    assert numbers(plain, trailing) == {p["AC"], p["BC"], p["ABC"]}
    # flattened: C and A or B -> (C and A) or B
    assert numbers(sim, trailing) == {q["AC"], q["ABC"], q["B"], q["BC"]}
    nested = "((Priority eq '1' or Status eq 'Active') and Category eq 'Net')"
    assert numbers(sim, nested) == {q["AC"], q["BC"], q["ABC"]}


def test_orderby_multi_key_and_direction(sim: IvantiSimulator) -> None:
    a = sim.create_incident(Priority="2")
    b = sim.create_incident(Priority="1")
    c = sim.create_incident(Priority="2")
    sim.clock.advance(1)
    sim.edit_incident(a["RecId"], Symptom="changed")
    got = rows(sim, orderby="Priority asc,IncidentNumber DESC")
    assert [r["RecId"] for r in got] == [b["RecId"], c["RecId"], a["RecId"]]
    got = rows(sim, orderby="LastModDateTime desc, IncidentNumber asc")
    assert [r["RecId"] for r in got] == [a["RecId"], b["RecId"], c["RecId"]]
    got = rows(sim, orderby="IncidentNumber")
    assert [r["RecId"] for r in got] == [a["RecId"], b["RecId"], c["RecId"]]


def test_default_order_is_by_rec_id_not_time(sim: IvantiSimulator) -> None:
    made = [sim.create_incident()["RecId"] for _ in range(8)]
    assert [r["RecId"] for r in rows(sim)] == sorted(made)


def test_bad_orderby_is_204_with_quirks_400_without(
    sim: IvantiSimulator, plain: IvantiSimulator
) -> None:
    for s in (sim, plain):
        s.create_incident()
    for bad in ("CreatedDate asc", "CreatedDateTime bogus", "NotAFieldAtAll asc"):
        resp = query(sim, orderby=bad)
        assert resp.status_code == 204
        assert resp.content == b""
        ivanti_error(query(plain, orderby=bad), 400, "ISM_4000")


def test_empty_orderby_is_500(sim: IvantiSimulator) -> None:
    sim.create_incident()
    ivanti_error(query(sim, orderby=""), 500, "ISM_5000")


def test_top_default_max_and_over_limit(sim: IvantiSimulator) -> None:
    sim.bulk_create(120)
    assert len(rows(sim)) == 25
    resp = query(sim, top="100")
    assert len(resp.json()["value"]) == 100
    assert resp.json()["@odata.count"] == 120
    resp = query(sim, top="101")
    ivanti_error(resp, 400, "ISM_4000")
    assert resp.json()["description"] == "Invalid Request Payload"


def test_skip_pages_without_repeats(sim: IvantiSimulator) -> None:
    sim.bulk_create(30)
    seen: list[str] = []
    for skip in range(0, 30, 7):
        seen += [
            r["RecId"] for r in rows(sim, orderby="IncidentNumber asc", top="7", skip=str(skip))
        ]
    assert len(seen) == 30 == len(set(seen))
    assert rows(sim, top="7", skip="30") == []


def test_select_trims_collection_fields(sim: IvantiSimulator) -> None:
    sim.create_incident()
    got = rows(sim, select="RecId,Status,LastModDateTime")
    assert list(got[0]) == ["RecId", "Status", "LastModDateTime"]
    ivanti_error(query(sim, select="RecId,Nope"), 400, "ISM_4000")


def test_bulk_create_spacing_gives_keyset_pageable_times(sim: IvantiSimulator) -> None:
    ids = sim.bulk_create(250, spacing=2.0, Priority="2")
    assert len(set(ids)) == 250
    newest = rows(sim, orderby="LastModDateTime desc", top="1")[0]
    assert newest["LastModDateTime"] == "2026-11-27T02:15:30-08:00"
    watermark, seen = "2026-01-01T00:00:00Z", set[str]()
    while True:
        page = rows(
            sim, filter=f"LastModDateTime gt {watermark}", orderby="LastModDateTime asc", top="100"
        )
        if not page:
            break
        seen.update(r["RecId"] for r in page)
        last = datetime.fromisoformat(page[-1]["LastModDateTime"]).astimezone(UTC)
        watermark = last.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert seen == set(ids)


# ----- single record ----------------------------------------------------------------
def test_get_by_key_is_flat_entity_with_context_first(sim: IvantiSimulator) -> None:
    inc = sim.create_incident(Subject="VPN down")
    with client(sim) as c:
        got = c.get(f"{INCIDENTS}('{inc['RecId']}')").json()
    assert next(iter(got)) == "@odata.context"
    assert got["@odata.context"] == f"{sim.url}/api/odata/$metadata#incidents/$entity"
    assert got["Subject"] == "VPN down"
    assert got == sim.incident(inc["RecId"])


def test_get_unknown_key_is_400_invalid_key(sim: IvantiSimulator) -> None:
    with client(sim) as c:
        resp = c.get(f"{INCIDENTS}('{'0' * 32}')")
    assert ivanti_error(resp, 400, "ISM_4000") == ["Invalid key"]


def test_select_on_single_record_quirk(sim: IvantiSimulator, plain: IvantiSimulator) -> None:
    for s, expected in ((sim, ["@odata.context"]), (plain, ["@odata.context", "Status"])):
        inc = s.create_incident()
        with client(s) as c:
            got = c.get(f"{INCIDENTS}('{inc['RecId']}')", params={"$select": "Status"}).json()
        assert list(got) == expected


# ----- writes -----------------------------------------------------------------------
def _write(
    sim: IvantiSimulator, rec_id: str, body: Any, method: str = "PUT", auth: str | None = None
) -> httpx.Response:
    with client(sim, **({"auth": auth} if auth else {})) as c:
        return c.request(method, f"{INCIDENTS}('{rec_id}')", json=body)


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
def test_partial_update_changes_only_given_fields(sim: IvantiSimulator, method: str) -> None:
    inc = sim.create_incident(Subject="Mail down", Priority="2")
    sim.clock.advance(30)
    resp = _write(sim, inc["RecId"], {"Priority": "1"}, method)
    assert resp.status_code == 200
    after = resp.json()
    assert after["@odata.context"].endswith("#incidents/$entity")
    changed = {k for k in inc if inc[k] != after[k]}
    assert changed == {"Priority", "Priority_Valid", "LastModDateTime", "LastModBy"}
    assert after["Subject"] == "Mail down"
    assert after == sim.incident(inc["RecId"])


def test_write_stamps_last_mod_with_api_user_and_clock(make_sim: SimFactory) -> None:
    sim = make_sim(users={"svc": ("pw", {"Admin"})}, api_keys={"K1": "keyuser"})
    inc = sim.create_incident(by="lchen")
    assert inc["LastModBy"] == "lchen"
    sim.clock.advance(90)
    after = _write(sim, inc["RecId"], {"Symptom": "more"}, auth="rest_api_key=K1").json()
    assert after["LastModBy"] == "keyuser"
    assert after["LastModDateTime"] == "2026-11-27T02:17:00-08:00"
    with client(sim, auth=None) as c:
        key = c.post(
            LOGIN, json={"tenant": sim.tenant, "username": "SVC", "password": "pw", "role": "Admin"}
        ).json()
    after = _write(sim, inc["RecId"], {"Symptom": "again"}, "PATCH", auth=key).json()
    assert after["LastModBy"] == "svc"
    assert sim.writes()[-1]["user"] == "svc"


def test_several_edits_within_one_second_share_last_mod(sim: IvantiSimulator) -> None:
    inc = sim.create_incident()
    sim.clock.advance(0.25)
    first = _write(sim, inc["RecId"], {"Symptom": "a"}).json()
    sim.clock.advance(0.5)
    second = sim.edit_incident(inc["RecId"], Symptom="b")
    assert first["LastModDateTime"] == second["LastModDateTime"] == inc["LastModDateTime"]


def test_precision_quirk_whole_seconds(sim: IvantiSimulator, plain: IvantiSimulator) -> None:
    for s in (sim, plain):
        s.clock.advance(0.75)
    assert sim.create_incident()["LastModDateTime"] == "2026-11-27T02:15:30-08:00"
    assert plain.create_incident()["LastModDateTime"] == "2026-11-27T02:15:30.750000-08:00"
    assert numbers(plain, "LastModDateTime gt 2026-11-27T10:15:30.5Z") != set()
    assert numbers(sim, "LastModDateTime gt 2026-11-27T10:15:30.5Z") == set()


def test_subsecond_times_stored_but_served_in_whole_seconds(make_sim: SimFactory) -> None:
    """Open question (ivanti-api.md §8.5) as a switch: saves keep their sub-second,
    each after the one before in a frozen second, and are served without it."""
    sim = make_sim(subsecond_times=True)
    sim.clock.advance(0.75)
    first = sim.create_incident()
    second = sim.create_incident()
    assert first["LastModDateTime"] == second["LastModDateTime"] == "2026-11-27T02:15:30-08:00"
    both = {first["IncidentNumber"], second["IncidentNumber"]}
    assert numbers(sim, "LastModDateTime gt 2026-11-27T10:15:30.5Z") == both
    assert numbers(sim, "LastModDateTime eq 2026-11-27T10:15:30Z") == set()  # not .000
    assert numbers(sim, "LastModDateTime ge 2026-11-27T10:15:30Z") == both
    # sorted by the hidden sub-second (save order), whatever the RecIds
    ordered = rows(sim, orderby="LastModDateTime desc,RecId asc")
    assert [r["IncidentNumber"] for r in ordered] == [
        second["IncidentNumber"],
        first["IncidentNumber"],
    ]


def test_recid_guid_sort_differs_from_the_comparison(make_sim: SimFactory) -> None:
    """Open question as a switch: $orderby sorts RecId in SQL Server's uniqueidentifier
    order (last group first) while ``RecId gt`` compares text."""
    sim = make_sim(recid_sort="guid")
    low = "01" + "0" * 18 + "99" + "0" * 10  # first in text order, last in guid order
    high = "99" + "0" * 18 + "01" + "0" * 10
    sim.create_incident(RecId=low)
    sim.create_incident(RecId=high)
    assert [r["RecId"] for r in rows(sim, orderby="RecId asc")] == [high, low]
    assert [r["RecId"] for r in rows(sim, filter=f"RecId gt '{low}'")] == [high]
    default = make_sim()
    default.create_incident(RecId=low)
    default.create_incident(RecId=high)
    assert [r["RecId"] for r in rows(default, orderby="RecId asc")] == [low, high]


def test_served_offset_follows_dst(make_sim: SimFactory) -> None:
    sim = make_sim(clock=SimClock(datetime(2026, 7, 1, 12, 0, tzinfo=UTC)))
    inc = sim.create_incident()
    assert inc["CreatedDateTime"] == "2026-07-01T05:00:00-07:00"
    assert inc["ClosedDateTime"] == "0001-01-01T00:00:00Z"
    utc = make_sim(tz="UTC").create_incident()
    assert utc["CreatedDateTime"] == "2026-11-27T10:15:30Z"


def test_empty_body_and_unknown_record(sim: IvantiSimulator) -> None:
    inc = sim.create_incident()
    with client(sim) as c:
        for content in (b"", b"{}"):
            resp = c.put(f"{INCIDENTS}('{inc['RecId']}')", content=content)
            assert ivanti_error(resp, 400, "ISM_4000") == ["Message body cannot be empty"]
    resp = _write(sim, "ABC123", {"Priority": "1"}, "PATCH")
    assert ivanti_error(resp, 400, "ISM_4000") == [
        "Record 'ABC123' cannot be found in the business object 'incident'"
    ]


def test_new_notes_creates_journal_note(sim: IvantiSimulator) -> None:
    inc = sim.create_incident()
    text = "[xMatters] Jane Smith | Mobile App responded [ Acknowledge ] " + "x" * 80
    sim.clock.advance(5)
    after = _write(sim, inc["RecId"], {"NewNotes": text}).json()
    assert after["NewNotes"] == ""
    assert after["LastModDateTime"] == "2026-11-27T02:15:35-08:00"
    resp = query(sim, NOTES, filter=f"ParentLink_RecID eq '{inc['RecId']}'")
    body = resp.json()
    assert body["@odata.count"] == 1
    note = body["value"][0]
    assert note["NotesBody"] == text
    assert note["Subject"] == text[:100]
    expected = {
        "JournalType": "Notes",
        "Category": "Memo",
        "Source": "Other",
        "ParentLink_RecID": inc["RecId"],
        "ParentLink_Category": "Incident",
        "CreatedBy": DEFAULT_USER,
        "LastModBy": DEFAULT_USER,
        "PublishToWeb": False,
        "CreatedDateTime": "2026-11-27T02:15:35-08:00",
    }
    assert {k: note[k] for k in expected} == expected
    assert re.fullmatch(r"[0-9A-F]{32}", note["RecId"])
    assert sim.notes(inc["RecId"]) == [note]
    other = sim.create_incident()
    assert query(sim, NOTES, filter=f"ParentLink_RecID eq '{other['RecId']}'").content == b""


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"Status": "Bogus"}, "Bogus"),
        ({"Owner": "nobody"}, "nobody"),
        ({"Frobnicate": 1}, "Frobnicate"),
    ],
)
def test_refused_write_changes_nothing(
    sim: IvantiSimulator, body: dict[str, Any], named: str
) -> None:
    inc = sim.create_incident()
    sim.clock.advance(10)
    resp = _write(sim, inc["RecId"], {**body, "NewNotes": "should not appear"})
    assert named in ivanti_error(resp, 400, "ISM_4000")[0]
    assert sim.incident(inc["RecId"]) == inc
    assert sim.notes(inc["RecId"]) == []
    last = sim.writes()[-1]
    assert last["ok"] is False and last["rec_id"] == inc["RecId"]
    assert last["fields"]["NewNotes"] == "should not appear"


def test_active_requires_category_and_owner(sim: IvantiSimulator) -> None:
    inc = sim.create_incident(Category="")
    assign = {"NewNotes": "assign", "Owner": "jsmith", "Status": "Active"}
    resp = _write(sim, inc["RecId"], assign)
    assert ivanti_error(resp, 400, "ISM_4000") == [
        "Required field Incident.Category value must be provided"
    ]
    resp = _write(sim, inc["RecId"], {"Status": "Active", "Category": "Network"})
    assert ivanti_error(resp, 400, "ISM_4000") == [
        "Required field Incident.Owner value must be provided"
    ]
    assert sim.incident(inc["RecId"]) == inc
    after = _write(sim, inc["RecId"], {**assign, "Category": "Network"}).json()
    assert (after["Status"], after["Owner"], after["OwnerEmail"]) == (
        "Active",
        "jsmith",
        "jsmith@example.com",
    )
    assert after["PreviousState"] == "Logged"
    assert [w["ok"] for w in sim.writes()] == [False, False, True]


def test_resolve_and_close_stamp_dates_and_read_only(sim: IvantiSimulator) -> None:
    inc = sim.create_incident(Status="Active", Owner="apatel", Category="DB")
    resp = _write(sim, inc["RecId"], {"Status": "Resolved"})
    assert "Required field Incident.Resolution" in " ".join(ivanti_error(resp, 400, "ISM_4000"))
    sim.clock.advance(60)
    resolved = _write(
        sim, inc["RecId"], {"Status": "Resolved", "CauseCode": "Fixed", "Resolution": "Restarted"}
    ).json()
    assert resolved["ResolvedDateTime"] == "2026-11-27T02:16:30-08:00"
    assert resolved["ResolvedBy"] == DEFAULT_USER
    assert resolved["ReadOnly"] is False
    reopened = _write(sim, inc["RecId"], {"Status": "Active"}).json()
    assert reopened["ResolvedDateTime"] == "0001-01-01T00:00:00Z"
    assert reopened["PreviousState"] == "Resolved"
    _write(sim, inc["RecId"], {"Status": "Resolved"})
    sim.clock.advance(60)
    closed = _write(sim, inc["RecId"], {"Status": "closed"}).json()
    assert closed["Status"] == "Closed"
    assert closed["ClosedDateTime"] == "2026-11-27T02:17:30-08:00"
    assert closed["ReadOnly"] is True


def test_owner_change_by_person_updates_owner_email(sim: IvantiSimulator) -> None:
    inc = sim.create_incident(Owner="")
    assert inc["OwnerEmail"] == ""
    edited = sim.edit_incident(inc["RecId"], by="mgarcia", Owner="bwong", Status="Active")
    assert edited["OwnerEmail"] == "bwong@example.com"
    assert edited["LastModBy"] == "mgarcia"
    with pytest.raises(BadRequest, match="Nobody"):
        sim.edit_incident(inc["RecId"], Owner="Nobody")


# ----- shape parity with the captured real incident ---------------------------------
def _captured(name: str) -> dict[str, Any]:
    path = PAYLOADS / name
    if not path.exists():
        pytest.skip(
            "../shared/reference/ivanti-payloads not present (captured payloads live outside the repo)"
        )
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def test_incident_keys_and_types_match_capture(sim: IvantiSimulator) -> None:
    captured = _captured("rapid7_create_incident_good.json.resp")
    served = sim.create_incident()
    missing = [k for k in captured if k not in served]
    assert missing == []
    mismatched = {
        k: (type(v), type(served[k])) for k, v in captured.items() if type(v) is not type(served[k])
    }
    assert mismatched == {}
    assert re.fullmatch(r"[0-9A-F]{32}", served["RecId"])
    assert re.fullmatch(r"[0-9A-F]{32}", served["Status_Valid"])
    for stripped in ("Category", "CauseCode", "Resolution", "ClosedDateTime", "ResolvedDateTime"):
        assert stripped in served


def test_note_keys_and_types_match_capture(sim: IvantiSimulator) -> None:
    captured = _captured("rapid7_add_note_good.json.resp")
    inc = sim.create_incident()
    _write(sim, inc["RecId"], {"NewNotes": "hello"})
    served = query(sim, NOTES, filter=f"ParentLink_RecID eq '{inc['RecId']}'").json()["value"][0]
    captured.pop("@odata.context")
    assert {k: type(v) for k, v in captured.items()} == {k: type(served[k]) for k in captured}


# ----- faults -----------------------------------------------------------------------
def test_injected_status_fault_uses_ivanti_body(sim: IvantiSimulator) -> None:
    sim.create_incident()
    sim.faults.inject("status", "/incidents", status=503)
    messages = ivanti_error(query(sim), 503, "ISM_5003")
    assert messages
    assert query(sim).status_code == 200
    sim.faults.inject("status", "/incidents", status=429, retry_after=7)
    resp = query(sim)
    assert resp.headers["Retry-After"] == "7"
    ivanti_error(resp, 429, "ISM_4029")
    assert sim.request_counts()["incidents.query"] == 3


def test_drop_after_write_applies_change_without_answer(sim: IvantiSimulator) -> None:
    inc = sim.create_incident()
    sim.faults.inject("drop_after", "/incidents", method="PUT")
    with pytest.raises(httpx.TransportError):
        _write(sim, inc["RecId"], {"NewNotes": "sent once", "Priority": "1"})
    assert sim.incident(inc["RecId"])["Priority"] == "1"
    assert [n["NotesBody"] for n in sim.notes(inc["RecId"])] == ["sent once"]
    assert sim.writes()[-1]["ok"] is True
    assert sim.requests("incidents.update")[-1].status is None


# ----- control routes ---------------------------------------------------------------
def test_control_routes_need_no_auth(sim: IvantiSimulator) -> None:
    with client(sim, auth=None) as c:
        created = c.post("/_sim/incidents", json={"Subject": "from control", "by": "obrien"})
        assert created.status_code == 201
        rec = created.json()["RecId"]
        assert created.json()["CreatedBy"] == "obrien"
        edited = c.patch(f"/_sim/incidents/{rec}", json={"Priority": "1"})
        assert edited.json()["Priority"] == "1"
        assert c.get(f"/_sim/incidents/{rec}").json() == sim.incident(rec)
        ivanti_error(c.patch(f"/_sim/incidents/{rec}", json={"Status": "Nope"}), 400, "ISM_4000")
        assert c.get(f"/_sim/incidents/{rec}/notes").json() == []
        bulk = c.post("/_sim/incidents/bulk", json={"n": 3})
        assert len(bulk.json()["rec_ids"]) == 3
        assert c.get("/_sim/writes").json() == []
        assert c.delete(f"/_sim/incidents/{rec}").status_code == 204
        ivanti_error(c.get(f"/_sim/incidents/{rec}"), 404, "ISM_4004")
    assert sim.request_counts() == {}
    with pytest.raises(KeyError):
        sim.incident(rec)


def test_metadata_lives_by_graph_name_outside_businessobject(sim: IvantiSimulator) -> None:
    """ivanti-api.md §0: ``/api/odata/incidents/$metadata`` is CSDL XML; the service
    roots answer 404 ISM_4004; JSON asked for turns it into a 500; an unknown graph name
    still answers 200, with a field-less entity type."""
    import xml.etree.ElementTree as ET

    edm = "{http://docs.oasis-open.org/odata/ns/edm}"
    with client(sim) as c:
        got = c.get("/api/odata/incidents/$metadata")
        assert got.status_code == 200 and got.headers["content-type"].startswith("application/xml")
        (entity,) = ET.fromstring(got.content).iter(f"{edm}EntityType")
        props = {p.get("Name"): p.get("Type") for p in entity.iter(f"{edm}Property")}
        assert props["RecId"] == "Edm.String" and props["IncidentNumber"] == "Edm.Int32"
        assert props["LastModDateTime"] == "Edm.DateTimeOffset"
        for root in ("/api/odata/businessobject/$metadata", "/api/odata/$metadata"):
            ivanti_error(c.get(root), 404, "ISM_4004")
        as_json = c.get("/api/odata/incidents/$metadata", headers={"Accept": "application/json"})
        assert as_json.status_code == 500 and "Unhandled system exception" in as_json.text
        unknown = c.get("/api/odata/nosuchthings/$metadata")
        assert unknown.status_code == 200
        (entity,) = ET.fromstring(unknown.content).iter(f"{edm}EntityType")
        assert list(entity.iter(f"{edm}Property")) == []
    with client(sim, auth=None) as c:
        assert c.get("/api/odata/incidents/$metadata").status_code == 401
