"""A simulated xMatters: REST API v1, OAuth2, inbound triggers and the original workflow.

It models what the daemon meets on a real tenant (see
/work/shared/reference/xmatters-api.md and original-workflow.md):

* Two inbound triggers under ``/api/integration/1/functions/<uuid>/triggers``.
  The *workflow* trigger behaves like the published "Ivanti Service Manager | 1.0"
  flow: it takes the Ivanti Web Connection payload, terminates the incident's live
  events, and creates a new one unless the Type is ``Terminate``. The *form*
  trigger is a plain inbound integration: ``{properties, recipients,
  responseOptions, priority}`` and it only creates.
* ``/api/xm/1/...``: events (list, get, change status), audits, annotations,
  people, groups, and the OAuth2 token endpoint.
* Alert flood control (the default "Alert Rate Filter"): the fifth alert within
  60 s of sim-clock time from one integration to the same recipients is
  silently suppressed, although the trigger still answers 202.

Where the reference leaves a question open, this module picks one reading and
says so in the docstring of the code that implements it. The daemon must cope
with the other readings as well; the choices here are the strict ones, because
a simulator kinder than the real service hides bugs.

A Python control API (``events``, ``respond``, ``comment``, ``deliver``,
``triggers``, ``terminations``, ``suppressions``, ``set_flood_control``, ``reset``) and the
same operations under ``/_sim/`` let tests and the demo play the people at the
other end. Control routes need no authentication and are never faulted.

Switches for readings the reference leaves open (today's behaviour the default):

* ``set_flows(delay=, fail_next=)`` / ``POST /_sim/flows``: asynchronous flows. The
  workflow trigger answers 202 and its flow runs ``delay`` seconds of sim time later
  (default 0: before the 202); the next ``fail_next`` flows create nothing.
* ``complete(id)`` / ``expire(id)`` (``POST /_sim/events/<id>/complete|expire``): events
  that end by themselves, TERMINATED with an EVENT_COMPLETED audit; the audit type of
  an expiry is the ``expiry_audit`` switch (EVENT_COMPLETED or EVENT_TERMINATED).
* ``set_workflow_writeback(ivanti_url, ...)``: the original workflow's own write-back
  steps, writing notes (and the Assign-to-me Owner/Status) to Ivanti itself
  (``workflow_writes()`` lists them); off by default.
* Constructor switches (``daemon.simulators.profiles`` names the strict choice of each):
  ``property_filter`` (``any`` | ``plain`` | ``suffixed``: which ``propertyName``
  spelling, ``RecId`` or ``RecId#en``, finds events), ``property_keys`` (``plain`` |
  ``suffixed``: event properties served as ``Type`` or ``Type#en``), ``recipients``
  (``always`` | ``embedded``: an event's recipients only with ``embed=recipients``),
  ``response_option`` (``option`` | ``options.data``: where a response audit puts the
  chosen option), ``trigger_status`` (202 | 200), ``flow_delay``, ``expiry_audit``.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import secrets
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import httpx

from daemon.domain import FORM_PROPERTY_LIMITS
from daemon.simulators.clock import SimClock
from daemon.simulators.directory import DEFAULT_DIRECTORY, Directory
from daemon.simulators.server import CONTROL_PREFIX, BadRequest, Request, Response, SimServer

API = "/api/xm/1"
TRIGGER_PATH = "/api/integration/1/functions/{id}/triggers"
PLAN_NAME = "Ivanti Service Manager | 1.0"
FORM_NAME = "Incident"

LENGTH_DETAIL = "Exceeded the specified maximum number of characters"

CREATE_TYPES: tuple[str, ...] = ("New Incident", "Reassigned", "Reopened", "Priority Upgrade")
TERMINATE_TYPE = "Terminate"
EVENT_STATUSES: tuple[str, ...] = ("ACTIVE", "SUSPENDED", "TERMINATED")
LIVE_STATUSES: frozenset[str] = frozenset({"ACTIVE", "SUSPENDED"})
# How an event that ends by itself is audited: completion (every recipient answered with an
# END option, or nobody is left to notify) is EVENT_COMPLETED; for expiry
# (``expirationInMinutes``) the reference names no audit type of its own, so it is a switch.
END_AUDITS: tuple[str, ...] = ("EVENT_COMPLETED", "EVENT_TERMINATED")
# Which ``propertyName`` spellings find an event (reference §9.4): either (``any``), only
# the plain name (``plain``: ``RecId``) or only the language-suffixed one (``suffixed``:
# ``RecId#en``). A name the tenant does not know matches nothing; it is no error.
PROPERTY_FILTERS: tuple[str, ...] = ("any", "plain", "suffixed")
# Where a RESPONSE_RECEIVED audit puts the chosen option (reference §9.6).
RESPONSE_OPTION_KEYS: tuple[str, ...] = ("option", "options.data")
PRIORITIES: tuple[str, ...] = ("LOW", "MEDIUM", "HIGH")
AUDIT_TYPES: tuple[str, ...] = (
    "EVENT_CREATED",
    "EVENT_SUSPENDED",
    "EVENT_RESUMED",
    "EVENT_COMPLETED",
    "EVENT_TERMINATED",
    "EVENT_ANNOTATED",
    "RESPONSE_RECEIVED",
    "NOTIFICATION_DELIVERED",
    "NOTIFICATION_FAILED",
)
RECIPIENT_TYPES: tuple[str, ...] = ("PERSON", "GROUP", "DEVICE")
DELIVERY_STATUSES: tuple[str, ...] = ("DELIVERED", "FAILED")

ACCESS_TOKEN_TTL = 900  # seconds of sim clock
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
FLOOD_WINDOW = timedelta(seconds=60)

DEFAULT_USERS: dict[str, str] = {"xmrest": "xmrest-pass"}
DEFAULT_API_KEYS: dict[str, str] = {
    "b4c5d6e7-1a2b-4c3d-8e9f-0a1b2c3d4e5f": "xm-api-key-secret",
}
DEFAULT_OAUTH_CLIENTS: frozenset[str] = frozenset({"ivanti-bridge-client"})

# Namespace for stable ids of directory objects, so the demo sees the same person ids every run.
_NS = uuid.UUID("6f1c2a7e-3b7d-4f0e-9a51-1d2b3c4d5e6f")


# ----- small helpers ---------------------------------------------------------------------


def iso(dt: datetime) -> str:
    """xMatters timestamps: UTC, milliseconds, ``Z`` suffix."""
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _parse_time(name: str, value: str) -> datetime:
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadRequest(400, f"Invalid value for parameter '{name}': {value!r}") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt


def _stable_id(kind: str, name: str) -> str:
    return str(uuid.uuid5(_NS, f"{kind}:{name.casefold()}"))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",")]


def response_option(
    text: str, action: str, number: int, *, description: str = "", contribution: str = "POSITIVE"
) -> dict[str, Any]:
    """One form response option as xMatters describes it (id, number, text, action…)."""
    return {
        "id": str(uuid.uuid4()),
        "number": number,
        "text": text,
        "description": description or text,
        "prompt": text,
        "action": action,
        "contribution": contribution,
        "joinConference": False,
        "allowComments": True,
    }


def default_user_options() -> list[dict[str, Any]]:
    return [response_option("Acknowledge", "END", 1, description="Acknowledge the incident")]


def default_group_options() -> list[dict[str, Any]]:
    return [
        response_option("Assign to me", "END", 1, description="Take ownership of the incident"),
        response_option(
            "Escalate",
            "ESCALATE",
            2,
            description="Escalate to the next on-call member",
            contribution="NEGATIVE",
        ),
    ]


class _FlowError(Exception):
    """A step of the simulated flow failed; recorded on the trigger, never answered."""


# ----- model ---------------------------------------------------------------------------------


@dataclass
class _Person:
    id: str
    target_name: str
    first: str
    last: str
    devices: dict[str, str]  # device name -> device id
    teams: tuple[str, ...] = ()

    def link(self) -> str:
        return f"{API}/people/{self.id}"

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "targetName": self.target_name,
            "recipientType": "PERSON",
            "externallyOwned": False,
            "firstName": self.first,
            "lastName": self.last,
            "webLogin": self.target_name,
            "status": "ACTIVE",
            "links": {"self": self.link()},
        }

    def author(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "targetName": self.target_name,
            "firstName": self.first,
            "lastName": self.last,
            "recipientType": "PERSON",
            "links": {"self": self.link()},
        }


@dataclass
class _Group:
    id: str
    name: str
    members: list[_Person]

    def link(self) -> str:
        return f"{API}/groups/{self.id}"

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "targetName": self.name,
            "recipientType": "GROUP",
            "status": "ACTIVE",
            "groupType": "ON_CALL",
            "description": f"{self.name} (simulated)",
            "links": {"self": self.link()},
        }


@dataclass(frozen=True)
class _Target:
    """A resolved recipient of an event and the people it reaches."""

    id: str
    target_name: str
    recipient_type: str
    link: str
    people: tuple[str, ...]  # casefolded logins that may respond

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "targetName": self.target_name,
            "recipientType": self.recipient_type,
            "links": {"self": self.link},
        }


@dataclass
class _Event:
    id: str
    event_id: str
    created: datetime
    priority: str
    request_id: str
    properties: dict[str, Any]
    targets: list[_Target]
    options: list[dict[str, Any]]
    submitter: _Person
    status: str = "ACTIVE"
    terminated: datetime | None = None
    annotations: list[dict[str, Any]] = field(default_factory=list)

    def link(self) -> str:
        return f"{API}/events/{self.id}"

    def ref(self) -> dict[str, Any]:
        return {"id": self.id, "eventId": self.event_id, "links": {"self": self.link()}}

    def prop(self, name: str) -> Any:
        """Property by name, ignoring case and any ``#lang`` suffix on either side."""
        wanted = name.split("#", 1)[0].casefold()
        for key, value in self.properties.items():
            if key.split("#", 1)[0].casefold() == wanted:
                return value
        return None

    def audience(self) -> set[str]:
        return {login for t in self.targets for login in t.people}


@dataclass
class _Access:
    login: str
    client_id: str
    expires: datetime


@dataclass
class _Refresh:
    login: str
    client_id: str
    rotated: bool = False  # a rotated refresh token is honoured exactly once more


@dataclass
class _WorkflowWriteBack:
    """The original workflow's own write-back steps (original-workflow.md), for a site
    whose xMatters can reach Ivanti: on each response, comment and delivery update the
    flow logs in to Ivanti, PUTs ``{"NewNotes": …}`` (with ``Owner`` and
    ``Status=Active`` for "Assign to me") and logs out. Every write is recorded in
    ``workflow_writes()``; a failure is recorded there, never raised (the flow's step
    fails, the response still counts)."""

    ivanti_url: str
    tenant: str
    username: str
    password: str
    role: str = "Admin"
    prefix: str = "[xMatters]"
    assign_response: str = "Assign to me"
    writes: list[dict[str, Any]] = field(default_factory=list)

    def write(self, rec_id: str, fields: dict[str, Any]) -> None:
        entry: dict[str, Any] = {"rec_id": rec_id, "fields": dict(fields), "ok": False}
        self.writes.append(entry)
        api = self.ivanti_url.rstrip("/") + "/api"
        try:
            with httpx.Client(timeout=10.0) as http:
                login = http.post(
                    api + "/rest/authentication/login",
                    json={
                        "tenant": self.tenant,
                        "username": self.username,
                        "password": self.password,
                        "role": self.role,
                    },
                )
                login.raise_for_status()
                key = {"Authorization": str(login.json())}
                answer = http.put(
                    f"{api}/odata/businessobject/incidents('{rec_id}')", json=fields, headers=key
                )
                entry["status"] = answer.status_code
                entry["ok"] = answer.is_success
                http.delete(api + "/rest/authentication/logout", headers=key)
        except (httpx.HTTPError, ValueError) as exc:
            entry["error"] = str(exc)


# ----- the simulator -----------------------------------------------------------------------


class XMattersSimulator(SimServer):
    """xMatters as the daemon sees it; see the module docstring."""

    name = "xmatters"

    def __init__(
        self,
        clock: SimClock | None = None,
        *,
        directory: Directory = DEFAULT_DIRECTORY,
        users: Mapping[str, str] | None = None,
        api_keys: Mapping[str, str] | None = None,
        oauth_clients: Iterable[str] | None = None,
        trigger_api_key: str | None = None,
        workflow_trigger_id: str | None = None,
        form_trigger_id: str | None = None,
        user_response_options: Sequence[Mapping[str, Any]] | None = None,
        group_response_options: Sequence[Mapping[str, Any]] | None = None,
        flood_control: bool = True,
        flood_limit: int = 4,
        flow_delay: float = 0.0,
        expiry_audit: str = "EVENT_COMPLETED",
        property_filter: str = "any",
        property_keys: str = "plain",
        recipients: str = "always",
        response_option: str = "option",
        trigger_status: int = 202,
        log_requests: bool = False,
    ) -> None:
        super().__init__(clock, log_requests=log_requests)
        if expiry_audit not in END_AUDITS:
            raise ValueError(f"expiry_audit must be one of {END_AUDITS}")
        self.expiry_audit = expiry_audit
        self.property_filter = _choice("property_filter", property_filter, PROPERTY_FILTERS)
        self.property_keys = _choice("property_keys", property_keys, ("plain", "suffixed"))
        self.recipients_served = _choice("recipients", recipients, ("always", "embedded"))
        self.response_option = _choice("response_option", response_option, RESPONSE_OPTION_KEYS)
        if trigger_status not in (200, 202):
            raise ValueError(f"trigger_status must be 200 or 202, not {trigger_status!r}")
        self.trigger_status = trigger_status
        self.users: dict[str, str] = dict(DEFAULT_USERS if users is None else users)
        self.api_keys: dict[str, str] = dict(DEFAULT_API_KEYS if api_keys is None else api_keys)
        self.oauth_clients: set[str] = set(
            DEFAULT_OAUTH_CLIENTS if oauth_clients is None else oauth_clients
        )
        self.trigger_api_key = trigger_api_key or secrets.token_hex(16)
        self.workflow_trigger_id = str(uuid.UUID(workflow_trigger_id or str(uuid.uuid4())))
        self.form_trigger_id = str(uuid.UUID(form_trigger_id or str(uuid.uuid4())))
        if self.workflow_trigger_id == self.form_trigger_id:
            raise ValueError("workflow_trigger_id and form_trigger_id must differ")
        self.user_response_options = _check_options(
            user_response_options if user_response_options is not None else default_user_options()
        )
        self.group_response_options = _check_options(
            group_response_options
            if group_response_options is not None
            else default_group_options()
        )
        self.plan_id = _stable_id("plan", PLAN_NAME)
        self.form_id = _stable_id("form", FORM_NAME)
        self._flood_default = (flood_control, _check_limit(flood_limit))
        self._flow_default = _check_delay(flow_delay)
        self._people: list[_Person] = []
        self._groups: list[_Group] = []
        self._load_directory(directory)
        self._init_state()
        self._add_routes()

    def _init_state(self) -> None:
        """Everything a run changes; ``reset`` calls this again."""
        self._flood_enabled, self._flood_limit = self._flood_default
        self._events: list[_Event] = []
        self._audits: list[tuple[str, dict[str, Any]]] = []  # (event uuid, record)
        self._notifications: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._triggers: list[dict[str, Any]] = []
        self._terminations: list[dict[str, Any]] = []
        self._suppressions: list[dict[str, Any]] = []
        self._flood_log: dict[tuple[str, frozenset[tuple[str, str]]], list[datetime]] = {}
        self._access: dict[str, _Access] = {}
        self._refresh: dict[str, _Refresh] = {}
        self._next_event_number = 5_400_001
        self._next_order_id = 1_000
        self._flow_delay = self._flow_default
        self._flows_failing = 0  # the next N workflow runs create (and terminate) nothing
        self._pending_flows: list[tuple[datetime, dict[str, Any], dict[str, Any], _Person]] = []
        self._writeback: _WorkflowWriteBack | None = None

    def reset(self) -> None:
        """Forget events, audits, triggers, tokens, faults and the request log.

        Configuration (credentials, trigger ids, options, directory) and the
        clock are kept; flood control returns to its constructor settings.
        """
        with self.lock:
            self._init_state()
        self.faults.clear()
        self.clear_requests()

    # ----- directory -------------------------------------------------------------------
    def _load_directory(self, directory: Directory) -> None:
        """People keep their Ivanti login as targetName; REST users are people too (no devices)."""
        for p in directory.people:
            devices = {d: _stable_id("device", f"{p.login}|{d}") for d in p.devices}
            self._people.append(
                _Person(_stable_id("person", p.login), p.login, p.first, p.last, devices, p.teams)
            )
        for login in self.users:
            if self._person(login) is None:
                self._people.append(
                    _Person(_stable_id("person", login), login, login, "(REST user)", {})
                )
        team_names = list(directory.teams)
        for p in directory.people:
            team_names.extend(
                t for t in p.teams if t.casefold() not in map(str.casefold, team_names)
            )
        for team in team_names:
            members = [
                person
                for person in self._people
                if any(t.casefold() == team.casefold() for t in person.teams)
            ]
            self._groups.append(_Group(_stable_id("group", team), team, members))

    def _person(self, ref: str) -> _Person | None:
        """By id or targetName; targetName compares case-insensitively as xMatters does."""
        for p in self._people:
            if p.id == ref.lower() or p.target_name.casefold() == ref.casefold():
                return p
        return None

    def _group(self, ref: str) -> _Group | None:
        for g in self._groups:
            if g.id == ref.lower() or g.name.casefold() == ref.casefold():
                return g
        return None

    def _service_person(self) -> _Person:
        """Who owns API keys and URL-authenticated triggers: the first REST user."""
        for login in self.users:
            person = self._person(login)
            if person is not None:
                return person
        return _Person(_stable_id("person", "integration"), "integration", "Integration", "", {})

    # ----- public properties -----------------------------------------------------------
    @property
    def trigger_url(self) -> str:
        """Workflow (Flow HTTP trigger) URL, without credentials."""
        return self.url + TRIGGER_PATH.format(id=self.workflow_trigger_id)

    @property
    def form_trigger_url(self) -> str:
        """Form-based inbound integration URL, without credentials."""
        return self.url + TRIGGER_PATH.format(id=self.form_trigger_id)

    @property
    def api_url(self) -> str:
        return self.url + API

    # ----- error shape -----------------------------------------------------------------
    def error_response(self, status: int, message: str, **extra: Any) -> Response:
        """xMatters' error body ``{code, reason, message}`` (+ ``errorDetails`` on validation)."""
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Error"
        return Response.json(
            status, {"code": status, "reason": reason, "message": message, **extra}
        )

    # ----- routes ----------------------------------------------------------------------
    def _add_routes(self) -> None:
        add = self.add_route
        add(
            "POST",
            r"/api/integration/1/functions/(?P<tid>[^/]+)/triggers",
            self._h_trigger,
            "xm.trigger",
        )
        add("POST", API + r"/oauth2/token", self._h_token, "xm.token")
        add("GET", API + r"/events", self._h_events_list, "xm.events.list")
        add("POST", API + r"/events", self._h_events_change, "xm.events.change")
        add("GET", API + r"/events/(?P<eid>[^/]+)", self._h_event_get, "xm.events.get")
        add(
            "GET",
            API + r"/events/(?P<eid>[^/]+)/user-deliveries",
            self._h_user_deliveries,
            "xm.events.user_deliveries",
        )
        add(
            "GET",
            API + r"/events/(?P<eid>[^/]+)/annotations",
            self._h_annotations_list,
            "xm.annotations.list",
        )
        add(
            "POST",
            API + r"/events/(?P<eid>[^/]+)/annotations",
            self._h_annotations_add,
            "xm.annotations.add",
        )
        add("GET", API + r"/audits", self._h_audits, "xm.audits")
        add("GET", API + r"/people", self._h_people_list, "xm.people.list")
        add("GET", API + r"/people/(?P<pid>[^/]+)", self._h_person_get, "xm.people.get")
        add("GET", API + r"/groups", self._h_groups_list, "xm.groups.list")
        add("GET", API + r"/groups/(?P<gid>[^/]+)", self._h_group_get, "xm.groups.get")
        add(
            "GET",
            API + r"/groups/(?P<gid>[^/]+)/members",
            self._h_group_members,
            "xm.groups.members",
        )
        p = CONTROL_PREFIX
        ctl = self._add_control
        ctl("GET", p + "config", self._c_config, "sim.config")
        ctl("GET", p + "events", self._c_events, "sim.events")
        ctl("POST", p + r"events/(?P<eid>[^/]+)/responses", self._c_respond, "sim.responses")
        ctl("POST", p + r"events/(?P<eid>[^/]+)/comments", self._c_comment, "sim.comments")
        ctl("POST", p + r"events/(?P<eid>[^/]+)/deliveries", self._c_deliver, "sim.deliveries")
        ctl("GET", p + "triggers", lambda r, m: Response.json(200, self.triggers()), "sim.triggers")
        ctl(
            "GET",
            p + "terminations",
            lambda r, m: Response.json(200, self.terminations()),
            "sim.terminations",
        )
        ctl(
            "GET",
            p + "suppressions",
            lambda r, m: Response.json(200, self.suppressions()),
            "sim.suppressions",
        )
        ctl("POST", p + "flood-control", self._c_flood, "sim.flood")
        ctl("POST", p + r"events/(?P<eid>[^/]+)/complete", self._c_complete, "sim.complete")
        ctl("POST", p + r"events/(?P<eid>[^/]+)/expire", self._c_expire, "sim.expire")
        ctl("POST", p + "flows", self._c_flows, "sim.flows")

    def _add_control(self, method: str, pattern: str, handler: Any, name: str) -> None:
        self.add_route(method, pattern, handler, name, control=True)

    def add_route(
        self, method: str, pattern: str, handler: Any, name: str, *, control: bool = False
    ) -> None:
        """Every route first runs the asynchronous flows that are due (see _run_due_flows)."""

        def flowing(req: Request, m: re.Match[str]) -> Response:
            self._run_due_flows()  # under the simulator's lock, as every handler
            return handler(req, m)

        super().add_route(method, pattern, flowing, name, control=control)

    # ----- authentication --------------------------------------------------------------
    def _basic_principal(self, req: Request) -> _Person | None:
        """REST user + password, or API key + secret in the Basic slots."""
        header = req.header("Authorization") or ""
        if not header.lower().startswith("basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:].strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        if user in self.users and secrets.compare_digest(self.users[user], password):
            return self._person(user) or self._service_person()
        if user in self.api_keys and secrets.compare_digest(self.api_keys[user], password):
            return self._service_person()
        return None

    def _bearer_principal(self, req: Request) -> _Person | None:
        header = req.header("Authorization") or ""
        if not header.lower().startswith("bearer "):
            return None
        access = self._access.get(header[7:].strip())
        if access is None or self.clock.now() >= access.expires:
            return None
        return self._person(access.login) or self._service_person()

    def _rest_principal(self, req: Request) -> _Person:
        principal = self._basic_principal(req) or self._bearer_principal(req)
        if principal is None:
            header = req.header("Authorization") or ""
            if header.lower().startswith("bearer ") and header[7:].strip() in self._access:
                raise BadRequest(401, "The access token has expired")
            raise BadRequest(401, "Authentication failed: missing or invalid credentials")
        return principal

    def _trigger_principal(self, req: Request) -> _Person:
        """Triggers also accept URL authentication (``?apiKey=``).

        Bearer tokens are accepted too: inbound integrations offer OAuth as an
        authentication method alongside Basic and URL authentication.
        """
        api_key = req.query.get("apiKey")
        if api_key is not None:
            if secrets.compare_digest(api_key, self.trigger_api_key):
                return self._service_person()
            raise BadRequest(401, "Authentication failed: invalid apiKey")
        return self._rest_principal(req)

    def _api(self, req: Request) -> _Person:
        return self._rest_principal(req)

    # ----- OAuth2 ----------------------------------------------------------------------
    def _h_token(self, req: Request, m: re.Match[str]) -> Response:
        """OAuth2 token endpoint (form-encoded).

        Errors follow RFC 6749 §5.2 rather than the xMatters error body: unknown
        client_id -> 401 ``invalid_client``; wrong username/password or an unknown,
        spent or foreign refresh token -> 400 ``invalid_grant``; missing fields ->
        400 ``invalid_request``. A daemon must treat both 400 and 401 here as
        "credentials rejected".

        Refresh tokens rotate: each refresh returns a new refresh token, and the
        old one is honoured exactly once more (a grace use for a client that lost
        the answer) and then rejected. Refresh tokens do not expire with time.
        """
        form = dict(parse_qsl(req.body.decode("utf-8", "replace"), keep_blank_values=True))
        grant = form.get("grant_type", "")
        client_id = form.get("client_id", "")
        if not grant:
            return _oauth_error(400, "invalid_request", "grant_type is required")
        if grant not in ("password", "refresh_token"):
            return _oauth_error(400, "unsupported_grant_type", f"unsupported grant_type {grant!r}")
        if not client_id:
            return _oauth_error(400, "invalid_request", "client_id is required")
        if client_id not in self.oauth_clients:
            return _oauth_error(401, "invalid_client", "unknown client_id")
        if grant == "password":
            username, password = form.get("username", ""), form.get("password", "")
            if not username or not password:
                return _oauth_error(400, "invalid_request", "username and password are required")
            if username not in self.users or not secrets.compare_digest(
                self.users[username], password
            ):
                return _oauth_error(400, "invalid_grant", "Bad credentials")
            return Response.json(200, self._issue_tokens(username, client_id))
        token = form.get("refresh_token", "")
        if not token:
            return _oauth_error(400, "invalid_request", "refresh_token is required")
        refresh = self._refresh.get(token)
        if refresh is None or refresh.client_id != client_id:
            return _oauth_error(400, "invalid_grant", "Invalid refresh token")
        if refresh.rotated:
            del self._refresh[token]
        else:
            refresh.rotated = True
        return Response.json(200, self._issue_tokens(refresh.login, client_id))

    def _issue_tokens(self, login: str, client_id: str) -> dict[str, Any]:
        now = self.clock.now()
        jti = str(uuid.uuid4())
        header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        claims = {
            "sub": login,
            "client_id": client_id,
            "iat": int(now.timestamp()),
            "exp": int(now.timestamp()) + ACCESS_TOKEN_TTL,
            "jti": jti,
        }
        access = (
            f"{header}.{_b64url(json.dumps(claims).encode())}.{_b64url(secrets.token_bytes(32))}"
        )
        refresh = secrets.token_urlsafe(32)
        self._access[access] = _Access(login, client_id, now + timedelta(seconds=ACCESS_TOKEN_TTL))
        self._refresh[refresh] = _Refresh(login, client_id)
        return {
            "access_token": access,
            "token_type": "bearer",
            "refresh_token": refresh,
            "expires_in": ACCESS_TOKEN_TTL,
            "jti": jti,
        }

    # ----- triggers --------------------------------------------------------------------
    def _h_trigger(self, req: Request, m: re.Match[str]) -> Response:
        """Inbound trigger: 202 ``{requestId}``; see ``_run_workflow`` / ``_run_form``.

        Only requests that reach a known trigger with valid credentials are
        recorded in ``triggers()``; 401/404 answers show in the request log only.
        """
        tid = m["tid"].lower()
        if tid not in (self.workflow_trigger_id, self.form_trigger_id):
            raise BadRequest(404, f"Could not find an integration with id {m['tid']}")
        principal = self._trigger_principal(req)
        payload = req.json()
        if not isinstance(payload, dict):
            raise BadRequest(400, "The request body must be a JSON object")
        flavour = "workflow" if tid == self.workflow_trigger_id else "form"
        record: dict[str, Any] = {
            "seq": len(self._triggers) + 1,
            "at": iso(self.clock.now()),
            "trigger_id": tid,
            "flavour": flavour,
            "payload": copy.deepcopy(payload),
            "requestId": str(uuid.uuid4()),
            "outcome": "",
            "event_id": None,
            "terminated": [],
        }
        self._triggers.append(record)
        if flavour == "workflow":
            self._run_due_flows()
            if self._flow_delay > 0 or self._pending_flows:
                # An asynchronous flow: the 202 comes first, the flow runs later, in order.
                record["outcome"] = "pending"
                due = self.clock.now() + timedelta(seconds=self._flow_delay)
                self._pending_flows.append((due, record, copy.deepcopy(payload), principal))
            else:
                self._start_flow(record, payload, principal)
        else:
            self._run_form(record, payload, principal)
        return Response.json(self.trigger_status, {"requestId": record["requestId"]})

    def _start_flow(self, record: dict[str, Any], payload: dict[str, Any], who: _Person) -> None:
        if self._flows_failing > 0:
            self._flows_failing -= 1
            record["outcome"] = "error: simulated flow failure (the flow created nothing)"
            return
        self._run_workflow(record, payload, who)

    def _run_due_flows(self) -> None:
        """Run the asynchronous flows that are due by the sim clock.

        Called on every request and control call, so with a frozen clock a flow runs at
        the first request after the clock passed its due time: deterministic in tests.
        """
        now = self.clock.now()
        while self._pending_flows and self._pending_flows[0][0] <= now:
            _, record, payload, who = self._pending_flows.pop(0)
            self._start_flow(record, payload, who)

    def _run_workflow(self, record: dict[str, Any], payload: dict[str, Any], who: _Person) -> None:
        """The original flow, step by step.

        A Flow HTTP trigger answers 202 before the flow runs, so every failure
        inside the flow (bad Type, missing RecId, no recipients, a property too
        long for the form) leaves the caller with a 202 and a requestId that no
        event will ever carry. The failure is recorded as the trigger's outcome
        (``"error: ..."``), visible via ``triggers()`` and ``GET /_sim/triggers``.
        """
        try:
            props = _flat_properties(payload)
            kind = props.get("Type", "")
            if kind not in CREATE_TYPES and kind != TERMINATE_TYPE:
                raise _FlowError(f"unknown Type {kind!r}")
            rec_id = props.get("RecId", "")
            if not rec_id:
                raise _FlowError("the payload has no RecId")
            owner, team = props.get("Owner", ""), props.get("OwnerTeam", "")
            if owner:
                recipients = [{"id": owner, "recipientType": "PERSON"}]
                options = self.user_response_options
            else:
                recipients = [{"id": team, "recipientType": "GROUP"}]
                options = self.group_response_options
            record["terminated"] = self._terminate_rec_id(rec_id)
            if kind == TERMINATE_TYPE:
                record["outcome"] = "terminated_only"
                return
            if not team and not owner:
                raise _FlowError("Create Alert failed: neither Owner nor OwnerTeam is set")
            details = _length_errors(props)
            if details:
                raise _FlowError(
                    "Create Alert failed: 400 "
                    + "; ".join(f"{d['jsonPath']}: {d['details']}" for d in details)
                )
            self._create_or_suppress(record, props, recipients, options, "MEDIUM", who)
        except _FlowError as exc:
            record["outcome"] = f"error: {exc}"

    def _run_form(self, record: dict[str, Any], payload: dict[str, Any], who: _Person) -> None:
        """Form-based inbound integration: validate synchronously (400), then create.

        Recipients are required (the simulated form has no default recipients).
        Omitted ``responseOptions`` means all the form's options. Recipients that
        do not exist do not fail the request: as in xMatters, the event is created
        and delivery to them fails (a NOTIFICATION_FAILED audit per unknown one).
        """
        try:
            props, recipients, options, priority = self._validate_form(payload)
        except BadRequest as exc:
            record["outcome"] = f"error: {exc.status} {exc.message}"
            record["requestId"] = None
            raise
        self._create_or_suppress(record, props, recipients, options, priority, who)

    def _validate_form(
        self, payload: dict[str, Any]
    ) -> tuple[dict[str, Any], list[dict[str, str]], list[dict[str, Any]], str]:
        props = payload.get("properties", {})
        if not isinstance(props, dict):
            raise _validation("properties", "Must be an object")
        for name, value in props.items():
            if isinstance(value, dict | list):
                raise _validation(f"properties/{name}", "Must be a scalar value")
        details = _length_errors(props)
        if details:
            raise BadRequest(400, "Validation failed", errorDetails=details)
        recipients = payload.get("recipients")
        if not isinstance(recipients, list) or not recipients:
            raise _validation("recipients", "At least one recipient is required")
        clean: list[dict[str, str]] = []
        for i, r in enumerate(recipients):
            ref = (r.get("id") or r.get("targetName")) if isinstance(r, dict) else None
            if not isinstance(ref, str) or not ref:
                raise _validation(f"recipients[{i}]/id", "A recipient needs an id or targetName")
            rtype = str(r.get("recipientType") or "").upper()
            if rtype and rtype not in RECIPIENT_TYPES:
                raise _validation(f"recipients[{i}]/recipientType", f"Unsupported value {rtype}")
            clean.append({"id": ref, "recipientType": rtype})
        all_options = self.user_response_options + self.group_response_options
        chosen = payload.get("responseOptions")
        if chosen is None:
            options = all_options
        else:
            if not isinstance(chosen, list):
                raise _validation("responseOptions", "Must be an array")
            options = []
            for i, o in enumerate(chosen):
                oid = o.get("id") if isinstance(o, dict) else None
                match = [opt for opt in all_options if opt["id"] == oid]
                if not match:
                    raise _validation(f"responseOptions[{i}]/id", f"Unknown response option {oid}")
                options.append(match[0])
        priority = str(payload.get("priority") or "MEDIUM").upper()
        if priority not in PRIORITIES:
            raise _validation("priority", f"Must be one of {', '.join(PRIORITIES)}")
        return dict(props), clean, options, priority

    # ----- creation, flood control, termination ----------------------------------------
    def _create_or_suppress(
        self,
        record: dict[str, Any],
        props: dict[str, Any],
        recipients: list[dict[str, str]],
        options: list[dict[str, Any]],
        priority: str,
        who: _Person,
    ) -> None:
        """Alert Rate Filter: count the alerts *created* in the trailing 60 s.

        Suppressed alerts do not count towards the window, so a steady flood still
        lets ``flood_limit`` alerts a minute through. The key is the integration
        (trigger uuid) plus the recipient set as requested (type + id, case-blind).
        """
        now = self.clock.now()
        key = (
            record["trigger_id"],
            frozenset((r["recipientType"], r["id"].casefold()) for r in recipients),
        )
        recent = [t for t in self._flood_log.get(key, []) if timedelta(0) <= now - t < FLOOD_WINDOW]
        if self._flood_enabled and len(recent) >= self._flood_limit:
            record["outcome"] = "suppressed"
            self._suppressions.append(
                {
                    "at": iso(now),
                    "trigger_id": record["trigger_id"],
                    "requestId": record["requestId"],
                    "recipients": copy.deepcopy(recipients),
                    "rec_id": props.get("RecId"),
                    "properties": copy.deepcopy(props),
                    "reason": f"Alert Rate Filter: more than {self._flood_limit} alerts per "
                    "minute from this integration to the same recipients",
                }
            )
            return
        self._flood_log.setdefault(key, []).append(now)
        event = self._create_event(record["requestId"], props, recipients, options, priority, who)
        record["outcome"] = "created"
        record["event_id"] = event.id

    def _create_event(
        self,
        request_id: str,
        props: dict[str, Any],
        recipients: list[dict[str, str]],
        options: list[dict[str, Any]],
        priority: str,
        who: _Person,
    ) -> _Event:
        targets: list[_Target] = []
        unknown: list[dict[str, str]] = []
        for r in recipients:
            target = self._resolve(r["id"], r["recipientType"])
            if target is None:
                unknown.append(r)
            elif target not in targets:
                targets.append(target)
        event = _Event(
            id=str(uuid.uuid4()),
            event_id=str(self._next_event_number),
            created=self.clock.now(),
            priority=priority,
            request_id=request_id,
            properties=copy.deepcopy(props),
            targets=targets,
            options=copy.deepcopy(options),
            submitter=who,
        )
        self._next_event_number += 1
        self._events.append(event)
        self._audit(event, "EVENT_CREATED")
        for r in unknown:
            rtype = r["recipientType"] or "PERSON"
            self._audit(
                event,
                "NOTIFICATION_FAILED",
                notification=self._notification_json(
                    event,
                    {"id": str(uuid.uuid4()), "created": iso(self.clock.now())},
                    {"id": None, "targetName": r["id"], "recipientType": rtype, "links": {}},
                    "FAILED",
                ),
            )
        for t in targets:
            if t.recipient_type == "GROUP" and not t.people:
                self._audit(
                    event,
                    "NOTIFICATION_FAILED",
                    notification=self._notification_json(
                        event,
                        {"id": str(uuid.uuid4()), "created": iso(self.clock.now())},
                        t.as_json(),
                        "FAILED",
                    ),
                )
        return event

    def _resolve(self, ref: str, rtype: str) -> _Target | None:
        """PERSON/GROUP by targetName or id; DEVICE as ``login|Device``; untyped: person, group."""
        if rtype in ("PERSON", ""):
            person = self._person(ref)
            if person is not None:
                return _Target(
                    person.id,
                    person.target_name,
                    "PERSON",
                    person.link(),
                    (person.target_name.casefold(),),
                )
        if rtype in ("GROUP", ""):
            group = self._group(ref)
            if group is not None:
                return _Target(
                    group.id,
                    group.name,
                    "GROUP",
                    group.link(),
                    tuple(p.target_name.casefold() for p in group.members),
                )
        if rtype == "DEVICE":
            login, _, device = ref.partition("|")
            person = self._person(login)
            if person is not None and device in person.devices:
                return _Target(
                    person.devices[device],
                    f"{person.target_name}|{device}",
                    "DEVICE",
                    f"{API}/devices/{person.devices[device]}",
                    (person.target_name.casefold(),),
                )
        return None

    def _terminate_rec_id(self, rec_id: str) -> list[str]:
        """The flow's step 3: every ACTIVE/SUSPENDED event whose RecId equals (case-sensitive)."""
        done = []
        for event in self._events:
            if event.status in LIVE_STATUSES and event.prop("RecId") == rec_id:
                self._terminate(event, by="workflow")
                done.append(event.id)
        return done

    def _terminate(self, event: _Event, *, by: str) -> None:
        self._end(event, "EVENT_TERMINATED", at=self.clock.now(), by=by)

    def _end(self, event: _Event, audit_type: str, *, at: datetime, by: str) -> None:
        """An event ends: status TERMINATED (the only ended status the API serves), its
        ``terminated`` time, and the audit record of how it ended."""
        event.status = "TERMINATED"
        event.terminated = at
        self._audit(event, audit_type, at=at)
        self._terminations.append(
            {
                "event_id": event.id,
                "rec_id": event.prop("RecId"),
                "at": iso(at),
                "by": by,
            }
        )

    def _audit(
        self, event: _Event, audit_type: str, *, at: datetime | None = None, **body: Any
    ) -> dict[str, Any]:
        self._next_order_id += 1
        record = {
            "id": str(uuid.uuid4()),
            "type": audit_type,
            "at": iso(at or self.clock.now()),
            "orderId": self._next_order_id,
            "event": event.ref(),
            **body,
        }
        self._audits.append((event.id, record))
        return record

    # ----- JSON views ------------------------------------------------------------------
    def _event_json(
        self, event: _Event, *, embed: str = "", as_served: bool = True
    ) -> dict[str, Any]:
        """The event object. Properties are keyed as stored, or with a ``#en`` suffix
        (``property_keys``); recipients come always, or only when embedded
        (``recipients="embedded"``, the documented reading). The control API's views
        (``as_served=False``) show everything as stored, whatever the switches."""
        properties = copy.deepcopy(event.properties)
        if as_served and self.property_keys == "suffixed":
            properties = {(k if "#" in k else f"{k}#en"): v for k, v in properties.items()}
        body: dict[str, Any] = {
            "id": event.id,
            "eventId": event.event_id,
            "name": FORM_NAME,
            "eventType": "USER",
            "status": event.status,
            "created": iso(event.created),
            "priority": event.priority,
            "requestId": event.request_id,
            "floodControl": False,
            "incident": None,
            "plan": {"id": self.plan_id, "name": PLAN_NAME},
            "form": {"id": self.form_id, "name": FORM_NAME},
            "submitter": {"id": event.submitter.id, "targetName": event.submitter.target_name},
            "properties": properties,
            "recipients": {
                "count": len(event.targets),
                "total": len(event.targets),
                "data": [t.as_json() for t in event.targets],
                "links": {"self": f"{event.link()}/recipients"},
            },
            "links": {"self": event.link()},
        }
        if (
            as_served
            and self.recipients_served == "embedded"
            and "recipients" not in embed.casefold()
        ):
            del body["recipients"]
        if event.terminated is not None:
            body["terminated"] = iso(event.terminated)
        body.update(_EVENT_DEFAULTS)  # the fields the reference lists that nothing here sets
        wanted = embed.casefold()
        if "annotations" in wanted:
            body["annotations"] = _embedded(copy.deepcopy(event.annotations), event, "annotations")
        if "messages" in wanted:
            summary = str(event.prop("Summary") or event.prop("Type") or "")
            message = {
                "id": _stable_id("message", event.id),
                "messageType": "STANDARD",
                "subject": summary,
                "body": "\n".join(f"{k}: {v}" for k, v in event.properties.items()),
            }
            body["messages"] = _embedded([message], event, "messages")
        if "responseoptions" in embed.casefold():
            body["responseOptions"] = {
                "count": len(event.options),
                "total": len(event.options),
                "data": copy.deepcopy(event.options),
            }
        return body

    def _chosen_option(self, option: Mapping[str, Any]) -> dict[str, Any]:
        """A response's chosen option as ``option`` (an object) or ``options.data`` (a list
        of one), per the ``response_option`` switch (reference §9.6)."""
        if self.response_option == "option":
            return {"option": copy.deepcopy(dict(option))}
        return {"options": {"count": 1, "total": 1, "data": [copy.deepcopy(dict(option))]}}

    def _notification_json(
        self,
        event: _Event,
        note: dict[str, Any],
        recipient: dict[str, Any],
        status: str,
    ) -> dict[str, Any]:
        return {
            "id": note["id"],
            "category": "PERSONAL",
            "created": note["created"],
            "deliveryStatus": status,
            "event": event.ref(),
            "recipient": recipient,
        }

    def _device_recipient(self, person: _Person, device: str) -> dict[str, Any]:
        device_id = person.devices[device]
        return {
            "id": device_id,
            "targetName": f"{person.target_name}|{device}",
            "recipientType": "DEVICE",
            "links": {"self": f"{API}/devices/{device_id}"},
        }

    # ----- paging ----------------------------------------------------------------------
    def _paginate(self, req: Request, items: Sequence[dict[str, Any]], path: str) -> Response:
        """``{count, total, data, links}``; ``links.next`` only while more pages exist."""
        offset = _int_param(req.query, "offset", 0, minimum=0)
        limit = _int_param(req.query, "limit", DEFAULT_LIMIT, minimum=1)
        if limit > MAX_LIMIT:
            raise BadRequest(400, f"The limit parameter cannot be greater than {MAX_LIMIT}")
        page = list(items[offset : offset + limit])
        links = {"self": _link(path, req.raw_query, {})}
        if offset + limit < len(items):
            links["next"] = _link(path, req.raw_query, {"offset": offset + limit, "limit": limit})
        return Response.json(
            200, {"count": len(page), "total": len(items), "data": page, "links": links}
        )

    # ----- events ----------------------------------------------------------------------
    def _find_event(self, ref: str) -> _Event:
        """By UUID or numeric eventId."""
        for event in self._events:
            if event.id == ref.lower() or event.event_id == ref:
                return event
        raise BadRequest(404, f"Could not find an event with id {ref}")

    def _h_events_list(self, req: Request, m: re.Match[str]) -> Response:
        self._api(req)
        events = self._filter_events(req.query)
        embed = req.query.get("embed", "")
        return self._paginate(
            req, [self._event_json(e, embed=embed) for e in events], API + "/events"
        )

    def _filter_events(self, q: Mapping[str, str]) -> list[_Event]:
        """status, propertyName/Value/Operator, requestId, from/to, plan, form, priority, sort.

        Property names match case-blind, with or without a ``#en`` suffix as the
        ``property_filter`` switch allows; EQUALS and CONTAINS are case-sensitive. Ties on START_TIME keep creation order.
        """
        events = list(self._events)
        if "status" in q:
            statuses = [s.upper() for s in _csv(q["status"])]
            bad = [s for s in statuses if s not in EVENT_STATUSES]
            if bad:
                raise BadRequest(400, f"Invalid value for parameter 'status': {','.join(bad)}")
            events = [e for e in events if e.status in statuses]
        if "priority" in q:
            prios = [p.upper() for p in _csv(q["priority"])]
            events = [e for e in events if e.priority in prios]
        for name in ("plan", "form"):
            if name in q:
                wanted = q[name].casefold()
                ids = (self.plan_id, PLAN_NAME) if name == "plan" else (self.form_id, FORM_NAME)
                if wanted not in (ids[0], ids[1].casefold()):
                    events = []
        if "requestId" in q:
            events = [e for e in events if e.request_id == q["requestId"]]
        names = _csv(q["propertyName"]) if "propertyName" in q else []
        for name, matcher in zip(names, _property_matchers(q), strict=False):
            if not _name_known(name, self.property_filter):
                events = []
            events = [e for e in events if matcher(e)]
        if "from" in q:
            start = _parse_time("from", q["from"])
            events = [e for e in events if e.created >= start]
        if "to" in q:
            end = _parse_time("to", q["to"])
            events = [e for e in events if e.created <= end]
        sort_by = q.get("sortBy", "START_TIME").upper()
        if sort_by != "START_TIME":
            raise BadRequest(400, f"Invalid value for parameter 'sortBy': {q['sortBy']}")
        order = _sort_order(q)
        events.sort(key=lambda e: (e.created, int(e.event_id)), reverse=order == "DESCENDING")
        return events

    def _h_event_get(self, req: Request, m: re.Match[str]) -> Response:
        self._api(req)
        event = self._find_event(m["eid"])
        return Response.json(200, self._event_json(event, embed=req.query.get("embed", "")))

    def _h_events_change(self, req: Request, m: re.Match[str]) -> Response:
        """Change status: ``{id, status}``.

        Terminating an event that is already TERMINATED answers 409 (xMatters
        body). The real answer is an open question in the reference; a daemon must
        treat "already terminated" as done whatever the status. Resuming or
        suspending a terminated event is also 409. Setting the current status of a
        live event is a 200 no-op.
        """
        self._api(req)
        body = req.json()
        if not isinstance(body, dict):
            raise BadRequest(400, "The request body must be a JSON object")
        ref, status = body.get("id"), str(body.get("status") or "").upper()
        if not isinstance(ref, str) or not ref:
            raise _validation("id", "The event id is required")
        if status not in EVENT_STATUSES:
            raise _validation("status", f"Must be one of {', '.join(EVENT_STATUSES)}")
        event = self._find_event(ref)
        if event.status == "TERMINATED":
            raise BadRequest(409, f"The event {event.id} is already terminated")
        if status == "TERMINATED":
            self._terminate(event, by="api")
        elif status != event.status:
            event.status = status
            self._audit(event, "EVENT_SUSPENDED" if status == "SUSPENDED" else "EVENT_RESUMED")
        return Response.json(200, self._event_json(event))

    # ----- audits and annotations ------------------------------------------------------
    def _h_audits(self, req: Request, m: re.Match[str]) -> Response:
        """Per-event audit trail, ordered by ``orderId``.

        ``eventId`` (UUID or numeric) is required, as in the current reference: 400
        without it, 404 for an unknown event. The event-less, time-window form the
        older docs describe is not simulated. Without ``auditType`` every type is
        listed, EVENT_CREATED/EVENT_TERMINATED included.
        """
        self._api(req)
        q = req.query
        if not q.get("eventId"):
            raise BadRequest(
                400,
                "The eventId parameter is required",
                errorDetails=[{"jsonPath": "eventId", "details": "Required"}],
            )
        event = self._find_event(q["eventId"])
        records = [r for eid, r in self._audits if eid == event.id]
        if "auditType" in q:
            types = [t.upper() for t in _csv(q["auditType"])]
            bad = [t for t in types if t not in AUDIT_TYPES]
            if bad:
                raise BadRequest(400, f"Invalid value for parameter 'auditType': {','.join(bad)}")
            records = [r for r in records if r["type"] in types]
        records.sort(key=lambda r: int(r["orderId"]), reverse=_sort_order(q) == "DESCENDING")
        return self._paginate(req, copy.deepcopy(records), API + "/audits")

    def _h_user_deliveries(self, req: Request, m: re.Match[str]) -> Response:
        """Delivery status per person reached (reference 5.3): ``at`` is required (a
        historical-data endpoint); ``deliveryStatus`` filters. A person is RESPONDED once
        they answered, DELIVERED once a device got it, FAILED when every device failed,
        and NOT_DELIVERED before any result."""
        self._api(req)
        if not req.query.get("at"):
            raise BadRequest(400, "The at parameter is required")
        event = self._find_event(m["eid"])
        wanted = {s.upper() for s in _csv(req.query.get("deliveryStatus", "")) if s}
        items = [
            item
            for item in (self._user_delivery(event, login) for login in sorted(event.audience()))
            if item is not None and (not wanted or item["deliveryStatus"] in wanted)
        ]
        return self._paginate(req, items, f"{API}/events/{event.id}/user-deliveries")

    def _user_delivery(self, event: _Event, login: str) -> dict[str, Any] | None:
        who = self._person(login)
        if who is None:
            return None
        responses = [
            r["response"]
            for ev_id, r in self._audits
            if ev_id == event.id
            and r["type"] == "RESPONSE_RECEIVED"
            and str(r["response"]["notification"]["recipient"]["targetName"])
            .split("|", 1)[0]
            .casefold()
            == who.target_name.casefold()
        ]
        notes = []
        for (eid, name, device), n in self._notifications.items():
            if eid != event.id or name != who.target_name.casefold():
                continue
            answers = [
                {"text": r["response"], "notification": {"id": n["id"]}, "received": r["received"]}
                for r in responses
                if r["notification"]["id"] == n["id"]
            ]
            notes.append(
                {
                    **copy.deepcopy(n),
                    "recipient": self._device_recipient(who, device),
                    "delivered": n["created"] if n["deliveryStatus"] == "DELIVERED" else None,
                    "responded": answers[-1]["received"] if answers else None,
                    "responses": {"count": len(answers), "total": len(answers), "data": answers},
                }
            )
        statuses = {n["deliveryStatus"] for n in notes}
        status = (
            "RESPONDED"
            if responses
            else "DELIVERED"
            if "DELIVERED" in statuses
            else "FAILED"
            if statuses
            else "NOT_DELIVERED"
        )
        item: dict[str, Any] = {
            "event": event.ref(),
            "person": who.as_json(),
            "deliveryStatus": status,
            "notifications": {"count": len(notes), "total": len(notes), "data": notes},
            "links": {"self": f"{event.link()}/user-deliveries/{who.id}"},
        }
        if responses:
            last = responses[-1]
            item["response"] = {
                "text": last["response"],
                "notification": copy.deepcopy(last["notification"]),
                "received": last["received"],
            }
        return item

    def _h_annotations_list(self, req: Request, m: re.Match[str]) -> Response:
        self._api(req)
        event = self._find_event(m["eid"])
        return self._paginate(
            req, copy.deepcopy(event.annotations), f"{API}/events/{event.id}/annotations"
        )

    def _h_annotations_add(self, req: Request, m: re.Match[str]) -> Response:
        """Add a comment as the authenticated user (it shows up as EVENT_ANNOTATED too)."""
        who = self._api(req)
        event = self._find_event(m["eid"])
        body = req.json()
        text = body.get("comment") if isinstance(body, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise _validation("comment", "The comment is required")
        return Response.json(201, self._annotate(event, who, text))

    def _annotate(self, event: _Event, who: _Person, text: str) -> dict[str, Any]:
        annotation = {
            "id": str(uuid.uuid4()),
            "event": event.ref(),
            "author": who.author(),
            "comment": text,
            "created": iso(self.clock.now()),
        }
        event.annotations.append(annotation)
        self._audit(event, "EVENT_ANNOTATED", annotation=copy.deepcopy(annotation))
        if self._writeback is not None:
            note = f"{self._writeback.prefix} {who.first} {who.last} commented [ {text} ]"
            self._write_back(event, {"NewNotes": note})
        return copy.deepcopy(annotation)

    def _write_back(self, event: _Event, fields: dict[str, Any]) -> None:
        rec_id = event.prop("RecId")
        if self._writeback is not None and isinstance(rec_id, str) and rec_id:
            self._writeback.write(rec_id, fields)

    # ----- people and groups -----------------------------------------------------------
    def _h_people_list(self, req: Request, m: re.Match[str]) -> Response:
        self._api(req)
        q = req.query
        people = sorted(self._people, key=lambda p: p.target_name.casefold())
        for key in ("targetName", "webLogin"):
            if key in q:
                people = [p for p in people if p.target_name.casefold() == q[key].casefold()]
        if "firstName" in q:
            people = [p for p in people if p.first.casefold() == q["firstName"].casefold()]
        if "lastName" in q:
            people = [p for p in people if p.last.casefold() == q["lastName"].casefold()]
        if q.get("search"):
            people = [p for p in people if _search_hit(q["search"], p.target_name, p.first, p.last)]
        return self._paginate(req, [p.as_json() for p in people], API + "/people")

    def _h_person_get(self, req: Request, m: re.Match[str]) -> Response:
        self._api(req)
        person = self._person(m["pid"])
        if person is None:
            raise BadRequest(404, f"Could not find a person with id or targetName {m['pid']}")
        return Response.json(200, person.as_json())

    def _h_groups_list(self, req: Request, m: re.Match[str]) -> Response:
        self._api(req)
        groups = sorted(self._groups, key=lambda g: g.name.casefold())
        if req.query.get("search"):
            groups = [g for g in groups if _search_hit(req.query["search"], g.name)]
        return self._paginate(req, [g.as_json() for g in groups], API + "/groups")

    def _get_group(self, ref: str) -> _Group:
        group = self._group(ref)
        if group is None:
            raise BadRequest(404, f"Could not find a group with id or name {ref}")
        return group

    def _h_group_get(self, req: Request, m: re.Match[str]) -> Response:
        self._api(req)
        return Response.json(200, self._get_group(m["gid"]).as_json())

    def _h_group_members(self, req: Request, m: re.Match[str]) -> Response:
        self._api(req)
        group = self._get_group(m["gid"])
        members = [
            {"group": {"id": group.id, "targetName": group.name}, "member": p.author()}
            for p in group.members
        ]
        return self._paginate(req, members, f"{API}/groups/{group.id}/members")

    # ----- Python control API ----------------------------------------------------------
    def events(self, rec_id: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        """Events as served (creation order), optionally by RecId property and status."""
        with self.lock:
            self._run_due_flows()
            return [
                self._event_json(e, as_served=False)
                for e in self._events
                if (rec_id is None or e.prop("RecId") == rec_id)
                and (status is None or e.status == status.upper())
            ]

    def live_events(self, rec_id: str) -> list[dict[str, Any]]:
        """ACTIVE or SUSPENDED events of one incident."""
        with self.lock:
            return [e for e in self.events(rec_id) if e["status"] in LIVE_STATUSES]

    def event(self, event_id: str) -> dict[str, Any]:
        with self.lock:
            self._run_due_flows()
            return self._event_json(self._control_event(event_id), as_served=False)

    def respond(
        self,
        event_id: str,
        *,
        person: str,
        response: str,
        comment: str | None = None,
        device: str = "Mobile App",
        source: str = "MOBILE",
    ) -> dict[str, Any]:
        """A recipient answers from a device: one RESPONSE_RECEIVED audit.

        The event must be ACTIVE and the person reached by it (a recipient, a
        member of a recipient group, or the owner of a recipient device); the
        response must be one of the options offered on the event. END and
        ESCALATE leave the event ACTIVE: END only stops notifying people.
        """
        with self.lock:
            self._run_due_flows()
            event = self._control_event(event_id)
            who = self._recipient_person(event, person)
            if event.status != "ACTIVE":
                raise ValueError(f"event {event.id} is {event.status}; it takes no responses")
            option = next(
                (o for o in event.options if str(o["text"]).casefold() == response.casefold()),
                None,
            )
            if option is None:
                offered = ", ".join(str(o["text"]) for o in event.options)
                raise ValueError(f"{response!r} is not offered on this event (offered: {offered})")
            note = self._notification(event, who, device, "DELIVERED")
            body: dict[str, Any] = {
                "response": option["text"],
                "received": iso(self.clock.now()),
                "source": source,
                **self._chosen_option(option),
                "notification": self._notification_json(
                    event, note, self._device_recipient(who, device), note["deliveryStatus"]
                ),
            }
            if comment is not None:
                body["comment"] = comment
            record = copy.deepcopy(self._audit(event, "RESPONSE_RECEIVED", response=body))
            wb = self._writeback
            if wb is not None:
                fields: dict[str, Any] = {
                    "NewNotes": f"{wb.prefix} {who.first} {who.last} | {device} responded "
                    f"[ {option['text']} ]"
                }
                if str(option["text"]).casefold() == wb.assign_response.casefold():
                    fields.update(Owner=who.target_name, Status="Active")
                self._write_back(event, fields)
                if comment is not None:  # the flow's comment trigger fires for it too
                    said = f"{wb.prefix} {who.first} {who.last} commented [ {comment} ]"
                    self._write_back(event, {"NewNotes": said})
            return record

    def comment(self, event_id: str, *, person: str, text: str) -> dict[str, Any]:
        """Anyone in the directory may comment on any event: annotation + EVENT_ANNOTATED."""
        with self.lock:
            self._run_due_flows()
            event = self._control_event(event_id)
            who = self._person(person)
            if who is None:
                raise ValueError(f"unknown person {person!r}")
            return self._annotate(event, who, text)

    def deliver(
        self, event_id: str, *, person: str, device: str = "Mobile App", status: str = "DELIVERED"
    ) -> dict[str, Any]:
        """Delivery result of one notification: NOTIFICATION_DELIVERED or NOTIFICATION_FAILED."""
        status = status.upper()
        if status not in DELIVERY_STATUSES:
            raise ValueError(f"status must be one of {DELIVERY_STATUSES}")
        with self.lock:
            self._run_due_flows()
            event = self._control_event(event_id)
            who = self._recipient_person(event, person)
            note = self._notification(event, who, device, status)
            note["deliveryStatus"] = status
            record = self._audit(
                event,
                f"NOTIFICATION_{status}",
                notification=self._notification_json(
                    event, note, self._device_recipient(who, device), status
                ),
            )
            wb = self._writeback
            if wb is not None:
                to = (
                    f"{who.target_name}|{device}"
                    if status == "FAILED"
                    else f"{who.first} {who.last} | {device}"
                )
                self._write_back(event, {"NewNotes": f"{wb.prefix} Notification {status} to {to}"})
            return copy.deepcopy(record)

    def triggers(self) -> list[dict[str, Any]]:
        with self.lock:
            self._run_due_flows()
            return copy.deepcopy(self._triggers)

    def terminations(self) -> list[dict[str, Any]]:
        with self.lock:
            self._run_due_flows()
            return copy.deepcopy(self._terminations)

    def suppressions(self) -> list[dict[str, Any]]:
        with self.lock:
            return copy.deepcopy(self._suppressions)

    def complete(self, event_id: str) -> dict[str, Any]:
        """The event ends by itself (every recipient answered with an END option, or
        nobody is left to notify): TERMINATED, with an EVENT_COMPLETED audit."""
        with self.lock:
            self._run_due_flows()
            event = self._live_control_event(event_id)
            self._end(event, "EVENT_COMPLETED", at=self.clock.now(), by="completed")
            return self._event_json(event, as_served=False)

    def expire(self, event_id: str) -> dict[str, Any]:
        """The event's ``expirationInMinutes`` ran out: TERMINATED, audited as the
        ``expiry_audit`` switch says (the reference names no type of its own)."""
        with self.lock:
            self._run_due_flows()
            event = self._live_control_event(event_id)
            self._end(event, self.expiry_audit, at=self.clock.now(), by="expiry")
            return self._event_json(event, as_served=False)

    def set_flows(self, *, delay: float | None = None, fail_next: int | None = None) -> None:
        """Asynchronous flows: the workflow trigger answers 202 at once and its flow runs
        ``delay`` seconds of sim time later (0: before the 202, today's default); the next
        ``fail_next`` flows error out and create (and terminate) nothing."""
        with self.lock:
            if delay is not None:
                self._flow_delay = _check_delay(delay)
            if fail_next is not None:
                if fail_next < 0:
                    raise ValueError("fail_next must be at least 0")
                self._flows_failing = fail_next

    @property
    def flow_delay(self) -> float:
        """Seconds of sim time between a workflow trigger's answer and its flow (0: none)."""
        return self._flow_delay

    def flows_due_in(self) -> float:
        """Seconds of sim time until every pending asynchronous flow has run (0: none)."""
        with self.lock:
            self._run_due_flows()
            if not self._pending_flows:
                return 0.0
            return max(0.0, (self._pending_flows[-1][0] - self.clock.now()).total_seconds())

    def _live_control_event(self, ref: str) -> _Event:
        event = self._control_event(ref)
        if event.status not in LIVE_STATUSES:
            raise ValueError(f"event {event.id} is {event.status}; it has ended already")
        return event

    def set_workflow_writeback(
        self,
        ivanti_url: str | None,
        *,
        tenant: str = "",
        username: str = "",
        password: str = "",
        role: str = "Admin",
    ) -> None:
        """Turn the original workflow's own write-back steps on (an Ivanti URL and the
        login they use) or off (None, the default)."""
        with self.lock:
            self._writeback = (
                None
                if ivanti_url is None
                else _WorkflowWriteBack(ivanti_url, tenant, username, password, role)
            )

    def workflow_writes(self) -> list[dict[str, Any]]:
        """What the workflow's own write-back steps sent to Ivanti, in order."""
        with self.lock:
            return copy.deepcopy(self._writeback.writes) if self._writeback else []

    def set_flood_control(self, enabled: bool, limit: int = 4) -> None:
        with self.lock:
            self._flood_enabled = enabled
            self._flood_limit = _check_limit(limit)

    def config(self) -> dict[str, Any]:
        """What a demo needs to wire a client to this simulator."""
        with self.lock:
            return {
                "trigger_url": self.trigger_url,
                "form_trigger_url": self.form_trigger_url,
                "workflow_trigger_id": self.workflow_trigger_id,
                "form_trigger_id": self.form_trigger_id,
                "trigger_api_key": self.trigger_api_key,
                "users": dict(self.users),
                "api_keys": dict(self.api_keys),
                "oauth_clients": sorted(self.oauth_clients),
                "user_response_options": copy.deepcopy(self.user_response_options),
                "group_response_options": copy.deepcopy(self.group_response_options),
                "flood_control": {"enabled": self._flood_enabled, "limit": self._flood_limit},
                "flows": {"delay": self._flow_delay, "fail_next": self._flows_failing},
                "expiry_audit": self.expiry_audit,
                "workflow_writeback": self._writeback is not None,
            }

    def _control_event(self, ref: str) -> _Event:
        for event in self._events:
            if event.id == ref.lower() or event.event_id == ref:
                return event
        raise LookupError(f"no event {ref!r}")

    def _recipient_person(self, event: _Event, login: str) -> _Person:
        who = self._person(login)
        if who is None:
            raise ValueError(f"unknown person {login!r}")
        if who.target_name.casefold() not in event.audience():
            raise ValueError(f"{who.target_name} is not a recipient of event {event.id}")
        return who

    def _notification(
        self, event: _Event, who: _Person, device: str, status: str
    ) -> dict[str, Any]:
        """One notification per (event, person, device), created on first use."""
        if device not in who.devices:
            raise ValueError(f"{who.target_name} has no device {device!r}")
        key = (event.id, who.target_name.casefold(), device)
        if key not in self._notifications:
            self._notifications[key] = {
                "id": str(uuid.uuid4()),
                "created": iso(self.clock.now()),
                "deliveryStatus": status,
            }
        return self._notifications[key]

    # ----- control HTTP ----------------------------------------------------------------
    def _c_config(self, req: Request, m: re.Match[str]) -> Response:
        return Response.json(200, self.config())

    def _c_events(self, req: Request, m: re.Match[str]) -> Response:
        return Response.json(200, self.events(req.query.get("rec_id"), req.query.get("status")))

    def _control_call(
        self, fn: Any, req: Request, m: re.Match[str], *, with_body: bool = True
    ) -> Response:
        if not with_body:
            try:
                return Response.json(200, fn(m["eid"]))
            except LookupError as exc:
                raise BadRequest(404, str(exc)) from exc
            except ValueError as exc:
                raise BadRequest(409, str(exc)) from exc
        body = req.json()
        if not isinstance(body, dict):
            raise BadRequest(400, "The request body must be a JSON object")
        try:
            return Response.json(201, fn(m["eid"], **body))
        except LookupError as exc:
            raise BadRequest(404, str(exc)) from exc
        except (TypeError, ValueError) as exc:
            raise BadRequest(400, str(exc)) from exc

    def _c_respond(self, req: Request, m: re.Match[str]) -> Response:
        return self._control_call(self.respond, req, m)

    def _c_comment(self, req: Request, m: re.Match[str]) -> Response:
        return self._control_call(self.comment, req, m)

    def _c_deliver(self, req: Request, m: re.Match[str]) -> Response:
        return self._control_call(self.deliver, req, m)

    def _c_complete(self, req: Request, m: re.Match[str]) -> Response:
        return self._control_call(lambda eid: self.complete(eid), req, m, with_body=False)

    def _c_expire(self, req: Request, m: re.Match[str]) -> Response:
        return self._control_call(lambda eid: self.expire(eid), req, m, with_body=False)

    def _c_flows(self, req: Request, m: re.Match[str]) -> Response:
        body = req.json()
        if not isinstance(body, dict):
            raise BadRequest(400, 'Expected {"delay": seconds, "fail_next": int}')
        try:
            self.set_flows(
                delay=None if body.get("delay") is None else float(body["delay"]),
                fail_next=None if body.get("fail_next") is None else int(body["fail_next"]),
            )
        except (TypeError, ValueError) as exc:
            raise BadRequest(400, str(exc)) from exc
        return Response.json(200, {"delay": self._flow_delay, "fail_next": self._flows_failing})

    def _c_flood(self, req: Request, m: re.Match[str]) -> Response:
        body = req.json()
        if not isinstance(body, dict) or not isinstance(body.get("enabled"), bool):
            raise BadRequest(400, 'Expected {"enabled": bool, "limit": int}')
        try:
            self.set_flood_control(body["enabled"], int(body.get("limit", 4)))
        except (TypeError, ValueError) as exc:
            raise BadRequest(400, str(exc)) from exc
        return Response.json(200, {"enabled": self._flood_enabled, "limit": self._flood_limit})


# ----- module helpers ------------------------------------------------------------------------


def _check_options(options: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    checked = []
    for opt in options:
        missing = {"id", "text", "action"} - set(opt)
        if missing:
            raise ValueError(f"response option {opt!r} lacks {sorted(missing)}")
        checked.append(dict(opt))
    return checked


# Event fields the reference lists (xmatters-api.md 3.3) whose values nothing here varies.
_EVENT_DEFAULTS: dict[str, Any] = {
    "expirationInMinutes": 1440,
    "bypassPhoneIntro": False,
    "conference": None,
    "escalationOverride": False,
    "overrideDeviceRestrictions": False,
    "otherResponseCount": 0,
    "otherResponseCountThreshold": 2,
    "requirePhonePassword": False,
    "responseCountsEnabled": False,
    "voicemailOptions": {"every": 0, "retry": 0, "leave": "NO_MESSAGE"},
}


def _embedded(items: list[dict[str, Any]], event: _Event, name: str) -> dict[str, Any]:
    """An embedded collection: ``{count, total, data, links}``."""
    return {
        "count": len(items),
        "total": len(items),
        "data": items,
        "links": {"self": f"{event.link()}/{name}"},
    }


def _choice(name: str, value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; not {value!r}")
    return value


def _check_delay(delay: float) -> float:
    if delay < 0:
        raise ValueError("flow_delay must be at least 0 seconds")
    return float(delay)


def _check_limit(limit: int) -> int:
    if limit < 1:
        raise ValueError("flood_limit must be at least 1")
    return limit


def _oauth_error(status: int, error: str, description: str) -> Response:
    return Response.json(status, {"error": error, "error_description": description})


def _validation(path: str, details: str) -> BadRequest:
    return BadRequest(
        400, "Validation failed", errorDetails=[{"jsonPath": path, "details": details}]
    )


def _flat_properties(payload: Mapping[str, Any]) -> dict[str, str]:
    """Web Connection payloads are flat strings; null reads as "" and scalars as their text."""
    props: dict[str, str] = {}
    for key, value in payload.items():
        if value is None:
            props[key] = ""
        elif isinstance(value, str):
            props[key] = value
        elif isinstance(value, bool | int | float):
            props[key] = json.dumps(value)
        else:
            raise _FlowError(f"property {key!r} is not a flat value")
    return props


def _length_errors(props: Mapping[str, Any]) -> list[dict[str, str]]:
    """Form property limits; names compare exactly, as form property names do."""
    return [
        {"jsonPath": f"properties/{name}", "details": LENGTH_DETAIL}
        for name, value in props.items()
        if name in FORM_PROPERTY_LIMITS
        and value is not None
        and len(value if isinstance(value, str) else json.dumps(value)) > FORM_PROPERTY_LIMITS[name]
    ]


def _property_matchers(q: Mapping[str, str]) -> list[Any]:
    """``propertyName``/``propertyValue``/``propertyValueOperator`` paired by position."""
    if "propertyName" not in q and "propertyValue" not in q:
        return []
    if "propertyName" not in q or "propertyValue" not in q:
        raise BadRequest(400, "propertyName and propertyValue must be used together")
    names, values = _csv(q["propertyName"]), _csv(q["propertyValue"])
    if len(names) != len(values):
        raise BadRequest(400, "propertyName and propertyValue must have the same number of items")
    ops = (
        _csv(q["propertyValueOperator"])
        if "propertyValueOperator" in q
        else ["EQUALS"] * len(names)
    )
    if len(ops) != len(names):
        raise BadRequest(400, "propertyValueOperator must have one item per propertyName")
    matchers = []
    for name, value, op in zip(names, values, ops, strict=True):
        op = op.upper()
        if op not in ("EQUALS", "CONTAINS"):
            raise BadRequest(400, f"Invalid value for parameter 'propertyValueOperator': {op}")
        matchers.append(_property_matcher(name, value, op))
    return matchers


def _name_known(name: str, reading: str) -> bool:
    """Whether a ``propertyName`` spelling is one the tenant's filter understands."""
    suffixed = "#" in name
    return reading == "any" or suffixed == (reading == "suffixed")


def _property_matcher(name: str, value: str, op: str) -> Any:
    def match(event: _Event) -> bool:
        actual = event.prop(name)
        if actual is None:
            return False
        text = actual if isinstance(actual, str) else json.dumps(actual)
        return text == value if op == "EQUALS" else value in text

    return match


def _sort_order(q: Mapping[str, str]) -> str:
    order = q.get("sortOrder", "ASCENDING").upper()
    if order not in ("ASCENDING", "DESCENDING"):
        raise BadRequest(400, f"Invalid value for parameter 'sortOrder': {q['sortOrder']}")
    return order


def _int_param(q: Mapping[str, str], name: str, default: int, *, minimum: int) -> int:
    if name not in q:
        return default
    try:
        value = int(q[name])
    except ValueError as exc:
        raise BadRequest(400, f"Invalid value for parameter '{name}': {q[name]!r}") from exc
    if value < minimum:
        raise BadRequest(400, f"The {name} parameter must be at least {minimum}")
    return value


def _link(path: str, raw_query: str, overrides: Mapping[str, int]) -> str:
    """Server-relative link keeping the caller's parameters, with offset/limit replaced."""
    pairs = [(k, v) for k, v in parse_qsl(raw_query, keep_blank_values=True) if k not in overrides]
    pairs.extend((k, str(v)) for k, v in overrides.items())
    if not pairs:
        return path
    return path + "?" + urlencode(pairs, quote_via=quote, safe=",")


def _search_hit(search: str, *fields: str) -> bool:
    """Every word of ``search`` must occur (case-blind) in some field."""
    haystack = [f.casefold() for f in fields]
    return all(any(word in f for f in haystack) for word in search.casefold().split())
