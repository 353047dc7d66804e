"""The outbox deliverer: carries out pending actions on xMatters and Ivanti.

Guarantees, and how:
- In order per incident: only the oldest pending action of an incident is ever
  tried, so a terminate never overtakes its page, nor a note its predecessor.
- Nothing lost: an action leaves ``pending`` only as ``done``, ``dead`` (kept for
  inspection and ``retry``) or ``skipped`` by a person.
- Nothing doubled: an attempt is committed *before* the request goes out. An
  attempt found unfinished (the daemon died mid-request) or one that ended in a
  timeout or dropped connection has an unknown outcome, and the next try first
  asks the peer whether it already happened: for a page, whether xMatters has a
  live event for the incident that the daemon does not know yet; for a note,
  whether the incident's journal already holds that note.
- Retries back off exponentially with jitter, honouring Retry-After; after
  ``max_attempts`` or ``max_age`` the action is dead-lettered with its reason.
- Flood control: xMatters suppresses (drops) the 5th alert within a minute to the
  same recipients. Pages are therefore queued, never dropped, so that at most
  ``flood_limit`` go to one recipient in any 60 s.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from daemon.domain import FORM_PROPERTY_LIMITS, Policy
from daemon.errors import ApiError, NotFound, OutcomeUnknown, PermanentError
from daemon.ivanti import IvantiClient
from daemon.logs import log_event
from daemon.models import OutboxAction
from daemon.store import Head, Store, Unit
from daemon.timeutil import parse_ivanti_datetime
from daemon.writeback import settle_assignment, written_already
from daemon.xmatters import XMattersClient

log = logging.getLogger("daemon.deliverer")

LIVE = ("ACTIVE", "SUSPENDED")


# xMatters rejects a value longer than the form allows (FORM_PROPERTY_LIMITS) with a 400
# (form trigger) or fails the flow's Create Alert step after answering 202 (workflow
# trigger): either way nobody would be paged, so fit_form_limits cuts it.
FORM_TRUNCATION_MARKER = "…[truncated]"


def utcnow() -> datetime:
    return datetime.now(UTC)


def fit_form_limits(properties: Mapping[str, Any]) -> dict[str, Any]:
    """The properties with each over-long value cut to the form's maximum, marked.

    Truncating beats refusing: a page whose Summary lost its tail still reaches the
    on-call person, who can read the whole incident in Ivanti; a refused one reaches
    nobody. The marker makes the cut visible. Only properties with a documented
    limit are cut; identifiers (Owner, OwnerTeam, RecId) are in the table too, though
    no real one comes near 100 characters.
    """
    out = dict(properties)
    for name, limit in FORM_PROPERTY_LIMITS.items():
        value = out.get(name)
        if isinstance(value, str) and len(value) > limit:
            keep = max(0, limit - len(FORM_TRUNCATION_MARKER))
            out[name] = value[:keep] + FORM_TRUNCATION_MARKER
    return out


@dataclass(frozen=True)
class DeliveryConfig:
    mode: str = "workflow"  # workflow | direct
    # How long a request may still be acted on after it was sent (the longest
    # request timeout plus a margin): an attempt with an unknown outcome is checked
    # only after that, so the check does not miss a request the peer is still doing.
    settle: timedelta = timedelta(seconds=35)
    max_attempts: int = 12
    max_age: timedelta = timedelta(hours=24)
    backoff_base: float = 2.0
    backoff_max: float = 600.0
    flood_limit_per_min: int = 4
    recid_property: str = "RecId#en"
    user_response_options: tuple[str, ...] = ()
    group_response_options: tuple[str, ...] = ()
    event_priority: str = "MEDIUM"
    form_trigger_url: str | None = None


@dataclass
class DeliveryResult:
    done: list[int] = field(default_factory=list)
    retried: list[int] = field(default_factory=list)
    dead: list[int] = field(default_factory=list)
    deferred: list[int] = field(default_factory=list)

    @property
    def attempted(self) -> int:
        return len(self.done) + len(self.retried) + len(self.dead)


@dataclass
class _Outcome:
    """What one attempt achieved, applied to the DB in one transaction."""

    summary: str
    request_id: str | None = None
    events: Sequence[Mapping[str, Any]] = field(default_factory=list)
    terminated_all: bool = False
    written: Mapping[str, Any] | None = None  # fields written to Ivanti
    entity: Mapping[str, Any] | None = None  # Ivanti's answer to the write
    follow_up_note: str | None = None
    http_status: int | None = None


class Deliverer:
    def __init__(
        self,
        store: Store,
        xmatters: XMattersClient | None,
        ivanti: IvantiClient | None,
        config: DeliveryConfig,
        *,
        policy: Policy | None = None,
        notes_prefix: str = "[xMatters]",
        now: Callable[[], datetime] = utcnow,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.xm = xmatters
        self.ivanti = ivanti
        self.cfg = config
        self.policy = policy or Policy()
        self.notes_prefix = notes_prefix
        self.now = now
        self.rng = rng or random.Random()
        self._last_round: datetime | None = None

    # ----- public ------------------------------------------------------------------------
    def run_once(self, *, max_actions: int = 200) -> DeliveryResult:
        """Try every due head of the outbox once."""
        result = DeliveryResult()
        now = self.now()
        if self._last_round is None or now < self._last_round:
            self._reschedule_future(now)
        self._last_round = now
        with self.store.unit() as u:
            heads = [h.action.id for h in u.heads(now, limit=max_actions)]
        for action_id in heads:
            self._deliver(action_id, result)
        return result

    def _reschedule_future(self, now: datetime) -> None:
        """At start and whenever the clock went back: make due now any pending action
        scheduled further ahead than this deliverer ever schedules (the longest backoff
        or a flood-control wait). Such a time was computed from a clock that has since
        been set back, and the action would otherwise sit idle for the difference."""
        horizon = now + timedelta(seconds=max(self.cfg.backoff_max, 60.0) + 1)
        with self.store.unit() as u:
            for action in u.outbox(["pending"], limit=1_000_000):
                if action.next_attempt_at > horizon:
                    action.next_attempt_at = now
                    action.updated_at = now

    def drain(self, *, max_rounds: int = 50) -> DeliveryResult:
        """Deliver until nothing more is due now (used by ``once`` and the demo)."""
        total = DeliveryResult()
        for _ in range(max_rounds):
            r = self.run_once()
            total.done += r.done
            total.retried += r.retried
            total.dead += r.dead
            total.deferred += r.deferred
            if not r.done:
                break
        return total

    # ----- one action --------------------------------------------------------------------
    def _deliver(self, action_id: int, result: DeliveryResult) -> None:
        now = self.now()
        with self.store.unit() as u:
            head = self._head(u, action_id, now)
            if head is None:
                return
            action = head.action
            if self._give_up(u, action, now, result):
                return
            if action.kind == "page":
                wait_until = self._flood_wait(u, action, now)
                if wait_until is not None:
                    action.next_attempt_at = wait_until
                    action.outcome = (  # never sent yet, so no unknown outcome is lost here
                        f"queued: xMatters flood control (at most "
                        f"{self.cfg.flood_limit_per_min} alerts a minute to {action.recipient})"
                    )
                    result.deferred.append(action.id)
                    return
            cut = head.unfinished_attempt
            if cut is not None and now < cut.started_at + self.cfg.settle:
                # The daemon died with this request in flight, and the peer may act on
                # it for as long as the request could have lasted. Looking earlier could
                # find nothing yet and re-send: two pages. So look only after that.
                action.next_attempt_at = cut.started_at + self.cfg.settle
                action.outcome = "unknown"
                result.deferred.append(action.id)
                return
            unknown = cut is not None or action.outcome == "unknown"
            if head.unfinished_attempt is not None:
                head.unfinished_attempt.finished_at = now
                head.unfinished_attempt.outcome = "unknown"
                head.unfinished_attempt.error = "attempt cut short (daemon stopped mid-request)"
            attempt_id = u.start_attempt(action, now).id
            if action.kind == "note" and not unknown:  # a late Assign to me (writeback.py)
                settle_assignment(u, action, now, self.notes_prefix)
            if action.kind == "note" and action.payload.get("assign"):
                # Record the Owner/Status the daemon is about to write *before* writing
                # it, so no poll (even one after a crash right after Ivanti accepted
                # it) reads the daemon's own change back as a transition.
                self._patch_snapshot(u, action, revert=False)
            kind = action.kind
            payload = dict(action.payload)
            rec_id = action.rec_id
            request_id = action.request_id
            known_events = {e.event_id for e in u.events_for(rec_id)}
            done_same_notes = (
                u.done_notes_with_text(rec_id, str(payload.get("note", "")))
                if kind == "note"
                else 0
            )
        # The attempt is committed: from here a crash leaves it unfinished, and the
        # next try checks the peer before re-sending.
        try:
            outcome = self._perform(
                kind, rec_id, payload, unknown, request_id, known_events, done_same_notes
            )
        except ApiError as exc:  # Transient, OutcomeUnknown and Permanent alike
            self._record_failure(action_id, attempt_id, exc, result)
            return
        self._record_success(action_id, attempt_id, outcome, result)

    def _head(self, u: Unit, action_id: int, now: datetime) -> Head | None:
        action = u.action(action_id)
        if action is None or action.state != "pending" or action.next_attempt_at > now:
            return None
        return Head(action, u.unfinished_attempt(action.id))

    def _give_up(
        self, u: Unit, action: OutboxAction, now: datetime, result: DeliveryResult
    ) -> bool:
        too_many = action.attempts >= self.cfg.max_attempts
        too_old = now - action.created_at > self.cfg.max_age
        if not (too_many or too_old):
            return False
        why = (
            f"gave up after {action.attempts} attempts"
            if too_many
            else f"gave up: older than {self.cfg.max_age}"
        )
        self._dead(u, action, now, f"{why}; last error: {action.last_error or 'none'}")
        result.dead.append(action.id)
        return True

    def _dead(self, u: Unit, action: OutboxAction, now: datetime, reason: str) -> None:
        action.state = "dead"
        action.outcome = reason
        action.updated_at = now
        log_event(
            log,
            logging.ERROR,
            "action dead-lettered (kept for inspection; replay with `ivanti-xmatters retry`)",
            action=action.id,
            kind=action.kind,
            incident=action.incident_number,
            reason=reason,
        )

    def _flood_wait(self, u: Unit, action: OutboxAction, now: datetime) -> datetime | None:
        if not action.recipient or action.sent_at is not None:
            return None
        limit = self.cfg.flood_limit_per_min
        # Sends stamped after `now` happened before the clock was set back: xMatters
        # counts its own trailing minute, which does not include them.
        sent = [
            t for t in u.pages_sent_since(action.recipient, now - timedelta(seconds=60)) if t <= now
        ]
        if len(sent) < limit:
            return None
        return sent[-limit] + timedelta(seconds=60, milliseconds=10)

    # ----- the calls ---------------------------------------------------------------------
    def _perform(
        self,
        kind: str,
        rec_id: str,
        payload: dict[str, Any],
        unknown: bool,
        request_id: str | None,
        known_events: set[str],
        done_same_notes: int,
    ) -> _Outcome:
        if kind == "page":
            return self._page(rec_id, payload, unknown, request_id, known_events)
        if kind == "terminate":
            return self._terminate(rec_id, payload, unknown)
        if kind == "note":
            return self._note(rec_id, payload, unknown, done_same_notes)
        raise PermanentError("daemon", kind, f"unknown action kind {kind!r}")

    def _require_xm(self) -> XMattersClient:
        if self.xm is None:
            raise PermanentError("xmatters", "config", "xMatters is not configured")
        return self.xm

    def _live_events(self, rec_id: str) -> list[dict[str, Any]]:
        xm = self._require_xm()
        return xm.find_events(
            property_name=self.cfg.recid_property, property_value=rec_id, statuses=LIVE
        )

    def _page(
        self,
        rec_id: str,
        payload: dict[str, Any],
        unknown: bool,
        request_id: str | None,
        known_events: set[str],
    ) -> _Outcome:
        xm = self._require_xm()
        recipient = payload.get("recipient") or {}
        if not recipient.get("id"):
            raise PermanentError(
                "daemon",
                "page",
                "incident has neither Owner nor OwnerTeam: nobody to page; set one in Ivanti "
                "and replay with `ivanti-xmatters retry`",
            )
        if unknown:
            landed = self._landed(rec_id, request_id, known_events)
            if landed is not None:
                return landed
        if self.cfg.mode == "direct":
            for ev in self._live_events(rec_id):
                xm.terminate_event(str(ev["id"]))
            body = self._form_body(payload)
            rid = xm.trigger(body, url=self.cfg.form_trigger_url)
        else:
            rid = xm.trigger(fit_form_limits(payload["workflow"]))
        events = self._events_of_request(rid)
        summary = f"triggered {payload.get('type')} (requestId {rid})"
        if events:
            summary += "; event " + ", ".join(str(e.get("id")) for e in events)
        else:
            summary += "; event not visible yet (looked up again by the write-back job)"
        return _Outcome(summary, request_id=rid, events=events, terminated_all=True)

    def _events_of_request(self, request_id: str) -> list[dict[str, Any]]:
        """The events of an accepted trigger, or [] when the look-up fails.

        The trigger was accepted: the page has happened. Failing the action now
        would re-send it on the next try (a second event), so a failed look-up only
        leaves the event id for the write-back job's discovery to learn later.
        """
        try:
            return self._require_xm().find_events(request_id=request_id)
        except ApiError as exc:
            log_event(
                log,
                logging.WARNING,
                "trigger accepted but its event could not be looked up (found later)",
                request_id=request_id,
                error=str(exc),
            )
            return []

    def _landed(
        self, rec_id: str, request_id: str | None, known_events: set[str]
    ) -> _Outcome | None:
        """After an attempt with an unknown outcome: did the page reach xMatters?"""
        xm = self._require_xm()
        if request_id:
            events = xm.find_events(request_id=request_id)
            if events:
                return _Outcome(
                    f"earlier attempt had landed (requestId {request_id}); not re-sent",
                    request_id=request_id,
                    events=events,
                    terminated_all=True,
                )
        fresh = [e for e in self._live_events(rec_id) if str(e.get("id")) not in known_events]
        if fresh:
            ids = ", ".join(str(e.get("id")) for e in fresh)
            return _Outcome(
                f"earlier attempt had landed (live event {ids} found); not re-sent",
                request_id=str(fresh[0].get("requestId") or "") or None,
                events=fresh,
                terminated_all=True,
            )
        return None

    def _form_body(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        recipient = dict(payload["recipient"])
        options = (
            self.cfg.user_response_options
            if recipient.get("recipientType") == "PERSON"
            else self.cfg.group_response_options
        )
        return {
            "properties": fit_form_limits(payload["workflow"]),
            "recipients": [recipient],
            "responseOptions": [{"id": o} for o in options],
            "priority": self.cfg.event_priority,
        }

    def _terminate(self, rec_id: str, payload: dict[str, Any], unknown: bool) -> _Outcome:
        xm = self._require_xm()
        if self.cfg.mode == "direct":
            live = self._live_events(rec_id)
            for ev in live:
                xm.terminate_event(str(ev["id"]))
            return _Outcome(f"terminated {len(live)} live event(s)", terminated_all=True)
        if unknown and not self._live_events(rec_id):
            # The earlier Terminate trigger may have run: nothing of the incident is
            # live any more, so sending it again would only be a second request.
            return _Outcome(
                "earlier attempt had landed (no live event left); not re-sent",
                terminated_all=True,
            )
        rid = xm.trigger(payload["workflow"])
        return _Outcome(
            f"sent Terminate for {payload.get('type')} (requestId {rid})",
            request_id=rid,
            terminated_all=True,
        )

    def _note(
        self, rec_id: str, payload: dict[str, Any], unknown: bool, done_same_notes: int
    ) -> _Outcome:
        if self.ivanti is None:
            raise PermanentError("ivanti", "config", "Ivanti is not configured")
        text = str(payload["note"])
        fields: dict[str, Any] = {"NewNotes": text}
        assign = payload.get("assign") or None
        if assign:
            fields["Owner"] = assign["owner"]
            fields["Status"] = assign.get("status", "Active")
        if unknown or payload.get("workflow_note"):  # the journal check (writeback.py)
            journal = [str(n.get("NotesBody", "")) for n in self.ivanti.list_notes(rec_id)]
            wf = payload.get("workflow_note")
            there = written_already(journal, text, wf, done_same_notes, unknown=unknown)
            if there is not None:
                return _Outcome(there)
        try:
            entity = self.ivanti.update_incident(rec_id, fields)
        except NotFound:
            raise
        except PermanentError as exc:
            if not assign:
                raise
            # Ivanti refused the Owner/Status change (empty Category, prompt-gated
            # transition...): still write the note, then say why the assignment failed.
            log_event(
                log,
                logging.WARNING,
                "Ivanti refused the assignment; writing the note alone",
                rec_id=rec_id,
                owner=assign["owner"],
                error=exc.detail,
            )
            entity = self.ivanti.update_incident(rec_id, {"NewNotes": text})
            follow = (
                f"{self.notes_prefix} Assignment to {assign['owner']} failed: Ivanti said: "
                f"{exc.detail}"
            )
            return _Outcome(
                f"note written; assignment refused by Ivanti: {exc.detail}",
                written={"NewNotes": text},
                entity=entity,
                follow_up_note=follow,
            )
        summary = "note written" + (f"; Owner={assign['owner']} Status=Active" if assign else "")
        return _Outcome(summary, written=fields, entity=entity)

    # ----- recording ---------------------------------------------------------------------
    def _record_success(
        self, action_id: int, attempt_id: int, outcome: _Outcome, result: DeliveryResult
    ) -> None:
        now = self.now()
        with self.store.unit() as u:
            action, attempt = u.finish_attempt(action_id, attempt_id, now)
            attempt.outcome = "ok"
            action.state = "done"
            action.done_at = now
            action.updated_at = now
            action.outcome = outcome.summary
            action.last_error = None
            if outcome.request_id:
                action.request_id = outcome.request_id
            new_ids = []
            for ev in outcome.events:
                eid = str(ev.get("id"))
                new_ids.append(eid)
                row = u.add_event(
                    event_id=eid,
                    rec_id=action.rec_id,
                    outbox_id=action.id,
                    request_id=str(ev.get("requestId") or outcome.request_id or "") or None,
                    number=str(ev.get("eventId")) if ev.get("eventId") is not None else None,
                    status=str(ev.get("status") or "ACTIVE"),
                    now=now,
                )
                row.outbox_id = action.id
            if action.kind in ("page", "terminate") and outcome.terminated_all:
                # A page supersedes the incident's older events; a terminate ends them all.
                u.mark_terminated(action.rec_id, now, except_ids=new_ids)
            if action.kind == "note" and outcome.written is not None:
                self._remember_own_write(u, action.rec_id, outcome.written, outcome.entity)
            if outcome.follow_up_note and action.payload.get("assign"):
                self._patch_snapshot(u, action, revert=True)
            if outcome.follow_up_note:
                u.add_action(
                    rec_id=action.rec_id,
                    incident_number=action.incident_number,
                    kind="note",
                    payload={"note": outcome.follow_up_note, "assign": None},
                    reason=f"assignment refused for action {action.id}",
                    now=now,
                )
            result.done.append(action_id)
            log_event(
                log,
                logging.INFO,
                "delivered",
                action=action_id,
                kind=action.kind,
                incident=action.incident_number,
                attempt=action.attempts,
                outcome=outcome.summary,
            )

    def _patch_snapshot(self, u: Unit, action: OutboxAction, *, revert: bool) -> None:
        """Apply (or undo) an assignment's Owner/Status on the stored snapshot."""
        row = u.incident(action.rec_id)
        if row is None:
            return
        assign = dict(action.payload["assign"])
        snap = Unit.snapshot_of(row)
        if revert:
            prev = assign.get("prev") or {}
            if "owner" not in prev or snap.owner != assign.get("owner"):
                return  # someone changed it since; the poll's reading stands
            changes = {"owner": str(prev["owner"]), "status": str(prev["status"])}
        else:
            if "prev" not in assign:
                assign["prev"] = {"owner": snap.owner, "status": snap.status}
                action.payload = {**action.payload, "assign": assign}
            changes = {"owner": str(assign["owner"]), "status": str(assign.get("status", "Active"))}
        u.save_snapshot(snap.with_changes(**changes), self.policy, self.now(), existing=row)

    def _remember_own_write(
        self,
        u: Unit,
        rec_id: str,
        written: Mapping[str, Any],
        entity: Mapping[str, Any] | None,
    ) -> None:
        """Note the LastModDateTime of the daemon's own write, so `explain` can say
        the change the next poll sees was the daemon's."""
        row = u.incident(rec_id)
        if row is None:
            return
        if entity is not None:
            try:
                row.own_write_at = parse_ivanti_datetime(entity.get("LastModDateTime"))
            except ValueError:
                row.own_write_at = None

    def _record_failure(
        self, action_id: int, attempt_id: int, exc: Exception, result: DeliveryResult
    ) -> None:
        now = self.now()
        with self.store.unit() as u:
            action, attempt = u.finish_attempt(action_id, attempt_id, now)
            attempt.http_status = getattr(exc, "status", None)
            attempt.error = str(exc)[:2000]
            action.last_error = str(exc)[:2000]
            action.updated_at = now
            if (
                action.kind == "note"
                and action.payload.get("assign")
                and not isinstance(exc, OutcomeUnknown)
            ):
                self._patch_snapshot(u, action, revert=True)  # Ivanti did not change
            if isinstance(exc, PermanentError):
                attempt.outcome = "dead"
                self._dead(u, action, now, f"refused: {exc}")
                result.dead.append(action_id)
                return
            unknown = isinstance(exc, OutcomeUnknown)
            attempt.outcome = "unknown" if unknown else "retry"
            # An earlier unknown outcome stays unknown until a check settles it: if the
            # check itself failed (e.g. the event look-up timed out), the next try must
            # look again rather than re-send blindly.
            still_unknown = unknown or action.outcome == "unknown"
            action.outcome = "unknown" if still_unknown else "retrying"
            delay = self._backoff(action.attempts, getattr(exc, "retry_after", None))
            action.next_attempt_at = now + timedelta(seconds=delay)
            if unknown:  # as after a crash: let the peer finish before looking
                action.next_attempt_at = max(
                    action.next_attempt_at, attempt.started_at + self.cfg.settle
                )
            result.retried.append(action_id)
            log_event(
                log,
                logging.WARNING,
                "delivery failed; will retry",
                action=action_id,
                kind=action.kind,
                incident=action.incident_number,
                attempt=action.attempts,
                retry_in=f"{delay:.1f}s",
                outcome_unknown=unknown,
                error=str(exc),
            )

    def _backoff(self, attempts: int, retry_after: float | None) -> float:
        exp = min(self.cfg.backoff_max, self.cfg.backoff_base * (2 ** max(0, attempts - 1)))
        jittered = exp * (0.5 + self.rng.random() / 2)
        if retry_after is not None:
            return min(self.cfg.backoff_max, max(float(retry_after), 0.0)) or jittered
        return jittered
