"""The outbox deliverer: carries out pending actions on xMatters and Ivanti.

Guarantees, and how:
- In order per incident: only the oldest pending action of an incident is ever
  tried, so a terminate never overtakes its page, nor a note its predecessor.
- Nothing lost: an action leaves ``pending`` only as ``done``, ``dead`` (kept for
  inspection and ``retry``) or ``skipped`` by a person.
- Two lanes per incident: pages and terminations (xMatters) in one, notes (Ivanti)
  in the other, so a note that keeps failing never holds up a page.
- Nothing doubled: an attempt is committed *before* the request goes out. An
  attempt found unfinished (the daemon died mid-request) or one that ended in a
  timeout or dropped connection leaves the action ``unsettled``, and the next try
  first asks the peer whether it already happened: for a page, whether xMatters has
  an event that belongs to *this* page (its requestId, else its Type and recipient,
  created after the page was first sent: see ``daemon.landed``); for a note,
  whether the incident's journal already holds that note. Where the peer cannot be
  asked (no xMatters REST access) the page is re-sent and the log says it may be
  a duplicate: a possible duplicate beats a certain miss.
- A page is done when its event is seen, not when the trigger is accepted: a
  trigger that xMatters' flood control suppressed, or whose flow failed, answers
  202 and makes no event. After ``event_timeout`` without one it is re-sent (after
  a last look), with a WARNING.
- Retries back off exponentially with jitter, honouring Retry-After; after
  ``max_attempts`` or ``max_age`` the action is dead-lettered with its reason. An
  authentication failure (401) is retried until ``max_age`` (a credential blip or a
  rotated password must not lose pages), with an ERROR line each time.
- Flood control: xMatters suppresses (drops) the 5th alert within a minute to the
  same recipients, counted when it accepts each. Pages are therefore queued, never
  dropped, so that at most ``flood_limit`` go to one recipient in any 60 s plus
  ``flood_margin``, counted from when xMatters answered (the latest moment it can
  have accepted a page), never from when the request started.
- A page goes out only while its incident is still open and critical: one retried
  after the incident was resolved is skipped, saying why.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from daemon.domain import FORM_PROPERTY_LIMITS, Policy
from daemon.errors import ApiError, AuthError, NotFound, OutcomeUnknown, PermanentError
from daemon.ivanti import IvantiClient
from daemon.landed import event_property, proof_of_page
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


_AWAITING = "; waiting for its event to appear"  # the outcome of a page until _confirm


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
    recid_properties: tuple[str, ...] = ("RecId#en", "RecId")
    user_response_options: tuple[str, ...] = ()
    group_response_options: tuple[str, ...] = ()
    event_priority: str = "MEDIUM"
    form_trigger_url: str | None = None
    # Added to xMatters' 60 s flood-control window: the daemon's and xMatters' clocks
    # and the time an answer takes to come back.
    flood_margin: timedelta = timedelta(seconds=5)
    # How long after xMatters accepted a page its event may take to appear (a flow
    # creates it asynchronously) before the page counts as not delivered.
    event_timeout: timedelta = timedelta(seconds=120)
    # How far an event's creation time (xMatters' clock) may precede the page's first
    # attempt (the daemon's clock) and still be taken as that page's.
    clock_margin: timedelta = timedelta(seconds=10)
    # After this many failed attempts at a note with an assignment, the note is
    # written alone (and a second note says the assignment failed).
    assign_fallback_after: int = 3


@dataclass
class DeliveryResult:
    done: list[int] = field(default_factory=list)
    retried: list[int] = field(default_factory=list)
    dead: list[int] = field(default_factory=list)
    deferred: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    # pages accepted by xMatters whose event did not appear within event_timeout
    no_event: list[int] = field(default_factory=list)
    # pages xMatters accepted in this round whose event is not visible yet (a flow creates
    # it asynchronously); done once it is seen
    awaiting_event: list[int] = field(default_factory=list)

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
    # the trigger was accepted, its event not seen yet: the page waits for it
    awaiting_event: bool = False
    skipped: bool = False  # nothing was sent, and nothing needs to be


@dataclass(frozen=True)
class _Call:
    """What one attempt is to do, read from the DB when the attempt was recorded."""

    kind: str
    rec_id: str
    payload: dict[str, Any]
    unknown: bool  # an earlier attempt may have landed: check before re-sending
    request_id: str | None
    since: datetime  # when this action was first sent
    known_events: frozenset[str]  # events the daemon ties to other actions
    done_same_notes: int
    assign_fallback: bool
    last_error: str | None
    stale: str | None = None  # why this page should no longer go out, if it should not


@dataclass(frozen=True)
class _Confirmation:
    """A page xMatters accepted whose event has not been seen yet."""

    action_id: int
    rec_id: str
    payload: dict[str, Any]
    request_id: str | None
    accepted_at: datetime
    since: datetime
    known_events: frozenset[str]


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
        self._recid_name = ""  # the RecId spelling that found events (the tenant's)

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
            for f in fields(DeliveryResult):
                getattr(total, f.name).extend(getattr(r, f.name))
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
            cut = head.unfinished_attempt
            if action.kind == "page" and action.accepted_at is not None and cut is None:
                check = self._confirmation(u, action)
            elif not self._may_send(u, head, now, result):
                return
            else:
                check = None
                attempt_id, call = self._start(u, head, now)
        if check is not None:
            self._confirm(check, result)
            return
        # The attempt is committed: from here a crash leaves it unfinished, and the
        # next try checks the peer before re-sending.
        try:
            outcome = self._perform(call)
        except ApiError as exc:  # Transient, OutcomeUnknown and Permanent alike
            self._record_failure(action_id, attempt_id, exc, result)
            return
        self._record_success(action_id, attempt_id, outcome, result)

    def _start(self, u: Unit, head: Head, now: datetime) -> tuple[int, _Call]:
        """Record the attempt (before anything is sent) and what it is to send."""
        action = head.action
        cut = head.unfinished_attempt
        unknown = cut is not None or action.unsettled
        if cut is not None:
            cut.finished_at = now
            cut.outcome = "unknown"
            cut.error = "attempt cut short (daemon stopped mid-request)"
        if action.kind == "note" and not unknown:  # a late Assign to me (writeback.py)
            settle_assignment(u, action, now, self.notes_prefix)
        fallback = self._assignment_fallback(action)
        since = self._first_sent(u, action) or now
        attempt_id = u.start_attempt(action, now).id
        if action.kind == "note" and action.payload.get("assign") and not fallback:
            # Record the Owner/Status the daemon is about to write *before* writing
            # it, so no poll (even one after a crash right after Ivanti accepted
            # it) reads the daemon's own change back as a transition.
            self._patch_snapshot(u, action, revert=False)
        call = _Call(
            kind=action.kind,
            rec_id=action.rec_id,
            payload=dict(action.payload),
            unknown=unknown,
            request_id=action.request_id,
            since=since,
            known_events=self._known_events(u, action),
            done_same_notes=(
                u.done_notes_with_text(action.rec_id, str(action.payload.get("note", "")))
                if action.kind == "note"
                else 0
            ),
            assign_fallback=fallback,
            last_error=action.last_error,
            stale=self._no_longer_pages(u, action) if action.kind == "page" else None,
        )
        return attempt_id, call

    def _may_send(self, u: Unit, head: Head, now: datetime, result: DeliveryResult) -> bool:
        """Whether the head may be sent now; if not, it is rescheduled (or skipped)."""
        action = head.action
        if action.kind == "page" and not action.unsettled and head.unfinished_attempt is None:
            # (an unsettled page is looked up first: see _page)
            why = self._no_longer_pages(u, action)
            if why is not None:
                action.state = "skipped"
                action.outcome = f"not sent: {why}"
                action.updated_at = now
                action.done_at = now
                result.skipped.append(action.id)
                log_event(
                    log,
                    logging.WARNING,
                    "page not sent: its incident no longer pages",
                    action=action.id,
                    incident=action.incident_number,
                    why=why,
                )
                return False
        if action.kind == "page":
            wait_until = self._flood_wait(u, action, now)
            if wait_until is not None:
                action.next_attempt_at = wait_until
                action.outcome = (  # nothing is lost by waiting: `unsettled` is kept
                    f"queued: xMatters flood control (at most "
                    f"{self.cfg.flood_limit_per_min} alerts a minute to {action.recipient})"
                )
                result.deferred.append(action.id)
                return False
        cut = head.unfinished_attempt
        if cut is not None and now < cut.started_at + self.cfg.settle:
            # The daemon died with this request in flight, and the peer may act on
            # it for as long as the request could have lasted. Looking earlier could
            # find nothing yet and re-send: two pages. So look only after that.
            action.next_attempt_at = cut.started_at + self.cfg.settle
            action.outcome = "unknown"
            action.unsettled = True
            result.deferred.append(action.id)
            return False
        return True

    def _no_longer_pages(self, u: Unit, action: OutboxAction) -> str | None:
        """Why a page that has not gone out yet should not go out at all: its incident
        was resolved (or is no longer critical) since it was planned, as when a dead
        page is retried after the fact. Its event would never be terminated."""
        row = u.incident(action.rec_id)
        if row is None or row.deleted:
            return None if row is None else f"incident {action.incident_number} was deleted"
        if row.status_class != "open":
            return f"incident {action.incident_number} is {row.status} now"
        if not row.critical:
            return (
                f"incident {action.incident_number} is Priority {row.priority} now (not critical)"
            )
        return None

    def _assignment_fallback(self, action: OutboxAction) -> bool:
        """A note whose Owner/Status write keeps failing is written alone from now on."""
        return (
            action.kind == "note"
            and bool(action.payload.get("assign"))
            and action.attempts >= self.cfg.assign_fallback_after
        )

    @staticmethod
    def _first_sent(u: Unit, action: OutboxAction) -> datetime | None:
        attempts = u.attempts_for(action.id)
        return attempts[0].started_at if attempts else None

    @staticmethod
    def _known_events(u: Unit, action: OutboxAction) -> frozenset[str]:
        """Events the daemon ties to *other* actions: never proof that this page landed."""
        return frozenset(
            e.event_id for e in u.events_for(action.rec_id) if e.outbox_id != action.id
        )

    def _head(self, u: Unit, action_id: int, now: datetime) -> Head | None:
        action = u.action(action_id)
        if action is None or action.state != "pending" or action.next_attempt_at > now:
            return None
        return Head(action, u.unfinished_attempt(action.id))

    def _give_up(
        self, u: Unit, action: OutboxAction, now: datetime, result: DeliveryResult
    ) -> bool:
        too_many = action.attempts >= self.cfg.max_attempts and not self._last_was_auth(u, action)
        too_old = now - (action.queued_at or action.created_at) > self.cfg.max_age
        if not (too_many or too_old):
            return False
        why = (
            f"gave up after {action.attempts} attempts"
            if too_many
            else f"gave up: older than {self.cfg.max_age}"
        )
        if action.accepted_at is not None:
            # accepted but its event never seen: a `retry` looks again before re-sending
            action.unsettled = True
            action.accepted_at = None
        self._dead(u, action, now, f"{why}; last error: {action.last_error or 'none'}")
        result.dead.append(action.id)
        return True

    @staticmethod
    def _last_was_auth(u: Unit, action: OutboxAction) -> bool:
        """An authentication failure is retried until max_age, not max_attempts."""
        attempts = u.attempts_for(action.id)
        return bool(attempts) and attempts[-1].http_status == 401

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
        if not action.recipient:
            return None
        limit = self.cfg.flood_limit_per_min
        window = timedelta(seconds=60) + self.cfg.flood_margin
        # Sends stamped after `now` happened before the clock was set back: xMatters
        # counts its own trailing minute, which does not include them.
        sent = [
            t
            for t in u.pages_sent_since(action.recipient, now - window, besides=action.id)
            if t <= now
        ]
        if len(sent) < limit:
            return None
        return sent[-limit] + window

    # ----- confirming an accepted page ---------------------------------------------------
    def _confirmation(self, u: Unit, action: OutboxAction) -> _Confirmation:
        assert action.accepted_at is not None
        return _Confirmation(
            action_id=action.id,
            rec_id=action.rec_id,
            payload=dict(action.payload),
            request_id=action.request_id,
            accepted_at=action.accepted_at,
            since=self._first_sent(u, action) or action.accepted_at,
            known_events=self._known_events(u, action),
        )

    def _confirm(self, c: _Confirmation, result: DeliveryResult) -> None:
        """Look for the event of a page xMatters accepted; done when it is there."""
        error: str | None = None
        try:
            events = self._proof(c.rec_id, c.payload, c.request_id, c.since, c.known_events)
        except ApiError as exc:
            events, error = [], str(exc)
        now = self.now()
        with self.store.unit() as u:
            action = u.action(c.action_id)
            if action is None or action.state != "pending" or action.accepted_at is None:
                return
            if events:
                self._finish_page(u, action, events, now)
                # keep what the sending attempt said (e.g. that it was a re-send)
                sent = (action.outcome or "").removesuffix(_AWAITING) or (
                    f"triggered {c.payload.get('type')} (requestId {c.request_id})"
                )
                action.outcome = (
                    f"{sent}; event "
                    + ", ".join(str(e.get("id")) for e in events)
                    + f", seen {int((now - c.accepted_at).total_seconds())} s after acceptance"
                )
                result.done.append(action.id)
                return
            waited = now - c.accepted_at
            if waited < self.cfg.event_timeout:
                step = min(30.0, max(1.0, waited.total_seconds()))
                action.next_attempt_at = now + timedelta(seconds=step)
                action.updated_at = now
                if error:
                    action.last_error = f"looking for the page's event: {error}"
                result.deferred.append(action.id)
                return
            why = (
                f"xMatters accepted the page (requestId {c.request_id}) at "
                f"{c.accepted_at.isoformat()} but no event for it appeared within "
                f"{int(self.cfg.event_timeout.total_seconds())} s: flood control suppressed "
                "it or the flow failed (see the workflow's Activity panel)"
                + (f"; last look-up failed: {error}" if error else "")
            )
            tried = u.attempts_for(action.id)
            if tried:  # the attempt that was accepted did not page anyone: say so there
                tried[-1].outcome = "no_event"
                tried[-1].error = why
            action.accepted_at = None
            action.unsettled = True  # one more look before it is sent again
            action.outcome = "unknown"
            action.last_error = why
            action.next_attempt_at = now
            action.updated_at = now
            result.no_event.append(action.id)
            log_event(
                log,
                logging.WARNING,
                "page accepted but no event appeared; sending it again",
                action=action.id,
                incident=action.incident_number,
                request_id=c.request_id,
                waited=f"{int(waited.total_seconds())}s",
            )

    def _finish_page(
        self, u: Unit, action: OutboxAction, events: Sequence[Mapping[str, Any]], now: datetime
    ) -> None:
        """The page's event is known: the page is done, and supersedes older events."""
        action.state = "done"
        action.done_at = now
        action.updated_at = now
        action.last_error = None
        action.unsettled = False
        new_ids = self._record_events(u, action, events, action.request_id, now)
        u.mark_terminated(action.rec_id, now, except_ids=new_ids)

    @staticmethod
    def _record_events(
        u: Unit,
        action: OutboxAction,
        events: Sequence[Mapping[str, Any]],
        request_id: str | None,
        now: datetime,
    ) -> list[str]:
        """Tie the events of a page to it; returns their ids."""
        new_ids = []
        for ev in events:
            eid = str(ev.get("id"))
            new_ids.append(eid)
            row = u.add_event(
                event_id=eid,
                rec_id=action.rec_id,
                outbox_id=action.id,
                request_id=str(ev.get("requestId") or request_id or "") or None,
                number=str(ev.get("eventId")) if ev.get("eventId") is not None else None,
                status=str(ev.get("status") or "ACTIVE"),
                now=now,
            )
            row.outbox_id = action.id
        return new_ids

    # ----- the calls ---------------------------------------------------------------------
    def _perform(self, call: _Call) -> _Outcome:
        if call.kind == "page":
            return self._page(call)
        if call.kind == "terminate":
            return self._terminate(call.rec_id, call.payload, call.unknown)
        if call.kind == "note":
            return self._note(call)
        raise PermanentError("daemon", call.kind, f"unknown action kind {call.kind!r}")

    def _require_xm(self) -> XMattersClient:
        if self.xm is None:
            raise PermanentError("xmatters", "config", "xMatters is not configured")
        return self.xm

    def _can_look(self) -> bool:
        """Whether xMatters can be asked anything (REST credentials are configured)."""
        return self.xm is not None and self.xm.has_rest

    def _live_events(self, rec_id: str) -> list[dict[str, Any]]:
        return self._incident_events(rec_id, statuses=LIVE)

    def _incident_events(self, rec_id: str, **filters: Any) -> list[dict[str, Any]]:
        """The xMatters events whose RecId property is ``rec_id``.

        Whether the ``propertyName`` filter wants ``RecId#en`` or plain ``RecId`` is an
        open question (xmatters-api.md §9.4), and a name the tenant does not know finds
        nothing rather than failing. So each configured spelling is tried in turn until
        one finds events, and from then on that one alone: it is the tenant's spelling, and
        an incident without events would otherwise cost a request for every other one.
        Events whose RecId property says otherwise are dropped, in case a tenant ignores an
        unknown filter.
        """
        xm = self._require_xm()
        names = [self._recid_name] if self._recid_name else self.cfg.recid_properties
        for name in names:
            events = [
                e
                for e in xm.find_events(property_name=name, property_value=rec_id, **filters)
                if event_property(e, "RecId") in (None, rec_id)
            ]
            if events:
                self._recid_name = name
                return events
        return []

    def _page(self, call: _Call) -> _Outcome:
        xm = self._require_xm()
        payload = call.payload
        recipient = payload.get("recipient") or {}
        if not recipient.get("id"):
            raise PermanentError(
                "daemon",
                "page",
                "incident has neither Owner nor OwnerTeam: nobody to page; set one in Ivanti "
                "and replay with `ivanti-xmatters retry`",
            )
        resent = ""
        if call.unknown and self._can_look():
            found = self._proof(
                call.rec_id, payload, call.request_id, call.since, call.known_events
            )
            if found:
                ids = ", ".join(str(e.get("id")) for e in found)
                return _Outcome(
                    f"earlier attempt had landed (event {ids} is this page's); not re-sent",
                    request_id=call.request_id or str(found[0].get("requestId") or "") or None,
                    events=found,
                    terminated_all=True,
                )
            if call.stale:
                return _Outcome(f"not sent: {call.stale}", skipped=True)
            resent = "; re-sent: no event of this page found after an attempt of unknown outcome"
        elif call.stale:
            return _Outcome(f"not sent: {call.stale}", skipped=True)
        elif call.unknown:
            resent = (
                "; re-sent without a check (no xMatters REST access to look the earlier "
                "attempt up): this may have paged twice"
            )
            log_event(
                log,
                logging.WARNING,
                "re-sending a page whose earlier attempt may have landed; without xMatters "
                "REST credentials it cannot be checked, so this may page twice",
                incident=payload.get("workflow", {}).get("IncidentID"),
                type=payload.get("type"),
            )
        if self.cfg.mode == "direct":
            for ev in self._live_events(call.rec_id):
                xm.terminate_event(str(ev["id"]))
            rid = xm.trigger(self._form_body(payload), url=self.cfg.form_trigger_url)
        else:
            rid = xm.trigger(fit_form_limits(payload["workflow"]))
        summary = f"triggered {payload.get('type')} (requestId {rid}){resent}"
        if not self._can_look():
            return _Outcome(
                summary + "; event not looked up (no xMatters REST access)",
                request_id=rid,
                terminated_all=True,
            )
        events = self._events_of_request(call.rec_id, payload, rid, call.since, call.known_events)
        if events:
            summary += "; event " + ", ".join(str(e.get("id")) for e in events)
            return _Outcome(summary, request_id=rid, events=events, terminated_all=True)
        return _Outcome(summary + _AWAITING, request_id=rid, awaiting_event=True)

    def _proof(
        self,
        rec_id: str,
        payload: Mapping[str, Any],
        request_id: str | None,
        since: datetime,
        known: frozenset[str],
    ) -> list[dict[str, Any]]:
        """The xMatters events that belong to this page: by its requestId, else those
        of the incident that match its Type and recipient and were created after it
        was first sent (``daemon.landed``). [] when there are none."""
        xm = self._require_xm()
        if request_id:
            events = xm.find_events(request_id=request_id)
            if events:
                return events
        candidates = self._incident_events(rec_id, embed=("properties", "recipients"))
        return proof_of_page(
            candidates,
            page_type=str(payload.get("type") or ""),
            recipient=str((payload.get("recipient") or {}).get("id") or ""),
            since=since,
            known=known,
            margin=self.cfg.clock_margin,
        )

    def _events_of_request(
        self,
        rec_id: str,
        payload: Mapping[str, Any],
        request_id: str,
        since: datetime,
        known: frozenset[str],
    ) -> list[dict[str, Any]]:
        """The events of an accepted trigger, or [] when none is visible yet or the
        look-up fails: the page then waits for its event (``_confirm``), it is not
        re-sent, as the trigger was accepted."""
        try:
            return self._proof(rec_id, payload, request_id, since, known)
        except ApiError as exc:
            log_event(
                log,
                logging.WARNING,
                "trigger accepted but its event could not be looked up (looked up again)",
                request_id=request_id,
                error=str(exc),
            )
            return []

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
        if unknown and self._can_look() and not self._live_events(rec_id):
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

    def _note(self, call: _Call) -> _Outcome:
        if self.ivanti is None:
            raise PermanentError("ivanti", "config", "Ivanti is not configured")
        rec_id, payload = call.rec_id, call.payload
        text = str(payload["note"])
        fields: dict[str, Any] = {"NewNotes": text}
        assign = payload.get("assign") or None
        if call.unknown or payload.get("workflow_note"):  # the journal check (writeback.py)
            journal = [str(n.get("NotesBody", "")) for n in self.ivanti.list_notes(rec_id)]
            wf = payload.get("workflow_note")
            there = written_already(journal, text, wf, call.done_same_notes, unknown=call.unknown)
            if there is not None:
                return _Outcome(there)
        if assign and call.assign_fallback:
            # The Owner/Status write has failed attempt after attempt (an Owner that is
            # not a valid Ivanti login answers 500): the response itself must not wait.
            entity = self.ivanti.update_incident(rec_id, fields)
            why = call.last_error or "no answer"
            return _Outcome(
                f"note written alone; the assignment to {assign['owner']} kept failing: {why}",
                written=fields,
                entity=entity,
                follow_up_note=(
                    f"{self.notes_prefix} Assignment to {assign['owner']} failed after "
                    f"{self.cfg.assign_fallback_after} attempts; set the Owner by hand"
                ),
            )
        if assign:
            fields["Owner"] = assign["owner"]
            fields["Status"] = assign.get("status", "Active")
        try:
            entity = self.ivanti.update_incident(rec_id, fields)
        except NotFound:
            raise
        except PermanentError as exc:
            if not assign or isinstance(exc, AuthError):
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
            if action.kind == "page":
                action.sent_at = now  # the latest moment xMatters can have counted it
            if outcome.request_id:
                action.request_id = outcome.request_id
            if outcome.awaiting_event:
                # Accepted, but no event yet: done only once it is seen (``_confirm``).
                action.accepted_at = now
                action.unsettled = False
                action.outcome = outcome.summary
                action.last_error = None
                action.next_attempt_at = now + timedelta(seconds=1)
                result.deferred.append(action_id)
                result.awaiting_event.append(action_id)
                log_event(
                    log,
                    logging.INFO,
                    "page accepted by xMatters; waiting for its event",
                    action=action_id,
                    incident=action.incident_number,
                    request_id=outcome.request_id,
                )
                return
            action.state = "skipped" if outcome.skipped else "done"
            action.done_at = now
            action.updated_at = now
            action.outcome = outcome.summary
            action.last_error = None
            action.unsettled = False
            if outcome.skipped:
                action.sent_at = None  # nothing went out: it counts towards no flood limit
                result.skipped.append(action_id)
                log_event(
                    log,
                    logging.WARNING,
                    "page not sent: its incident no longer pages",
                    action=action_id,
                    incident=action.incident_number,
                    why=outcome.summary,
                )
                return
            new_ids = self._record_events(u, action, outcome.events, outcome.request_id, now)
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
            unknown = isinstance(exc, OutcomeUnknown)
            if action.kind == "page" and unknown:
                action.sent_at = now  # xMatters may have counted it up to now
            if action.kind == "note" and action.payload.get("assign") and not unknown:
                self._patch_snapshot(u, action, revert=True)  # Ivanti did not change
            auth = isinstance(exc, AuthError) and attempt.http_status == 401
            if isinstance(exc, PermanentError) and not auth:
                attempt.outcome = "dead"
                self._dead(u, action, now, f"refused: {exc}")
                result.dead.append(action_id)
                return
            attempt.outcome = "unknown" if unknown else "retry"
            # An earlier unknown outcome stays unknown until a check settles it: if the
            # check itself failed (e.g. the event look-up timed out), the next try must
            # look again rather than re-send blindly.
            action.unsettled = bool(unknown or action.unsettled)
            action.outcome = "unknown" if action.unsettled else "retrying"
            delay = self._backoff(action.attempts, getattr(exc, "retry_after", None))
            action.next_attempt_at = now + timedelta(seconds=delay)
            if unknown:  # as after a crash: let the peer finish before looking
                action.next_attempt_at = max(
                    action.next_attempt_at, attempt.started_at + self.cfg.settle
                )
            result.retried.append(action_id)
            if auth:
                api = "Ivanti" if action.kind == "note" else "xMatters"
                log_event(
                    log,
                    logging.ERROR,
                    f"{api} refused the daemon's credentials (401); retrying with backoff "
                    f"until the action is {self.cfg.max_age} old: check them "
                    "(`ivanti-xmatters check`)",
                    action=action_id,
                    kind=action.kind,
                    incident=action.incident_number,
                    attempt=action.attempts,
                    retry_in=f"{delay:.1f}s",
                    error=str(exc),
                )
                return
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
