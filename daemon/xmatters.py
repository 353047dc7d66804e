"""Synchronous client for xMatters: HTTP triggers and the ``/api/xm/1`` REST API.

Knows HTTP and xMatters' conventions (reference xmatters-api.md), nothing about the
database or the configuration object.

Authentication (reference §1):

* REST calls use HTTP Basic with ``username``/``password`` - a REST user, or an API key
  and its secret in those two slots - or, when ``oauth_client_id`` is given, an OAuth2
  bearer token from the password grant, refreshed 30 s before ``expires_in`` runs out and
  once on a 401 (falling back to the password grant once if the refresh is refused).
* A trigger URL carrying ``?apiKey=`` authenticates by URL: no Authorization header is
  sent to it. Otherwise triggers use the bearer token (OAuth) or Basic credentials.
* Credentials are optional for a trigger-only set-up (``?apiKey=`` URL, no base URL: the
  base is then the trigger URL's origin); REST calls then fail with ``AuthError``.

Every ``/api/xm/1`` call first takes a token from a client-side rate limiter because
xMatters rejects rather than queues requests over the plan's limit. Its rate is a
ceiling (``XMATTERS_RATE_LIMIT``) lowered to what the tenant's ``x-ratelimit-*`` headers
allow and halved on a 429 (``daemon.ratelimit``); every answer, triggers' included,
feeds it. Triggers are not limited here: they are paced by the caller's outbox and by
xMatters' flood control.

There are no retries inside the client apart from the single re-authentication on 401:
retry policy belongs to the caller's outbox, which honours ``TransientError.retry_after``.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, quote, urljoin, urlsplit

import httpx

from daemon.errors import (
    ApiError,
    AuthError,
    OutcomeUnknown,
    PermanentError,
    TransientError,
    parse_http_date,
    parse_retry_after,
    response_error,
    transport_error,
)
from daemon.ratelimit import RateLimiter
from daemon.redact import redact, register_secret

log = logging.getLogger("daemon.xmatters")

SERVICE = "xmatters"
API_PREFIX = "/api/xm/1"
REFRESH_MARGIN_S = 30.0  # refresh this long before the access token expires
DEFAULT_EXPIRES_IN_S = 900.0  # xMatters access tokens live 15 minutes (reference §1.5)
SORT_ORDERS = ("ASCENDING", "DESCENDING")

_ALREADY_TERMINATED = re.compile(
    r"(?i)already\s+(?:been\s+)?terminated|(?:is|was)\s+terminated|terminated\s+event"
)

BASIC_HINT = (
    "check XMATTERS_USERNAME/XMATTERS_PASSWORD (or the API key and secret) and that the "
    "user has the REST Web Service User role"
)
OAUTH_HINT = (
    "check XMATTERS_OAUTH_CLIENT_ID and the username/password it is used with "
    "(a native xMatters password, not an SSO one)"
)


def _has_api_key(url: str) -> bool:
    return any(k.lower() == "apikey" for k, _ in parse_qsl(urlsplit(url).query))


def _api_key_values(url: str) -> list[str]:
    return [v for k, v in parse_qsl(urlsplit(url).query) if k.lower() == "apikey" and v]


def _origin(url: str) -> str:
    """``scheme://host[:port]`` of an absolute URL, or "" (then validation complains)."""
    parts = urlsplit(url.strip())
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""


def _error_parts(response: httpx.Response) -> tuple[str | None, str]:
    """``(code, detail)`` from ``{code, reason, message, subcode?, errorDetails?}`` or an
    OAuth ``{error, error_description}`` body; ``errorDetails`` paths go into the detail."""
    text = response.text
    try:
        body: Any = json.loads(text) if text.strip() else None
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return None, " ".join(text.split()) or response.reason_phrase
    message = body.get("message") or body.get("error_description") or ""
    if not isinstance(message, str):
        message = json.dumps(message)
    details = body.get("errorDetails")
    if isinstance(details, list) and details:
        rendered = "; ".join(
            f"{d.get('jsonPath', '?')}: {d.get('details', '')}" if isinstance(d, dict) else str(d)
            for d in details
        )
        message = f"{message} ({rendered})" if message else rendered
    subcode, reason, oauth_error = body.get("subcode"), body.get("reason"), body.get("error")
    code = subcode or reason or (oauth_error if isinstance(oauth_error, str) else None)
    return (str(code) if code else None), message or response.reason_phrase


@dataclass(frozen=True)
class _Token:
    access: str
    refresh: str | None
    expires_at: float  # on the client's clock


class XMattersClient:
    """xMatters triggers and REST reads/terminations, rate-limited and re-authenticating."""

    def __init__(
        self,
        base_url: str,
        trigger_url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        oauth_client_id: str | None = None,
        timeout: float = 30.0,
        rate_limit_per_s: float = 4.0,
        transport: httpx.BaseTransport | None = None,
        form_trigger_url: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        rate_limiter: RateLimiter | None = None,
    ) -> None:
        if bool(username) != bool(password):
            raise ValueError(
                "give both username and password (a REST user, or an API key and its secret)"
            )
        if oauth_client_id and not username:
            raise ValueError("the OAuth password grant needs username and password")
        base = base_url.strip().rstrip("/") or _origin(trigger_url)
        if base.endswith(API_PREFIX):
            base = base[: -len(API_PREFIX)].rstrip("/")
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("base_url must be an http(s) URL such as https://acme.xmatters.com")
        self.base_url = base
        self.api_url = base + API_PREFIX
        self.trigger_url = self._absolute(trigger_url)
        self.form_trigger_url = self._absolute(form_trigger_url) if form_trigger_url else None
        self._username = username
        self._password = password
        self._oauth_client_id = oauth_client_id or None
        self._basic: str | None = None
        if username and password:
            credentials = base64.b64encode(f"{username}:{password}".encode()).decode()
            self._basic = f"Basic {credentials}"
            register_secret(password)
            register_secret(credentials)
        for url in (self.trigger_url, self.form_trigger_url or ""):
            for key in _api_key_values(url):
                register_secret(key)
        self._clock = clock
        self._token: _Token | None = None
        self._auth_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self.stats: Counter[str] = Counter()
        self.limiter = rate_limiter or RateLimiter(rate_limit_per_s)
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout),
            transport=transport,
            headers={"Accept": "application/json"},
            follow_redirects=False,
        )

    def _absolute(self, url: str) -> str:
        """Trigger URLs may be given as server-relative paths (``/api/integration/1/...``)."""
        return self.base_url + url if url.startswith("/") else url

    # ----- lifecycle ---------------------------------------------------------------------

    @property
    def uses_oauth(self) -> bool:
        return self._oauth_client_id is not None

    @property
    def has_rest(self) -> bool:
        """Whether REST credentials are configured: without them only the trigger can be
        called, and nothing (an event, a landed page) can be looked up."""
        return self.uses_oauth or self._basic is not None

    def __enter__(self) -> XMattersClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ----- authentication ------------------------------------------------------------------

    def _rest_auth(self, operation: str) -> str:
        if self.uses_oauth:
            return f"Bearer {self._bearer()}"
        if self._basic is None:
            raise AuthError(
                SERVICE,
                operation,
                "no xMatters REST credentials are configured: set XMATTERS_USERNAME and "
                "XMATTERS_PASSWORD (or XMATTERS_API_KEY and XMATTERS_API_SECRET)",
            )
        return self._basic

    def _bearer(self) -> str:
        """A valid access token: obtained, or refreshed shortly before it runs out."""
        with self._auth_lock:
            token = self._token
            if token is None:
                token = self._password_grant()
            elif self._clock() >= token.expires_at - REFRESH_MARGIN_S:
                token = self._refresh_or_login(token)
            self._token = token
            return token.access

    def _invalidate(self, header: str) -> None:
        """After a 401, force a refresh - unless another thread already replaced the token."""
        with self._auth_lock:
            token = self._token
            if token is not None and header == f"Bearer {token.access}":
                self._token = _Token(token.access, token.refresh, -math.inf)

    def _refresh_or_login(self, token: _Token) -> _Token:
        if token.refresh:
            try:
                return self._token_request(
                    {"grant_type": "refresh_token", "refresh_token": token.refresh},
                    previous_refresh=token.refresh,
                )
            except ApiError as exc:
                log.warning("xmatters token refresh failed (%s); using the password grant", exc)
        return self._password_grant()

    def _password_grant(self) -> _Token:
        return self._token_request(
            {
                "grant_type": "password",
                "username": self._username or "",
                "password": self._password or "",
            },
            previous_refresh=None,
        )

    def _token_request(self, grant: Mapping[str, str], *, previous_refresh: str | None) -> _Token:
        form = {**grant, "client_id": self._oauth_client_id or ""}
        response = self._raw(
            "token",
            "POST",
            self.api_url + "/oauth2/token",
            headers={},
            form=form,
            idempotent=True,
            limited=True,
        )
        if response.status_code in (400, 401, 403):
            code, detail = _error_parts(response)
            raise AuthError(
                SERVICE,
                "token",
                f"{grant['grant_type']} grant refused: {OAUTH_HINT} ({detail})",
                status=response.status_code,
                code=code,
            )
        if not response.is_success:
            raise self._error("token", response, idempotent=True)
        body = self._json("token", response)
        access = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(access, str) or not access:
            raise TransientError(
                SERVICE, "token", "malformed response: no access_token", status=response.status_code
            )
        refresh = body.get("refresh_token")
        # Whether refreshes rotate the refresh token is an open question (reference §9.7):
        # keep the previous one when none comes back.
        refresh = refresh if isinstance(refresh, str) and refresh else previous_refresh
        try:
            expires_in = float(body.get("expires_in", DEFAULT_EXPIRES_IN_S))
        except (TypeError, ValueError):
            expires_in = DEFAULT_EXPIRES_IN_S
        register_secret(access)
        if refresh:
            register_secret(refresh)
        log.debug("xmatters access token obtained by %s grant", grant["grant_type"])
        return _Token(access, refresh, self._clock() + expires_in)

    # ----- transport ---------------------------------------------------------------------

    def _count(self, key: str) -> None:
        with self._stats_lock:
            self.stats[key] += 1

    def _raw(
        self,
        operation: str,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        params: Mapping[str, str] | None = None,
        json_body: object | None = None,
        form: Mapping[str, str] | None = None,
        idempotent: bool,
        limited: bool,
    ) -> httpx.Response:
        """One HTTP exchange: rate-limit it, count it, classify transport failures."""
        if limited:
            self.limiter.acquire()
        self._count(operation)
        started = time.monotonic()
        try:
            response = self._http.request(
                method,
                url,
                headers=dict(headers),
                params=dict(params) if params else None,
                json=json_body,
                data=dict(form) if form is not None else None,
            )
        except httpx.TransportError as exc:
            self._count("transport_error")
            err = transport_error(SERVICE, operation, exc, idempotent=idempotent)
            log.debug("xmatters %s %s failed: %s", method, redact(url), err)
            raise err from exc
        self._count(f"status:{response.status_code}")
        self.limiter.observe(
            response.status_code,
            response.headers,
            parse_retry_after(
                response.headers.get("Retry-After"),
                now=parse_http_date(response.headers.get("Date")),
            )
            if response.status_code == 429
            else None,
            hold=limited,
        )
        log.debug(
            "xmatters %s %s -> %d (%.0f ms)",
            method,
            redact(str(response.request.url)),
            response.status_code,
            (time.monotonic() - started) * 1000,
        )
        return response

    def _send(
        self,
        operation: str,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: object | None = None,
        idempotent: bool,
    ) -> httpx.Response:
        """An authenticated REST call; with OAuth a 401 refreshes the token and repeats once
        (safe: xMatters refused the request before acting on it)."""
        for attempt in (1, 2):
            header = self._rest_auth(operation)
            response = self._raw(
                operation,
                method,
                url,
                headers={"Authorization": header},
                params=params,
                json_body=json_body,
                idempotent=idempotent,
                limited=True,
            )
            if response.status_code != 401:
                return response
            if not self.uses_oauth:
                raise self._auth_rejected(operation, response, BASIC_HINT)
            self._invalidate(header)
            if attempt == 1:
                log.info("xmatters access token rejected (401); refreshing")
        raise self._auth_rejected(
            operation, response, f"token rejected again right after refreshing: {OAUTH_HINT}"
        )

    @staticmethod
    def _auth_rejected(operation: str, response: httpx.Response, hint: str) -> AuthError:
        code, detail = _error_parts(response)
        return AuthError(SERVICE, operation, f"{hint} ({detail})", status=401, code=code)

    def _error(self, operation: str, response: httpx.Response, *, idempotent: bool) -> ApiError:
        code, detail = _error_parts(response)
        status = response.status_code
        if 300 <= status < 400:
            location = response.headers.get("Location", "?")
            detail = f"unexpected redirect to {location}: check the xMatters URL"
        elif status == 403:
            detail = f"{detail} (the xMatters user lacks permission for this call)"
        return response_error(
            SERVICE,
            operation,
            status,
            response.headers,
            code=code,
            detail=detail,
            idempotent=idempotent,
        )

    @staticmethod
    def _json(operation: str, response: httpx.Response, *, write: bool = False) -> Any:
        try:
            return response.json()
        except ValueError:
            cls = OutcomeUnknown if write else TransientError
            raise cls(
                SERVICE,
                operation,
                f"malformed response: body is not JSON ({len(response.content)} bytes)",
                status=response.status_code,
            ) from None

    # ----- triggers ----------------------------------------------------------------------

    def trigger(self, payload: Mapping[str, object], *, url: str | None = None) -> str:
        """POST ``payload`` to the trigger URL (or ``url``); any 2xx returns its ``requestId``.

        Not idempotent - there is no idempotency key, a repeat makes another event - so a
        lost answer or a 5xx is ``OutcomeUnknown``. A 2xx whose body has no ``requestId``
        is also ``OutcomeUnknown`` (a ``TransientError`` subclass): the trigger was most
        likely accepted, so the caller must look the event up before re-sending.
        A 400 is ``PermanentError`` whose detail names the ``errorDetails`` JSON paths.
        """
        target = self._absolute(url) if url else self.trigger_url
        for key in _api_key_values(target):
            register_secret(key)
        url_auth = _has_api_key(target)
        for attempt in (1, 2):
            headers: dict[str, str] = {}
            if not url_auth:
                headers["Authorization"] = self._rest_auth("trigger")
            response = self._raw(
                "trigger",
                "POST",
                target,
                headers=headers,
                json_body=dict(payload),
                idempotent=False,
                limited=False,
            )
            if response.status_code != 401:
                break
            if url_auth or not self.uses_oauth:
                hint = "check the apiKey in XMATTERS_TRIGGER_URL" if url_auth else BASIC_HINT
                raise self._auth_rejected("trigger", response, hint)
            self._invalidate(headers["Authorization"])
            if attempt == 2:
                raise self._auth_rejected("trigger", response, OAUTH_HINT)
        if not response.is_success:
            raise self._error("trigger", response, idempotent=False)
        body = self._json("trigger", response, write=True)
        request_id = body.get("requestId") if isinstance(body, dict) else None
        if not isinstance(request_id, str) or not request_id:
            raise OutcomeUnknown(
                SERVICE,
                "trigger",
                "malformed response: accepted without a requestId",
                status=response.status_code,
            )
        return request_id

    # ----- REST reads and writes -----------------------------------------------------------

    def _follow(self, current: str, link: str) -> str:
        """Resolve ``links.next`` (a server-relative path) without leaving the tenant host."""
        target = urljoin(current, link)
        if urlsplit(target).netloc != urlsplit(self.base_url).netloc:
            raise PermanentError(SERVICE, "paging", "links.next points to another host")
        return target

    def _paginate(
        self, operation: str, url: str, params: Mapping[str, str]
    ) -> Iterator[dict[str, Any]]:
        """Yield ``data`` items of a paginated list, following ``links.next`` until absent."""
        next_url: str | None = url
        query: Mapping[str, str] | None = params
        seen: set[str] = set()
        while next_url is not None:
            response = self._send(operation, "GET", next_url, params=query, idempotent=True)
            if not response.is_success:
                raise self._error(operation, response, idempotent=True)
            body = self._json(operation, response)
            data = body.get("data") if isinstance(body, dict) else None
            if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
                raise TransientError(
                    SERVICE,
                    operation,
                    "malformed response: no 'data' list",
                    status=response.status_code,
                )
            yield from data
            links = body.get("links")
            link = links.get("next") if isinstance(links, dict) else None
            if not isinstance(link, str) or not link:
                return
            current = str(response.request.url)
            next_url, query = self._follow(current, link), None
            if next_url in seen or next_url == current:
                raise TransientError(
                    SERVICE, operation, "malformed response: links.next repeats a page"
                )
            seen.add(next_url)

    def find_events(
        self,
        *,
        request_id: str | None = None,
        property_name: str | None = None,
        property_value: str | None = None,
        statuses: Sequence[str] = (),
        embed: Sequence[str] = (),
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """All events matching the filters, across pages.

        ``property_name`` is passed as given: whether xMatters wants ``RecId`` or the
        language-suffixed ``RecId#en`` is an open question (reference §9.4), so callers
        choose (and may try both).
        """
        if (property_name is None) != (property_value is None):
            raise ValueError("give property_name and property_value together")
        if limit < 1:
            raise ValueError(f"limit must be positive, got {limit}")
        params: dict[str, str] = {"limit": str(limit)}
        if request_id:
            params["requestId"] = request_id
        if property_name is not None and property_value is not None:
            params["propertyName"] = property_name
            params["propertyValue"] = property_value
        if statuses:
            params["status"] = ",".join(statuses)
        if embed:  # recipients (and maybe properties) come only when embedded
            params["embed"] = ",".join(embed)
        return list(self._paginate("events", self.api_url + "/events", params))

    def _event_url(self, event_id: str) -> str:
        return f"{self.api_url}/events/{quote(event_id, safe='')}"

    def get_event(self, event_id: str) -> dict[str, Any] | None:
        """The event (UUID recommended, numeric eventId accepted), or None on 404."""
        response = self._send("event", "GET", self._event_url(event_id), idempotent=True)
        if response.status_code == 404:
            return None
        if not response.is_success:
            raise self._error("event", response, idempotent=True)
        body = self._json("event", response)
        if not isinstance(body, dict):
            raise TransientError(SERVICE, "event", "malformed response: not an event object")
        return body

    def terminate_event(self, event_id: str) -> dict[str, Any] | None:
        """Set the event's status to TERMINATED; returns the event, or None if it already was.

        What xMatters answers for an already-terminated event is undocumented (reference
        open question 9): a 409, or a 400 whose message says the event is already
        terminated, are both taken as "done" and return None. Terminating twice has the
        same effect as once, so lost answers are plain ``TransientError``. An unknown id is
        ``NotFound``.
        """
        response = self._send(
            "terminate",
            "POST",
            self.api_url + "/events",
            json_body={"id": event_id, "status": "TERMINATED"},
            idempotent=True,
        )
        if response.status_code == 409:
            return None
        if response.status_code == 400:
            _, detail = _error_parts(response)
            if _ALREADY_TERMINATED.search(detail):
                return None
        if not response.is_success:
            raise self._error("terminate", response, idempotent=True)
        if not response.content.strip():
            return {}
        body = self._json("terminate", response)
        return body if isinstance(body, dict) else {}

    def audits(
        self, event_id: str, types: Sequence[str], *, sort_order: str = "ASCENDING"
    ) -> Iterator[dict[str, Any]]:
        """The event's audit records of ``types``, following ``links.next``.

        A generator: requests are made as the caller iterates, so a failure on a later
        page surfaces after the earlier records were yielded (they stay valid).
        """
        if sort_order not in SORT_ORDERS:
            raise ValueError(f"sort_order must be one of {SORT_ORDERS}, got {sort_order!r}")
        params = {"eventId": event_id, "sortOrder": sort_order}
        if types:
            params["auditType"] = ",".join(types)
        return self._paginate("audits", self.api_url + "/audits", params)

    def get_person(self, target_name: str) -> dict[str, Any] | None:
        """A person by UUID or targetName, or None on 404 (which may also mean the REST
        user may not see that person)."""
        url = f"{self.api_url}/people/{quote(target_name, safe='')}"
        response = self._send("people", "GET", url, idempotent=True)
        if response.status_code == 404:
            return None
        if not response.is_success:
            raise self._error("people", response, idempotent=True)
        body = self._json("people", response)
        if not isinstance(body, dict):
            raise TransientError(SERVICE, "people", "malformed response: not a person object")
        return body
