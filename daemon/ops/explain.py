"""``ivanti-xmatters explain INCIDENT``: the whole story of one incident, in time order:
its changes and the rule that judged each, its actions and their attempts, its xMatters
events and the responses on them."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from daemon.config import Settings
from daemon.models import Attempt, AuditSeen, Change, OutboxAction, XmEvent
from daemon.ops import render
from daemon.ops.command import fail, read, subparser
from daemon.ops.incidents import incident_dict
from daemon.ops.render import dump, iso, pairs, when
from daemon.store import Store, Unit
from daemon.timeutil import parse_utc


@dataclass(frozen=True)
class Entry:
    """One line of an incident's story; ``order`` then ``sub`` break ties of equal times."""

    at: datetime | None
    order: int
    sub: int
    kind: str
    what: str
    detail: tuple[str, ...]
    ref: Mapping[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": iso(self.at),
            "kind": self.kind,
            "what": self.what,
            "detail": "; ".join(self.detail),
            **self.ref,
        }


def _change_entry(c: Change) -> Entry:
    fields = (
        ("status", c.prev_status, c.status),
        ("priority", c.prev_priority, c.priority),
        ("team", c.prev_owner_team, c.owner_team),
        ("owner", c.prev_owner, c.owner),
    )
    if all(prev is None for _, prev, _ in fields):
        moved = "first seen: " + ", ".join(f"{n} {new or '-'}" for n, _, new in fields)
    else:
        diffs = [f"{n} {prev or '-'} -> {new or '-'}" for n, prev, new in fields if prev != new]
        moved = "; ".join(diffs) if diffs else "no tracked field changed"
    detail = (
        moved,
        f"modified by {c.last_mod_by or '?'} at {iso(c.last_mod)} (seen by {c.source})",
        ("rule: " if c.transition else "why nothing fired: ") + c.reason,
    )
    what = f"transition {c.transition}" if c.transition else "no transition"
    return Entry(
        c.seen_at,
        1,
        c.id,
        "change",
        what,
        detail,
        {"change_id": c.id, "transition": c.transition, "reason": c.reason},
    )


def _action_entries(a: OutboxAction, attempts: Sequence[Attempt], now: datetime) -> list[Entry]:
    detail = [f"why: {a.reason}"]
    if a.recipient:
        detail.append(f"recipient: {a.recipient}")
    if a.outcome:
        detail.append(f"outcome: {a.outcome}")
    if a.last_error:
        detail.append(f"last error: {a.last_error}")
    if a.state == "pending" and a.accepted_at is not None:
        detail.append(f"accepted by xMatters {iso(a.accepted_at)}; waiting for its event to appear")
    if a.unsettled and a.state in ("pending", "dead"):
        detail.append(
            "an earlier attempt may have reached the peer: checked there before any re-send"
        )
    if a.requeues:
        detail.append(
            f"requeued {a.requeues}x, last {iso(a.requeued_at)} by {a.requeued_by or '?'}"
        )
    if a.state == "pending":
        detail.append(f"next attempt: {when(a.next_attempt_at, now)}")
    if a.done_at:
        detail.append(f"finished: {iso(a.done_at)}")
    tries = f"{a.attempts} attempt{'s' if a.attempts != 1 else ''}"
    entries = [
        Entry(
            a.created_at,
            2,
            a.id,
            f"action:{a.kind}",
            f"action #{a.id} {a.kind}: {a.state} ({tries})",
            tuple(detail),
            {"action_id": a.id, "state": a.state},
        )
    ]
    for t in attempts:
        extra = []
        if t.http_status is not None:
            extra.append(f"HTTP {t.http_status}")
        if t.error:
            extra.append(f"error: {t.error}")
        if t.finished_at is None:
            extra.append("never finished (daemon stopped mid-request): outcome unknown")
        if t.replica:
            extra.append(f"by {t.replica}")
        entries.append(
            Entry(  # same order/sub as its action: shown right under it (stable sort)
                t.started_at,
                2,
                a.id,
                "attempt",
                f"action #{a.id} try {t.number}: {t.outcome or 'unfinished'}",
                tuple(extra),
                {
                    "action_id": a.id,
                    "attempt": t.number,
                    "outcome": t.outcome,
                    "http_status": t.http_status,
                    "replica": t.replica,
                },
            )
        )
    return entries


def _event_entries(e: XmEvent) -> list[Entry]:
    number = f" (#{e.number})" if e.number else ""
    counts = f"delivered {e.delivered}, failed {e.failed}, responded {e.responded}"
    made = f"made by action #{e.outbox_id}" if e.outbox_id else "found in xMatters"
    entries = [
        Entry(
            e.created_at,
            4,
            0,
            "xm_event",
            f"xMatters event {e.event_id}{number} created",
            (f"status now {e.status}; {made}", counts),
            {"event_id": e.event_id, "status": e.status},
        )
    ]
    if e.terminated_at is not None:
        entries.append(
            Entry(
                e.terminated_at,
                5,
                0,
                "xm_event_terminated",
                f"xMatters event {e.event_id}{number} terminated",
                (),
                {"event_id": e.event_id},
            )
        )
    return entries


def _audit_entry(s: AuditSeen, actions: Mapping[int, OutboxAction]) -> Entry:
    if s.outbox_id is None:
        note = "no note written for it"
    else:
        action = actions.get(s.outbox_id)
        state = action.state if action else "?"
        note = f"-> note action #{s.outbox_id} ({state})"
    return Entry(
        s.at or s.handled_at,
        6,
        0,
        "audit",
        f"xMatters {s.type} on event {s.event_id}",
        (s.summary, note, f"handled {iso(s.handled_at)}"),
        {"audit_id": s.audit_id, "type": s.type, "note_action_id": s.outbox_id},
    )


def gather_explain(u: Unit, ref: str, *, now: datetime) -> dict[str, Any] | None:
    """The whole story of one incident, in time order; None if it is unknown."""
    row = u.find_incident(ref)
    if row is None:
        return None
    changes = u.changes_for(row.rec_id)
    actions = u.outbox_for(row.rec_id)
    attempts = u.attempts_by_action(a.id for a in actions)
    events = u.events_for(row.rec_id)
    audits = u.audits_for(row.rec_id)
    by_id = {a.id: a for a in actions}
    entries: list[Entry] = [_change_entry(c) for c in changes]
    for a in actions:
        entries += _action_entries(a, attempts.get(a.id, []), now)
    for e in events:
        entries += _event_entries(e)
    entries += [_audit_entry(s, by_id) for s in audits]
    floor = datetime.min.replace(tzinfo=UTC)
    entries.sort(key=lambda x: (x.at or floor, x.order, x.sub))
    live = sum(1 for e in events if e.status != "TERMINATED")
    return {
        "incident": incident_dict(row, live),
        "timeline": [e.as_dict() for e in entries],
        "lines": [
            {"at": iso(e.at), "kind": e.kind, "what": e.what, "detail": list(e.detail)}
            for e in entries
        ],
    }


def render_explain(d: Mapping[str, Any], now: datetime) -> str:
    inc = d["incident"]
    first = parse_utc(inc["first_seen"]) if inc["first_seen"] else None
    tracked = when(first, now)
    if inc["baseline"]:
        tracked += "  (baseline: already existed when the daemon started; nobody was paged for it)"
    state = f"{inc['status']} ({inc['status_class']})" + (
        ", DELETED in Ivanti" if inc["deleted"] else ""
    )
    head = [
        f"Incident {inc['number']}  RecId {inc['rec_id']}",
        pairs(
            [
                (
                    "now",
                    f"{state}, priority {inc['priority']}{' (critical)' if inc['critical'] else ''}",
                ),
                ("team / owner", f"{inc['team'] or '-'} / {inc['owner'] or '-'}"),
                (
                    "alerting",
                    f"{'yes' if inc['alerting'] else 'no'}; {inc['live_events']} live xMatters event(s)",
                ),
                ("tracked since", tracked),
                ("last modified", f"{inc['last_mod']} by {inc['last_mod_by'] or '?'}"),
            ],
            indent="  ",
        ),
        "",
        "timeline (UTC):",
    ]
    body = []
    pad = " " * 24
    for e in d["lines"]:
        body.append(f"{e['at'] or '?':<22}  {e['what']}")
        body += [f"{pad}{line}" for line in e["detail"] if line]
    return "\n".join(head + (body or ["  nothing recorded"]))


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    explain = subparser(
        sub,
        "explain",
        "the whole story of one incident: changes, rules, actions, events, responses",
    )
    explain.add_argument("incident", metavar="INCIDENT", help="IncidentNumber or RecId")


def run(args: argparse.Namespace) -> int:
    def work(store: Store, u: Unit, settings: Settings) -> int:
        now = render.utcnow()
        data = gather_explain(u, args.incident, now=now)
        if data is None:
            return fail(
                args,
                f"incident {args.incident!r} is not tracked: no IncidentNumber or RecId matches "
                "(it may be out of IVANTI_SCOPE_FILTER, or not changed since the daemon started)",
            )
        if args.json:
            dump({k: v for k, v in data.items() if k != "lines"})
        else:
            print(render_explain(data, now))
        return 0

    return read(args, work)
