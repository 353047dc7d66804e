"""``ivanti-xmatters outbox``, ``retry`` and ``skip``: the queued, done, dead and skipped
actions, and the two fixes an operator may make to them. ``outbox`` only reads; ``retry``
(dead actions back in the queue) and ``skip`` (give one up, with a reason) write, each in
one short transaction."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from daemon.config import Settings
from daemon.models import OutboxAction
from daemon.ops import render
from daemon.ops.command import fail, positive, read, subparser, write
from daemon.ops.render import dump, iso, table, truncate, when
from daemon.store import Store, Unit
from daemon.timeutil import parse_utc

OUTBOX_STATES = ("pending", "done", "dead", "skipped")
SKIP_PREFIX = "skipped by operator: "


def action_dict(a: OutboxAction) -> dict[str, Any]:
    return {
        "id": a.id,
        "incident": a.incident_number,
        "rec_id": a.rec_id,
        "kind": a.kind,
        "state": a.state,
        "attempts": a.attempts,
        "created": iso(a.created_at),
        "next_attempt": iso(a.next_attempt_at) if a.state == "pending" else None,
        "done": iso(a.done_at),
        "recipient": a.recipient,
        "reason": a.reason,
        "outcome": a.outcome,
        "last_error": a.last_error,
        "unsettled": bool(a.unsettled),
        "accepted": iso(a.accepted_at),
        "requeues": a.requeues or 0,
        "requeued": iso(a.requeued_at),
        "requeued_by": a.requeued_by,
    }


def gather_outbox(u: Unit, *, states: Sequence[str] | None, limit: int) -> list[dict[str, Any]]:
    return [action_dict(a) for a in u.outbox(states or None, limit=limit)]


def render_outbox(items: Sequence[Mapping[str, Any]], now: datetime) -> str:
    if not items:
        return "no outbox action matches"
    rows = []
    for d in items:
        nxt = parse_utc(d["next_attempt"]) if d["next_attempt"] else None
        last = d["last_error"] or d["outcome"] or ""
        rows.append(
            [
                d["id"],
                d["incident"],
                d["kind"],
                d["state"],
                d["attempts"],
                when(nxt, now, never="-"),
                last,
            ]
        )
    headers = [
        "ID",
        "INCIDENT",
        "KIND",
        "STATE",
        "ATTEMPTS",
        "NEXT ATTEMPT",
        "LAST ERROR / OUTCOME",
    ]
    return table(headers, rows, widths={6: 80})


# =========================================================================== retry / skip


def operator_name() -> str:
    """Who runs this command, for the record of a requeue (the sudo caller if any)."""
    import getpass

    for name in ("SUDO_USER", "LOGNAME", "USER"):
        if os.environ.get(name):
            return os.environ[name]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def retry_actions(
    u: Unit, ids: Sequence[int] | None, *, now: datetime, by: str | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """Dead actions back to pending: ``(requeued, refusals)``; nothing changes on a refusal.

    ``ids=None`` means every dead action. The ids are resolved first and passed to
    ``Unit.retry_dead`` explicitly, so what is printed is exactly what was requeued.
    """
    if ids is None:
        targets = list(reversed(u.outbox(["dead"], limit=1_000_000)))
    else:
        targets, refusals = [], []
        for action_id in dict.fromkeys(ids):
            a = u.action(action_id)
            if a is None:
                refusals.append(f"there is no outbox action #{action_id}")
            elif a.state != "dead":
                refusals.append(
                    f"action #{action_id} is {a.state}, not dead: only dead actions can be "
                    "retried (pending ones are retried by the daemon on their own)"
                )
            else:
                targets.append(a)
        if refusals:
            return [], refusals
    before = [action_dict(a) for a in targets]
    if targets:
        u.retry_dead([a.id for a in targets], now, by=by)
    return before, []


def skip_action(
    u: Unit, action_id: int, reason: str, *, now: datetime
) -> tuple[dict[str, Any] | None, str]:
    """Mark a pending or dead action skipped; ``(action, message)``; action None on refusal.

    An attempt already in flight in the running daemon is not stopped: if it succeeds, its
    result overwrites the skip (the action did happen, and the record must say so).
    """
    a = u.action(action_id)
    if a is None:
        return None, f"there is no outbox action #{action_id}"
    if a.state not in ("pending", "dead"):
        return (
            None,
            f"action #{action_id} is {a.state}: only pending or dead actions can be skipped",
        )
    warnings = []
    if a.unsettled or u.unfinished_attempt(a.id) is not None:
        warnings.append(
            "its last attempt had an unknown outcome: it may have reached "
            + ("xMatters" if a.kind != "note" else "Ivanti")
            + " already; check there"
        )
    if a.kind == "terminate":
        warnings.append(
            f"incident {a.incident_number}'s xMatters events stay live: terminate them in xMatters"
        )
    a.state = "skipped"
    a.outcome = SKIP_PREFIX + " ".join(reason.split())
    a.updated_at = now
    a.done_at = now
    message = f"skipped action #{a.id} {a.kind} for incident {a.incident_number}"
    if warnings:
        message += "\nwarning: " + "\nwarning: ".join(warnings)
    return action_dict(a), message


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    outbox = subparser(sub, "outbox", "queued, done, dead and skipped actions (newest first)")
    outbox.add_argument(
        "--dead", action="store_true", help="only dead actions (same as --state dead)"
    )
    outbox.add_argument("--state", choices=OUTBOX_STATES, help="only actions in this state")
    outbox.add_argument(
        "--limit", type=positive, default=50, metavar="N", help="at most N (default 50)"
    )

    retry = subparser(sub, "retry", "put dead actions back in the queue (WRITES the state DB)")
    retry.add_argument("ids", nargs="*", type=int, metavar="ID", help="dead action id(s)")
    retry.add_argument("--all-dead", action="store_true", help="every dead action")

    skip = subparser(
        sub, "skip", "give up a pending or dead action, with a reason (WRITES the state DB)"
    )
    skip.add_argument("id", type=int, metavar="ID", help="action id")
    skip.add_argument("--reason", required=True, metavar="TEXT", help="why (kept in the record)")


def run_list(args: argparse.Namespace) -> int:
    def work(store: Store, u: Unit, settings: Settings) -> int:
        now = render.utcnow()
        states = [s for s in (args.state, "dead" if args.dead else None) if s]
        items = gather_outbox(u, states=sorted(set(states)), limit=args.limit)
        if args.json:
            dump(items)
        else:
            print(render_outbox(items, now))
        return 0

    return read(args, work)


def run_retry(args: argparse.Namespace) -> int:
    if bool(args.ids) == bool(args.all_dead):
        return fail(args, "usage: ivanti-xmatters retry ID [ID ...] | --all-dead", code=2)

    def work(u: Unit) -> int:
        requeued, refusals = retry_actions(
            u, None if args.all_dead else args.ids, now=render.utcnow(), by=operator_name()
        )
        if refusals:
            return fail(args, "nothing requeued: " + "; ".join(refusals), refused=refusals)
        if args.json:
            dump({"ok": True, "requeued": requeued})
        elif not requeued:
            print("no dead actions: nothing to requeue")
        else:
            for d in requeued:
                print(
                    f"requeued action #{d['id']} {d['kind']} for incident {d['incident']} "
                    f"(it died: {truncate(d['outcome'] or d['last_error'] or '?', 120)})"
                )
        return 0

    return write(args, work)


def run_skip(args: argparse.Namespace) -> int:
    if not args.reason.strip():
        return fail(args, "--reason must say why the action is skipped", code=2)

    def work(u: Unit) -> int:
        action, message = skip_action(u, args.id, args.reason, now=render.utcnow())
        if action is None:
            return fail(args, message)
        if args.json:
            dump({"ok": True, "skipped": action, "message": message})
        else:
            print(message)
        return 0

    return write(args, work)
