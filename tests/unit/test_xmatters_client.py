"""XMattersClient against httpx.MockTransport (auth modes, triggers, paging, termination,
error classification, secrets kept out of exceptions) and the token-bucket rate limiter."""

from __future__ import annotations

import base64
import json
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from daemon.errors import (
    AuthError,
    NotFound,
    OutcomeUnknown,
    PermanentError,
    TransientError,
)
from daemon.ratelimit import RateLimiter
from daemon.xmatters import XMattersClient

BASE = "https://acme.xmatters.com"
TRIGGER = f"{BASE}/api/integration/1/functions/5f1a7e3c-0000-4000-8000-000000000001/triggers"
REQUEST_ID = "0b8a2f0e-57a4-4c59-a3e6-53a5b8c3a1b7"
EVENT_ID = "a1b2c3d4-0000-4000-8000-00000000e001"

Handler = Callable[[httpx.Request], httpx.Response]


def xm_error(status: int, message: str, **extra: object) -> httpx.Response:
    reasons = {400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 409: "Conflict"}
    body = {"code": status, "reason": reasons.get(status, "Error"), "message": message, **extra}
    return httpx.Response(status, json=body)


def params_of(request: httpx.Request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(request.url.query.decode()).items()}


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@dataclass
class Recorder:
    """Answers via ``handler`` and remembers every request."""

    handler: Handler
    requests: list[httpx.Request] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)


def make_client(
    handler: Handler,
    *,
    password: str = "pw-unused",
    trigger_url: str = TRIGGER,
    **kwargs: Any,
) -> XMattersClient:
    kwargs.setdefault("rate_limit_per_s", 0)
    return XMattersClient(
        BASE,
        trigger_url,
        username="xmrest",
        password=password,
        transport=httpx.MockTransport(handler),
        **kwargs,
    )


def assert_clean(exc: BaseException, *leaks: str) -> None:
    assert "\n" not in str(exc)
    for text in (str(exc), repr(exc)):
        for leak in leaks:
            assert leak not in text, f"{leak!r} leaked into {text!r}"


def new_password() -> str:
    return "pw-" + secrets.token_hex(8)


# ----- construction ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs", [{"username": "u"}, {"password": "pw-1234"}, {"oauth_client_id": "c"}]
)
def test_half_credentials_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        XMattersClient(BASE, TRIGGER, **kwargs)


def test_trigger_only_setup_without_base_url_or_credentials() -> None:
    api_key = "ak" + secrets.token_hex(10)
    rec = Recorder(lambda r: httpx.Response(202, json={"requestId": REQUEST_ID}))
    client = XMattersClient("", f"{TRIGGER}?apiKey={api_key}", transport=httpx.MockTransport(rec))
    assert client.api_url == f"{BASE}/api/xm/1"
    assert client.trigger({"RecId": "R1"}) == REQUEST_ID
    with pytest.raises(AuthError, match="XMATTERS_USERNAME") as info:
        client.get_event(EVENT_ID)
    assert len(rec.requests) == 1  # the REST call was never sent
    assert_clean(info.value, api_key)


def test_base_url_forms() -> None:
    client = XMattersClient(
        BASE + "/api/xm/1/",
        "/api/integration/1/functions/f/triggers",
        username="u",
        password=new_password(),
    )
    assert client.api_url == f"{BASE}/api/xm/1"
    assert client.trigger_url == f"{BASE}/api/integration/1/functions/f/triggers"
    with pytest.raises(ValueError):
        XMattersClient("acme.xmatters.com", TRIGGER, username="u", password=new_password())


# ----- Basic and URL authentication ----------------------------------------------------------


def test_basic_auth_on_rest_and_trigger() -> None:
    password = new_password()
    rec = Recorder(
        lambda r: (
            httpx.Response(202, json={"requestId": REQUEST_ID})
            if "/triggers" in r.url.path
            else httpx.Response(200, json={"id": "p1", "targetName": "jsmith"})
        )
    )
    client = make_client(rec, password=password)
    assert client.trigger({"RecId": "R1"}) == REQUEST_ID
    assert client.get_person("jsmith") == {"id": "p1", "targetName": "jsmith"}
    expected = "Basic " + base64.b64encode(f"xmrest:{password}".encode()).decode()
    assert [r.headers["Authorization"] for r in rec.requests] == [expected, expected]
    assert json.loads(rec.requests[0].content) == {"RecId": "R1"}
    assert client.stats["trigger"] == 1 and client.stats["people"] == 1
    assert client.stats["status:202"] == 1 and client.stats["status:200"] == 1


def test_basic_401_is_final() -> None:
    password = new_password()
    rec = Recorder(lambda r: xm_error(401, "Bad credentials"))
    client = make_client(rec, password=password)
    with pytest.raises(AuthError) as info:
        client.get_event(EVENT_ID)
    assert len(rec.requests) == 1
    assert "REST Web Service User" in str(info.value)
    basic = base64.b64encode(f"xmrest:{password}".encode()).decode()
    assert_clean(info.value, password, basic)


def test_api_key_url_sends_no_authorization() -> None:
    api_key = "ak" + secrets.token_hex(10)
    rec = Recorder(lambda r: httpx.Response(202, json={"requestId": REQUEST_ID}))
    client = make_client(rec, trigger_url=f"{TRIGGER}?apiKey={api_key}")
    assert client.trigger({"RecId": "R1"}) == REQUEST_ID
    (request,) = rec.requests
    assert "Authorization" not in request.headers
    assert params_of(request) == {"apiKey": api_key}


def test_api_key_url_rejection_never_shows_the_key() -> None:
    api_key = "ak" + secrets.token_hex(10)

    def handler(request: httpx.Request) -> httpx.Response:
        return xm_error(401, f"apiKey={api_key} is not valid for {request.url}")

    client = make_client(handler, trigger_url=f"{TRIGGER}?apiKey={api_key}")
    with pytest.raises(AuthError) as info:
        client.trigger({"RecId": "R1"})
    assert "apiKey in XMATTERS_TRIGGER_URL" in str(info.value)
    assert_clean(info.value, api_key)


def test_trigger_url_override_and_form_trigger_url() -> None:
    form_url = TRIGGER.replace("0001", "0002")
    rec = Recorder(lambda r: httpx.Response(200, json={"requestId": REQUEST_ID}))
    client = make_client(rec, form_trigger_url=form_url)
    assert client.form_trigger_url == form_url
    client.trigger({"properties": {}}, url=client.form_trigger_url)
    assert str(rec.requests[0].url) == form_url


# ----- OAuth -------------------------------------------------------------------------------


@dataclass
class FakeOAuth:
    """A token endpoint issuing numbered tokens, plus an API accepting only live tokens."""

    password: str = field(default_factory=new_password)
    expires_in: int = 900
    issued: int = 0
    live: set[str] = field(default_factory=set)
    grants: list[dict[str, str]] = field(default_factory=list)
    refusals: set[str] = field(default_factory=set)  # grant types to refuse
    api: Handler = lambda r: httpx.Response(200, json={"id": EVENT_ID})
    requests: list[httpx.Request] = field(default_factory=list)

    def access(self, n: int) -> str:
        return f"eyJhbGciOiJSUzI1NiJ9.access{n}.{n:08d}"

    def refresh(self, n: int) -> str:
        return f"refresh-{n:08d}-token"

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path.endswith("/oauth2/token"):
            form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
            self.grants.append(form)
            grant = form["grant_type"]
            ok = (grant == "password" and form.get("password") == self.password) or (
                grant == "refresh_token" and form.get("refresh_token", "").startswith("refresh-")
            )
            if grant in self.refusals or not ok or form.get("client_id") != "bridge-client":
                return httpx.Response(
                    400, json={"error": "invalid_grant", "error_description": "Bad credentials"}
                )
            self.issued += 1
            self.live.add(self.access(self.issued))
            body = {
                "access_token": self.access(self.issued),
                "token_type": "bearer",
                "refresh_token": self.refresh(self.issued),
                "expires_in": self.expires_in,
                "jti": "j",
            }
            return httpx.Response(200, json=body)
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth[len("Bearer ") :] not in self.live:
            return xm_error(401, "Invalid token")
        return self.api(request)

    def api_auth(self) -> list[str]:
        return [
            r.headers.get("Authorization", "")
            for r in self.requests
            if not r.url.path.endswith("/oauth2/token")
        ]


def oauth_client(fake: FakeOAuth, clock: FakeClock, **kwargs: Any) -> XMattersClient:
    return make_client(
        fake, password=fake.password, oauth_client_id="bridge-client", clock=clock, **kwargs
    )


def test_oauth_password_grant_then_bearer_reused() -> None:
    fake, clock = FakeOAuth(), FakeClock()
    client = oauth_client(fake, clock)
    client.get_event(EVENT_ID)
    client.get_event(EVENT_ID)
    assert fake.grants == [
        {
            "grant_type": "password",
            "client_id": "bridge-client",
            "username": "xmrest",
            "password": fake.password,
        }
    ]
    token_request = fake.requests[0]
    assert token_request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert "Authorization" not in token_request.headers
    assert fake.api_auth() == [f"Bearer {fake.access(1)}"] * 2
    assert client.stats["token"] == 1 and client.stats["event"] == 2


def test_oauth_refreshes_30s_before_expiry() -> None:
    fake, clock = FakeOAuth(), FakeClock()
    client = oauth_client(fake, clock)
    client.get_event(EVENT_ID)
    clock.now += 900 - 31  # still more than 30 s left
    client.get_event(EVENT_ID)
    assert len(fake.grants) == 1
    clock.now += 2  # now within the 30 s margin
    client.get_event(EVENT_ID)
    assert fake.grants[1] == {
        "grant_type": "refresh_token",
        "refresh_token": fake.refresh(1),
        "client_id": "bridge-client",
    }
    assert fake.api_auth()[-1] == f"Bearer {fake.access(2)}"


def test_oauth_refreshes_once_on_401() -> None:
    fake, clock = FakeOAuth(), FakeClock()
    client = oauth_client(fake, clock)
    client.get_event(EVENT_ID)
    fake.live.clear()  # revoked / expired server-side before our clock says so
    assert client.get_event(EVENT_ID) == {"id": EVENT_ID}
    assert [g["grant_type"] for g in fake.grants] == ["password", "refresh_token"]
    assert fake.api_auth() == [
        f"Bearer {fake.access(1)}",
        f"Bearer {fake.access(1)}",
        f"Bearer {fake.access(2)}",
    ]


def test_oauth_refresh_refused_falls_back_to_password_grant() -> None:
    fake, clock = FakeOAuth(refusals={"refresh_token"}), FakeClock()
    client = oauth_client(fake, clock)
    client.get_event(EVENT_ID)
    clock.now += 900
    client.get_event(EVENT_ID)
    assert [g["grant_type"] for g in fake.grants] == ["password", "refresh_token", "password"]
    assert fake.api_auth()[-1] == f"Bearer {fake.access(2)}"


def test_oauth_401_after_fresh_token_is_auth_error() -> None:
    fake, clock = FakeOAuth(), FakeClock()
    fake.api = lambda r: xm_error(401, "Forbidden for this token")
    client = oauth_client(fake, clock)
    with pytest.raises(AuthError) as info:
        client.get_event(EVENT_ID)
    assert "rejected again" in str(info.value)
    assert [g["grant_type"] for g in fake.grants] == ["password", "refresh_token"]
    assert_clean(info.value, fake.password, fake.access(1), fake.access(2), fake.refresh(1))


def test_oauth_password_grant_refused_is_auth_error_without_secrets() -> None:
    fake, clock = FakeOAuth(), FakeClock()
    client = make_client(
        fake, password="wrong-" + secrets.token_hex(6), oauth_client_id="bridge-client", clock=clock
    )
    with pytest.raises(AuthError) as info:
        client.find_events(request_id=REQUEST_ID)
    err = info.value
    assert (err.operation, err.status, err.code) == ("token", 400, "invalid_grant")
    assert "XMATTERS_OAUTH_CLIENT_ID" in str(err)
    assert_clean(err, client._password or "")


def test_oauth_token_without_access_token_is_transient() -> None:
    client = make_client(
        lambda r: httpx.Response(200, json={"token_type": "bearer"}),
        oauth_client_id="bridge-client",
    )
    with pytest.raises(TransientError, match="access_token"):
        client.get_event(EVENT_ID)


def test_oauth_bearer_used_for_trigger_without_api_key() -> None:
    fake, clock = FakeOAuth(), FakeClock()
    fake.api = lambda r: httpx.Response(202, json={"requestId": REQUEST_ID})
    client = oauth_client(fake, clock)
    assert client.trigger({"RecId": "R1"}) == REQUEST_ID
    assert fake.api_auth() == [f"Bearer {fake.access(1)}"]


def test_oauth_trigger_401_refreshes_once() -> None:
    fake, clock = FakeOAuth(), FakeClock()
    fake.api = lambda r: httpx.Response(202, json={"requestId": REQUEST_ID})
    client = oauth_client(fake, clock)
    client.get_event(EVENT_ID)
    fake.live.clear()
    assert client.trigger({"RecId": "R1"}) == REQUEST_ID
    assert client.stats["trigger"] == 2


# ----- triggers ------------------------------------------------------------------------------


def test_trigger_400_carries_error_details() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return xm_error(
            400,
            "Validation failed",
            errorDetails=[
                {
                    "jsonPath": "properties/Summary",
                    "details": "Exceeded the specified maximum number of characters",
                }
            ],
        )

    with pytest.raises(PermanentError) as info:
        make_client(handler).trigger({"properties": {"Summary": "x" * 300}})
    assert str(info.value) == (
        "xmatters trigger: HTTP 400 Bad Request: Validation failed "
        "(properties/Summary: Exceeded the specified maximum number of characters)"
    )


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(202, json={"status": "accepted"}),
        httpx.Response(202, text=""),
        httpx.Response(200, text='{"requestId": "0b8a'),
    ],
    ids=["no-request-id", "empty", "truncated"],
)
def test_trigger_accepted_without_request_id_is_outcome_unknown(response: httpx.Response) -> None:
    with pytest.raises(OutcomeUnknown) as info:
        make_client(lambda r: response).trigger({"RecId": "R1"})
    assert isinstance(info.value, TransientError)
    assert "malformed" in str(info.value)


def raising(exc: Exception) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ReadTimeout("timed out"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.WriteTimeout("timed out"),
    ],
)
def test_trigger_lost_answer_is_outcome_unknown(exc: Exception) -> None:
    with pytest.raises(OutcomeUnknown):
        make_client(raising(exc)).trigger({"RecId": "R1"})


def test_trigger_connect_error_is_safe_to_resend() -> None:
    with pytest.raises(TransientError) as info:
        make_client(raising(httpx.ConnectError("refused"))).trigger({"RecId": "R1"})
    assert not isinstance(info.value, OutcomeUnknown)


def test_trigger_5xx_is_outcome_unknown() -> None:
    with pytest.raises(OutcomeUnknown) as info:
        make_client(lambda r: xm_error(502, "Bad gateway")).trigger({"RecId": "R1"})
    assert info.value.status == 502


def test_trigger_429_is_transient_with_retry_after() -> None:
    response = xm_error(429, "Too many requests")
    response.headers["Retry-After"] = "30"
    with pytest.raises(TransientError) as info:
        make_client(lambda r: response).trigger({"RecId": "R1"})
    assert not isinstance(info.value, OutcomeUnknown)
    assert info.value.retry_after == 30.0


# ----- events --------------------------------------------------------------------------------


def events_pages(total: int, per_page: int) -> Handler:
    events = [{"id": f"ev-{i}", "status": "ACTIVE"} for i in range(total)]

    def handler(request: httpx.Request) -> httpx.Response:
        offset = int(params_of(request).get("offset", "0"))
        chunk = events[offset : offset + per_page]
        body: dict[str, object] = {
            "count": len(chunk),
            "total": total,
            "data": chunk,
            "links": {"self": request.url.raw_path.decode()},
        }
        if offset + per_page < total:
            nxt = f"/api/xm/1/events?offset={offset + per_page}&limit={per_page}&status=ACTIVE"
            body["links"] = {"self": "x", "next": nxt}
        return httpx.Response(200, json=body)

    return handler


def test_find_events_follows_links_next() -> None:
    rec = Recorder(events_pages(total=5, per_page=2))
    client = make_client(rec)
    events = client.find_events(
        property_name="RecId#en",
        property_value="085867F47547496783005D95CB82D557",
        statuses=("ACTIVE", "SUSPENDED"),
        limit=2,
    )
    assert [e["id"] for e in events] == [f"ev-{i}" for i in range(5)]
    assert len(rec.requests) == 3
    assert params_of(rec.requests[0]) == {
        "limit": "2",
        "propertyName": "RecId#en",
        "propertyValue": "085867F47547496783005D95CB82D557",
        "status": "ACTIVE,SUSPENDED",
    }
    assert "RecId%23en" in rec.requests[0].url.query.decode()
    assert [str(r.url) for r in rec.requests[1:]] == [
        f"{BASE}/api/xm/1/events?offset=2&limit=2&status=ACTIVE",
        f"{BASE}/api/xm/1/events?offset=4&limit=2&status=ACTIVE",
    ]
    assert client.stats["events"] == 3


def test_find_events_by_request_id() -> None:
    rec = Recorder(events_pages(total=1, per_page=100))
    assert len(make_client(rec).find_events(request_id=REQUEST_ID)) == 1
    assert params_of(rec.requests[0]) == {"limit": "100", "requestId": REQUEST_ID}


def test_find_events_argument_checks() -> None:
    client = make_client(events_pages(0, 1))
    with pytest.raises(ValueError):
        client.find_events(property_name="RecId")
    with pytest.raises(ValueError):
        client.find_events(limit=0)


def test_paging_refuses_other_hosts_and_loops() -> None:
    def other_host(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, json={"data": [], "links": {"next": "https://evil.example/api/xm/1/events"}}
        )

    with pytest.raises(PermanentError, match="another host"):
        make_client(other_host).find_events()

    def loop(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, json={"data": [{"id": "e"}], "links": {"next": "/api/xm/1/events?offset=0"}}
        )

    with pytest.raises(TransientError, match="repeats"):
        make_client(loop).find_events()


def test_list_without_data_is_malformed() -> None:
    with pytest.raises(TransientError, match="malformed"):
        make_client(lambda r: httpx.Response(200, json={"count": 0})).find_events()


def test_get_event_and_404() -> None:
    rec = Recorder(
        lambda r: (
            httpx.Response(200, json={"id": EVENT_ID})
            if EVENT_ID in r.url.path
            else xm_error(404, "Could not find the event")
        )
    )
    client = make_client(rec)
    assert client.get_event(EVENT_ID) == {"id": EVENT_ID}
    assert client.get_event("missing") is None
    assert rec.requests[0].url.path == f"/api/xm/1/events/{EVENT_ID}"


def test_terminate_posts_status_and_returns_event() -> None:
    rec = Recorder(lambda r: httpx.Response(200, json={"id": EVENT_ID, "status": "TERMINATED"}))
    client = make_client(rec)
    assert client.terminate_event(EVENT_ID) == {"id": EVENT_ID, "status": "TERMINATED"}
    (request,) = rec.requests
    assert (request.method, request.url.path) == ("POST", "/api/xm/1/events")
    assert json.loads(request.content) == {"id": EVENT_ID, "status": "TERMINATED"}
    assert client.stats["terminate"] == 1


@pytest.mark.parametrize(
    "response",
    [
        xm_error(409, "Event is not in a state that allows this change"),
        xm_error(400, "The event has already been terminated"),
    ],
)
def test_terminate_already_terminated_is_none(response: httpx.Response) -> None:
    assert make_client(lambda r: response).terminate_event(EVENT_ID) is None


def test_terminate_other_400_and_404_raise() -> None:
    with pytest.raises(PermanentError):
        make_client(lambda r: xm_error(400, "Invalid status value")).terminate_event(EVENT_ID)
    with pytest.raises(NotFound):
        make_client(lambda r: xm_error(404, "No such event")).terminate_event(EVENT_ID)


def test_terminate_lost_answer_is_plain_transient() -> None:
    with pytest.raises(TransientError) as info:
        make_client(raising(httpx.ReadTimeout("timed out"))).terminate_event(EVENT_ID)
    assert not isinstance(info.value, OutcomeUnknown)


def test_rest_429_and_5xx_are_transient_with_retry_after() -> None:
    response = xm_error(429, "Too many requests")
    response.headers["Retry-After"] = "12"
    with pytest.raises(TransientError) as info:
        make_client(lambda r: response).get_event(EVENT_ID)
    assert info.value.retry_after == 12.0
    with pytest.raises(TransientError) as info5:
        make_client(lambda r: xm_error(503, "Unavailable")).find_events()
    assert not isinstance(info5.value, OutcomeUnknown)


# ----- audits and people ---------------------------------------------------------------------


def test_audits_follow_links_next() -> None:
    records = [{"id": f"au-{i}", "type": "RESPONSE_RECEIVED", "orderId": i} for i in range(3)]

    def handler(request: httpx.Request) -> httpx.Response:
        offset = int(params_of(request).get("offset", "0"))
        body: dict[str, object] = {"count": 1, "total": 3, "data": records[offset : offset + 1]}
        if offset < 2:
            body["links"] = {"next": f"/api/xm/1/audits?eventId={EVENT_ID}&offset={offset + 1}"}
        return httpx.Response(200, json=body)

    rec = Recorder(handler)
    client = make_client(rec)
    types = ("RESPONSE_RECEIVED", "EVENT_ANNOTATED", "NOTIFICATION_DELIVERED")
    iterator = client.audits(EVENT_ID, types)
    assert rec.requests == []  # lazy until iterated
    assert list(iterator) == records
    assert params_of(rec.requests[0]) == {
        "eventId": EVENT_ID,
        "auditType": "RESPONSE_RECEIVED,EVENT_ANNOTATED,NOTIFICATION_DELIVERED",
        "sortOrder": "ASCENDING",
    }
    assert len(rec.requests) == 3
    assert client.stats["audits"] == 3


def test_audits_sort_order_is_checked_eagerly() -> None:
    with pytest.raises(ValueError):
        make_client(lambda r: httpx.Response(200)).audits(EVENT_ID, (), sort_order="up")


def test_get_person_encodes_name_and_404_is_none() -> None:
    rec = Recorder(lambda r: xm_error(404, "Could not find person"))
    assert make_client(rec).get_person("j smith/ops") is None
    assert rec.requests[0].url.raw_path.decode() == "/api/xm/1/people/j%20smith%2Fops"


# ----- rate limiting ---------------------------------------------------------------------------


def test_rate_limiter_is_applied_to_rest_calls_only() -> None:
    clock = FakeClock()
    limiter = RateLimiter(4.0, 4, clock=clock, sleep=clock.sleep)
    handler: Handler = lambda r: (  # noqa: E731
        httpx.Response(202, json={"requestId": REQUEST_ID})
        if "/triggers" in r.url.path
        else httpx.Response(200, json={"id": "x"})
    )
    client = make_client(handler, rate_limiter=limiter)
    for _ in range(6):
        client.get_person("jsmith")
    for _ in range(5):
        client.trigger({"RecId": "R1"})
    assert clock.sleeps == [0.25, 0.25]


def test_rate_limiter_burst_then_steady_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(4.0, 4, clock=clock, sleep=clock.sleep)
    waits = [limiter.acquire() for _ in range(8)]
    assert waits == [0, 0, 0, 0, 0.25, 0.25, 0.25, 0.25]
    assert clock.now == pytest.approx(1001.0)
    assert limiter.waited == pytest.approx(1.0)


def test_rate_limiter_refills_up_to_burst_only() -> None:
    clock = FakeClock()
    limiter = RateLimiter(2.0, 3, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        limiter.acquire()
    clock.now += 100  # a long idle period saves at most `burst` tokens
    assert [limiter.acquire() for _ in range(4)] == [0, 0, 0, 0.5]


def test_rate_limiter_partial_refill() -> None:
    clock = FakeClock()
    limiter = RateLimiter(4.0, 1, clock=clock, sleep=clock.sleep)
    limiter.acquire()
    clock.now += 0.1
    assert limiter.acquire() == pytest.approx(0.15)


def test_rate_limiter_disabled_and_default_burst() -> None:
    clock = FakeClock()
    off = RateLimiter(0, clock=clock, sleep=clock.sleep)
    assert not off.enabled
    assert [off.acquire() for _ in range(100)] == [0.0] * 100
    assert RateLimiter(4.0).burst == 4
    assert RateLimiter(0.5).burst == 1
    with pytest.raises(ValueError):
        RateLimiter(float("inf"))


def test_rate_limiter_queues_concurrent_callers() -> None:
    """Reservations made under the lock: n threads wait 0, 1/r, 2/r, ... in some order."""
    clock = FakeClock()
    lock = threading.Lock()
    waits: list[float] = []
    limiter = RateLimiter(10.0, 1, clock=clock, sleep=lambda s: None)
    start = threading.Barrier(6)

    def worker() -> None:
        start.wait()
        wait = limiter.acquire()
        with lock:
            waits.append(wait)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(round(w, 6) for w in waits) == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]


def test_rate_limiter_takes_the_budget_from_x_ratelimit_headers() -> None:
    clock = FakeClock()
    limiter = RateLimiter(100.0, 1, clock=clock, sleep=clock.sleep)
    headers = {
        "x-ratelimit-limit": "600",
        "x-ratelimit-period_in_sec": "60",
        "x-ratelimit-used": "10",
    }
    limiter.observe(200, headers, None)
    assert limiter.cap == pytest.approx(5.0)  # half of the plan's 10 a second
    assert limiter.rate == pytest.approx(5.0)
    # most of the period's budget gone: what is left is spread over the period
    limiter.observe(200, {**headers, "x-ratelimit-used": "540"}, None)
    assert limiter.rate == pytest.approx(0.5)
    # a generous plan never lifts the rate above the configured ceiling
    limiter.observe(200, {"x-ratelimit-limit": "60000", "x-ratelimit-period_in_sec": "60"}, None)
    assert limiter.cap == 100.0


def test_rate_limiter_halves_on_429_waits_out_retry_after_then_recovers() -> None:
    clock = FakeClock()
    limiter = RateLimiter(40.0, 1, clock=clock, sleep=clock.sleep)
    limiter.acquire()
    limiter.observe(429, {}, 1.5)
    assert limiter.rate == pytest.approx(20.0)
    assert limiter.acquire() == pytest.approx(1.5 + 1 / 20.0, abs=0.01)
    fresh = RateLimiter(40.0, 1, clock=clock, sleep=clock.sleep)
    fresh.acquire()
    fresh.observe(429, {}, 30.0)  # a long Retry-After is the caller's to wait out
    assert fresh.acquire() == pytest.approx(2.0 + 1 / 20.0, abs=0.01)
    fresh.observe(429, {}, 30.0, hold=False)  # a trigger's 429: slower, nobody held
    assert fresh.rate == pytest.approx(10.0)
    for _ in range(200):
        limiter.observe(200, {}, None)
    assert limiter.rate == pytest.approx(40.0)


def test_client_feeds_every_answer_to_the_limiter() -> None:
    clock = FakeClock()
    limiter = RateLimiter(50.0, 1, clock=clock, sleep=clock.sleep)
    handler: Handler = lambda r: httpx.Response(  # noqa: E731
        429, headers={"Retry-After": "2"}, json={"code": 429, "message": "Too many requests"}
    )
    client = make_client(handler, rate_limiter=limiter)
    with pytest.raises(TransientError):
        client.get_person("jsmith")
    assert limiter.rate == pytest.approx(25.0)
