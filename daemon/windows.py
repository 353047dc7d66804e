"""Releasing the pages maintenance windows held: once, level-triggered.

While a window of the rules file (``[[windows]]``, ``daemon/rules.py``) covers an
incident, a transition that would page it is recorded in ``window_holds`` and explained
("held by window 'core-switch upgrade' until 02:00 UTC"), not paged (``daemon/poller.py``).
After the window has closed, the first successful poll releases its holds, each incident
once, judged on its state *now*, not on the edge that was held:

* still open and critical, and not paged since: one page (the latest use case held),
  recorded as a change of source ``window`` with its reason;
* resolved / closed / canceled meanwhile, no longer critical, no longer tracked, or paged
  since by a change outside any window: nobody paged, the hold says why;
* covered by another window that is open now: held on until that one closes.

Releasing marks the holds in the same transaction that queues the page, so a crash or a
second leader never pages twice.
"""

from __future__ import annotations

from datetime import datetime

from daemon.domain import ActionKind, PlannedAction, Policy, Transition, TransitionKind, Verdict
from daemon.models import Change, Incident, WindowHold
from daemon.planner import plan, recipient_key
from daemon.rules import holding_window
from daemon.store import Unit
from daemon.timeutil import iso_utc


def release_due(
    u: Unit, policy: Policy, *, closed_by: datetime, now: datetime
) -> list[PlannedAction]:
    """Release the holds whose window closed by ``closed_by`` (the start of the poll that
    read the incidents' current state); the pages planned."""
    by_incident: dict[str, list[WindowHold]] = {}
    for hold in u.due_holds(closed_by):
        by_incident.setdefault(hold.rec_id, []).append(hold)
    planned: list[PlannedAction] = []
    for rec_id, holds in by_incident.items():
        row = u.incident(rec_id)
        outcome = _why_not(u, row, holds, policy)
        if outcome is None and row is not None and policy.rules is not None:
            snap = Unit.snapshot_of(row)
            still = holding_window(policy.rules.windows, snap, now)
            if still is not None:  # another window covers it now: held on until it closes
                window, until = still
                for hold in holds:
                    hold.until = until
                    hold.window = window.name
                continue
        if outcome is None and row is not None:
            action, outcome = _page(u, row, holds, policy, now)
            planned.append(action)
        for hold in holds:
            hold.released_at = now
            hold.outcome = outcome
    return planned


def _why_not(u: Unit, row: Incident | None, holds: list[WindowHold], policy: Policy) -> str | None:
    """Why the held page is not sent now, or None when it is."""
    if row is None or row.deleted:
        return "not paged: the incident is no longer tracked"
    snap = Unit.snapshot_of(row)
    cls = policy.status_class(snap.status)
    if cls.terminal:
        return f"not paged: {cls.value} during the window (Status {snap.status})"
    if not policy.critical(snap):
        priority = f"Priority {snap.priority}" if snap.priority else "no Priority"
        return f"not paged: no longer critical ({priority})"
    last_page = u.last_page_planned(row.rec_id)
    if last_page is not None and last_page >= holds[0].held_at:
        return f"not paged: paged since, at {iso_utc(last_page)}"
    return None


def _page(
    u: Unit, row: Incident, holds: list[WindowHold], policy: Policy, now: datetime
) -> tuple[PlannedAction, str]:
    latest = holds[-1]
    kind = TransitionKind(latest.kind)
    reason = (
        f"window '{latest.window}' closed ({iso_utc(latest.until)}): still open and critical, "
        f"paging the {kind.value} held at {iso_utc(latest.held_at)} ({latest.reason})"
    )
    action, queued_id = queue_page(u, row, kind, reason, policy, now, source="window")
    for hold in holds:
        hold.outbox_id = queued_id
    return action, f"paged: action #{queued_id}"


def queue_page(
    u: Unit,
    row: Incident,
    kind: TransitionKind,
    reason: str,
    policy: Policy,
    now: datetime,
    *,
    source: str,
) -> tuple[PlannedAction, int]:
    """Queue a page for a tracked incident outside a poll (a window's release, an
    operator's request): a change row of ``source`` saying why, the page planned as the
    poller plans one (team map included), the incident marked alerting; the action id."""
    snap = Unit.snapshot_of(row)
    verdict = Verdict(Transition(kind, row.rec_id, reason), reason)
    (action,) = plan(verdict, snap, alerting=row.alerting, policy=policy)
    assert action.kind is ActionKind.PAGE
    change = u.add_change(
        Change(
            cycle_id=None,
            rec_id=row.rec_id,
            incident_number=row.incident_number,
            seen_at=now,
            last_mod=snap.last_mod,
            last_mod_by=snap.last_mod_by,
            prev_status=snap.status,
            status=snap.status,
            prev_priority=snap.priority,
            priority=snap.priority,
            prev_owner_team=snap.owner_team,
            owner_team=snap.owner_team,
            prev_owner=snap.owner,
            owner=snap.owner,
            transition=kind.value,
            reason=reason,
            source=source,
        ),
        need_id=True,
    )
    queued = u.add_action(
        rec_id=row.rec_id,
        incident_number=row.incident_number,
        kind=action.kind.value,
        payload=dict(action.payload),
        reason=reason,
        now=now,
        change_id=change.id,
        recipient=recipient_key(action.payload.get("recipient")),
    )
    row.alerting = True
    # as the rules in use judge it (the deliverer sends a page only while it is critical;
    # a row saved under older rules may say otherwise)
    row.critical = policy.critical(snap)
    return action, queued.id
