"""Turning one Ivanti incident entity into a ``Snapshot``, and a snapshot into payloads.

Parsing is strict on the fields the transition rules depend on (RecId, IncidentNumber,
Status, LastModDateTime): a record the daemon cannot reason about is reported as
``MalformedRecord`` with a sentence naming the field, so one bad row can be skipped and
logged without stopping the poll. Fields that are only forwarded to xMatters are
flattened to strings leniently, because a surprising value there harms nobody.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime

from daemon.domain import Snapshot
from daemon.timeutil import iso_utc, parse_ivanti_datetime, parse_utc

# Ivanti fields forwarded to xMatters on every event (besides the transition-relevant ones).
PAYLOAD_CORE_FIELDS: tuple[str, ...] = ("Category", "Phone", "ProfileFullName", "Subject")

# Keys of the original Web Connection payload, in its order; values come from the snapshot.
WORKFLOW_KEYS: tuple[str, ...] = (
    "Category",
    "IncidentID",
    "Owner",
    "OwnerTeam",
    "Phone",
    "RecId",
    "RequestedBy",
    "Status",
    "Summary",
    "Type",
)

_REC_ID_RE = re.compile(r"^[0-9A-F]{32}$")
_QUOTE_LIMIT = 60


class MalformedRecord(ValueError):
    """An incident entity the daemon cannot interpret; ``problem`` says which field and why."""

    def __init__(self, rec_id: str | None, problem: str) -> None:
        self.rec_id = rec_id
        self.problem = problem
        where = f"incident {rec_id}" if rec_id else "incident without a usable RecId"
        super().__init__(f"{where}: {problem}")


def _show(value: object) -> str:
    """Quote an offending value briefly, so a huge or odd value cannot flood the log."""
    text = value if isinstance(value, str) else json.dumps(value, default=repr)
    if len(text) > _QUOTE_LIMIT:
        text = text[: _QUOTE_LIMIT - 1] + "…"
    return f"'{text}'" if isinstance(value, str) else text


def _type_name(value: object) -> str:
    return {dict: "an object", list: "a list", bool: "a boolean"}.get(
        type(value), f"a {type(value).__name__}"
    )


def _parse_rec_id(raw: Mapping[str, object]) -> str:
    value = raw.get("RecId")
    if not isinstance(value, str):
        problem = (
            "RecId is missing"
            if value is None
            else f"RecId is {_type_name(value)} {_show(value)}, expected a string"
        )
        raise MalformedRecord(None, problem)
    rec_id = value.strip().upper()
    if not _REC_ID_RE.match(rec_id):
        raise MalformedRecord(
            value.strip() or None, f"RecId {_show(value)} is not 32 hexadecimal characters"
        )
    return rec_id


def _parse_incident_number(rec_id: str, value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        return int(value.strip())
    if value is None:
        raise MalformedRecord(rec_id, "IncidentNumber is missing")
    raise MalformedRecord(rec_id, f"IncidentNumber {_show(value)} is not a whole number")


def _parse_status(rec_id: str, value: object) -> str:
    if value is None:
        raise MalformedRecord(rec_id, "Status is missing")
    if not isinstance(value, str):
        raise MalformedRecord(
            rec_id, f"Status is {_type_name(value)} {_show(value)}, expected a string"
        )
    if not value.strip():
        raise MalformedRecord(rec_id, "Status is empty")
    return value.strip()


def _parse_last_mod(rec_id: str, raw: Mapping[str, object]) -> datetime:
    value = raw.get("LastModDateTime")
    if value is None or value == "":
        raise MalformedRecord(rec_id, "LastModDateTime is missing")
    try:
        parsed = parse_ivanti_datetime(value)
    except ValueError:
        raise MalformedRecord(
            rec_id, f"LastModDateTime {_show(value)} is not an ISO-8601 datetime"
        ) from None
    if parsed is None:
        raise MalformedRecord(
            rec_id, f"LastModDateTime {_show(value)} is the 'unset' sentinel, not a time"
        )
    return parsed


def _parse_priority(rec_id: str, value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        return value.strip()
    raise MalformedRecord(
        rec_id, f"Priority is {_type_name(value)} {_show(value)}, expected a string"
    )


def _parse_optional_text(rec_id: str, name: str, value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    raise MalformedRecord(
        rec_id, f"{name} is {_type_name(value)} {_show(value)}, expected a string"
    )


def flatten_value(value: object) -> str:
    """One forwarded field as the flat string xMatters form properties expect.

    Nested values are kept as compact JSON rather than rejected: a custom extra field
    of an unexpected shape should still reach the responder, not block the page.
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def parse_incident(raw: Mapping[str, object], extra_fields: Sequence[str] = ()) -> Snapshot:
    """Build a snapshot from one OData incident entity, or raise ``MalformedRecord``."""
    rec_id = _parse_rec_id(raw)
    payload: dict[str, str] = {}
    for name in (*PAYLOAD_CORE_FIELDS, *extra_fields):
        payload.setdefault(name, flatten_value(raw.get(name)))
    return Snapshot(
        rec_id=rec_id,
        incident_number=_parse_incident_number(rec_id, raw.get("IncidentNumber")),
        status=_parse_status(rec_id, raw.get("Status")),
        priority=_parse_priority(rec_id, raw.get("Priority")),
        owner=_parse_optional_text(rec_id, "Owner", raw.get("Owner")),
        owner_team=_parse_optional_text(rec_id, "OwnerTeam", raw.get("OwnerTeam")),
        last_mod=_parse_last_mod(rec_id, raw),
        last_mod_by=_parse_optional_text(rec_id, "LastModBy", raw.get("LastModBy")),
        payload_fields=payload,
    )


def workflow_payload(snapshot: Snapshot, type_: str) -> dict[str, str]:
    """The flat payload the original Ivanti Web Connection posted to the xMatters workflow.

    Extra fields are appended under their Ivanti names. An extra field whose name is
    one of the ten fixed keys (e.g. ``Status`` or ``Type``) does not override the fixed
    value: ``Type`` must stay the use case, and the others already carry Ivanti's value.
    """
    fields = snapshot.payload_fields
    payload = {
        "Category": fields.get("Category", ""),
        "IncidentID": str(snapshot.incident_number),
        "Owner": snapshot.owner,
        "OwnerTeam": snapshot.owner_team,
        "Phone": fields.get("Phone", ""),
        "RecId": snapshot.rec_id,
        "RequestedBy": fields.get("ProfileFullName", ""),
        "Status": snapshot.status,
        "Summary": fields.get("Subject", ""),
        "Type": type_,
    }
    for name, value in fields.items():
        if name not in PAYLOAD_CORE_FIELDS and name not in payload:
            payload[name] = value
    return payload


def snapshot_to_json(s: Snapshot) -> dict[str, object]:
    """A JSON-ready dict for the state store; ``snapshot_from_json`` reverses it exactly."""
    return {
        "rec_id": s.rec_id,
        "incident_number": s.incident_number,
        "status": s.status,
        "priority": s.priority,
        "owner": s.owner,
        "owner_team": s.owner_team,
        "last_mod": iso_utc(s.last_mod),
        "last_mod_by": s.last_mod_by,
        "payload_fields": dict(s.payload_fields),
    }


def _stored_str(d: Mapping[str, object], key: str) -> str:
    value = d.get(key)
    if not isinstance(value, str):
        raise ValueError(f"stored snapshot: {key} is {_show(value)}, expected a string")
    return value


def snapshot_from_json(d: Mapping[str, object]) -> Snapshot:
    """Rebuild a stored snapshot; raises ``ValueError`` naming the key if the record is damaged."""
    number = d.get("incident_number")
    if not isinstance(number, int) or isinstance(number, bool):
        raise ValueError(f"stored snapshot: incident_number is {_show(number)}, expected an int")
    fields = d.get("payload_fields", {})
    if not isinstance(fields, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in fields.items()
    ):
        raise ValueError("stored snapshot: payload_fields must map strings to strings")
    return Snapshot(
        rec_id=_stored_str(d, "rec_id"),
        incident_number=number,
        status=_stored_str(d, "status"),
        priority=_stored_str(d, "priority"),
        owner=_stored_str(d, "owner"),
        owner_team=_stored_str(d, "owner_team"),
        last_mod=parse_utc(_stored_str(d, "last_mod")),
        last_mod_by=_stored_str(d, "last_mod_by") if "last_mod_by" in d else "",
        payload_fields=dict(fields),
    )


class _Remembered:
    """Stored snapshot text -> the snapshot it decodes to, for the texts this process
    wrote or read last: two generations of at most ``size`` each; when the young one is
    full it becomes the old one and the old one is dropped (a text looked up in the old
    one moves back to the young one), so what was used lately stays and memory is
    bounded. Threads may race on a turn: at worst a text is decoded again."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.young: dict[str, Snapshot] = {}
        self.old: dict[str, Snapshot] = {}

    def get(self, text: str) -> Snapshot | None:
        snap = self.young.get(text)
        if snap is None:
            snap = self.old.get(text)
            if snap is not None:
                self.put(text, snap)
        return snap

    def put(self, text: str, snap: Snapshot) -> None:
        if len(self.young) >= self.size:
            self.old, self.young = self.young, {}
        self.young[text] = snap

    def clear(self) -> None:
        self.young, self.old = {}, {}

    def __len__(self) -> int:
        return len(self.young) + len(self.old)


# 2,048 to 4,096 incidents' snapshots: about 4 MB when full (tracemalloc, typical records)
_TEXTS = _Remembered(2048)


def snapshot_text(s: Snapshot) -> str:
    """The text a snapshot is stored as (the JSON of ``snapshot_to_json``, as
    SQLAlchemy's JSON type writes it), remembered so that reading it back is a lookup.

    Remembering is safe because decoding is a pure function of the text: a remembered
    text decodes to an equal snapshot (property-tested), and a text that is not
    remembered is decoded. It is what makes a busy poll cheap: the stored copy of an
    incident that changes is mostly one this process wrote.
    """
    text = json.dumps(snapshot_to_json(s))
    _TEXTS.put(text, s)
    return text


def snapshot_from_text(text: str) -> Snapshot:
    """Rebuild a snapshot from its stored text (``snapshot_text``); raises
    ``ValueError`` naming the key if the record is damaged."""
    snap = _TEXTS.get(text)
    if snap is None:
        stored = json.loads(text)
        if not isinstance(stored, dict):
            raise ValueError(f"stored snapshot is {_show(stored)}, expected a JSON object")
        snap = snapshot_from_json(stored)
        _TEXTS.put(text, snap)
    return snap
