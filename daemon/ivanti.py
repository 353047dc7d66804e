"""Synchronous client for Ivanti Service Manager: REST login and OData incidents/notes.

Knows HTTP and Ivanti's quirks (reference ivanti-api.md), nothing about the database or
the configuration object. Everything is explicit in the constructor so tests can drive it
with ``httpx.MockTransport``.

Quirks handled here rather than in callers:

* three encodings of "no rows" (HTTP 204, a 200 with an empty body, and
  ``{"value": "No instances found."}``) all become an empty page, while a body that is not
  JSON or has no ``value`` list is a ``TransientError`` - a truncated answer must never be
  mistaken for "nothing changed";
* a missing record is ``400 ISM_4000 "Invalid key"`` / ``"... cannot be found ..."``, never
  404 (Ivanti's 404 ``ISM_4004`` means a wrong path, i.e. configuration);
* the login answer is a JSON *string*; a session key contains the tenant host and goes into
  ``Authorization`` as is, anything else is taken to be a JWT and sent as ``Bearer``;
* query strings keep the literal ``$`` of OData option names (as every documented client
  sends them) and percent-encode values, so ``+`` in a UTC offset is ``%2B`` and a space is
  ``%20`` whatever the server's decoding convention.

The client is safe to share between the scheduler thread and a small pool: httpx's
connection pool is thread-safe, and the session (re-)login is serialised by a lock so a
burst of 401s after a session timeout causes one login, not one per thread.
"""

from __future__ import annotations

import html
import json
import logging
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from daemon.errors import (
    ApiError,
    AuthError,
    NotFound,
    OutcomeUnknown,
    TransientError,
    parse_http_date,
    response_error,
    transport_error,
)
from daemon.redact import redact, register_secret

log = logging.getLogger("daemon.ivanti")

SERVICE = "ivanti"
MAX_TOP = 100  # Ivanti answers 400 "Invalid Request Payload" above this
NOTES_PAGE = 100
LOGIN_PATH = "/api/rest/authentication/login"
LOGOUT_PATH = "/api/rest/authentication/logout"
# After a refused login, the next one waits 30 s, then 60 s, ... up to 15 minutes.
LOGIN_BACKOFF_BASE_S = 30.0
LOGIN_BACKOFF_MAX_S = 900.0
ODATA_PATH = "/api/odata/businessobject"

# Characters left readable in query values; everything else (space, +, &, =, #, %) is encoded.
_QUERY_SAFE = "',:()/"
_NO_INSTANCES = re.compile(r"(?i)^\s*no instances found\.?\s*$")
_MISSING_RECORD = re.compile(r"(?i)invalid (?:business object )?key|\bcannot be found\b")
_SESSION_KEY_SHAPE = re.compile(r".+#[A-Za-z0-9]+#\d+")

LOGIN_HINT = (
    "login rejected: check IVANTI_TENANT is the tenant host name (e.g. acme.saasit.com), "
    "IVANTI_USERNAME/IVANTI_PASSWORD, and that IVANTI_ROLE is the role's internal name "
    "(e.g. Admin, not Administrator)"
)
API_KEY_HINT = "check IVANTI_API_KEY is activated and its role can read incidents"


def odata_quote(value: str) -> str:
    """An OData string literal: single-quoted, embedded quotes doubled (``O''Brien``)."""
    return "'" + value.replace("'", "''") + "'"


def encode_query(params: Mapping[str, str]) -> str:
    """A query string with literal ``$`` option names and fully percent-encoded values."""
    return "&".join(f"{quote(k, safe='$')}={quote(v, safe=_QUERY_SAFE)}" for k, v in params.items())


def normalize_base_url(base_url: str) -> str:
    """Strip a trailing ``/`` and ``/api`` (keeping an on-premises ``/HEAT`` prefix)."""
    url = base_url.strip().rstrip("/")
    if url.lower().endswith("/api"):
        url = url[: -len("/api")].rstrip("/")
    return url


@dataclass(frozen=True)
class Page:
    """One OData page; ``server_date`` is the answer's ``Date`` header (the server's clock)."""

    rows: list[dict[str, Any]]
    server_date: datetime | None
    status: int


def _error_parts(response: httpx.Response) -> tuple[str | None, str]:
    """``(code, detail)`` from any of Ivanti's error shapes, falling back to the body text."""
    text = response.text
    try:
        body: Any = json.loads(text) if text.strip() else None
    except ValueError:
        body = None
    code: str | None = None
    detail = ""
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict):  # OData style {"error": {"code", "message"}}
            body = inner
        raw_code = body.get("code")
        code = str(raw_code) if raw_code not in (None, "") else None
        message = body.get("message", body.get("Message"))
        if isinstance(message, list):
            detail = "; ".join(str(m) for m in message if m not in (None, ""))
        elif isinstance(message, dict):
            detail = str(message.get("value", "")) or json.dumps(message)
        elif message:
            detail = str(message)
        if not detail and body.get("description"):
            detail = str(body["description"])
    elif isinstance(body, str):
        detail = body
    else:
        detail = html.unescape(text)
    return code, detail.strip() or response.reason_phrase


class IvantiClient:
    """Ivanti ISM over REST/OData with an API key or a (re-)established session."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        tenant: str | None = None,
        username: str | None = None,
        password: str | None = None,
        role: str = "Admin",
        timeout: float = 30.0,
        update_method: str = "PATCH",
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if api_key and (username or password):
            raise ValueError("give either api_key or username and password, not both")
        if not api_key and not (username and password):
            raise ValueError("give api_key, or both username and password")
        self.base_url = normalize_base_url(base_url)
        host = urlsplit(self.base_url).hostname
        if not host or urlsplit(self.base_url).scheme not in ("http", "https"):
            raise ValueError("base_url must be an http(s) URL such as https://acme.saasit.com")
        self.host = host
        self.tenant = tenant or host
        self.role = role
        if update_method.upper() not in ("PUT", "PATCH"):
            raise ValueError(f"update_method must be PUT or PATCH, got {update_method!r}")
        # PATCH: partial by definition. Whether a PUT empties the fields its body omits is
        # an open question (ivanti-api.md §8.10); a tenant that refuses PATCH (405) is
        # written with PUT from then on, as the original workflow does.
        self.update_method = update_method.upper()
        self._api_key = api_key or None
        self._username = username
        self._password = password
        for secret in (api_key, password):
            if secret:
                register_secret(secret)
        self._session: str | None = None  # the Authorization header value of the live session
        self._auth_lock = threading.Lock()
        # Refused logins in a row, and when the next may be tried (on ``clock``): a login
        # that keeps failing backs off instead of trying every poll, since repeated bad
        # logins lock a service account out.
        self._clock = clock
        self._login_failures = 0
        self._login_not_before = -math.inf
        self._stats_lock = threading.Lock()
        self.stats: Counter[str] = Counter()
        self.last_server_date: datetime | None = None
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout),
            transport=transport,
            headers={"Accept": "application/json"},
            follow_redirects=False,
        )

    # ----- lifecycle ---------------------------------------------------------------------

    @property
    def uses_session(self) -> bool:
        return self._api_key is None

    def __enter__(self) -> IvantiClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """End the session (so the tenant's per-user session cap is not used up) and close."""
        if self.uses_session:
            self.logout()
        self._http.close()

    def logout(self) -> None:
        """Best effort: a failed logout only leaves a session to time out, so it is logged."""
        with self._auth_lock:
            header, self._session = self._session, None
        if header is None:
            return
        try:
            response = self._raw(
                "logout",
                "DELETE",
                self.base_url + LOGOUT_PATH,
                headers={"Authorization": header},
                json_body={"tenant": self.tenant},
                idempotent=True,
            )
        except ApiError as exc:
            log.warning("ivanti logout failed: %s", exc)
            return
        if not response.is_success:
            log.warning(
                "ivanti logout failed: %s", self._error("logout", response, idempotent=True)
            )

    # ----- authentication ------------------------------------------------------------------

    def _auth_header(self) -> str:
        if self._api_key is not None:
            return f"rest_api_key={self._api_key}"
        with self._auth_lock:
            if self._session is None:
                self._session = self._login_with_backoff()
            return self._session

    def _login_with_backoff(self) -> str:
        wait = self._login_not_before - self._clock()
        if wait > 0:
            raise AuthError(
                SERVICE,
                "login",
                f"the last {self._login_failures} login(s) were refused; not trying again "
                f"for {wait:.0f} s so the account is not locked out ({LOGIN_HINT})",
                status=401,
            )
        try:
            key = self._login()
        except AuthError:
            self._login_failures += 1
            delay = min(LOGIN_BACKOFF_MAX_S, LOGIN_BACKOFF_BASE_S * 2 ** (self._login_failures - 1))
            self._login_not_before = self._clock() + delay
            log.error(
                "ivanti login refused (%d in a row); next login in %.0f s at the earliest",
                self._login_failures,
                delay,
            )
            raise
        self._login_failures = 0
        self._login_not_before = -math.inf
        return key

    def _invalidate(self, header: str) -> None:
        """Forget the session only if no other thread has replaced it already."""
        with self._auth_lock:
            if self._session == header:
                self._session = None

    def _login(self) -> str:
        body = {
            "tenant": self.tenant,
            "username": self._username,
            "password": self._password,
            "role": self.role,
        }
        response = self._raw(
            "login", "POST", self.base_url + LOGIN_PATH, headers={}, json_body=body, idempotent=True
        )
        if response.status_code in (400, 401, 403):
            code, detail = _error_parts(response)
            raise AuthError(
                SERVICE, "login", f"{LOGIN_HINT} ({detail})", status=response.status_code, code=code
            )
        if not response.is_success:
            raise self._error("login", response, idempotent=True)
        key = self._session_key_from(response)
        register_secret(key)
        log.info("ivanti session established for %s (role %s)", self._username, self.role)
        return key if self._looks_like_session_key(key) else f"Bearer {key}"

    @staticmethod
    def _session_key_from(response: httpx.Response) -> str:
        """The login body is a JSON string; tolerate it arriving as bare text."""
        text = response.text.strip()
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = text.strip('"')
        if not isinstance(value, str) or not value.strip():
            raise TransientError(
                SERVICE,
                "login",
                "malformed response: login answered without a session key",
                status=response.status_code,
            )
        return value.strip()

    def _looks_like_session_key(self, key: str) -> bool:
        """A session ID embeds the tenant URL; a JWT does not (Ivanti's documented test).

        The ``<host>#<KEY>#<n>`` shape is also accepted, for tenants whose login host
        differs from the configured tenant name.
        """
        lowered = key.lower()
        return (
            self.tenant.lower() in lowered
            or self.host.lower() in lowered
            or _SESSION_KEY_SHAPE.fullmatch(key) is not None
        )

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
        json_body: object | None = None,
        idempotent: bool,
    ) -> httpx.Response:
        """One HTTP exchange: count it, classify transport failures, note the server date."""
        self._count(operation)
        started = time.monotonic()
        try:
            response = self._http.request(method, url, headers=dict(headers), json=json_body)
        except httpx.TransportError as exc:
            self._count("transport_error")
            err = transport_error(SERVICE, operation, exc, idempotent=idempotent)
            log.debug("ivanti %s %s failed: %s", method, redact(url), err)
            raise err from exc
        self._count(f"status:{response.status_code}")
        server_date = parse_http_date(response.headers.get("Date"))
        if server_date is not None:
            self.last_server_date = server_date
        log.debug(
            "ivanti %s %s -> %d (%.0f ms)",
            method,
            redact(url),
            response.status_code,
            (time.monotonic() - started) * 1000,
        )
        return response

    def _send(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        query: str | None = None,
        json_body: object | None = None,
        idempotent: bool,
    ) -> httpx.Response:
        """An authenticated call; on a session 401, log in again once and repeat.

        Repeating after a 401 is safe even for writes: Ivanti refused the request
        before acting on it.
        """
        url = self.base_url + path + (f"?{query}" if query else "")
        for attempt in (1, 2):
            header = self._auth_header()
            response = self._raw(
                operation,
                method,
                url,
                headers={"Authorization": header},
                json_body=json_body,
                idempotent=idempotent,
            )
            if response.status_code != 401:
                return response
            code, _ = _error_parts(response)
            if self._api_key is not None:
                raise AuthError(
                    SERVICE,
                    operation,
                    f"the REST API key was rejected (401 {code or 'ISM_4001'}): {API_KEY_HINT}",
                    status=401,
                    code=code,
                )
            self._invalidate(header)
            if attempt == 1:
                log.info("ivanti session rejected (401); logging in again")
        raise AuthError(
            SERVICE,
            operation,
            "the session was rejected again right after a fresh login (401): check that "
            "IVANTI_ROLE may use the REST API",
            status=401,
            code=code,
        )

    def _error(self, operation: str, response: httpx.Response, *, idempotent: bool) -> ApiError:
        code, detail = _error_parts(response)
        status = response.status_code
        if 300 <= status < 400:
            location = response.headers.get("Location", "?")
            detail = f"unexpected redirect to {location}: check IVANTI_BASE_URL"
        elif status == 404:
            detail = f"{detail} (check IVANTI_BASE_URL; on-premises installs use a /HEAT prefix)"
        return response_error(
            SERVICE,
            operation,
            status,
            response.headers,
            code=code,
            detail=detail,
            idempotent=idempotent,
            not_found_on_404=False,
        )

    def _missing_record(self, operation: str, response: httpx.Response) -> NotFound | None:
        """Ivanti's "no such record": HTTP 400 whose message says the key is invalid/unknown."""
        if response.status_code != 400:
            return None
        code, detail = _error_parts(response)
        if _MISSING_RECORD.search(detail) is None:
            return None
        return NotFound(SERVICE, operation, detail, status=400, code=code)

    # ----- reading -----------------------------------------------------------------------

    def query_incidents(
        self,
        filter: str | None,
        orderby: str,
        *,
        top: int = 100,
        skip: int = 0,
        select: Sequence[str] | None = None,
    ) -> Page:
        """One page of incidents matching an OData ``$filter``.

        ``orderby`` is mandatory because Ivanti has no reliable default order. Beware: a
        misspelt ``$orderby`` field or direction answers 204 exactly like "no rows"
        (reference §2.2), which this client cannot tell apart - callers must only send
        fixed, known field names (e.g. ``LastModDateTime asc,IncidentNumber asc``).
        """
        return self._query(
            "query", "incidents", filter=filter, orderby=orderby, top=top, skip=skip, select=select
        )

    def _query(
        self,
        operation: str,
        entity_set: str,
        *,
        filter: str | None,
        orderby: str,
        top: int,
        skip: int,
        select: Sequence[str] | None,
    ) -> Page:
        if not 1 <= top <= MAX_TOP:
            raise ValueError(f"top must be 1..{MAX_TOP} (Ivanti's maximum), got {top}")
        if skip < 0:
            raise ValueError(f"skip must not be negative, got {skip}")
        if not orderby.strip():
            raise ValueError("orderby must not be empty (Ivanti answers 500 ISM_5000)")
        params: dict[str, str] = {}
        if filter:
            params["$filter"] = filter
        params["$orderby"] = orderby
        params["$top"] = str(top)
        params["$skip"] = str(skip)
        if select:
            params["$select"] = ",".join(select)
        response = self._send(
            operation,
            "GET",
            f"{ODATA_PATH}/{entity_set}",
            query=encode_query(params),
            idempotent=True,
        )
        if not response.is_success:
            raise self._error(operation, response, idempotent=True)
        return Page(
            rows=self._rows(operation, response),
            server_date=parse_http_date(response.headers.get("Date")),
            status=response.status_code,
        )

    @staticmethod
    def _rows(operation: str, response: httpx.Response) -> list[dict[str, Any]]:
        if response.status_code == 204 or not response.content.strip():
            return []
        try:
            body = response.json()
        except ValueError:
            raise TransientError(
                SERVICE,
                operation,
                f"malformed response: body is not JSON ({len(response.content)} bytes)",
                status=response.status_code,
            ) from None
        if isinstance(body, dict):
            value = body.get("value")
            if isinstance(value, list) and all(isinstance(row, dict) for row in value):
                return value
            if isinstance(value, str) and _NO_INSTANCES.match(value):
                return []
        raise TransientError(
            SERVICE,
            operation,
            "malformed response: JSON without a 'value' list of records",
            status=response.status_code,
        )

    @staticmethod
    def _record_path(entity_set: str, rec_id: str) -> str:
        key = quote(odata_quote(rec_id), safe="'")
        return f"{ODATA_PATH}/{entity_set}({key})"

    @staticmethod
    def _entity(operation: str, response: httpx.Response, *, write: bool) -> dict[str, Any]:
        """The single-record body. For a write the status already says it was applied, so
        an unreadable body is ``OutcomeUnknown`` (check, do not blindly resend)."""
        if write and (response.status_code == 204 or not response.content.strip()):
            return {}
        error_cls = OutcomeUnknown if write else TransientError
        try:
            body = response.json()
        except ValueError:
            raise error_cls(
                SERVICE,
                operation,
                f"malformed response: body is not JSON ({len(response.content)} bytes)",
                status=response.status_code,
            ) from None
        if isinstance(body, dict):
            value = body.get("value")
            if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
                return value[0]
            if "value" not in body or "@odata.context" in body:
                return body
        raise error_cls(
            SERVICE,
            operation,
            "malformed response: not a single record",
            status=response.status_code,
        )

    def get_incident(self, rec_id: str) -> dict[str, Any] | None:
        """The incident, or None when Ivanti says the key is invalid / the record is gone."""
        response = self._send("get", "GET", self._record_path("incidents", rec_id), idempotent=True)
        if self._missing_record("get", response) is not None:
            return None
        if not response.is_success:
            raise self._error("get", response, idempotent=True)
        return self._entity("get", response, write=False)

    def list_notes(self, rec_id: str) -> list[dict[str, Any]]:
        """All ``Journal.Notes`` of an incident, oldest first, paging until a short page.

        Raises ``TransientError`` if a full page brings nothing new (a server ignoring
        ``$skip`` would otherwise make this loop forever).
        """
        notes: list[dict[str, Any]] = []
        seen: set[str] = set()
        skip = 0
        while True:
            page = self._query(
                "notes",
                "journal__Notess",
                filter=f"ParentLink_RecID eq {odata_quote(rec_id)}",
                orderby="CreatedDateTime asc",
                top=NOTES_PAGE,
                skip=skip,
                select=None,
            )
            fresh = [row for row in page.rows if str(row.get("RecId", id(row))) not in seen]
            seen.update(str(row.get("RecId", id(row))) for row in fresh)
            notes.extend(fresh)
            if len(page.rows) < NOTES_PAGE:
                return notes
            if not fresh:
                raise TransientError(
                    SERVICE, "notes", f"paging did not advance at $skip={skip}", status=page.status
                )
            skip += len(page.rows)

    # ----- writing -----------------------------------------------------------------------

    def update_incident(
        self, rec_id: str, fields: Mapping[str, object], *, method: str | None = None
    ) -> dict[str, Any]:
        """Write ``fields`` (a partial body) and return the updated entity.

        ``method`` defaults to ``update_method`` (PATCH unless configured). A PATCH answered
        405 changed nothing, so it is sent again at once as a PUT, and PUT is used from then
        on (one WARNING says so).

        Not idempotent (``NewNotes`` appends a note), so a 5xx or a lost answer is
        ``OutcomeUnknown``. A refused write (400) is ``PermanentError`` carrying Ivanti's
        messages, e.g. ``Required field Incident.Category value must be provided``; an
        unknown RecId is ``NotFound``. A 204 returns ``{}``.
        """
        verb = (method or self.update_method).upper()
        if verb not in ("PUT", "PATCH"):
            raise ValueError(f"method must be PUT or PATCH, got {method!r}")
        if not fields:
            raise ValueError("fields must not be empty (Ivanti answers 400 for an empty body)")
        path = self._record_path("incidents", rec_id)
        response = self._send("update", verb, path, json_body=dict(fields), idempotent=False)
        if response.status_code == 405 and verb == "PATCH":
            log.warning(
                "Ivanti refuses PATCH (405) on incidents: writing with PUT from now on "
                "(set IVANTI_UPDATE_METHOD=PUT to skip the first try)"
            )
            self.update_method = "PUT"
            response = self._send("update", "PUT", path, json_body=dict(fields), idempotent=False)
        missing = self._missing_record("update", response)
        if missing is not None:
            raise missing
        if not response.is_success:
            raise self._error("update", response, idempotent=False)
        return self._entity("update", response, write=True)
