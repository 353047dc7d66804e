"""A simulated Ivanti Service Manager: login, OData incident feed, updates, journal notes.

Faithful to /work/shared/reference/ivanti-api.md, including the measured unpleasant
parts, because a simulator kinder than the real service hides the daemon's bugs:
no 404 for a missing record (400 "Invalid key"), an empty-bodied 200 when a filter
matches nothing, 204 for a misspelt ``$orderby``, the ``$filter`` misreadings listed in
``daemon.simulators.odata``, whole-second timestamps served in the tenant's zone with
the offset in force at that instant, session keys that time out, and refused writes
that change nothing.

Storage is an in-memory SQLite database (one table per business object) rather than
Python dicts: ``$filter`` is compiled to SQL, and an index on
``(LastModDateTime, IncidentNumber)`` lets a keyset poll over 100,000 incidents count
and page without scanning and sorting them in Python. Handlers run one at a time under
``SimServer.lock``, which also guards the shared connection.

``quirks=False`` switches off what Ivanti does wrong (see ``QUIRKS``) so a test can tell
"the daemon copes with the quirk" from "the daemon is correct".

Open questions of the reference (ivanti-api.md §8) are switches, today's reading the
default (``daemon.simulators.profiles`` names the strict choice of each):

* ``subsecond_times=True``: Ivanti stores a save's time with sub-seconds but serves it
  in whole seconds. Saves are stamped at the clock's instant, each a microsecond after
  the one before within a frozen second (real saves are sequential), so rows of one
  served second sort by their hidden sub-second, not by RecId.
* ``recid_sort="guid"``: ``$orderby`` sorts RecId as SQL Server sorts a
  ``uniqueidentifier`` (last group first) while ``RecId gt '...'`` compares text, so a
  RecId keyset taken from a sorted page skips rows.
* ``put_semantics="replace"``: a PUT empties every editable text field its body omits
  (PATCH stays partial); ``patch_allowed=False``: PATCH answers 405.
* ``odata_count``: ``@odata.count`` ``always`` served, only when ``asked``
  (``$count=true``), ``never``, or ``unreliable`` (0 beside real rows).
* ``default_order``: the order without ``$orderby``: ``recid``, ``latest_first``, or
  ``unordered`` (stable across pages, by nothing a client could rely on).
* ``session_idle_timeout`` and ``session_cap`` (live sessions per user; the next login
  is refused). The tenant a login must name is the host the simulator is reached by
  (``127.0.0.1``), or ``tenant`` when given.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import sqlite3
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any
from zoneinfo import ZoneInfo

from daemon.simulators.clock import SimClock
from daemon.simulators.directory import DEFAULT_DIRECTORY, Directory
from daemon.simulators.odata import (
    Column,
    FieldType,
    FilterError,
    OrderByEmpty,
    OrderByInvalid,
    compile_filter,
    compile_orderby,
    from_micros,
    guid_collation,
    parse_filter,
    parse_orderby,
    to_db,
)
from daemon.simulators.server import CONTROL_PREFIX, BadRequest, Request, Response, SimServer

QUIRKS = (
    "functions in $filter are silently dropped",
    "parentheses honoured only when a group starts the filter",
    "an 'and' after an 'or' in one group turns that 'or' into 'and'",
    "not (...) is dropped",
    "ne '$NULL' matches every row",
    "misspelt $orderby field or direction answers 204",
    "timestamps stored and served at whole-second precision",
    "$select on a single-record GET returns only @odata.context",
)

DEFAULT_STATUSES: tuple[str, ...] = (
    "Logged",
    "Active",
    "Waiting for Customer",
    "Waiting for 3rd Party",
    "Waiting for Resolution",
    "Resolved",
    "Closed",
    "Cancelled",
)
DEFAULT_USER = "xmapi"
DEFAULT_PASSWORD = "xmapi-pass"
DEFAULT_API_KEY = "5A1B2C3D4E5F60718293A4B5C6D7E8F9"
UNSET_DATETIME = "0001-01-01T00:00:00Z"
FIRST_INCIDENT_NUMBER = 10000
MAX_TOP = 100
DEFAULT_TOP = 25
# Switches for open questions of the reference (§8); the first of each is the default.
PUT_SEMANTICS = ("merge", "replace")  # §8.10: does PUT empty the fields its body omits?
ODATA_COUNTS = ("always", "asked", "never", "unreliable")  # §8.7 and §2.1
DEFAULT_ORDERS = ("recid", "latest_first", "unordered")  # §8.8: the order without $orderby

_LOGIN_FAILED = (
    "Unhandled system exception: Tenant Not Found or wrong Password or OpenID not "
    "Configured Properly."
)
_NO_SERVICE = "No service for the resource is registered."
_PRIORITIES = ("1", "2", "3", "4", "5")
_LEVELS = ("Low", "Medium", "High")
_FINAL_STATUSES = frozenset({"closed", "cancelled", "canceled"})
_PROGRESS = {
    "logged": "1",
    "active": "2",
    "waiting for customer": "3",
    "waiting for 3rd party": "3",
    "waiting for resolution": "3",
    "resolved": "4",
    "closed": "5",
    "cancelled": "5",
    "canceled": "5",
}
_DISPLAY_NAMES = {"Symptom": "Description"}

TXT, INT, BOOL, DTM = FieldType.TEXT, FieldType.INT, FieldType.BOOL, FieldType.DATETIME


def valid_id(list_name: str, value: str) -> str:
    """The RecId of a validation-list entry: stable, 32 upper-case hex like Ivanti's."""
    if not value:
        return ""
    digest = hashlib.md5(f"{list_name}|{value.casefold()}".encode(), usedforsecurity=False)
    return digest.hexdigest().upper()


def _new_rec_id() -> str:
    return secrets.token_hex(16).upper()


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", ".", text.casefold()).strip(".")


def _dense(name: str, ftype: FieldType) -> Column:
    return Column(name, ftype)


def _sparse(name: str, ftype: FieldType, default: Any) -> Column:
    return Column(name, ftype, default, sparse=True)


def _pair(name: str, default: str) -> list[Column]:
    """A validated field and its ``_Valid`` twin, in the capture's order (twin first)."""
    return [_sparse(f"{name}_Valid", TXT, valid_id(name, default)), _sparse(name, TXT, default)]


_ORG_UNIT = valid_id("OrganizationalUnit", "Consulting Services")

# The captured incident's 84 fields in its order, then the fields the capture stripped
# because they were empty (ivanti-api.md §3.4). Dense columns vary per record.
INCIDENT_COLUMNS: tuple[Column, ...] = (
    _sparse("ClosedDuration", INT, 0),
    _dense("CreatedBy", TXT),
    _dense("CreatedDateTime", DTM),
    _dense("Email", TXT),
    _sparse("FirstCallResolution", BOOL, False),
    _dense("IncidentNumber", INT),
    _sparse("IsNotification", BOOL, False),
    _sparse("IsVIP", BOOL, False),
    _sparse("IsWorkAround", BOOL, False),
    _dense("LastModBy", TXT),
    _dense("LastModDateTime", DTM),
    _dense("Phone", TXT),
    _dense("Priority_Valid", TXT),
    _dense("Priority", TXT),
    _dense("ProfileFullName", TXT),
    _sparse("ProfileLink_Category", TXT, "Employee"),
    _dense("ProfileLink_RecID", TXT),
    _dense("ProfileLink", TXT),
    _dense("RecId", TXT),
    *_pair("Service", "Service Desk"),
    *_pair("Source", "Phone"),
    _dense("Status_Valid", TXT),
    _dense("Status", TXT),
    _dense("Subject", TXT),
    _dense("Symptom", TXT),
    *_pair("Urgency", "Medium"),
    _dense("LoginId", TXT),
    _dense("Owner_Valid", TXT),
    _dense("Owner", TXT),
    _dense("OwnerTeam_Valid", TXT),
    _dense("OwnerTeam", TXT),
    _sparse("OwnerType", TXT, "Employee"),
    _sparse("IsNewRecord", BOOL, False),
    *_pair("HoursOfOperation", "Weekly HOP"),
    _dense("OwnerEmail", TXT),
    _dense("OwnerTeamEmail", TXT),
    _dense("OwnershipAssignmentEmail", TXT),
    *_pair("CustomerLocation", "San Francisco"),
    _sparse("IsReportedByAlternateContact", BOOL, False),
    _sparse("OrganizationUnitID", TXT, "Consulting Services"),
    _sparse("ReportingOrgUnitID_Valid", TXT, _ORG_UNIT),
    _sparse("ReportingOrgUnitID", TXT, "Consulting Services"),
    _sparse("TypeOfIncident", TXT, "Failure"),
    _dense("TeamManagerEmail", TXT),
    _sparse("CustomerDepartment", TXT, "Corporate Services and Training"),
    *_pair("ActualService", "Service Desk"),
    _sparse("CostPerMinute_Currency", TXT, "USD"),
    _sparse("CostPerMinute", TXT, "0.4000"),
    _sparse("IsInFinalState", BOOL, False),
    _sparse("IsReclassifiedForResolution", BOOL, False),
    _sparse("ResolvedByIncidentNumber", INT, 0),
    _sparse("TotalTimeSpent", INT, 0),
    _sparse("OrgUnitLink_Category", TXT, "OrganizationalUnit"),
    _sparse("OrgUnitLink_RecID", TXT, _ORG_UNIT),
    _sparse("OrgUnitLink", TXT, _ORG_UNIT),
    *_pair("OwningOrgUnitId", "Corporate IT Operations"),
    _dense("ProgressBarPosition", TXT),
    _sparse("CreatedByType", TXT, "Web Client"),
    _sparse("ReadOnly", BOOL, False),
    _sparse("Cost_Currency", TXT, "USD"),
    _sparse("Cost", TXT, "0.0000"),
    _sparse("IsApprovalNeeded", BOOL, False),
    *_pair("Approver", ""),
    _sparse("IsDSMTaskExisted", BOOL, False),
    _dense("SocialTextHeader", TXT),
    _dense("IncidentNetworkUserName", TXT),
    _sparse("SendSurveyNotification", BOOL, False),
    _sparse("EntityLink_Category", TXT, "OrganizationalUnit"),
    _sparse("EntityLink_RecID", TXT, _ORG_UNIT),
    _sparse("EntityLink", TXT, _ORG_UNIT),
    _sparse("IsMasterIncident", BOOL, False),
    _sparse("IsResolvedByMaster", BOOL, False),
    _sparse("ServiceOwnerEmail", TXT, "service.desk.owner@example.com"),
    _sparse("IsRelatedIncidentUpdate", BOOL, False),
    _sparse("IsRelatedIncidentResolutionUpdate", BOOL, False),
    _sparse("IsUnRead", BOOL, False),
    # stripped from the capture because empty
    *_pair("Category", ""),
    _sparse("SubCategory", TXT, ""),
    *_pair("ActualCategory", ""),
    *_pair("CauseCode", ""),
    _sparse("Resolution", TXT, ""),
    *_pair("Impact", "Medium"),
    _sparse("ClosedBy", TXT, ""),
    _dense("ClosedDateTime", DTM),
    _sparse("ResolvedBy", TXT, ""),
    _dense("ResolvedDateTime", DTM),
    _sparse("RespondedBy", TXT, ""),
    _dense("RespondedDateTime", DTM),
    _sparse("PreviousState", TXT, ""),
    _sparse("MasterIncidentLink_Category", TXT, ""),
    _sparse("MasterIncidentLink_RecID", TXT, ""),
    _sparse("MasterIncidentLink", TXT, ""),
    _sparse("NewNotes", TXT, ""),
)

NOTE_COLUMNS: tuple[Column, ...] = (
    _dense("DisplayText", TXT),
    _dense("NotesBody", TXT),
    _dense("Source_Valid", TXT),
    _dense("Source", TXT),
    _dense("Category_Valid", TXT),
    _dense("Category", TXT),
    _dense("CreatedBy", TXT),
    _dense("CreatedDateTime", DTM),
    _dense("JournalType", TXT),
    _dense("LastModBy", TXT),
    _dense("LastModDateTime", DTM),
    _dense("ParentLink_RecID", TXT),
    _dense("ParentLink_Category", TXT),
    _dense("ParentLink", TXT),
    _dense("RecId", TXT),
    _dense("Subject", TXT),
    _dense("PublishToWeb", BOOL),
    _dense("ReadOnly", BOOL),
    _dense("IsNewRecord", BOOL),
    _dense("IsUnRead", BOOL),
    _dense("UnreadTransition", BOOL),
    _dense("TimeSpent", INT),
)

# Set by the server on every save; an API write naming them is silently overwritten
# ("LastModBy cannot be overridden", ivanti-api.md §3.3).
SYSTEM_FIELDS = frozenset(
    {
        "RecId",
        "IncidentNumber",
        "CreatedBy",
        "CreatedDateTime",
        "LastModBy",
        "LastModDateTime",
        "ReadOnly",
        "IsInFinalState",
        "IsNewRecord",
        "PreviousState",
        "ProgressBarPosition",
        "SocialTextHeader",
        "OwnerEmail",
        "OwnerTeamEmail",
        "OwnershipAssignmentEmail",
        "TeamManagerEmail",
        "NewNotes",
    }
    | {c.name for c in INCIDENT_COLUMNS if c.name.endswith("_Valid")}
)


class _Table:
    """One business object in SQLite; rows come back as Python values with defaults."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        name: str,
        columns: Sequence[Column],
        indexes: Iterable[tuple[str, ...]],
    ) -> None:
        self.conn = conn
        self.name = name
        self.columns = tuple(columns)
        self.by_name = {c.name: c for c in self.columns}
        ddl = []
        for col in self.columns:
            kind = "TEXT COLLATE NOCASE" if col.type is TXT else "INTEGER"
            ddl.append(f"{col.ref} {kind}{' PRIMARY KEY' if col.name == 'RecId' else ''}")
        conn.execute(f'CREATE TABLE "{name}" ({", ".join(ddl)})')
        for n, cols in enumerate(indexes):
            refs = ", ".join(self.by_name[c].ref for c in cols)
            conn.execute(f'CREATE INDEX "{name}_ix{n}" ON "{name}" ({refs})')
        self._insert_sql = (
            f'INSERT INTO "{name}" ({", ".join(c.ref for c in self.columns)}) '
            f"VALUES ({', '.join('?' for _ in self.columns)})"
        )

    def _db_value(self, col: Column, value: Any) -> Any:
        if col.sparse and value == col.default:
            return None
        return to_db(col, value)

    def _db_row(self, record: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(self._db_value(c, record.get(c.name, c.default)) for c in self.columns)

    def insert_many(self, records: Iterable[Mapping[str, Any]]) -> None:
        self.conn.executemany(self._insert_sql, (self._db_row(r) for r in records))

    def insert_variants(
        self, template: Mapping[str, Any], variants: Iterable[Mapping[str, Any]]
    ) -> None:
        """Bulk path: one row converted once, then only the few varying fields.

        Only the columns that are not NULL are bound: binding the ~75 NULL sparse
        columns made loading 100,000 incidents four times slower.
        """
        variants = list(variants)
        full = self._db_row(template)
        varying = {name for v in variants for name in v}
        cols = [n for n, c in enumerate(self.columns) if full[n] is not None or c.name in varying]
        slot = {self.columns[n].name: k for k, n in enumerate(cols)}
        base = [full[n] for n in cols]
        sql = (
            f'INSERT INTO "{self.name}" ({", ".join(self.columns[n].ref for n in cols)}) '
            f"VALUES ({', '.join('?' for _ in cols)})"
        )

        def rows() -> Iterable[list[Any]]:
            for variant in variants:
                row = list(base)
                for name, value in variant.items():
                    row[slot[name]] = self._db_value(self.by_name[name], value)
                yield row

        self.conn.executemany(sql, rows())

    def update(self, rec_id: str, changes: Mapping[str, Any]) -> None:
        cols = [self.by_name[k] for k in changes]
        if not cols:
            return
        sets = ", ".join(f"{c.ref} = ?" for c in cols)
        values = [self._db_value(c, changes[c.name]) for c in cols]
        self.conn.execute(f'UPDATE "{self.name}" SET {sets} WHERE "RecId" = ?', [*values, rec_id])

    def delete(self, rec_id: str) -> bool:
        cur = self.conn.execute(f'DELETE FROM "{self.name}" WHERE "RecId" = ?', [rec_id])
        return cur.rowcount > 0

    def _record(self, row: Sequence[Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for col, value in zip(self.columns, row, strict=True):
            if value is None:
                out[col.name] = col.default
            elif col.type is DTM:
                out[col.name] = from_micros(value)
            elif col.type is BOOL:
                out[col.name] = bool(value)
            else:
                out[col.name] = value
        return out

    def get(self, rec_id: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            f'SELECT * FROM "{self.name}" WHERE "RecId" = ?', [rec_id]
        ).fetchone()
        return None if row is None else self._record(row)

    def count(self, where: str, params: Sequence[Any]) -> int:
        sql = f'SELECT COUNT(*) FROM "{self.name}" WHERE {where}'
        return int(self.conn.execute(sql, params).fetchone()[0])

    def select(
        self,
        where: str,
        params: Sequence[Any],
        order: str,
        order_params: Sequence[Any],
        limit: int,
        offset: int,
    ) -> list[dict[str, Any]]:
        sql = f'SELECT * FROM "{self.name}" WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?'
        rows = self.conn.execute(sql, [*params, *order_params, limit, offset]).fetchall()
        return [self._record(r) for r in rows]


@dataclass
class _Session:
    login: str
    role: str
    last_used: datetime


@dataclass(frozen=True)
class _Collection:
    table: _Table
    set_name: str  # the name used in @odata.context


def _ivanti_error(
    status: int, message: str, *, code: str | None = None, description: str | None = None
) -> BadRequest:
    extra: dict[str, Any] = {}
    if code:
        extra["code"] = code
    if description:
        extra["description"] = description
    return BadRequest(status, message, **extra)


def _bad(message: str, description: str = "Bad Request") -> BadRequest:
    return _ivanti_error(400, message, code="ISM_4000", description=description)


class IvantiSimulator(SimServer):
    """Ivanti ISM over real HTTP, plus a Python/``/_sim/`` control surface for tests."""

    name = "ivanti"

    def __init__(
        self,
        *,
        clock: SimClock | None = None,
        tenant: str | None = None,
        users: Mapping[str, tuple[str, set[str]]] | None = None,
        api_keys: Mapping[str, str] | None = None,
        session_idle_timeout: float = 1800.0,
        quirks: bool = True,
        tz: str = "America/Los_Angeles",
        statuses: Sequence[str] = DEFAULT_STATUSES,
        owners: Sequence[str] | None = None,
        teams: Sequence[str] | None = None,
        directory: Directory = DEFAULT_DIRECTORY,
        log_requests: bool = False,
        subsecond_times: bool = False,
        recid_sort: str = "text",
        put_semantics: str = "merge",
        patch_allowed: bool = True,
        odata_count: str = "always",
        default_order: str = "recid",
        session_cap: int | None = None,
    ) -> None:
        super().__init__(clock, log_requests=log_requests)
        if recid_sort not in ("text", "guid"):
            raise ValueError(f"recid_sort must be 'text' or 'guid', not {recid_sort!r}")
        for name, value, allowed in (
            ("put_semantics", put_semantics, PUT_SEMANTICS),
            ("odata_count", odata_count, ODATA_COUNTS),
            ("default_order", default_order, DEFAULT_ORDERS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; not {value!r}")
        if session_cap is not None and session_cap < 1:
            raise ValueError("session_cap must be at least 1 (or None: no cap)")
        self.fixed_tenant = tenant
        self.put_semantics = put_semantics
        self.patch_allowed = patch_allowed
        self.odata_count = odata_count
        self.default_order = default_order
        self.session_cap = session_cap
        self.quirks = quirks
        self.subsecond_times = subsecond_times
        self.recid_sort = recid_sort
        self._last_stamp: datetime | None = None
        self.tz_name = tz
        self.zone = ZoneInfo(tz)
        self.session_idle_timeout = session_idle_timeout
        self.directory = directory
        self.users: dict[str, tuple[str, set[str]]] = dict(
            users if users is not None else {DEFAULT_USER: (DEFAULT_PASSWORD, {"Admin"})}
        )
        self.api_keys: dict[str, str] = dict(
            api_keys if api_keys is not None else {DEFAULT_API_KEY: DEFAULT_USER}
        )
        people = [p.login for p in directory.people]
        self.pick_lists: dict[str, tuple[str, ...]] = {
            "Status": tuple(statuses),
            "Owner": tuple(owners if owners is not None else [*people, DEFAULT_USER]),
            "OwnerTeam": tuple(teams if teams is not None else directory.teams),
            "Priority": _PRIORITIES,
            "Urgency": _LEVELS,
            "Impact": _LEVELS,
        }
        self._sessions: dict[str, _Session] = {}
        self._writes: list[dict[str, Any]] = []
        self._corrupt: dict[str, dict[str, Any]] = {}
        self._next_number = FIRST_INCIDENT_NUMBER
        self._db = sqlite3.connect(":memory:", check_same_thread=False)
        self._db.create_collation("GUIDORDER", guid_collation)
        self._incidents = _Table(
            self._db,
            "incidents",
            INCIDENT_COLUMNS,
            [
                ("LastModDateTime", "IncidentNumber"),
                ("IncidentNumber",),
                ("CreatedDateTime",),
                ("Status",),
            ],
        )
        self._notes = _Table(
            self._db, "journal__notess", NOTE_COLUMNS, [("ParentLink_RecID", "CreatedDateTime")]
        )
        self._add_routes()

    # ----- errors --------------------------------------------------------------------
    def error_response(self, status: int, message: str, **extra: Any) -> Response:
        """Every error, injected faults included, in Ivanti's ``{code, description, ...}``."""
        code = extra.get("code") or f"ISM_{status // 100}{status % 100:03d}"
        description = extra.get("description")
        if status == 404 and "code" not in extra:
            message, description = _NO_SERVICE, "Invalid Path"
        if description is None:
            try:
                description = HTTPStatus(status).phrase
            except ValueError:
                description = "Error"
        messages = list(extra.get("messages") or [message])
        body = {"code": code, "description": description, "message": messages, "help": ""}
        return Response.json(status, body)

    # ----- routes --------------------------------------------------------------------
    def _add_routes(self) -> None:
        api = r"(?P<heat>/HEAT)?/api"
        bo = api + r"/odata/businessobject"
        self.add_route("POST", api + r"/rest/authentication/login", self._login, "login")
        self.add_route("DELETE", api + r"/rest/authentication/logout", self._logout, "logout")
        self.add_route("GET", bo + r"/incidents", self._query_incidents, "incidents.query")
        key = bo + r"/incidents\((?P<key>[^)]*)\)"
        self.add_route("GET", key, self._get_incident, "incidents.get")
        self.add_route("PUT", key, self._update_incident, "incidents.update")
        self.add_route("PATCH", key, self._update_incident, "incidents.update")
        self.add_route("GET", bo + r"/journal__notess", self._query_notes, "notes.query")
        # $metadata lives outside businessobject, by graph name (ivanti-api.md §0)
        meta = api + r"/odata/(?P<graph>(?!businessobject/)[A-Za-z_]+)/\$metadata"
        self.add_route("GET", meta, self._metadata, "metadata")
        p = CONTROL_PREFIX
        for method, pattern, handler in (
            ("POST", "incidents", self._ctl_create),
            ("POST", "incidents/bulk", self._ctl_bulk),
            ("GET", r"incidents/(?P<rec>[^/]+)", self._ctl_get),
            ("PATCH", r"incidents/(?P<rec>[^/]+)", self._ctl_edit),
            ("DELETE", r"incidents/(?P<rec>[^/]+)", self._ctl_delete),
            ("GET", r"incidents/(?P<rec>[^/]+)/notes", self._ctl_notes),
            ("GET", "writes", self._ctl_writes),
            ("POST", "sessions/expire", self._ctl_expire),
        ):
            self.add_route(method, p + pattern, handler, "sim.ivanti", control=True)

    # ----- time and serving ----------------------------------------------------------
    def _stamp(self, when: datetime | None = None) -> datetime:
        """Now (or ``when``) as stored: whole seconds with quirks, microseconds without
        (and with ``subsecond_times``: each save after the one before, in its second)."""
        if when is not None:
            return when if self.subsecond_times or not self.quirks else when.replace(microsecond=0)
        now = self.clock.now()
        if not self.subsecond_times:
            return now.replace(microsecond=0) if self.quirks else now
        last = self._last_stamp
        if (
            last is not None
            and last >= now
            and last.replace(microsecond=0) == now.replace(microsecond=0)
        ):
            now = min(last + timedelta(microseconds=1), now.replace(microsecond=999_999))
        self._last_stamp = now
        return now

    def format_datetime(self, when: datetime | None) -> str:
        """Tenant-zone ISO text with the offset in force at that instant (DST varies it)."""
        if when is None:
            return UNSET_DATETIME
        if self.subsecond_times:
            when = when.replace(microsecond=0)  # stored with sub-seconds, served without
        local = when.astimezone(self.zone)
        text = local.isoformat(timespec="seconds" if local.microsecond == 0 else "microseconds")
        if self.tz_name.upper() in ("UTC", "ETC/UTC", "Z"):
            text = text.replace("+00:00", "Z")
        return text

    def _serve(self, record: Mapping[str, Any], table: _Table) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for col in table.columns:
            value = record[col.name]
            out[col.name] = self.format_datetime(value) if col.type is DTM else value
        corrupt = self._corrupt.get(str(out.get("RecId"))) if table is self._incidents else None
        if corrupt:
            for name in corrupt["drop"]:
                out.pop(name, None)
            out.update(corrupt["raw"])
        return out

    def corrupt_incident(self, rec_id: str, *, drop: Sequence[str] = (), **raw: Any) -> None:
        """Serve this incident with fields removed (``drop``) or replaced by raw JSON
        values of any type, as a broken tenant or customisation might: for tests of
        how the daemon handles malformed records. Filters still see the stored values."""
        with self.lock:
            self._corrupt[rec_id] = {"drop": tuple(drop), "raw": dict(raw)}

    def _context(self, base: str, set_name: str, entity: bool) -> str:
        return f"{base}/api/odata/$metadata#{set_name}{'/$entity' if entity else ''}"

    def _base(self, req: Request | None, heat: str | None = None) -> str:
        host = (req.header("Host") if req is not None else None) or (
            f"127.0.0.1:{self.port}" if self._httpd is not None else self.tenant
        )
        return f"http://{host}{heat or ''}"

    def _entity(self, record: Mapping[str, Any], base: str) -> dict[str, Any]:
        return {
            "@odata.context": self._context(base, "incidents", True),
            **self._serve(record, self._incidents),
        }

    # ----- authentication ------------------------------------------------------------
    @property
    def tenant(self) -> str:
        """The tenant name a login must give: the fixed one, else the host this simulator
        listens on (as a real tenant's name is its host, what clients send by default)."""
        if self.fixed_tenant:
            return self.fixed_tenant
        return "127.0.0.1" if self._httpd is not None else "sim.ivanti.local"

    def _login(self, req: Request, m: re.Match[str]) -> Response:
        try:
            body = json.loads(req.body or b"null")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise _bad(_LOGIN_FAILED)
        tenant = str(body.get("tenant") or "")
        username = str(body.get("username") or "")
        password = body.get("password")
        role = str(body.get("role") or "")
        login = self._find_user(username)
        name = self._tenant_matches(tenant, req)
        if name is None or login is None:
            raise _bad(_LOGIN_FAILED)
        expected, roles = self.users[login]
        if password != expected or role not in roles:
            raise _bad(_LOGIN_FAILED)
        self._drop_idle_sessions()
        mine = [k for k, s in self._sessions.items() if s.login == login]
        if self.session_cap is not None and len(mine) >= self.session_cap:
            # A per-user cap on live sessions (reference §8.3): the next login is refused
            # until one logs out or times out, so a client that leaks sessions locks itself out.
            raise _bad(
                f"Maximum number of sessions ({self.session_cap}) reached for user {login}",
                "Too Many Sessions",
            )
        key = f"{name}#{''.join(secrets.choice(_KEY_CHARS) for _ in range(32))}#1"
        self._sessions[key] = _Session(login, role, self.clock.now())
        return Response.json(200, key)

    def _tenant_matches(self, tenant: str, req: Request) -> str | None:
        """The tenant name a login gave, if it is this tenant: a bare host (Netskope) or the
        tenant URL (Ivanti), naming the fixed tenant, or (when none is fixed) the host the
        request reached, with or without its port. None when it names another tenant."""
        given = re.sub(r"^https?://", "", tenant.strip(), flags=re.IGNORECASE).rstrip("/")
        if self.fixed_tenant:
            names = {self.fixed_tenant}
        else:
            reached = req.header("Host") or ""
            names = {self.tenant, reached, reached.rsplit(":", 1)[0]} - {""}
        for name in names:
            if given.casefold() == name.casefold():
                return name
        return None

    def _drop_idle_sessions(self) -> None:
        limit = timedelta(seconds=self.session_idle_timeout)
        now = self.clock.now()
        for key in [k for k, s in self._sessions.items() if now - s.last_used > limit]:
            del self._sessions[key]

    def _find_user(self, username: str) -> str | None:
        return next((u for u in self.users if u.casefold() == username.casefold()), None)

    def _logout(self, req: Request, m: re.Match[str]) -> Response:
        self._authenticate(req)
        key = (req.header("Authorization") or "").strip() or self._cookie_session(req)
        self._sessions.pop(key or "", None)
        return Response(200, b"", {})

    @staticmethod
    def _cookie_session(req: Request) -> str | None:
        for part in (req.header("Cookie") or "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == "SID" and value:
                return value
        return None

    def _authenticate(self, req: Request) -> str:
        """The acting login: a session's user, or an API key's on-behalf-of user."""
        auth = (req.header("Authorization") or "").strip()
        if auth.lower().startswith("rest_api_key="):
            user = self.api_keys.get(auth[len("rest_api_key=") :])
            if user is None:
                msg = "Invalid Session key or Authentication token or Host"
                raise _ivanti_error(401, msg, code="ISM_4001", description=msg)
            return user
        key = auth or self._cookie_session(req)
        session = self._sessions.get(key) if key else None
        now = self.clock.now()
        if session is not None and (now - session.last_used) > timedelta(
            seconds=self.session_idle_timeout
        ):
            del self._sessions[key or ""]
            session = None
        if session is None:
            raise _ivanti_error(
                401,
                "Authentication required",
                code="ISM_4001",
                description="Invalid session key or session timed out",
            )
        session.last_used = max(session.last_used, now)
        return session.login

    def expire_sessions(self) -> None:
        """Every session key now answers 401, as after the tenant's idle timeout."""
        with self.lock:
            self._sessions.clear()

    # ----- queries -------------------------------------------------------------------
    def _query_incidents(self, req: Request, m: re.Match[str]) -> Response:
        return self._query(req, m, _Collection(self._incidents, "incidents"))

    def _metadata(self, req: Request, m: re.Match[str]) -> Response:
        """``/api/odata/{graph}/$metadata``: the graph's entity type as CSDL XML (the
        reference names the namespace only, so the type and schema names here are the
        simulator's own). Asked for as JSON it fails with 500, as measured; an unknown
        graph name answers 200 with an invented entity type without fields."""
        self._authenticate(req)
        if "application/json" in (req.header("Accept") or "").lower():
            return Response(
                500,
                b"Unhandled system exception: {&quot;error&quot;:{&quot;code&quot;:"
                b"&quot;500&quot;,&quot;message&quot;:&quot;An error has occurred.&quot;}}",
                {"Content-Type": "text/html; charset=utf-8"},
            )
        graph = m["graph"]
        table = {"incidents": self._incidents, "journal__notess": self._notes}.get(graph.lower())
        name = graph[:1].upper() + graph[1:].removesuffix("s")
        props, key = "", ""
        if table is not None:
            edm = {
                TXT: "Edm.String",
                INT: "Edm.Int32",
                BOOL: "Edm.Boolean",
                DTM: "Edm.DateTimeOffset",
            }
            props = "".join(
                f'<Property Name="{c.name}" Type="{edm[c.type]}"/>' for c in table.columns
            )
            key = '<Key><PropertyRef Name="RecId"/></Key>'
        xml = (
            '<?xml version="1.0" encoding="utf-8"?>'
            '<edmx:Edmx Version="4.0" xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx">'
            "<edmx:DataServices>"
            f'<Schema Namespace="Ivanti.{name}" xmlns="http://docs.oasis-open.org/odata/ns/edm">'
            f'<EntityType Name="{name}">{key}{props}</EntityType>'
            "</Schema></edmx:DataServices></edmx:Edmx>"
        )
        return Response(200, xml.encode(), {"Content-Type": "application/xml; charset=utf-8"})

    def _query_notes(self, req: Request, m: re.Match[str]) -> Response:
        return self._query(req, m, _Collection(self._notes, "journal__notess"))

    def _query(self, req: Request, m: re.Match[str], coll: _Collection) -> Response:
        self._authenticate(req)
        top, skip = self._paging(req.query)
        select = self._select(req.query.get("$select"), coll.table)
        try:
            keys = (
                parse_orderby(req.query["$orderby"], coll.table.by_name)
                if "$orderby" in req.query
                else self._default_keys(coll.table)
            )
        except OrderByEmpty as exc:
            raise _ivanti_error(
                500, f"{exc}.", code="ISM_5000", description="Internal server error"
            ) from exc
        except OrderByInvalid as exc:
            if self.quirks:
                return Response.empty(204)
            raise _bad(f"Invalid $orderby clause '{exc}'") from exc
        if all(col.name != "RecId" for col, _ in keys):
            keys.append((coll.table.by_name["RecId"], False))  # deterministic $skip paging
        try:
            expr = parse_filter(req.query.get("$filter", ""), quirks=self.quirks)
            where, params = compile_filter(expr, coll.table.by_name, quirks=self.quirks)
        except FilterError as exc:
            raise _bad(str(exc)) from exc
        collations = {"RecId": "GUIDORDER"} if self.recid_sort == "guid" else None
        if "$orderby" not in req.query and self.default_order == "unordered":
            collations = {"RecId": "GUIDORDER"}  # stable for $skip, unrelated to any field
        order, order_params = compile_orderby(keys, collations)
        rows = coll.table.select(where, params, order, order_params, top, skip)
        asked = req.query.get("$count", "").strip().lower() == "true"
        served = self.odata_count == "always" or (self.odata_count == "asked" and asked)
        # counted only when needed: at a million rows the count is most of a page's cost
        count = coll.table.count(where, params) if served or not rows else None
        if count == 0:
            return Response(200, b"", {})  # measured: an empty match is a blank 200
        values = [self._serve(r, coll.table) for r in rows]
        if select is not None:
            values = [{k: v[k] for k in select} for v in values]
        body: dict[str, Any] = {
            "@odata.context": self._context(self._base(req, m["heat"]), coll.set_name, False)
        }
        if served:
            body["@odata.count"] = count
        elif self.odata_count == "unreliable":
            body["@odata.count"] = 0  # seen: reported as 0 alongside real rows (§2.1)
        body["value"] = values
        return Response.json(200, body, {"OData-Version": "4.0"})

    def _default_keys(self, table: _Table) -> list[tuple[Column, bool]]:
        """The order without ``$orderby`` (reference §8.8): RecId, latest change first, or
        ``unordered`` (stable across pages, but by nothing a client could rely on)."""
        if self.default_order == "latest_first" and "LastModDateTime" in table.by_name:
            return [(table.by_name["LastModDateTime"], True)]
        return [(table.by_name["RecId"], False)]

    @staticmethod
    def _paging(query: Mapping[str, str]) -> tuple[int, int]:
        def number(name: str, default: int) -> int:
            raw = query.get(name)
            if raw is None:
                return default
            try:
                value = int(raw.strip())
            except ValueError as exc:
                raise _bad(f"Invalid value for {name}", "Invalid Request Payload") from exc
            if value < 0:
                raise _bad(f"Invalid value for {name}", "Invalid Request Payload")
            return value

        top = number("$top", DEFAULT_TOP)
        if top > MAX_TOP:
            raise _bad(f"$top cannot be greater than {MAX_TOP}", "Invalid Request Payload")
        return top, number("$skip", 0)

    @staticmethod
    def _select(raw: str | None, table: _Table) -> list[str] | None:
        if raw is None or not raw.strip() or raw.strip() == "*":
            return None
        names = [n.strip() for n in raw.split(",")]
        for n in names:
            if n not in table.by_name:
                raise _bad(f"Field '{n}' in $select does not exist in the business object")
        return names

    # ----- single incident -----------------------------------------------------------
    @staticmethod
    def _key(m: re.Match[str]) -> str:
        raw = m["key"].strip()
        if len(raw) >= 2 and raw[0] == raw[-1] == "'":
            return raw[1:-1]
        raise _bad("Invalid key")

    def _get_incident(self, req: Request, m: re.Match[str]) -> Response:
        self._authenticate(req)
        rec_id = self._key(m)
        record = self._incidents.get(rec_id) if rec_id else None
        if record is None:
            raise _bad("Invalid key")
        entity = self._entity(record, self._base(req, m["heat"]))
        select = self._select(req.query.get("$select"), self._incidents)
        if select is not None:
            # measured: $select on a single record returns the context and no fields
            keep = [] if self.quirks else select
            entity = {"@odata.context": entity["@odata.context"], **{k: entity[k] for k in keep}}
        return Response.json(200, entity, {"OData-Version": "4.0"})

    def _update_incident(self, req: Request, m: re.Match[str]) -> Response:
        user = self._authenticate(req)
        raw_key = m["key"].strip()
        rec_id = raw_key[1:-1] if len(raw_key) >= 2 and raw_key[0] == raw_key[-1] == "'" else ""
        fields: dict[str, Any] = {}
        try:
            if not rec_id:
                raise _bad("Invalid Business Object Key", "Invalid Request Payload")
            fields = self._payload(req)
            if req.method == "PATCH" and not self.patch_allowed:
                raise _ivanti_error(
                    405, "The requested resource does not support http method 'PATCH'."
                )
            if req.method == "PUT" and self.put_semantics == "replace":
                fields = {**self._cleared_fields(), **fields}
            record = self._save(rec_id, fields, user, api=True)
        except BadRequest as exc:
            self._log_write(rec_id, user, fields, exc.message)
            raise
        self._log_write(rec_id, user, fields, None)
        return Response.json(200, self._entity(record, self._base(req, m["heat"])))

    def _cleared_fields(self) -> dict[str, Any]:
        """PUT as a full replace (reference §8.10): every editable free-text field the body
        omits is emptied (validated ones, e.g. Status and Priority, keep their value)."""
        return {
            c.name: ""
            for c in self._incidents.columns
            if c.type is TXT
            and c.name not in SYSTEM_FIELDS
            and c.name not in self.pick_lists
            and c.name != "RecId"
        }

    @staticmethod
    def _payload(req: Request) -> dict[str, Any]:
        if not req.body.strip():
            raise _bad("Message body cannot be empty", "Invalid Request Payload")
        try:
            body = json.loads(req.body)
        except ValueError as exc:
            raise _bad("Invalid JSON in message body", "Invalid Request Payload") from exc
        if not isinstance(body, dict):
            raise _bad("Message body must be a JSON object", "Invalid Request Payload")
        if not body:
            raise _bad("Message body cannot be empty", "Invalid Request Payload")
        return body

    def _log_write(
        self, rec_id: str, user: str, fields: Mapping[str, Any], error: str | None
    ) -> None:
        self._writes.append(
            {
                "at": self.clock.now().isoformat(),
                "rec_id": rec_id,
                "user": user,
                "fields": json.loads(json.dumps(fields)),
                "ok": error is None,
                "error": error,
            }
        )

    # ----- the write pipeline (API and people) ---------------------------------------
    def _save(
        self, rec_id: str, fields: Mapping[str, Any], user: str, *, api: bool
    ) -> dict[str, Any]:
        """Validate everything first, then change the record: a refusal changes nothing."""
        old = self._incidents.get(rec_id)
        if old is None:
            if api:
                raise _bad(f"Record '{rec_id}' cannot be found in the business object 'incident'")
            raise KeyError(rec_id)
        note = fields.get("NewNotes")
        if note is not None and not isinstance(note, str):
            raise _bad("Invalid value for field Incident.NewNotes")
        changes = self._coerce_fields(fields, api=api, creating=False)
        merged = {**old, **changes}
        if api and "Status" in changes:
            self._check_required(merged)
        now = self._stamp()
        changes.update(self._derive(old, merged, changes, user, now))
        changes.setdefault("LastModDateTime", now)
        changes.setdefault("LastModBy", user)
        if api:
            changes["LastModDateTime"], changes["LastModBy"] = now, user
        self._incidents.update(rec_id, changes)
        if note and note.strip():
            self._add_note(rec_id, note, user, now)
        record = self._incidents.get(rec_id)
        assert record is not None
        return record

    def _coerce_fields(
        self, fields: Mapping[str, Any], *, api: bool, creating: bool
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in fields.items():
            col = self._incidents.by_name.get(name)
            if col is None:
                raise _bad(f"Field '{name}' does not exist in the business object 'Incident'")
            if name == "NewNotes":
                continue
            if name in ("RecId", "IncidentNumber") and not creating:
                continue
            if api and name in SYSTEM_FIELDS:
                continue
            out[name] = self._pick(name, self._coerce(col, value, api=api))
        return out

    def _coerce(self, col: Column, value: Any, *, api: bool) -> Any:
        """JSON value -> stored value, refusing type mismatches (400 naming the field)."""
        label = f"Incident.{col.name}"
        if col.type is TXT:
            if value is None:
                return ""
            if isinstance(value, str):
                return value
            if not api and isinstance(value, int | float) and not isinstance(value, bool):
                return str(value)
        elif col.type is INT:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif col.type is BOOL:
            if isinstance(value, bool):
                return value
        else:
            return self._coerce_datetime(value, label)
        raise _bad(f"Invalid value {json.dumps(value)} for field {label}")

    def _coerce_datetime(self, value: Any, label: str) -> datetime | None:
        if value is None or value == UNSET_DATETIME:
            return None
        when = value
        if isinstance(value, str):
            try:
                when = datetime.fromisoformat(value)
            except ValueError as exc:
                raise _bad(f"Invalid date value '{value}' for field {label}") from exc
        if not isinstance(when, datetime):
            raise _bad(f"Invalid value {json.dumps(value)} for field {label}")
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return self._stamp(when.astimezone(UTC))

    def _pick(self, name: str, value: Any) -> Any:
        """Validated fields take the list's own spelling; a value not on the list is a 400."""
        allowed = self.pick_lists.get(name)
        if allowed is None or (name == "Owner" and value == ""):
            return value
        for entry in allowed:
            if entry.casefold() == str(value).casefold():
                return entry
        raise _bad(f"The value '{value}' is not in the validation list of Incident.{name}")

    @staticmethod
    def _check_required(merged: Mapping[str, Any]) -> None:
        """Ivanti's conditional required fields, checked when a write sets ``Status``."""
        status = str(merged.get("Status", "")).casefold()
        if status == "active":
            needed = ["Category", "Owner"]
        elif status in ("resolved", "closed"):
            needed = ["CauseCode", "Resolution", "Symptom"]
        else:
            return
        missing = [f for f in needed if not str(merged.get(f) or "").strip()]
        if missing:
            msgs = [
                f"Required field Incident.{_DISPLAY_NAMES.get(f, f)} value must be provided"
                for f in missing
            ]
            raise BadRequest(
                400, "; ".join(msgs), code="ISM_4000", description="Bad Request", messages=msgs
            )

    def _derive(
        self,
        old: Mapping[str, Any] | None,
        merged: Mapping[str, Any],
        changes: Mapping[str, Any],
        user: str,
        now: datetime,
    ) -> dict[str, Any]:
        """Fields Ivanti computes on save from the ones that changed."""
        out: dict[str, Any] = {}
        for name in changes:
            twin = f"{name}_Valid"
            if twin in self._incidents.by_name and twin not in changes:
                out[twin] = valid_id(name, str(merged[name]))
        if "Owner" in changes:
            out["OwnerEmail"] = self._person_email(merged["Owner"])
        if "OwnerTeam" in changes:
            team = merged["OwnerTeam"]
            out["OwnerTeamEmail"] = f"{_slug(team)}@example.com" if team else ""
            out["TeamManagerEmail"] = f"{_slug(team)}.manager@example.com" if team else ""
        if "Owner" in changes or "OwnerTeam" in changes:
            owner_email = out.get("OwnerEmail", merged.get("OwnerEmail", ""))
            team_email = out.get("OwnerTeamEmail", merged.get("OwnerTeamEmail", ""))
            out["OwnershipAssignmentEmail"] = owner_email or team_email
        if "Subject" in changes or "IncidentNumber" in changes:
            out["SocialTextHeader"] = f"Incident {merged['IncidentNumber']}: {merged['Subject']}"
        old_status = "" if old is None else str(old["Status"])
        if "Status" in changes and str(merged["Status"]).casefold() != old_status.casefold():
            out.update(self._status_effects(old_status, merged, user, now))
        return {k: v for k, v in out.items() if k not in changes}

    @staticmethod
    def _status_effects(
        old_status: str, merged: Mapping[str, Any], user: str, now: datetime
    ) -> dict[str, Any]:
        """Resolved/Closed stamps, ReadOnly on final states, clearing them on reopen."""
        new = str(merged["Status"]).casefold()
        out: dict[str, Any] = {
            "PreviousState": old_status,
            "ProgressBarPosition": _PROGRESS.get(new, "3"),
            "ReadOnly": new in _FINAL_STATUSES,
        }
        if new == "resolved":
            out.update(ResolvedDateTime=now, ResolvedBy=user, ClosedDateTime=None, ClosedBy="")
        elif new in _FINAL_STATUSES:
            out.update(ClosedDateTime=now, ClosedBy=user)
            if merged.get("ResolvedDateTime") is None and new == "closed":
                out.update(ResolvedDateTime=now, ResolvedBy=user)
        else:
            out.update(ResolvedDateTime=None, ResolvedBy="", ClosedDateTime=None, ClosedBy="")
        if new == "active" and merged.get("RespondedDateTime") is None:
            out.update(RespondedDateTime=now, RespondedBy=user)
        return out

    def _person_email(self, login: str) -> str:
        if not login:
            return ""
        person = self.directory.person(login)
        return person.email if person is not None else f"{login.casefold()}@example.com"

    def _add_note(self, parent: str, text: str, user: str, now: datetime) -> dict[str, Any]:
        subject = text[:100]
        note = {
            "DisplayText": f"{subject} {text}",
            "NotesBody": text,
            "Source_Valid": valid_id("Source", "Other"),
            "Source": "Other",
            "Category_Valid": valid_id("JournalCategory", "Memo"),
            "Category": "Memo",
            "CreatedBy": user,
            "CreatedDateTime": now,
            "JournalType": "Notes",
            "LastModBy": user,
            "LastModDateTime": now,
            "ParentLink_RecID": parent,
            "ParentLink_Category": "Incident",
            "ParentLink": parent,
            "RecId": _new_rec_id(),
            "Subject": subject,
            "PublishToWeb": False,
            "ReadOnly": False,
            "IsNewRecord": False,
            "IsUnRead": True,
            "UnreadTransition": False,
            "TimeSpent": 0,
        }
        self._notes.insert_many([note])
        return note

    # ----- creating ------------------------------------------------------------------
    def _new_record(self, by: str, fields: Mapping[str, Any], number: int) -> dict[str, Any]:
        """A fully populated incident as a person saving the form would leave it."""
        now = self._stamp()
        person = self.directory.person(by)
        customer = f"{person.first} {person.last}" if person else by
        given = self._coerce_fields(fields, api=False, creating=True)
        base: dict[str, Any] = {
            "RecId": _new_rec_id(),
            "IncidentNumber": number,
            "CreatedBy": by,
            "CreatedDateTime": now,
            "LastModBy": by,
            "LastModDateTime": now,
            "LoginId": by,
            "IncidentNetworkUserName": by,
            "Status": "Logged",
            "Priority": "3",
            "OwnerTeam": "Service Desk",
            "Owner": "",
            "Subject": f"Simulated incident {number}",
            "Symptom": "Reported through the Ivanti simulator.",
            "ProfileFullName": customer,
            "Phone": "+1 (415) 555 0100",
            "Category": "",
        }
        pre = {**base, **given}
        pre["Status"] = self._pick("Status", pre["Status"])
        pre["OwnerTeam"] = self._pick("OwnerTeam", pre["OwnerTeam"])
        pre["Owner"] = self._pick("Owner", pre["Owner"])
        pre["Priority"] = self._pick("Priority", pre["Priority"])
        profile = str(pre["ProfileFullName"])
        pre.setdefault("Email", self._customer_email(profile))
        pre.setdefault("ProfileLink_RecID", valid_id("Employee", profile))
        pre.setdefault("ProfileLink", pre["ProfileLink_RecID"])
        full = {c.name: c.default for c in INCIDENT_COLUMNS}
        full.update(pre)
        full.update(self._derive(None, full, pre, str(pre["CreatedBy"]), pre["CreatedDateTime"]))
        return full

    def _customer_email(self, name: str) -> str:
        for p in self.directory.people:
            if f"{p.first} {p.last}".casefold() == name.casefold():
                return p.email
        return f"{_slug(name) or 'customer'}@example.com"

    def _take_number(self) -> int:
        number = self._next_number
        self._next_number += 1
        return number

    # ----- Python control API --------------------------------------------------------
    def create_incident(self, *, by: str = "lchen", **fields: Any) -> dict[str, Any]:
        """Create an incident as a person would; returns the served entity (as GET)."""
        with self.lock:
            number = self._take_number()  # allocated before validation, as Ivanti does
            record = self._new_record(by, fields, number)
            if self._incidents.get(record["RecId"]) is not None:
                raise _bad(f"Record '{record['RecId']}' already exists")
            self._incidents.insert_many([record])
            stored = self._incidents.get(record["RecId"])
            assert stored is not None
            return self._entity(stored, self._base(None))

    def bulk_create(
        self, n: int, *, by: str = "lchen", spacing: float = 0.0, **fields: Any
    ) -> list[str]:
        """Load ``n`` incidents fast (benchmarks). With ``spacing`` seconds between them the
        last one is stamped at the clock's now and earlier ones further back; with 0 they
        all share one LastModDateTime."""
        with self.lock:
            template = self._new_record(by, fields, self._next_number)
            end = template["LastModDateTime"]
            rec_ids: list[str] = []
            variants: list[dict[str, Any]] = []
            for i in range(n):
                number = self._take_number()
                subject = fields.get("Subject", f"Simulated incident {number}")
                variant: dict[str, Any] = {
                    "RecId": _new_rec_id(),
                    "IncidentNumber": number,
                    "Subject": subject,
                    "SocialTextHeader": f"Incident {number}: {subject}",
                }
                when = None
                if spacing:
                    when = self._stamp(end - timedelta(seconds=spacing * (n - 1 - i)))
                elif self.subsecond_times and i:
                    when = self._stamp()  # one after the other, inside the served second
                if when is not None:
                    for name in ("CreatedDateTime", "LastModDateTime"):
                        if name not in fields:
                            variant[name] = when
                rec_ids.append(variant["RecId"])
                variants.append(variant)
            self._incidents.insert_variants(template, variants)
            return rec_ids

    def edit_incident(self, rec_id: str, *, by: str = "lchen", **fields: Any) -> dict[str, Any]:
        """A person's edit: pick lists apply, required-field rules do not; bumps LastMod*."""
        with self.lock:
            record = self._save(rec_id, fields, by, api=False)
            return self._entity(record, self._base(None))

    def delete_incident(self, rec_id: str) -> None:
        with self.lock:
            if not self._incidents.delete(rec_id):
                raise KeyError(rec_id)
            self._db.execute('DELETE FROM "journal__notess" WHERE "ParentLink_RecID" = ?', [rec_id])

    def incident(self, rec_id: str) -> dict[str, Any]:
        with self.lock:
            record = self._incidents.get(rec_id)
            if record is None:
                raise KeyError(rec_id)
            return self._entity(record, self._base(None))

    def incident_count(self) -> int:
        with self.lock:
            return self._incidents.count("1", [])

    def notes(self, rec_id: str) -> list[dict[str, Any]]:
        """The incident's journal notes, oldest first."""
        with self.lock:
            rows = self._notes.select(
                '"ParentLink_RecID" = ?', [rec_id], '"CreatedDateTime" ASC, rowid ASC', [], -1, 0
            )
            return [self._serve(r, self._notes) for r in rows]

    def writes(self) -> list[dict[str, Any]]:
        """API writes (PUT/PATCH) in arrival order, refused ones included."""
        with self.lock:
            return json.loads(json.dumps(self._writes))

    def session_count(self) -> int:
        with self.lock:
            return len(self._sessions)

    # ----- /_sim/ control routes -----------------------------------------------------
    def _ctl_body(self, req: Request) -> dict[str, Any]:
        try:
            body = json.loads(req.body) if req.body.strip() else {}
        except ValueError as exc:
            raise BadRequest(400, f"control body is not JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise BadRequest(400, "control body must be a JSON object")
        return body

    def _ctl_create(self, req: Request, m: re.Match[str]) -> Response:
        body = self._ctl_body(req)
        return Response.json(201, self.create_incident(**body))

    def _ctl_bulk(self, req: Request, m: re.Match[str]) -> Response:
        body = self._ctl_body(req)
        n = body.pop("n", 1)
        if not isinstance(n, int) or n < 0:
            raise BadRequest(400, "n must be a non-negative integer")
        return Response.json(201, {"rec_ids": self.bulk_create(n, **body)})

    def _ctl_get(self, req: Request, m: re.Match[str]) -> Response:
        return self._ctl_known(lambda: Response.json(200, self.incident(m["rec"])), m["rec"])

    def _ctl_edit(self, req: Request, m: re.Match[str]) -> Response:
        body = self._ctl_body(req)
        return self._ctl_known(
            lambda: Response.json(200, self.edit_incident(m["rec"], **body)), m["rec"]
        )

    def _ctl_delete(self, req: Request, m: re.Match[str]) -> Response:
        def delete() -> Response:
            self.delete_incident(m["rec"])
            return Response.empty(204)

        return self._ctl_known(delete, m["rec"])

    def _ctl_notes(self, req: Request, m: re.Match[str]) -> Response:
        def notes() -> Response:
            self.incident(m["rec"])
            return Response.json(200, self.notes(m["rec"]))

        return self._ctl_known(notes, m["rec"])

    def _ctl_writes(self, req: Request, m: re.Match[str]) -> Response:
        return Response.json(200, self.writes())

    def _ctl_expire(self, req: Request, m: re.Match[str]) -> Response:
        self.expire_sessions()
        return Response.empty(204)

    @staticmethod
    def _ctl_known(action: Callable[[], Response], rec_id: str) -> Response:
        try:
            result: Response = action()
        except KeyError as exc:
            raise _ivanti_error(
                404, f"No incident {rec_id}", code="ISM_4004", description="Not Found"
            ) from exc
        return result


_KEY_CHARS = string.ascii_uppercase + string.digits
