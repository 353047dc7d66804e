"""Closing the loop: what happened in xMatters becomes notes on the Ivanti incident.

Each cycle the daemon
1. looks up the events of pages whose trigger was accepted but whose event id is
   not known yet (a workflow creates its event asynchronously);
2. reads the audit trail of each of its events that is live, or was terminated
   less than ``grace`` ago (``GET /audits?eventId=…`` following ``links.next``),
   with bounded concurrency under the client's request-rate limit; events with
   recent activity are read every cycle, quiet ones every ``quiet_poll_every``-th;
3. turns each audit record it has not handled yet into a note action in the same
   outbox as pages (durable, retried, in order per incident), recording the record
   as handled in the same transaction: a record read twice is never written twice.

Responses whose configured action is ``assign`` ("Assign to me" by default) also
set Owner (through ``user_map`` when xMatters and Ivanti names differ) and
Status=Active in the same write as their note.

Open question in the reference (xmatters-api.md §9.6): whether a RESPONSE_RECEIVED
record names the chosen option as ``response.option`` (an object) or
``response.options.data`` (a list). Both are read; see ``_chosen_option``.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from daemon.errors import ApiError
from daemon.logs import log_event
from daemon.models import AuditSeen, OutboxAction, XmEvent
from daemon.notes import (
    DEFAULT_RESPONSE_ACTIONS,
    NOTE_LIMIT,
    ResponseAction,
    action_for,
    comment_note,
    delivery_note,
    response_note,
    split_target_name,
    summary_note,
)
from daemon.store import Store, Unit
from daemon.timeutil import parse_utc
from daemon.xmatters import XMattersClient

log = logging.getLogger("daemon.writeback")

# How an event ends: terminated (by a person, the daemon, or a newer event of the
# workflow) or by itself (completed: everyone answered with an END option, or nobody is
# left to notify; expired, which the reference audits as one of the two).
END_TYPES: tuple[str, ...] = ("EVENT_TERMINATED", "EVENT_COMPLETED")
AUDIT_TYPES: tuple[str, ...] = (
    "RESPONSE_RECEIVED",
    "EVENT_ANNOTATED",
    "NOTIFICATION_DELIVERED",
    "NOTIFICATION_FAILED",
    *END_TYPES,
)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class WritebackConfig:
    notes_prefix: str = "[xMatters]"
    grace: timedelta = timedelta(hours=1)
    delivery_notes: str = "all"  # all | failures | summary
    response_actions: Mapping[str, ResponseAction] = field(
        default_factory=lambda: dict(DEFAULT_RESPONSE_ACTIONS)
    )
    user_map: Mapping[str, str] = field(default_factory=dict)
    note_max_chars: int = NOTE_LIMIT
    concurrency: int = 8
    quiet_poll_every: int = 4
    busy_window: timedelta = timedelta(minutes=15)
    # False: only learn event ids (write-back off, or the workflow writes back itself).
    write_notes: bool = True
    # The original workflow's write-back steps may still run: each note carries the
    # workflow's wording, waits ``workflow_wait`` after the activity, and is written only
    # if the journal does not hold it yet (see ``written_already``).
    workflow_check: bool = False
    workflow_wait: timedelta = timedelta(seconds=5)


@dataclass
class WritebackResult:
    events_polled: int = 0
    records: int = 0
    notes: int = 0
    discovered: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Event:
    event_id: str
    rec_id: str
    number: str | None


class WriteBack:
    def __init__(
        self,
        store: Store,
        xmatters: XMattersClient,
        config: WritebackConfig,
        *,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.xm = xmatters
        self.cfg = config
        self.now = now
        self._cycle = 0
        self._people: dict[str, tuple[str, str]] = {}

    # ----- public ------------------------------------------------------------------------
    def run_once(self) -> WritebackResult:
        self._cycle += 1
        result = WritebackResult()
        self._discover(result)  # also with notes off: paging and ending need the event ids
        if not self.cfg.write_notes:
            return result
        events = self._events_due()
        result.events_polled = len(events)
        if not events:
            return result
        with ThreadPoolExecutor(max_workers=max(1, self.cfg.concurrency)) as pool:
            fetched = list(pool.map(self._fetch, events))
        for ev, records in zip(events, fetched, strict=True):
            if isinstance(records, ApiError):
                result.errors.append(f"{ev.event_id}: {records}")
                log_event(
                    log,
                    logging.WARNING,
                    "could not read event audits; will try again next cycle",
                    event=ev.event_id,
                    error=str(records),
                )
                continue
            self._handle(ev, records, result)
        return result

    # ----- which events ----------------------------------------------------------------
    def _discover(self, result: WritebackResult) -> None:
        now = self.now()
        with self.store.unit() as u:
            pending = [
                (a.id, a.rec_id, a.request_id)
                for a in u.undiscovered_requests(now - self.cfg.grace)
            ]
        for outbox_id, rec_id, request_id in pending:
            if not request_id:
                continue
            try:
                events = self.xm.find_events(request_id=request_id)
            except ApiError as exc:
                result.errors.append(str(exc))
                continue
            if not events:
                continue
            with self.store.unit() as u:
                for ev in events:
                    u.add_event(
                        event_id=str(ev["id"]),
                        rec_id=rec_id,
                        outbox_id=outbox_id,
                        request_id=request_id,
                        number=str(ev.get("eventId")) if ev.get("eventId") is not None else None,
                        status=str(ev.get("status") or "ACTIVE"),
                        now=now,
                    )
                    result.discovered += 1

    def _events_due(self) -> list[_Event]:
        """The events to read this cycle, oldest first: an incident's notes are queued in
        that order, so those of a superseded event come before its successor's."""
        now = self.now()
        due: list[_Event] = []
        with self.store.unit() as u:
            events = sorted(
                u.events_to_poll(now, self.cfg.grace), key=lambda e: (e.created_at, e.event_id)
            )
            for ev in events:
                if self._busy(ev, now) or self._quiet_turn(ev.event_id):
                    due.append(_Event(ev.event_id, ev.rec_id, ev.number))
        return due

    def _quiet_turn(self, event_id: str) -> bool:
        """Whether a quiet event is read this cycle: every ``quiet_poll_every``-th cycle.

        Each event has a fixed phase taken from its id, so quiet events are spread over
        the cycles instead of all being read in the same one. (A phase that moved with
        the event's poll count would shorten the period by one.)
        """
        every = max(1, self.cfg.quiet_poll_every)
        return (self._cycle + zlib.crc32(event_id.encode())) % every == 0

    def _busy(self, ev: XmEvent, now: datetime) -> bool:
        recent = max(
            [t for t in (ev.created_at, ev.last_activity_at, ev.terminated_at) if t is not None]
        )
        return ev.polls < 3 or now - recent <= self.cfg.busy_window

    def _fetch(self, ev: _Event) -> list[Mapping[str, Any]] | ApiError:
        try:
            return list(self.xm.audits(ev.event_id, AUDIT_TYPES))
        except ApiError as exc:
            return exc

    # ----- turning records into notes ----------------------------------------------------
    def _names(self, login: str) -> tuple[str, str]:
        """First and last name of an xMatters person (cached; login when unknown)."""
        if login in self._people:
            return self._people[login]
        names = (login, "")
        try:
            person = self.xm.get_person(login)
        except ApiError:
            return names  # not cached: try again next time
        if person:
            names = (str(person.get("firstName") or login), str(person.get("lastName") or ""))
        self._people[login] = names
        return names

    def _handle(
        self, ev: _Event, records: Sequence[Mapping[str, Any]], result: WritebackResult
    ) -> None:
        now = self.now()
        with self.store.unit() as u:
            fresh = [r for r in records if r.get("id") and not u.audit_seen(str(r["id"]))]
        # Name look-ups are HTTP calls: make them all before opening the transaction, so
        # no request is ever made while the state DB is locked for writing.
        logins = {login for login in map(self._person_of, fresh) if login}
        names = {login: self._names(login) for login in logins}
        with self.store.unit() as u:
            row = u.event(ev.event_id)
            incident = u.incident(ev.rec_id)
            number = incident.incident_number if incident else 0
            summary_changed = False
            for rec in fresh:
                audit_id = str(rec["id"])
                if u.audit_seen(audit_id):
                    continue
                result.records += 1
                note, assign, summary, counts = self._note_for(rec, names)
                outbox_id = None
                if note is not None:
                    payload: dict[str, Any] = {
                        "note": note,
                        "assign": assign,
                        "audit": audit_id,
                        "event": ev.event_id,
                    }
                    if self.cfg.workflow_check:
                        payload["workflow_note"] = self._workflow_note(rec, names) or note
                    action = u.add_action(
                        rec_id=ev.rec_id,
                        incident_number=number,
                        kind="note",
                        payload=payload,
                        reason=f"xMatters {rec.get('type')} on event {ev.number or ev.event_id}",
                        now=now,
                        dedupe_key=f"audit:{audit_id}",
                    )
                    if self.cfg.workflow_check:
                        # Give the workflow's own write-back time to land before looking.
                        wait = self.cfg.workflow_wait
                        action.next_attempt_at = min(now + wait, max(now, (_at(rec) or now) + wait))
                    outbox_id = action.id
                    result.notes += 1
                if row is not None:
                    self._count(row, rec)
                    summary_changed = summary_changed or counts
                    if rec.get("type") not in END_TYPES:
                        row.last_activity_at = now
                    elif row.status != "TERMINATED":
                        # Ended in xMatters (a person, a newer event of the workflow, or
                        # by itself): the grace period runs from when it happened.
                        row.status = "TERMINATED"
                        row.terminated_at = _at(rec) or now
                u.add_audit(
                    AuditSeen(
                        audit_id=audit_id,
                        event_id=ev.event_id,
                        rec_id=ev.rec_id,
                        type=str(rec.get("type")),
                        at=_at(rec),
                        handled_at=now,
                        summary=summary,
                        outbox_id=outbox_id,
                    )
                )
            if row is not None:
                row.polls += 1
                row.last_polled_at = now
                if summary_changed and self.cfg.delivery_notes == "summary":
                    self._summary_note(u, row, number, now, result)

    def _summary_note(
        self, u: Unit, row: XmEvent, number: int, now: datetime, result: WritebackResult
    ) -> None:
        text = summary_note(
            self.cfg.notes_prefix,
            row.number or row.event_id[:8],
            row.delivered,
            row.failed,
            row.responded,
            limit=self.cfg.note_max_chars,
        )
        key = f"summary:{row.event_id}:{row.delivered}:{row.failed}:{row.responded}"
        if u.has_dedupe_key(key):
            return
        u.add_action(
            rec_id=row.rec_id,
            incident_number=number,
            kind="note",
            payload={"note": text, "assign": None, "event": row.event_id},
            reason=f"delivery summary for event {row.number or row.event_id}",
            now=now,
            dedupe_key=key,
        )
        result.notes += 1

    @staticmethod
    def _count(row: XmEvent, rec: Mapping[str, Any]) -> None:
        kind = rec.get("type")
        if kind == "NOTIFICATION_DELIVERED":
            row.delivered += 1
        elif kind == "NOTIFICATION_FAILED":
            row.failed += 1
        elif kind == "RESPONSE_RECEIVED":
            row.responded += 1

    def _person_of(self, rec: Mapping[str, Any]) -> str | None:
        """The login whose first and last name the record's note shows, if any.

        FAILED notes name the raw target (as the original does) and delivery notes that
        ``delivery_notes`` suppresses are never written: neither costs a /people request.
        """
        kind = rec.get("type")
        if kind == "RESPONSE_RECEIVED":
            target = _dig(rec, "response", "notification", "recipient", "targetName")
        elif kind == "NOTIFICATION_DELIVERED" and self.cfg.delivery_notes == "all":
            target = _dig(rec, "notification", "recipient", "targetName")
        else:
            return None
        return split_target_name(str(target or ""))[0] or None

    def _ivanti_login(self, login: str) -> str:
        """The Ivanti login for an xMatters person, through ``user_map``.

        xMatters compares targetNames without regard to case, so the map's keys do too
        (an exact match wins over a case-blind one).
        """
        if login in self.cfg.user_map:
            return self.cfg.user_map[login]
        folded = login.casefold()
        for name, ivanti_login in self.cfg.user_map.items():
            if name.casefold() == folded:
                return ivanti_login
        return login

    def _workflow_note(
        self, rec: Mapping[str, Any], names: Mapping[str, tuple[str, str]]
    ) -> str | None:
        """The note the original workflow writes for this record: the same wording, but a
        response's comment is a note of its own there (the comment's record)."""
        if rec.get("type") == "RESPONSE_RECEIVED":
            rec = {**rec, "response": {**(rec.get("response") or {}), "comment": None}}
        return self._note_for(rec, names)[0]

    def _note_for(
        self, rec: Mapping[str, Any], names: Mapping[str, tuple[str, str]]
    ) -> tuple[str | None, dict[str, str] | None, str, bool]:
        """(note text or None, assignment or None, one-line summary, changes the delivery
        summary).

        Only delivery records make a new summary note: a response has a note of its own,
        and a summary after it too would make "summary" noisier than "all". Responses
        are still counted, and shown in the next summary.

        ``names`` holds (first, last) of the people ``_person_of`` named, looked up
        beforehand; a login missing from it shows as the login itself.
        """
        prefix = self.cfg.notes_prefix
        limit = self.cfg.note_max_chars
        kind = str(rec.get("type"))
        if kind == "RESPONSE_RECEIVED":
            resp = rec.get("response") or {}
            target = str(_dig(resp, "notification", "recipient", "targetName") or "")
            login, device = split_target_name(target)
            first, last = names.get(login, (login, "")) if login else ("(unknown)", "")
            option = _chosen_option(resp)
            text = str(resp.get("response") or option.get("text") or "")
            comment = resp.get("comment")
            note = response_note(
                prefix,
                first,
                last,
                device,
                text,
                None if comment is None else str(comment),
                limit=limit,
            )
            option_id = option.get("id")
            assign = None
            action = action_for(
                text, str(option_id) if option_id else None, self.cfg.response_actions
            )
            if action is ResponseAction.ASSIGN and login:
                assign = {"owner": self._ivanti_login(login), "status": "Active"}
            return note, assign, f"{login} responded {text}", False
        if kind == "EVENT_ANNOTATED":
            ann = rec.get("annotation") or {}
            author = ann.get("author") or {}
            first = str(author.get("firstName") or author.get("targetName") or "(unknown)")
            last = str(author.get("lastName") or "")
            note = comment_note(prefix, first, last, str(ann.get("comment") or ""), limit=limit)
            return note, None, f"{author.get('targetName')} commented", False
        if kind in ("NOTIFICATION_DELIVERED", "NOTIFICATION_FAILED"):
            notif = rec.get("notification") or {}
            status = str(notif.get("deliveryStatus") or kind.removeprefix("NOTIFICATION_"))
            target = str(_dig(notif, "recipient", "targetName") or "")
            login, device = split_target_name(target)
            summary = f"notification {status} to {target}"
            mode = self.cfg.delivery_notes
            if mode == "summary" or (mode == "failures" and kind != "NOTIFICATION_FAILED"):
                return None, None, summary, True
            first, last = names.get(login, (login, "")) if login else ("", "")
            text_ = delivery_note(prefix, status, target, first, last, device, limit=limit)
            return text_, None, summary, True
        if kind == "EVENT_TERMINATED":
            return None, None, "event terminated", False
        if kind == "EVENT_COMPLETED":
            return None, None, "event completed (ended by itself)", False
        return None, None, f"ignored {kind}", False


# ----- the journal check before a note is written -----------------------------------------


def written_already(
    journal: Sequence[str], text: str, workflow_note: str | None, done_same: int, *, unknown: bool
) -> str | None:
    """Why the note must not be written (it is in the incident's journal), or None.

    ``done_same`` is how many notes of this very text the daemon has already written to
    the incident: only occurrences beyond those belong to this note. The note is there if
    its text is (written by an earlier attempt whose answer was lost, or by the original
    workflow's own write-back), or if the workflow's wording of it is (``workflow_note``:
    the workflow writes a response's comment as a note of its own).
    """

    def count(wanted: str) -> int:
        return sum(1 for j in journal if j.strip() == wanted.strip())

    if count(text) > done_same:
        if unknown:
            return "earlier attempt (or the workflow's own write-back) had written this note; not re-sent"
        return "the workflow's own write-back had written this note; not written again"
    if workflow_note and workflow_note.strip() != text.strip() and count(workflow_note) > done_same:
        return (
            "the workflow's own write-back had written this note (its wording); not written again"
        )
    return None


# ----- a late "Assign to me" (decided when the note is delivered) ---------------------------


def why_not_assign(
    *, incident_status: str | None, incident_open: bool, event: str, superseded: bool
) -> str | None:
    """Why an Assign-to-me response must not set Owner/Status now, or None to apply it.

    Only an open incident whose current event was answered is assigned: setting
    Status=Active on a resolved incident would reopen it with nobody paged, and an
    answer to an event superseded by a page to another team would undo that page.
    ``incident_status`` None means the incident is no longer tracked (out of scope).
    """
    if incident_status is None:
        return "the incident is no longer in scope"
    if not incident_open:
        return f"the incident is {incident_status}"
    if superseded:
        return f"event {event} was superseded by a newer page"
    return None


def settle_assignment(u: Unit, action: OutboxAction, now: datetime, prefix: str) -> str | None:
    """Called by the deliverer in the transaction that starts a note's attempt, so the
    decision reads the latest stored state (a resolve seen after the note was queued is
    honoured). When the assignment must not be applied, it is dropped from the action
    (the note is written alone) and a second note saying why is queued after it.
    Returns the reason, or None when the assignment stands."""
    assign = action.payload.get("assign")
    if not assign:
        return None
    incident = u.incident(action.rec_id)
    event_id = str(action.payload.get("event") or "")
    row = u.event(event_id) if event_id else None
    why = why_not_assign(
        incident_status=incident.status if incident is not None else None,
        incident_open=incident is not None and incident.status_class == "open",
        event=(row.number if row is not None and row.number else event_id[:8]),
        superseded=row is not None and _superseded(u, row),
    )
    if why is None:
        return None
    action.payload = {**action.payload, "assign": None, "not_assigned": why}
    action.reason = f"{action.reason}; Owner/Status not applied: {why}"  # shown by `explain`
    text = f"{prefix} Assignment to {assign['owner']} not applied: {why}"
    u.add_action(
        rec_id=action.rec_id,
        incident_number=action.incident_number,
        kind="note",
        payload={"note": text, "assign": None},
        reason=f"assignment of action {action.id} not applied: {why}",
        now=now,
        dedupe_key=f"not-assigned:{action.id}",
    )
    log_event(
        log,
        logging.INFO,
        "late Assign to me: writing the note alone",
        action=action.id,
        incident=action.incident_number,
        owner=assign["owner"],
        why=why,
    )
    return why


def _superseded(u: Unit, event: XmEvent) -> bool:
    """Whether a page of the incident newer than the event's own is queued or done."""
    for a in u.outbox_for(event.rec_id):
        if a.kind != "page" or a.state not in ("pending", "done"):
            continue
        newer = (
            a.id > event.outbox_id
            if event.outbox_id is not None
            else (a.created_at > event.created_at)
        )
        if newer:
            return True
    return False


def _chosen_option(resp: Mapping[str, Any]) -> Mapping[str, Any]:
    """The response option chosen: ``option`` (an object) or the first of ``options.data``
    (or of a bare ``options`` list); the reference cannot say which one xMatters sends."""
    option = resp.get("option")
    if isinstance(option, Mapping):
        return option
    options = resp.get("options")
    if isinstance(options, Mapping):
        options = options.get("data")
    if isinstance(options, list) and options and isinstance(options[0], Mapping):
        return options[0]
    return {}


def _dig(obj: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(k)
    return obj


def _at(rec: Mapping[str, Any]) -> datetime | None:
    value = rec.get("at")
    if not isinstance(value, str):
        return None
    try:
        return parse_utc(value)
    except ValueError:
        return None
