"""``ivanti-xmatters incidents``: the tracked incidents with their paging state."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from daemon.config import Settings
from daemon.models import Incident
from daemon.ops import render
from daemon.ops.command import positive, read, subparser
from daemon.ops.render import ago, dump, iso, table
from daemon.store import Store, Unit
from daemon.timeutil import parse_utc

INCIDENT_STATES = ("open", "resolved", "closed", "canceled", "alerting")


def incident_dict(row: Incident, live: int = 0) -> dict[str, Any]:
    return {
        "number": row.incident_number,
        "rec_id": row.rec_id,
        "status": row.status,
        "status_class": row.status_class,
        "priority": row.priority,
        "critical": row.critical,
        "team": row.owner_team,
        "owner": row.owner,
        "alerting": row.alerting,
        "live_events": live,
        "baseline": row.baseline,
        "deleted": row.deleted,
        "last_mod": iso(row.last_mod),
        "last_mod_by": row.last_mod_by,
        "first_seen": iso(row.first_seen_at),
    }


def gather_incidents(
    u: Unit,
    *,
    state: str | None = None,
    team: str | None = None,
    priority: str | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    rows = u.find_incidents(
        status_class=state if state in ("open", "resolved", "closed", "canceled") else None,
        alerting=True if state == "alerting" else None,
        team=team,
        priority=priority,
        limit=limit,
    )
    live = u.live_event_counts()
    last = u.latest_changes(r.rec_id for r in rows)
    out = []
    for row in rows:
        d = incident_dict(row, live.get(row.rec_id, 0))
        change = last.get(row.rec_id)
        d["last_change"] = (
            None
            if change is None
            else {
                "at": iso(change.seen_at),
                "transition": change.transition,
                "reason": change.reason,
            }
        )
        out.append(d)
    return out


def render_incidents(items: Sequence[Mapping[str, Any]], now: datetime) -> str:
    if not items:
        return "no tracked incident matches"
    rows = []
    for d in items:
        ch = d["last_change"]
        if ch is None:
            last = "-"
        else:
            at = parse_utc(ch["at"])
            what = ch["transition"] or f"no transition: {ch['reason']}"
            last = f"{ago(at, now)}: {what}"
        status = f"{d['status']} (deleted)" if d["deleted"] else d["status"]
        rows.append(
            [
                d["number"],
                d["rec_id"],
                status,
                d["priority"],
                d["team"],
                d["owner"] or "-",
                d["alerting"],
                d["live_events"],
                last,
            ]
        )
    headers = [
        "NUMBER",
        "RECID",
        "STATUS",
        "PRIO",
        "TEAM",
        "OWNER",
        "ALERTING",
        "LIVE",
        "LAST CHANGE",
    ]
    return table(headers, rows, max_width=30, widths={1: 32, 8: 60})


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    incidents = subparser(sub, "incidents", "tracked incidents with their paging state")
    incidents.add_argument("--state", choices=INCIDENT_STATES, help="only incidents in this state")
    incidents.add_argument("--team", metavar="T", help="only this OwnerTeam (case-insensitive)")
    incidents.add_argument("--priority", metavar="P", help="only this Priority")
    incidents.add_argument(
        "--limit", type=positive, default=50, metavar="N", help="at most N (default 50)"
    )


def run(args: argparse.Namespace) -> int:
    def work(store: Store, u: Unit, settings: Settings) -> int:
        now = render.utcnow()
        items = gather_incidents(
            u, state=args.state, team=args.team, priority=args.priority, limit=args.limit
        )
        if args.json:
            dump(items)
        else:
            print(render_incidents(items, now))
        return 0

    return read(args, work)
