"""``ivanti-xmatters status``: health at a glance (last poll, lag, cycles, outbox, last
errors; on PostgreSQL the leader and its standbys)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from daemon.config import Settings
from daemon.models import Attempt, Cycle, OutboxAction
from daemon.ops import render
from daemon.ops.command import positive, read, subparser
from daemon.ops.outbox import OUTBOX_STATES
from daemon.ops.render import age_s, dump, iso, pairs, span, table, truncate, when
from daemon.ops.state_db import shown_url
from daemon.store import Store, Unit, current_revision, head_revision
from daemon.timeutil import parse_utc

STANDBY_RECENT = timedelta(hours=1)


def _state_time(state: Mapping[str, tuple[str, datetime]], name: str) -> datetime | None:
    entry = state.get(name)
    if entry is None:
        return None
    try:
        return parse_utc(entry[0])
    except ValueError:
        return None


def _settled_at(state: Mapping[str, tuple[str, datetime]]) -> datetime | None:
    """Where the poll's settle read has got to (rows before it were read once more after
    their overlap): ``at`` of the ``settle`` state."""
    entry = state.get("settle")
    if entry is None:
        return None
    try:
        return parse_utc(str(json.loads(entry[0])["at"]))
    except (ValueError, KeyError, TypeError):
        return None


def cycle_dict(c: Cycle) -> dict[str, Any]:
    duration = (c.finished_at - c.started_at).total_seconds() if c.finished_at else None
    return {
        "id": c.id,
        "kind": c.kind,
        "started": iso(c.started_at),
        "finished": iso(c.finished_at),
        "duration_s": None if duration is None else round(duration, 3),
        "rows": c.rows_read,
        "changes": c.changes,
        "transitions": c.transitions,
        "actions": c.actions,
        "requests": c.requests,
        "rejected": c.rejected,
        "ok": c.ok,
        "error": c.error,
    }


def _attempt_error(
    found: tuple[Attempt, OutboxAction] | None, now: datetime
) -> dict[str, Any] | None:
    if found is None:
        return None
    attempt, action = found
    at = attempt.finished_at or attempt.started_at
    return {
        "at": iso(at),
        "age_s": age_s(at, now),
        "action_id": action.id,
        "action_kind": action.kind,
        "action_state": action.state,
        "incident": action.incident_number,
        "outcome": attempt.outcome or "unfinished",
        "http_status": attempt.http_status,
        "error": attempt.error,
    }


def _cycle_error(u: Unit, now: datetime) -> dict[str, Any] | None:
    failed = u.last_failed_cycle()
    if failed is None:
        return None
    ok_ids = [c.id for c in (u.last_ok_cycle(k) for k in ("poll", "baseline", "reconcile")) if c]
    return {
        "at": iso(failed.started_at),
        "age_s": age_s(failed.started_at, now),
        "cycle_id": failed.id,
        "kind": failed.kind,
        "error": failed.error,
        "recovered": any(i > failed.id for i in ok_ids),
    }


def gather_status(
    u: Unit,
    *,
    now: datetime,
    cycles: int = 10,
    deadman: float | None = None,
    schema: Mapping[str, Any] | None = None,
    overlap: float | None = None,
) -> dict[str, Any]:
    """Everything ``status`` shows, as JSON-ready values.

    ``lag_s`` is now - watermark: the watermark is just past the newest row read while
    changes come in, and IXM_OVERLAP behind the last poll when none do (late commits are
    caught by the settle read, ``settled``), so a healthy daemon shows between about 0 and
    overlap + one poll interval. ``lag_beyond_overlap_s`` takes the overlap off: about 0
    to one poll interval when healthy, growing when polls fail."""
    state = u.all_state()
    polls = [
        t for t in (_state_time(state, "last_ok_poll"), _state_time(state, "last_ok_baseline")) if t
    ]
    if not polls:
        for kind in ("poll", "baseline"):
            c = u.last_ok_cycle(kind)
            if c is not None:
                polls.append(c.finished_at or c.started_at)
    last_ok = max(polls) if polls else None
    watermark = _state_time(state, "watermark")
    counts = u.outbox_counts()
    incidents = u.incident_counts()
    last_age = age_s(last_ok, now)
    return {
        "now": iso(now),
        "schema": dict(schema or {}),
        "last_ok_poll": iso(last_ok),
        "last_ok_poll_age_s": last_age,
        "stale": bool(deadman is not None and (last_age is None or last_age > deadman)),
        "deadman_s": deadman,
        "watermark": iso(watermark),
        "lag_s": age_s(watermark, now),
        "overlap_s": overlap,
        "lag_beyond_overlap_s": (
            None
            if overlap is None or watermark is None
            else max(0.0, (age_s(watermark, now) or 0.0) - overlap)
        ),
        "settled": iso(_settled_at(state)),
        "settle_lag_s": age_s(_settled_at(state), now),
        "baseline_done": iso(_state_time(state, "baseline_done")),
        "last_reconcile": iso(_state_time(state, "last_reconcile")),
        "cycles": [cycle_dict(c) for c in u.last_cycles(limit=cycles)],
        "outbox": {s: counts.get(s, 0) for s in sorted(set(OUTBOX_STATES) | set(counts))},
        "dead_letters": counts.get("dead", 0),
        "last_errors": {
            "ivanti": _cycle_error(u, now),
            "xmatters": _attempt_error(u.last_failed_attempt(("page", "terminate")), now),
            "ivanti_writeback": _attempt_error(u.last_failed_attempt(("note",)), now),
        },
        "live_events": sum(u.live_event_counts().values()),
        "incidents": incidents,
        "delivery": u.delivery_concerns(),
        "writeback_lag_s": round(u.writeback_lag(now), 1),
    }


def _error_line(err: Mapping[str, Any] | None, now: datetime) -> str:
    if err is None:
        return "none"
    at = parse_utc(err["at"]) if err.get("at") else None
    head = when(at, now)
    if "cycle_id" in err:
        tail = " (recovered since)" if err.get("recovered") else " (NOT recovered)"
        return f"{head} {err['kind']} cycle #{err['cycle_id']}{tail}: {truncate(err['error'] or '', 160)}"
    status = f" HTTP {err['http_status']}" if err.get("http_status") else ""
    return (
        f"{head} action #{err['action_id']} {err['action_kind']} (incident {err['incident']}, "
        f"now {err['action_state']}): {err['outcome']}{status} "
        f"{truncate(err.get('error') or '', 140)}"
    ).rstrip()


def render_status(d: Mapping[str, Any], now: datetime) -> str:
    schema = d.get("schema") or {}
    schema_note = ""
    if schema:
        state = "up to date" if schema.get("up_to_date") else "needs `ivanti-xmatters db upgrade`"
        schema_note = f" (schema {schema.get('revision')}, newest {schema.get('newest')}: {state})"
    last = parse_utc(d["last_ok_poll"]) if d["last_ok_poll"] else None
    poll_line = when(last, now)
    if d["stale"]:
        poll_line += (
            f"  STALE: no successful poll within IXM_DEADMAN={span(d['deadman_s'] or 0)}"
            " (is the daemon running? see last errors)"
        )
    wm = parse_utc(d["watermark"]) if d["watermark"] else None
    wm_line = (
        "none (baseline not taken yet)" if wm is None else f"{iso(wm)}  lag {span(d['lag_s'] or 0)}"
    )
    if wm is not None and d.get("overlap_s") is not None:
        # An idle cursor trails by the overlap on purpose: say so, and what is left of it.
        beyond = d["lag_beyond_overlap_s"] or 0
        wm_line += (
            f" (within IXM_OVERLAP={span(d['overlap_s'])}: on time)"
            if beyond <= 0
            else f" = {span(d['overlap_s'])} IXM_OVERLAP (kept on purpose) + {span(beyond)} behind"
        )
    ob = d["outbox"]
    outbox_line = ", ".join(f"{k} {v}" for k, v in ob.items())
    if d["dead_letters"]:
        outbox_line += f"  ({d['dead_letters']} dead: `ivanti-xmatters outbox --dead`)"
    concerns = d.get("delivery") or {}
    worries = [
        f"{n} {label}"
        for key, label in (
            ("awaiting_event", "page(s) accepted by xMatters, waiting for their event"),
            ("unsettled", "action(s) whose last attempt may have landed (checked before re-send)"),
            ("auth_failing", "action(s) retrying after a 401: check the credentials"),
            ("no_event", "page(s) whose event never appeared (sent again)"),
        )
        if (n := concerns.get(key, 0))
    ]
    inc = d["incidents"]
    errors = d["last_errors"]
    lines = [
        pairs(
            [
                ("state DB", f"{schema.get('url', '')}{schema_note}".strip()),
                ("last good poll", poll_line),
                ("watermark", wm_line),
                (
                    "settled up to",
                    f"{d['settled']}  lag {span(d['settle_lag_s'] or 0)} (late commits "
                    "are read up to here; normally IXM_OVERLAP + 2 polls)"
                    if d.get("settled")
                    else "-",
                ),
                ("baseline", d["baseline_done"] or "not taken yet"),
                ("last reconcile", d["last_reconcile"] or "never"),
                (
                    "incidents",
                    f"{inc['total']} tracked, {inc['open']} open, {inc['alerting']} alerting",
                ),
                (
                    "xMatters",
                    f"{d['live_events']} live event(s)"
                    + (
                        f"; the least recently read one was read {span(d['writeback_lag_s'])} "
                        "ago (answers on it show in Ivanti about that much later)"
                        if d.get("writeback_lag_s")
                        else ""
                    ),
                ),
                ("outbox", outbox_line),
                *(("needs a look", w) for w in worries),
            ]
        ),
        "",
        "last errors:",
        pairs(
            [
                ("ivanti (poll)", _error_line(errors["ivanti"], now)),
                ("xmatters", _error_line(errors["xmatters"], now)),
                ("ivanti (write-back)", _error_line(errors["ivanti_writeback"], now)),
            ],
            indent="  ",
        ),
        "",
        "recent cycles:",
    ]
    if d["cycles"]:
        rows = []
        for c in d["cycles"]:
            result = {True: "ok", False: "ERROR", None: "running/cut"}[c["ok"]]
            if c["error"]:
                result = f"{result}: {c['error']}"
            started = parse_utc(c["started"]) if c["started"] else None
            rows.append(
                [
                    c["id"],
                    c["kind"],
                    when(started, now),
                    "-" if c["duration_s"] is None else span(c["duration_s"]),
                    c["rows"],
                    c["changes"],
                    c["transitions"],
                    result,
                ]
            )
        lines.append(
            table(
                ["ID", "KIND", "STARTED", "DURATION", "ROWS", "CHANGES", "TRANSITIONS", "RESULT"],
                rows,
                widths={7: 70},
            )
        )
    else:
        lines.append("  none yet")
    return "\n".join(lines)


def _leader(store: Store, settings: Settings) -> dict[str, Any] | None:
    """PostgreSQL replicas: who holds the leader lease, its token and expiry."""
    from daemon.lease import is_postgres

    if not is_postgres(settings.state_db_url):
        return None
    try:
        lease = store.read_lease()
    except Exception:  # a schema from before the lease
        return None
    if lease is None:
        return None
    try:
        replicas, db_now = store.read_replicas()
    except Exception:  # a schema from before the heartbeats
        replicas, db_now = [], lease.now
    return {
        "holder": lease.holder,
        "token": lease.token,
        "acquired_at": iso(lease.acquired_at),
        "expires_at": iso(lease.expires_at),
        "live": lease.expires_at > lease.now,
        "standbys": [  # every replica but the leader heard from in the last hour
            {
                "holder": r.holder,
                "seen_at": iso(r.seen_at),
                "seconds_ago": round((db_now - r.seen_at).total_seconds(), 1),
                # a live standby tries every third of the lease: silent for a whole lease,
                # it has stopped or lost the DB
                "silent": (db_now - r.seen_at).total_seconds() > settings.ops.lease_ttl,
            }
            for r in replicas
            if r.holder != lease.holder and db_now - r.seen_at <= STANDBY_RECENT
        ],
    }


def _standbys_line(standbys: list[dict[str, Any]]) -> str:
    if not standbys:
        return "standbys: none heard from in the last hour"
    seen = "; ".join(
        f"{d['holder']} (seen {d['seconds_ago']:g} s ago"
        + (": silent since, stopped or cut off from the DB)" if d["silent"] else ")")
        for d in standbys
    )
    return f"standbys: {seen}"


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = subparser(
        sub, "status", "health at a glance: last poll, lag, cycles, outbox, last errors"
    )
    status.add_argument(
        "--cycles",
        type=positive,
        default=10,
        metavar="N",
        help="recent cycles to show (default 10)",
    )


def run(args: argparse.Namespace) -> int:
    def work(store: Store, u: Unit, settings: Settings) -> int:
        now = render.utcnow()
        revision, newest = current_revision(store.engine), head_revision()
        schema = {
            "url": shown_url(settings.state_db_url),
            "revision": revision,
            "newest": newest,
            "up_to_date": revision == newest,
        }
        data = gather_status(
            u,
            now=now,
            cycles=args.cycles,
            deadman=settings.ops.deadman,
            schema=schema,
            overlap=settings.poll.overlap,
        )
        data["leader"] = _leader(store, settings)
        if args.json:
            dump(data)
        else:
            print(render_status(data, now))
            if data["leader"]:
                d = data["leader"]
                state = "live" if d["live"] else "EXPIRED: no replica leads"
                print(
                    f"leader: {d['holder']}, token {d['token']}, "
                    f"lease until {d['expires_at']} ({state})"
                )
                print(_standbys_line(d["standbys"]))
        return 0

    return read(args, work)
