"""IvantiClient against httpx.MockTransport: auth modes, Ivanti's "no rows" encodings,
error classification and the secrets that must never show up in an exception."""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from daemon.errors import (
    ApiError,
    AuthError,
    NotFound,
    OutcomeUnknown,
    PermanentError,
    TransientError,
)
from daemon.ivanti import IvantiClient, Page, encode_query, normalize_base_url, odata_quote

BASE = "https://acme.saasit.com"
TENANT = "acme.saasit.com"
REC = "085867F47547496783005D95CB82D557"
DATE = "Fri, 27 Nov 2026 10:15:30 GMT"

Handler = Callable[[httpx.Request], httpx.Response]


def ivanti_error(status: int, code: str, *messages: str, description: str = "") -> httpx.Response:
    body = {"code": code, "description": description, "message": list(messages), "help": ""}
    return httpx.Response(status, json=body, headers={"Date": DATE})


def unauthorized() -> httpx.Response:
    return ivanti_error(401, "ISM_4001", "Authentication required", description="Invalid session")


def collection(rows: list[dict[str, object]]) -> httpx.Response:
    body = {"@odata.context": f"{BASE}/api/odata/$metadata#incidents", "value": rows}
    return httpx.Response(200, json=body, headers={"Date": DATE})


@dataclass
class FakeIvanti:
    """Just enough Ivanti: logins hand out numbered session keys; routes are overridable."""

    password: str = field(default_factory=lambda: "pw-" + secrets.token_hex(8))
    valid_keys: set[str] = field(default_factory=set)
    logins: int = 0
    login_response: Callable[[], httpx.Response] | None = None
    on_unauthorized: Callable[[httpx.Request], None] | None = None
    routes: dict[str, Handler] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def key(self, n: int) -> str:
        return f"{TENANT}#SESSIONKEY{n:024d}#1"

    def expire_sessions(self) -> None:
        with self.lock:
            self.valid_keys.clear()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.requests.append(request)
        path = request.url.path
        if path.endswith("/authentication/login"):
            body = json.loads(request.content)
            if self.login_response is not None:
                return self.login_response()
            if body != {
                "tenant": TENANT,
                "username": "xmapi",
                "password": self.password,
                "role": "Admin",
            }:
                return ivanti_error(
                    400,
                    "ISM_4000",
                    "Unhandled system exception: Tenant Not Found or wrong Password or OpenID "
                    "not Configured Properly.",
                    description="Bad Request",
                )
            with self.lock:
                self.logins += 1
                key = self.key(self.logins)
                self.valid_keys.add(key)
            return httpx.Response(200, text=json.dumps(key))
        if path.endswith("/authentication/logout"):
            return httpx.Response(200, json={})
        with self.lock:
            authorized = request.headers.get("Authorization") in self.valid_keys
        if not authorized:
            if self.on_unauthorized is not None:
                self.on_unauthorized(request)
            return unauthorized()
        for suffix, handler in self.routes.items():
            if path.endswith(suffix) or suffix in path:
                return handler(request)
        return ivanti_error(404, "ISM_4004", "No service for the resource is registered.")

    def of(self, suffix: str) -> list[httpx.Request]:
        return [r for r in self.requests if suffix in r.url.path]


@pytest.fixture
def fake() -> FakeIvanti:
    return FakeIvanti()


@pytest.fixture
def session_client(fake: FakeIvanti) -> Iterator[IvantiClient]:
    client = IvantiClient(
        BASE, username="xmapi", password=fake.password, transport=httpx.MockTransport(fake)
    )
    yield client
    client.close()


def api_key_client(handler: Handler, key: str) -> IvantiClient:
    return IvantiClient(BASE + "/api/", api_key=key, transport=httpx.MockTransport(handler))


def assert_clean(exc: BaseException, *leaks: str) -> None:
    """No secret in the message or repr of an exception (or its cause)."""
    texts = [str(exc), repr(exc)]
    if exc.__cause__ is not None:
        texts += [str(exc.__cause__), repr(exc.__cause__)]
    for text in texts:
        assert "\n" not in str(exc)
        for leak in leaks:
            assert leak not in text, f"{leak!r} leaked into {text!r}"


def query_params(request: httpx.Request) -> dict[str, str]:
    parsed = parse_qs(request.url.query.decode(), keep_blank_values=True)
    return {k: v[0] for k, v in parsed.items()}


# ----- construction ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("https://acme.saasit.com", "https://acme.saasit.com"),
        ("https://acme.saasit.com/", "https://acme.saasit.com"),
        ("https://acme.saasit.com/api/", "https://acme.saasit.com"),
        ("https://ism.corp.local/HEAT/api", "https://ism.corp.local/HEAT"),
        ("https://ism.corp.local/HEAT/", "https://ism.corp.local/HEAT"),
    ],
)
def test_base_url_normalisation(given: str, expected: str) -> None:
    assert normalize_base_url(given) == expected


def test_tenant_defaults_to_host_and_can_be_overridden() -> None:
    assert IvantiClient("https://ism.corp.local:8443/HEAT", api_key="k" * 32).tenant == (
        "ism.corp.local"
    )
    assert IvantiClient(BASE, api_key="k" * 32, tenant="other.example").tenant == "other.example"


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"username": "u"},
        {"password": "p"},
        {"api_key": "k", "username": "u", "password": "p"},
        {"api_key": "k", "password": "p"},
    ],
)
def test_exactly_one_auth_method(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        IvantiClient(BASE, **kwargs)


def test_base_url_must_be_http() -> None:
    with pytest.raises(ValueError):
        IvantiClient("acme.saasit.com", api_key="k" * 32)


def test_odata_quote_doubles_quotes() -> None:
    assert odata_quote("O'Brien") == "'O''Brien'"
    assert odata_quote("") == "''"


# ----- API key -----------------------------------------------------------------------------


def test_api_key_header_form_and_no_login() -> None:
    key = "1A2B3CC4D5E67F8901G2HI345J" + secrets.token_hex(3)
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return collection([{"RecId": REC}])

    with api_key_client(handler, key) as client:
        page = client.query_incidents(None, "LastModDateTime asc")
    assert [r.headers["Authorization"] for r in seen] == [f"rest_api_key={key}"]
    assert seen[0].url.path == "/api/odata/businessobject/incidents"
    assert page.rows == [{"RecId": REC}]
    assert client.stats["login"] == 0 and client.stats["logout"] == 0


def test_api_key_401_is_final_with_hint() -> None:
    key = "K" + secrets.token_hex(16)
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return ivanti_error(401, "ISM_4001", "Invalid Session key or Authentication token or Host")

    client = api_key_client(handler, key)
    with pytest.raises(AuthError) as info:
        client.query_incidents(None, "LastModDateTime asc")
    assert len(calls) == 1
    assert "REST API key was rejected (401 ISM_4001)" in str(info.value)
    assert "IVANTI_API_KEY" in str(info.value)
    assert_clean(info.value, key)


# ----- sessions ----------------------------------------------------------------------------


def test_session_login_sends_documented_body_and_uses_key_verbatim(
    fake: FakeIvanti, session_client: IvantiClient
) -> None:
    fake.routes["/incidents"] = lambda r: collection([])
    session_client.query_incidents(None, "LastModDateTime asc")
    session_client.query_incidents(None, "LastModDateTime asc")
    (login,) = fake.of("/login")
    assert json.loads(login.content) == {
        "tenant": TENANT,
        "username": "xmapi",
        "password": fake.password,
        "role": "Admin",
    }
    queries = fake.of("/incidents")
    assert [q.headers["Authorization"] for q in queries] == [fake.key(1), fake.key(1)]
    assert session_client.stats["login"] == 1
    assert session_client.stats["query"] == 2


def test_relogin_once_on_401_then_success(fake: FakeIvanti, session_client: IvantiClient) -> None:
    fake.routes["/incidents"] = lambda r: collection([{"RecId": REC}])
    session_client.query_incidents(None, "LastModDateTime asc")
    fake.expire_sessions()
    page = session_client.query_incidents(None, "LastModDateTime asc")
    assert page.rows == [{"RecId": REC}]
    assert fake.logins == 2
    assert [q.headers["Authorization"] for q in fake.of("/incidents")] == [
        fake.key(1),
        fake.key(1),
        fake.key(2),
    ]
    assert session_client.stats["status:401"] == 1


def test_relogin_that_is_rejected_again_raises_auth_error(fake: FakeIvanti) -> None:
    def always_401(request: httpx.Request) -> httpx.Response:
        fake.requests.append(request)
        if request.url.path.endswith("/login"):
            fake.logins += 1
            return httpx.Response(200, text=json.dumps(fake.key(fake.logins)))
        return unauthorized()

    client = IvantiClient(
        BASE, username="xmapi", password=fake.password, transport=httpx.MockTransport(always_401)
    )
    with pytest.raises(AuthError) as info:
        client.get_incident(REC)
    assert fake.logins == 2
    assert len(fake.of("/incidents")) == 2
    assert "rejected again" in str(info.value)
    assert_clean(info.value, fake.password, fake.key(1), fake.key(2))


def test_relogin_refused_raises_auth_error_with_hint(
    fake: FakeIvanti, session_client: IvantiClient
) -> None:
    fake.routes["/incidents"] = lambda r: collection([])
    session_client.query_incidents(None, "LastModDateTime asc")
    fake.expire_sessions()
    fake.password = "changed-by-admin"
    with pytest.raises(AuthError) as info:
        session_client.query_incidents(None, "LastModDateTime asc")
    assert info.value.operation == "login"
    assert_clean(info.value, session_client._password or "", fake.key(1))


def test_login_400_is_auth_error_with_fix_hint(fake: FakeIvanti) -> None:
    client = IvantiClient(
        BASE,
        username="xmapi",
        password="wrong-" + secrets.token_hex(4),
        role="Administrator",
        transport=httpx.MockTransport(fake),
    )
    with pytest.raises(AuthError) as info:
        client.query_incidents(None, "LastModDateTime asc")
    err = info.value
    assert (err.status, err.code, err.operation) == (400, "ISM_4000", "login")
    for hint in ("IVANTI_TENANT", "IVANTI_ROLE", "internal name", "Tenant Not Found"):
        assert hint in str(err)
    assert not fake.of("/incidents")
    assert_clean(err, client._password or "")


def test_jwt_login_answer_is_sent_as_bearer(fake: FakeIvanti) -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4bWFwaSJ9." + secrets.token_hex(8)
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("/login"):
            return httpx.Response(200, text=json.dumps(jwt))
        if request.headers.get("Authorization") != f"Bearer {jwt}":
            return unauthorized()
        return collection([])

    client = IvantiClient(
        BASE, username="u", password="p" * 8, transport=httpx.MockTransport(handler)
    )
    assert client.query_incidents(None, "LastModDateTime asc").rows == []
    assert seen[-1].headers["Authorization"] == f"Bearer {jwt}"


def test_login_answer_as_bare_text_is_tolerated(fake: FakeIvanti) -> None:
    key = f"{TENANT}#BARETEXTKEY0000000000000#3"

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/login"):
            return httpx.Response(200, text=key + "\n")
        assert request.headers["Authorization"] == key
        return collection([])

    client = IvantiClient(
        BASE, username="u", password="p" * 8, transport=httpx.MockTransport(handler)
    )
    assert client.query_incidents(None, "LastModDateTime asc").status == 200


def test_login_without_key_is_transient(fake: FakeIvanti) -> None:
    fake.login_response = lambda: httpx.Response(200, text="")
    client = IvantiClient(
        BASE, username="xmapi", password=fake.password, transport=httpx.MockTransport(fake)
    )
    with pytest.raises(TransientError, match="malformed"):
        client.query_incidents(None, "LastModDateTime asc")


def test_late_401_for_a_replaced_session_does_not_log_in_again(
    fake: FakeIvanti, session_client: IvantiClient
) -> None:
    """Thread A's 401 for the old key arrives after thread B already logged in again:
    A must reuse B's new session instead of throwing it away (one re-login in total)."""
    fake.routes["/incidents"] = lambda r: collection([{"RecId": REC}])
    session_client.query_incidents(None, "LastModDateTime asc")
    fake.expire_sessions()
    arrived, release = threading.Event(), threading.Event()

    def hold_first_401(request: httpx.Request) -> None:
        if not arrived.is_set():
            arrived.set()
            assert release.wait(10)

    fake.on_unauthorized = hold_first_401
    results: list[Page] = []
    thread_a = threading.Thread(
        target=lambda: results.append(session_client.query_incidents(None, "LastModDateTime asc"))
    )
    thread_a.start()
    assert arrived.wait(10)
    results.append(session_client.query_incidents(None, "LastModDateTime asc"))  # thread B
    release.set()
    thread_a.join(10)
    assert len(results) == 2
    assert fake.logins == 2
    assert fake.of("/incidents")[-1].headers["Authorization"] == fake.key(2)


def test_logout_and_close(fake: FakeIvanti) -> None:
    fake.routes["/incidents"] = lambda r: collection([])
    client = IvantiClient(
        BASE, username="xmapi", password=fake.password, transport=httpx.MockTransport(fake)
    )
    client.query_incidents(None, "LastModDateTime asc")
    client.close()
    (logout,) = fake.of("/logout")
    assert logout.method == "DELETE"
    assert json.loads(logout.content) == {"tenant": TENANT}
    assert logout.headers["Authorization"] == fake.key(1)


def test_logout_failure_is_swallowed(caplog: pytest.LogCaptureFixture) -> None:
    password = "pw-" + secrets.token_hex(6)
    key = f"{TENANT}#LOGOUTKEY000000000000000#1"

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/login"):
            return httpx.Response(200, text=json.dumps(key))
        if request.url.path.endswith("/logout"):
            raise httpx.ConnectError("connection refused")
        return collection([])

    client = IvantiClient(
        BASE, username="u", password=password, transport=httpx.MockTransport(handler)
    )
    client.query_incidents(None, "LastModDateTime asc")
    with caplog.at_level("WARNING", logger="daemon.ivanti"):
        client.close()
    assert "logout failed" in caplog.text
    assert client.stats["logout"] == 1


def test_logout_without_session_sends_nothing(fake: FakeIvanti) -> None:
    client = IvantiClient(
        BASE, username="xmapi", password=fake.password, transport=httpx.MockTransport(fake)
    )
    client.close()
    assert fake.requests == []


# ----- query: "no rows" encodings, malformed bodies, dates, encoding -----------------------


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(204),
        httpx.Response(200, text=""),
        httpx.Response(200, text="  \r\n "),
        httpx.Response(200, json={"value": []}),
        httpx.Response(200, json={"value": "No instances found."}),
    ],
    ids=["204", "empty-200", "blank-200", "empty-list", "no-instances-string"],
)
def test_no_rows_encodings(response: httpx.Response) -> None:
    client = api_key_client(lambda r: response, "k" * 32)
    page = client.query_incidents("Status eq 'Active'", "LastModDateTime asc")
    assert page.rows == []
    assert page.status == response.status_code


@pytest.mark.parametrize(
    "body",
    [
        '{"@odata.context": "x", "value": [{"RecId": "0858',  # truncated
        "<html><body>Service Unavailable</body></html>",
        '{"@odata.context": "x"}',
        '{"value": "something else"}',
        '{"value": [1, 2]}',
        "[]",
    ],
    ids=["truncated", "html", "no-value", "odd-string", "non-objects", "bare-list"],
)
def test_malformed_bodies_are_transient_not_empty(body: str) -> None:
    client = api_key_client(lambda r: httpx.Response(200, text=body), "k" * 32)
    with pytest.raises(TransientError, match="malformed") as info:
        client.query_incidents(None, "LastModDateTime asc")
    assert not isinstance(info.value, OutcomeUnknown)


def test_rows_and_server_date() -> None:
    rows = [{"RecId": REC, "IncidentNumber": 12345}, {"RecId": "A" * 32, "IncidentNumber": 12346}]
    client = api_key_client(lambda r: collection(rows), "k" * 32)
    assert client.last_server_date is None
    page = client.query_incidents(None, "LastModDateTime asc")
    assert page.rows == rows
    assert page.server_date == datetime(2026, 11, 27, 10, 15, 30, tzinfo=UTC)
    assert client.last_server_date == page.server_date


def test_missing_date_header_gives_none() -> None:
    client = api_key_client(lambda r: httpx.Response(200, json={"value": []}), "k" * 32)
    assert client.query_incidents(None, "LastModDateTime asc").server_date is None


def test_query_parameters_are_encoded() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return collection([])

    filter_ = (
        "(Status eq 'Logged' or Status eq 'Active') and Owner eq 'O''Brien & Co' "
        "and LastModDateTime ge 2026-11-27T10:15:30+02:00"
    )
    client = api_key_client(handler, "k" * 32)
    client.query_incidents(
        filter_,
        "LastModDateTime asc,IncidentNumber asc",
        top=50,
        skip=150,
        select=["RecId", "Status"],
    )
    (request,) = seen
    raw = request.url.query.decode()
    assert "%2B02:00" in raw and "+" not in raw
    assert "O''Brien%20%26%20Co" in raw
    assert raw.startswith("$filter=")
    assert query_params(request) == {
        "$filter": filter_,
        "$orderby": "LastModDateTime asc,IncidentNumber asc",
        "$top": "50",
        "$skip": "150",
        "$select": "RecId,Status",
    }


def test_encode_query_round_trips() -> None:
    params = {"$filter": "a eq 'x+y=z&w#v%'", "$top": "1"}
    assert {k: v[0] for k, v in parse_qs(encode_query(params)).items()} == params


def test_no_filter_means_no_filter_parameter() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return collection([])

    api_key_client(handler, "k" * 32).query_incidents(None, "IncidentNumber desc")
    assert "$filter" not in query_params(seen[0])


@pytest.mark.parametrize(
    ("kwargs", "orderby"),
    [({"top": 101}, "X asc"), ({"top": 0}, "X asc"), ({"skip": -1}, "X asc"), ({}, " ")],
)
def test_query_argument_checks(kwargs: dict[str, Any], orderby: str) -> None:
    client = api_key_client(lambda r: collection([]), "k" * 32)
    with pytest.raises(ValueError):
        client.query_incidents(None, orderby, **kwargs)


# ----- error classification ------------------------------------------------------------------


def test_429_with_retry_after_seconds() -> None:
    client = api_key_client(
        lambda r: httpx.Response(429, text="slow down", headers={"Retry-After": "7"}), "k" * 32
    )
    with pytest.raises(TransientError) as info:
        client.query_incidents(None, "LastModDateTime asc")
    assert info.value.retry_after == 7.0
    assert info.value.status == 429


def test_503_retry_after_http_date_is_relative_to_server_date() -> None:
    headers = {"Retry-After": "Fri, 27 Nov 2026 10:17:30 GMT", "Date": DATE}
    client = api_key_client(lambda r: httpx.Response(503, text="", headers=headers), "k" * 32)
    with pytest.raises(TransientError) as info:
        client.query_incidents(None, "LastModDateTime asc")
    assert info.value.retry_after == 120.0


def raising(exc: Exception) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


def test_read_timeout_on_update_is_outcome_unknown() -> None:
    client = api_key_client(raising(httpx.ReadTimeout("timed out")), "k" * 32)
    with pytest.raises(OutcomeUnknown) as info:
        client.update_incident(REC, {"NewNotes": "hello"})
    assert info.value.operation == "update"
    assert client.stats["transport_error"] == 1


@pytest.mark.parametrize(
    "exc",
    [httpx.RemoteProtocolError("Server disconnected"), httpx.ReadError("reset by peer")],
)
def test_dropped_connection_on_update_is_outcome_unknown(exc: Exception) -> None:
    client = api_key_client(raising(exc), "k" * 32)
    with pytest.raises(OutcomeUnknown):
        client.update_incident(REC, {"NewNotes": "hello"})


@pytest.mark.parametrize(
    "exc", [httpx.ConnectError("connection refused"), httpx.ConnectTimeout("timed out")]
)
def test_connect_failure_on_update_is_safe_to_resend(exc: Exception) -> None:
    client = api_key_client(raising(exc), "k" * 32)
    with pytest.raises(TransientError) as info:
        client.update_incident(REC, {"NewNotes": "hello"})
    assert not isinstance(info.value, OutcomeUnknown)
    assert "not sent" in str(info.value)


def test_read_timeout_on_query_is_plain_transient() -> None:
    client = api_key_client(raising(httpx.ReadTimeout("timed out")), "k" * 32)
    with pytest.raises(TransientError) as info:
        client.query_incidents(None, "LastModDateTime asc")
    assert not isinstance(info.value, OutcomeUnknown)


def test_5xx_on_update_is_outcome_unknown_but_transient_on_query() -> None:
    client = api_key_client(
        lambda r: ivanti_error(500, "ISM_5000", "Internal server error"), "k" * 32
    )
    with pytest.raises(OutcomeUnknown):
        client.update_incident(REC, {"NewNotes": "hello"})
    with pytest.raises(TransientError) as info:
        client.query_incidents(None, "LastModDateTime asc")
    assert not isinstance(info.value, OutcomeUnknown)


def test_update_400_is_permanent_with_ivanti_messages() -> None:
    client = api_key_client(
        lambda r: ivanti_error(
            400,
            "ISM_4000",
            "Required field Incident.Category value must be provided",
            description="Bad Request",
        ),
        "k" * 32,
    )
    with pytest.raises(PermanentError) as info:
        client.update_incident(REC, {"Owner": "jsmith", "Status": "Active"})
    assert not isinstance(info.value, NotFound)
    assert str(info.value) == (
        "ivanti update: HTTP 400 ISM_4000: Required field Incident.Category value must be provided"
    )


def test_update_joins_several_messages() -> None:
    client = api_key_client(
        lambda r: ivanti_error(400, "ISM_4000", "first problem", "second problem"), "k" * 32
    )
    with pytest.raises(PermanentError, match="first problem; second problem"):
        client.update_incident(REC, {"Status": "Resolved"})


def test_update_of_unknown_record_is_not_found() -> None:
    client = api_key_client(
        lambda r: ivanti_error(
            400, "ISM_4000", f"Record '{REC}' cannot be found in the business object 'incident'"
        ),
        "k" * 32,
    )
    with pytest.raises(NotFound):
        client.update_incident(REC, {"NewNotes": "x"})


def test_update_sends_partial_body_and_returns_entity() -> None:
    seen: list[httpx.Request] = []
    entity = {"@odata.context": f"{BASE}/api/odata/$metadata#incidents/$entity", "RecId": REC}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=entity)

    client = api_key_client(handler, "k" * 32)
    assert client.update_incident(REC, {"NewNotes": "ack by jsmith"}) == entity
    assert client.update_incident(REC, {"Owner": "jsmith"}, method="put") == entity
    assert [r.method for r in seen] == ["PATCH", "PUT"]
    assert seen[0].url.path == f"/api/odata/businessobject/incidents('{REC}')"
    assert json.loads(seen[0].content) == {"NewNotes": "ack by jsmith"}
    assert client.stats["update"] == 2


def test_update_with_unreadable_success_body_is_outcome_unknown() -> None:
    client = api_key_client(lambda r: httpx.Response(200, text='{"RecId": "08'), "k" * 32)
    with pytest.raises(OutcomeUnknown):
        client.update_incident(REC, {"NewNotes": "x"})


def test_update_204_returns_empty_entity() -> None:
    client = api_key_client(lambda r: httpx.Response(204), "k" * 32)
    assert client.update_incident(REC, {"NewNotes": "x"}) == {}


@pytest.mark.parametrize(("fields", "method"), [({}, "PUT"), ({"A": 1}, "POST")])
def test_update_argument_checks(fields: dict[str, object], method: str) -> None:
    client = api_key_client(lambda r: httpx.Response(200, json={}), "k" * 32)
    with pytest.raises(ValueError):
        client.update_incident(REC, fields, method=method)


def test_error_bodies_echoing_secrets_are_redacted(fake: FakeIvanti) -> None:
    def leaky(request: httpx.Request) -> httpx.Response:
        auth = request.headers["Authorization"]
        text = f"Unhandled system exception: {{&quot;SessionId&quot;:&quot;{auth}&quot;}}"
        return httpx.Response(500, text=text)

    fake.routes["/incidents"] = leaky
    client = IvantiClient(
        BASE, username="xmapi", password=fake.password, transport=httpx.MockTransport(fake)
    )
    with pytest.raises(ApiError) as info:
        client.query_incidents(None, "LastModDateTime asc")
    assert "SessionId" in str(info.value)
    assert_clean(info.value, fake.key(1), fake.password)


def test_404_is_a_configuration_error_not_a_missing_record() -> None:
    client = api_key_client(
        lambda r: ivanti_error(404, "ISM_4004", "No service for the resource is registered."),
        "k" * 32,
    )
    with pytest.raises(PermanentError) as info:
        client.get_incident(REC)
    assert not isinstance(info.value, NotFound)
    assert "/HEAT" in str(info.value)


def test_redirect_is_permanent_and_names_the_setting() -> None:
    client = api_key_client(
        lambda r: httpx.Response(302, headers={"Location": "https://sso.example/login"}), "k" * 32
    )
    with pytest.raises(PermanentError, match="IVANTI_BASE_URL"):
        client.query_incidents(None, "LastModDateTime asc")


# ----- single records and notes --------------------------------------------------------------


@pytest.mark.parametrize(
    "message", ["Invalid key", f"Record '{REC}' cannot be found in the business object 'incident'"]
)
def test_get_incident_missing_is_none(message: str) -> None:
    client = api_key_client(lambda r: ivanti_error(400, "ISM_4000", message), "k" * 32)
    assert client.get_incident(REC) is None


def test_get_incident_other_400_raises() -> None:
    client = api_key_client(
        lambda r: ivanti_error(400, "ISM_4000", "Invalid Request Payload"), "k" * 32
    )
    with pytest.raises(PermanentError):
        client.get_incident(REC)


def test_get_incident_returns_entity_and_quotes_key() -> None:
    seen: list[httpx.Request] = []
    entity = {"@odata.context": "x#incidents/$entity", "RecId": "O'X", "Status": "Active"}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=entity)

    assert api_key_client(handler, "k" * 32).get_incident("O'X") == entity
    assert seen[0].url.path == "/api/odata/businessobject/incidents('O''X')"


def test_get_incident_unwraps_single_value_list() -> None:
    entity = {"RecId": REC}
    client = api_key_client(lambda r: httpx.Response(200, json={"value": [entity]}), "k" * 32)
    assert client.get_incident(REC) == entity


def test_get_incident_empty_body_is_transient() -> None:
    client = api_key_client(lambda r: httpx.Response(200, text=""), "k" * 32)
    with pytest.raises(TransientError):
        client.get_incident(REC)


def make_notes(n: int) -> list[dict[str, object]]:
    return [{"RecId": f"{i:032X}", "NotesBody": f"note {i}"} for i in range(n)]


@pytest.mark.parametrize(("total", "requests"), [(0, 1), (99, 1), (100, 2), (230, 3)])
def test_list_notes_pages_until_short_page(total: int, requests: int) -> None:
    notes = make_notes(total)
    seen: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        params = query_params(request)
        seen.append(params)
        skip, top = int(params["$skip"]), int(params["$top"])
        chunk = notes[skip : skip + top]
        return collection(chunk) if chunk else httpx.Response(200, text="")

    client = api_key_client(handler, "k" * 32)
    assert client.list_notes(REC) == notes
    assert len(seen) == requests
    assert [p["$skip"] for p in seen] == [str(100 * i) for i in range(requests)]
    assert seen[0] == {
        "$filter": f"ParentLink_RecID eq '{REC}'",
        "$orderby": "CreatedDateTime asc",
        "$top": "100",
        "$skip": "0",
    }
    assert client.stats["notes"] == requests


def test_list_notes_uses_notes_entity_set() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    api_key_client(handler, "k" * 32).list_notes(REC)
    assert urlsplit(str(seen[0].url)).path == "/api/odata/businessobject/journal__Notess"


def test_list_notes_detects_ignored_skip() -> None:
    notes = make_notes(100)
    client = api_key_client(lambda r: collection(notes), "k" * 32)
    with pytest.raises(TransientError, match="did not advance"):
        client.list_notes(REC)


def test_a_refused_login_backs_off_instead_of_trying_every_call(fake: FakeIvanti) -> None:
    """Repeated bad logins lock a service account out: after a refusal the client waits
    30 s, then 60 s, ... before it logs in again; calls in between fail at once."""
    now = [0.0]
    client = IvantiClient(
        BASE,
        username="xmapi",
        password="wrong-" + secrets.token_hex(4),
        transport=httpx.MockTransport(fake),
        clock=lambda: now[0],
    )
    fake.routes["/incidents"] = lambda r: collection([])
    for _ in range(5):
        with pytest.raises(AuthError):
            client.query_incidents(None, "LastModDateTime asc")
    assert len(fake.of("/authentication/login")) == 1
    now[0] = 31.0
    with pytest.raises(AuthError) as info:
        client.query_incidents(None, "LastModDateTime asc")
    assert len(fake.of("/authentication/login")) == 2
    with pytest.raises(AuthError) as info:
        client.query_incidents(None, "LastModDateTime asc")
    assert "not trying again for 60 s" in str(info.value) and info.value.status == 401
    client._password = fake.password  # the admin fixed the password
    now[0] = 31.0 + 61
    client.query_incidents(None, "LastModDateTime asc")
    assert len(fake.of("/authentication/login")) == 3
    client.close()


def test_updates_are_patch_by_default_and_fall_back_to_put_once_on_405(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req.method)
        if req.method == "PATCH":
            return ivanti_error(405, "ISM_4005", "The requested resource does not support PATCH")
        return httpx.Response(200, json={"@odata.context": "x/$entity", "RecId": REC})

    client = api_key_client(handler, "k" * 32)
    assert client.update_incident(REC, {"NewNotes": "a"})["RecId"] == REC
    assert client.update_incident(REC, {"NewNotes": "b"})["RecId"] == REC
    assert seen == ["PATCH", "PUT", "PUT"]
    assert [r.message for r in caplog.records if "405" in r.message] != []
    assert IvantiClient(BASE, api_key="k" * 32, update_method="put").update_method == "PUT"
    with pytest.raises(ValueError, match="PUT or PATCH"):
        IvantiClient(BASE, api_key="k" * 32, update_method="POST")
