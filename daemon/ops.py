"""Operations commands: see inside the daemon, fix its outbox, check its configuration.

``status``, ``incidents``, ``explain`` and ``outbox`` only read the state DB, so they are
safe while the daemon runs (SQLite WAL: readers never block the writer). ``retry`` and
``skip`` write, each in one short transaction. ``check`` calls both APIs read-only.

All SQL lives in ``daemon.store`` ("one module owns the SQL"); this module gathers rows
into plain dicts (what ``--json`` prints) and renders those dicts for people, so the two
outputs can never disagree.

Read commands open the DB without migrating and never create it: a missing DB is reported
(exit 1) with how to make one, instead of leaving an empty file behind that would hide a
wrong ``IXM_STATE_DB`` path.

Times are shown in UTC as ``2026-11-27T10:00:00Z`` with a relative age ("3m ago"); "now"
comes from ``utcnow()`` in this module, so tests can move it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import httpx

from daemon.config import EX_CONFIG, ConfigError, Settings
from daemon.errors import ApiError, AuthError, parse_http_date
from daemon.models import Attempt, AuditSeen, Change, Cycle, Incident, OutboxAction, XmEvent
from daemon.settings_load import load
from daemon.store import (
    Store,
    Unit,
    current_revision,
    head_revision,
    make_engine,
    sqlite_file,
)
from daemon.timeutil import parse_utc

OUTBOX_STATES = ("pending", "done", "dead", "skipped")
INCIDENT_STATES = ("open", "resolved", "closed", "canceled", "alerting")
MAX_SKEW_S = 60.0
TRIGGER_PATH = re.compile(r"/api/integration/1/functions/[0-9A-Fa-f-]{36}/triggers/?$")
SKIP_PREFIX = "skipped by operator: "
NO_DB_HINT = "run the daemon once (it creates and migrates the DB) or `ivanti-xmatters db upgrade`"


def utcnow() -> datetime:
    return datetime.now(UTC)


# =========================================================================== formatting


def iso(dt: datetime | None) -> str | None:
    """UTC ISO-8601 without microseconds: what people compare with Ivanti's screens."""
    if dt is None:
        return None
    return dt.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def span(seconds: float) -> str:
    """A duration in its two largest units: ``45s``, ``3m 5s``, ``2h 5m``, ``3d 4h``."""
    s = abs(seconds)
    if s < 10 and s != int(s):
        return f"{s:.1f}s"
    whole = int(s)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    for big, big_unit, small, small_unit in (
        (days, "d", hours, "h"),
        (hours, "h", minutes, "m"),
        (minutes, "m", secs, "s"),
    ):
        if big:
            return f"{big}{big_unit} {small}{small_unit}" if small else f"{big}{big_unit}"
    return f"{secs}s"


def ago(dt: datetime, now: datetime) -> str:
    seconds = (now - dt).total_seconds()
    if abs(seconds) < 1:
        return "just now"
    return f"{span(seconds)} ago" if seconds > 0 else f"in {span(seconds)}"


def when(dt: datetime | None, now: datetime, *, never: str = "never") -> str:
    if dt is None:
        return never
    return f"{iso(dt)} ({ago(dt, now)})"


def truncate(text: str, width: int) -> str:
    """One line, at most ``width`` characters, ``…`` marking a cut."""
    line = " ".join(text.split())
    if width > 0 and len(line) > width:
        return line[: max(0, width - 1)] + "…"
    return line


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def output_width() -> int | None:
    """How wide a table may be: ``COLUMNS`` when set, else the terminal's width when
    stdout is a terminal, else None (a pipe or a file keeps every column whole, rather
    than the 80 columns ``shutil.get_terminal_size`` falls back to)."""
    env = os.environ.get("COLUMNS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        if not os.isatty(sys.stdout.fileno()):
            return None
    except (AttributeError, OSError, ValueError):  # replaced or closed stdout
        return None
    return shutil.get_terminal_size().columns


_FIT_FLOOR = 5  # a column cut to fit the terminal keeps at least this much (or its header)


def _fit_columns(
    col: list[int], headers: Sequence[str], numeric: Sequence[bool], width: int
) -> list[int]:
    """Narrow the widest text columns, one character at a time, until the row fits in
    ``width``; numbers and headers are never cut (if even that is too wide, the terminal
    wraps)."""
    fitted = list(col)
    floors = [
        c if numeric[i] else min(c, max(len(headers[i]), _FIT_FLOOR)) for i, c in enumerate(col)
    ]
    excess = sum(fitted) + 2 * (len(fitted) - 1) - width
    while excess > 0:
        shrinkable = [i for i, c in enumerate(fitted) if c > floors[i]]
        if not shrinkable:
            break
        widest = max(shrinkable, key=lambda i: fitted[i])
        fitted[widest] -= 1
        excess -= 1
    return fitted


_AUTO = -1


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    max_width: int = 60,
    widths: Mapping[int, int] | None = None,
    width: int | None = _AUTO,
) -> str:
    """Aligned columns; long cells cut with ``…``; all-numeric columns right-aligned.

    ``width``: the line width to fit in, by narrowing the widest text columns (default:
    ``output_width()``, the terminal's; None: no fitting, as for a pipe)."""
    limits = dict(widths or {})
    cells = [
        [truncate(_cell(v), limits.get(i, max_width)) for i, v in enumerate(row)] for row in rows
    ]
    raw_numeric = [True] * len(headers)
    for row in cells:
        for i, text in enumerate(row):
            if not (text == "-" or re.fullmatch(r"-?\d+(\.\d+)?", text)):
                raw_numeric[i] = False
    col = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    numeric = [raw_numeric[i] and bool(cells) for i in range(len(headers))]
    if width == _AUTO:
        width = output_width()
    if width is not None:
        col = _fit_columns(col, headers, numeric, width)
        cells = [[truncate(v, col[i]) for i, v in enumerate(row)] for row in cells]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(col[i]) if numeric[i] else v.ljust(col[i]) for i, v in enumerate(values)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(list(headers)), *(line(r) for r in cells)])


def pairs(items: Iterable[tuple[str, str]], indent: str = "") -> str:
    """``key  value`` lines with the values aligned."""
    rows = list(items)
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"{indent}{k.ljust(width)}  {v}".rstrip() for k, v in rows)


def _dump(data: object) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _age_s(dt: datetime | None, now: datetime) -> float | None:
    return None if dt is None else round((now - dt).total_seconds(), 3)


# =========================================================================== opening the DB


class NoDatabase(Exception):
    """There is no state DB (or no schema in it) at the configured place."""


def _shown_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def open_store(settings: Settings) -> Store:
    """The existing state DB, not migrated; ``NoDatabase`` if there is none yet."""
    url = settings.state_db_url
    path = sqlite_file(url)
    if path is not None and not path.exists():
        raise NoDatabase(f"no state DB at {path}: {NO_DB_HINT}")
    store = Store(url, migrate=False)
    try:
        revision = current_revision(store.engine)
    except Exception:
        store.close()
        raise
    if revision is None:
        store.close()
        raise NoDatabase(f"the state DB {_shown_url(url)} has no schema yet: {NO_DB_HINT}")
    return store


# =========================================================================== status


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
        "age_s": _age_s(at, now),
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
        "age_s": _age_s(failed.started_at, now),
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
    last_age = _age_s(last_ok, now)
    return {
        "now": iso(now),
        "schema": dict(schema or {}),
        "last_ok_poll": iso(last_ok),
        "last_ok_poll_age_s": last_age,
        "stale": bool(deadman is not None and (last_age is None or last_age > deadman)),
        "deadman_s": deadman,
        "watermark": iso(watermark),
        "lag_s": _age_s(watermark, now),
        "overlap_s": overlap,
        "lag_beyond_overlap_s": (
            None
            if overlap is None or watermark is None
            else max(0.0, (_age_s(watermark, now) or 0.0) - overlap)
        ),
        "settled": iso(_settled_at(state)),
        "settle_lag_s": _age_s(_settled_at(state), now),
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


# =========================================================================== incidents


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


# =========================================================================== explain


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


# =========================================================================== outbox


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


# =========================================================================== check


Status = Literal["OK", "FAIL", "SKIP"]


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "message": self.message}


def _skew(name: str, server: str, date: datetime | None, now: datetime) -> CheckResult:
    if date is None:
        return CheckResult(name, "SKIP", f"{server} sent no Date header; clock skew not checked")
    skew = (now - date).total_seconds()
    if abs(skew) <= MAX_SKEW_S:
        return CheckResult(name, "OK", f"local clock within {span(skew)} of {server} (Date header)")
    side = "ahead of" if skew > 0 else "behind"
    return CheckResult(
        name,
        "FAIL",
        f"local clock is {span(skew)} {side} {server} (its Date header; limit "
        f"{int(MAX_SKEW_S)}s): "
        "sync it with NTP (e.g. `timedatectl set-ntp true`); ages, retry backoff and the "
        "write-back window use the local clock",
    )


def _reach_fix(what: str, var: str, exc: ApiError) -> str:
    return f"cannot reach {what} ({exc.detail}): check {var}, DNS, proxy and firewall"


def _ivanti_fix(exc: ApiError, settings: Settings) -> str:
    iv = settings.ivanti
    assert iv is not None
    status = exc.status
    code = f" {exc.code}" if exc.code else ""
    if isinstance(exc, AuthError):
        if iv.auth == "apikey":
            return (
                f"IVANTI_API_KEY was rejected ({status or 401}{code}): check the key is "
                "activated (Configuration console > Security Controls > API Keys), belongs to "
                f"this tenant ({iv.tenant}) and its role may read incidents"
            )
        return (
            f"Ivanti refused the login ({status}{code}): check IVANTI_TENANT is the tenant "
            f"host (now {iv.tenant!r}, e.g. acme.saasit.com), IVANTI_USERNAME/IVANTI_PASSWORD, "
            f"and IVANTI_ROLE is the role's internal name, e.g. Admin not Administrator "
            f"(now {iv.role!r})"
        )
    if status is None:
        return _reach_fix(f"Ivanti at {iv.base_url}", "IVANTI_BASE_URL", exc)
    if status == 404:
        return (
            f"IVANTI_BASE_URL answered 404{code} for the incidents feed: check the URL "
            "(on-premises installs need the /HEAT prefix)"
        )
    if status in (400, 403):
        who = "the API key's role" if iv.auth == "apikey" else f"IVANTI_ROLE={iv.role}"
        return (
            f"Ivanti refused to list incidents ({status}{code}: {exc.detail}): {who} may "
            "lack the right to read incidents"
        )
    if status >= 500:
        return (
            f"Ivanti answered {status}{code} ({exc.detail}): a server-side problem; try again later"
        )
    return str(exc)


def check_ivanti(
    settings: Settings, now: Callable[[], datetime], transport: httpx.BaseTransport | None
) -> list[CheckResult]:
    from daemon.service import build_ivanti

    iv = settings.ivanti
    assert iv is not None
    who = "the API key" if iv.auth == "apikey" else f"user {iv.username} (role {iv.role})"
    try:
        client = build_ivanti(settings, **({"transport": transport} if transport else {}))
    except ValueError as exc:
        return [CheckResult("ivanti", "FAIL", f"cannot set up the Ivanti client: {exc}")]
    results: list[CheckResult] = []
    try:
        try:
            page = client.query_incidents("IncidentNumber gt 0", "IncidentNumber asc", top=1)
        except ApiError as exc:
            return [CheckResult("ivanti", "FAIL", _ivanti_fix(exc, settings))]
        message = f"{iv.base_url}: incidents readable with {who}"
        if not page.rows:
            message += (
                "; but none is visible: if the tenant has incidents, this role cannot read them"
            )
        results.append(CheckResult("ivanti", "OK", message))
        if iv.scope_filter:
            results.append(_check_scope(client, iv.scope_filter))
        results.append(_check_paging(client, settings.poll.paging))
        results.append(_skew("ivanti clock", "Ivanti", client.last_server_date, now()))
    finally:
        try:
            client.close()
        except Exception:
            pass
    return results


def _check_scope(client: Any, scope: str) -> CheckResult:
    try:
        page = client.query_incidents(
            f"({scope}) and IncidentNumber gt 0", "IncidentNumber asc", top=1
        )
    except ApiError as exc:
        return CheckResult(
            "ivanti scope",
            "FAIL",
            f"IVANTI_SCOPE_FILTER was refused ({exc.status}: {exc.detail}): check its field "
            "names and quoting, e.g. OwnerTeam eq 'Network Operations'",
        )
    found = "matches incidents" if page.rows else "matches no incident right now"
    return CheckResult("ivanti scope", "OK", f"IVANTI_SCOPE_FILTER accepted; it {found}")


def _check_paging(client: Any, paging: str) -> CheckResult:
    """Probe, on a sample, the two things IXM_PAGING=keyset assumes and the reference
    leaves open: that Ivanti stores whole seconds (the rows served in one second all
    match ``LastModDateTime eq`` that second), and that it sorts RecIds in the text
    order ``RecId gt`` compares in. A sample can refute them, never prove them."""
    from datetime import timedelta

    from daemon.ivanti import odata_quote
    from daemon.timeutil import odata_datetime_literal, parse_ivanti_datetime

    def rows(flt: str, orderby: str, top: int = 100) -> list[Mapping[str, Any]]:
        return list(client.query_incidents(flt, orderby, top=top).rows)

    problems: list[str] = []
    try:
        seconds: list[datetime] = []
        for row in rows("IncidentNumber gt 0", "LastModDateTime desc", 20):
            try:
                stamp = parse_ivanti_datetime(row.get("LastModDateTime"))
            except ValueError:
                continue
            if stamp is not None and stamp.replace(microsecond=0) not in seconds:
                seconds.append(stamp.replace(microsecond=0))
        for second in seconds[:3]:
            lo = odata_datetime_literal(second)
            hi = odata_datetime_literal(second + timedelta(seconds=1))
            wide = rows(f"LastModDateTime ge {lo} and LastModDateTime lt {hi}", "RecId asc")
            exact = rows(f"LastModDateTime eq {lo}", "RecId asc")
            if len(exact) < len(wide):
                problems.append(
                    "it keeps sub-seconds it serves as whole seconds "
                    f"({len(wide) - len(exact)} of {len(wide)} rows of {lo} do not equal it)"
                )
                break
        ids = [
            str(r["RecId"]).upper()
            for r in rows("IncidentNumber gt 0", "RecId asc", 50)
            if isinstance(r.get("RecId"), str)
        ]
        if ids != sorted(ids):
            problems.append("it sorts RecIds in another order than the text order it compares in")
        elif len(ids) >= 2:
            pivot = ids[len(ids) // 2 - 1]
            after = [
                str(r.get("RecId", "")).upper()
                for r in rows(f"RecId gt {odata_quote(pivot)}", "RecId asc", 100)
            ]
            if after[: len(ids) - len(ids) // 2] != ids[len(ids) // 2 :]:
                problems.append("its 'RecId gt' does not follow the order it sorts RecIds in")
    except ApiError as exc:
        return CheckResult("ivanti paging", "SKIP", f"could not probe paging ({exc.detail})")
    if not seconds:
        return CheckResult("ivanti paging", "SKIP", "no incident visible to probe paging on")
    if problems:
        found = "; ".join(problems)
        if paging == "keyset":
            return CheckResult(
                "ivanti paging",
                "FAIL",
                f"IXM_PAGING=keyset loses rows on this tenant: {found}; set IXM_PAGING=safe "
                "(the default)",
            )
        return CheckResult("ivanti paging", "OK", f"IXM_PAGING=safe, as this tenant needs: {found}")
    tail = (
        ""
        if paging == "keyset"
        else "; IXM_PAGING=keyset would hold here too (a sample is no proof)"
    )
    return CheckResult(
        "ivanti paging",
        "OK",
        f"IXM_PAGING={paging}; on a sample this tenant stores whole seconds and compares "
        f"RecIds as it sorts them{tail}",
    )


def _xmatters_fix(exc: ApiError, settings: Settings) -> str:
    xm = settings.xmatters
    assert xm is not None
    status, code = exc.status, f" {exc.code}" if exc.code else ""
    if isinstance(exc, AuthError):
        if xm.auth == "oauth":
            return (
                f"the xMatters OAuth login was refused ({status}{code}): check "
                "XMATTERS_OAUTH_CLIENT_ID and that XMATTERS_PASSWORD is a native xMatters password"
            )
        names = (
            "XMATTERS_API_KEY/XMATTERS_API_SECRET"
            if xm.auth == "apikey"
            else "XMATTERS_USERNAME/XMATTERS_PASSWORD"
        )
        return (
            f"{names} were rejected ({status or 401}{code}): check them (a native xMatters "
            "password, not SSO) and that the user has the REST Web Service User role"
        )
    if status is None:
        return _reach_fix(f"xMatters at {xm.base_url}", "XMATTERS_BASE_URL", exc)
    if status == 403:
        return (
            f"the xMatters user may not read events (403{code}): give it the REST Web "
            "Service User role"
        )
    if status == 404:
        return (
            "XMATTERS_BASE_URL answered 404 for /api/xm/1/events: it must be the instance "
            "root, e.g. https://acme.xmatters.com"
        )
    return str(exc)


def check_xmatters_rest(settings: Settings, transport: httpx.BaseTransport | None) -> CheckResult:
    """Reads events by a random requestId: the permission the daemon needs, one empty page.

    (``find_events(statuses=["ACTIVE"], limit=1)`` would follow ``links.next`` through
    every active event, one request each; ``get_person`` needs a person's name, which an
    API key is not.)
    """
    from daemon.service import build_xmatters

    xm = settings.xmatters
    assert xm is not None
    if not xm.rest_enabled:
        return CheckResult(
            "xmatters REST",
            "SKIP",
            "XMATTERS_BASE_URL is not set: trigger-only set-up (no write-back, no REST "
            "terminate). Nothing can be looked up in xMatters, so a page whose trigger timed "
            "out or got a 5xx is sent again unchecked: this set-up may page twice after a "
            "timeout (set XMATTERS_BASE_URL and REST credentials to have it checked)",
        )
    try:
        client = build_xmatters(settings, **({"transport": transport} if transport else {}))
    except ValueError as exc:
        return CheckResult("xmatters REST", "FAIL", f"cannot set up the xMatters client: {exc}")
    try:
        client.find_events(request_id=str(uuid.uuid4()), limit=1)
    except ApiError as exc:
        return CheckResult("xmatters REST", "FAIL", _xmatters_fix(exc, settings))
    finally:
        client.close()
    who = "an API key" if xm.auth == "apikey" else f"user {xm.username}"
    return CheckResult(
        "xmatters REST", "OK", f"{xm.base_url}: events readable ({xm.auth} auth, {who})"
    )


def _host(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc.rpartition("@")[2].lower()


def check_trigger(
    name: str,
    var: str,
    url: str,
    settings: Settings,
    transport: httpx.BaseTransport | None,
) -> tuple[CheckResult, datetime | None]:
    """Is the trigger URL right, without creating anything?

    A trigger is only ever POSTed to; a POST creates an alert (a Flow HTTP trigger answers
    202 before its flow even looks at the body), so it is never sent here. Instead the URL
    is checked for the documented shape and then GET without credentials, next to a GET on
    the same path with a random, certainly unknown function id:

    * no answer at all -> FAIL (host, port, TLS, proxy);
    * both answers equal (xMatters, like the simulator, may answer 404 to any GET there)
      -> OK for reachability only: whether the id exists cannot be told apart this way;
    * they differ, and the real URL got 404 -> FAIL "trigger not found";
    * they differ otherwise (e.g. 405 for the real trigger, 404 for the unknown one) -> OK.

    The host must also be XMATTERS_BASE_URL's, or the trigger belongs to another instance.
    Returns the answer's Date too, for the clock check.
    """
    parts = urlsplit(url)
    host = _host(url)
    if not TRIGGER_PATH.search(parts.path):
        return (
            CheckResult(
                name,
                "FAIL",
                f"{var} does not look like an xMatters trigger URL (host {host}, path "
                f"{parts.path!r}): copy it from the workflow's HTTP trigger, e.g. https://"
                "acme.xmatters.com/api/integration/1/functions/<uuid>/triggers",
            ),
            None,
        )
    fake_path = re.sub(r"/functions/[^/]+/", f"/functions/{uuid.uuid4()}/", parts.path)
    fake = urlunsplit((parts.scheme, parts.netloc, fake_path, "", ""))
    xm = settings.xmatters
    timeout = xm.timeout if xm else 30.0
    options: dict[str, Any] = {"timeout": timeout, "follow_redirects": False}
    if transport is not None:
        options["transport"] = transport
    try:
        with httpx.Client(**options) as client:
            real = client.get(url, headers={"Accept": "application/json"})
            other = client.get(fake, headers={"Accept": "application/json"})
    except httpx.HTTPError as exc:
        return (
            CheckResult(
                name,
                "FAIL",
                f"cannot reach {var} host {host} ({type(exc).__name__}): check the URL, DNS, "
                "proxy and firewall",
            ),
            None,
        )
    date = parse_http_date(real.headers.get("Date"))
    base = xm.base_url if xm else None
    if base and _host(base) != host:
        return (
            CheckResult(
                name,
                "FAIL",
                f"{var} points at {host} but XMATTERS_BASE_URL at {_host(base)}: both must be "
                "the same xMatters instance (wrong tenant?)",
            ),
            date,
        )
    if 300 <= real.status_code < 400:
        where = _host(real.headers.get("Location", "")) or "?"
        return (
            CheckResult(
                name,
                "FAIL",
                f"{var} redirects ({real.status_code}) to {where}: use the final https URL",
            ),
            date,
        )
    if real.status_code >= 500:
        return (
            CheckResult(
                name,
                "FAIL",
                f"{host} answered {real.status_code} to {var}: server-side problem; try later",
            ),
            date,
        )
    if real.status_code == other.status_code:
        return (
            CheckResult(
                name,
                "OK",
                f"{host} answers (GET {real.status_code}); that this trigger id exists cannot be "
                "checked without sending a trigger, which would create an alert",
            ),
            date,
        )
    if real.status_code == 404:
        return (
            CheckResult(
                name,
                "FAIL",
                f"{var} was not found (404, while an unknown trigger gets {other.status_code}): "
                "copy the URL again from the workflow's HTTP trigger",
            ),
            date,
        )
    return (
        CheckResult(
            name,
            "OK",
            f"trigger found on {host} (GET {real.status_code} there, {other.status_code} for an unknown id)",
        ),
        date,
    )


def check_state_db(settings: Settings) -> CheckResult:
    url = settings.state_db_url
    path = sqlite_file(url)
    if path is not None and not path.exists():
        parent = path.parent
        if parent.is_dir():
            return CheckResult("state DB", "OK", f"{path} will be created at first start")
        return CheckResult(
            "state DB",
            "FAIL",
            f"the directory {parent} of IXM_STATE_DB does not exist: create it (writable by "
            "the daemon's user) or point IXM_STATE_DB elsewhere",
        )
    engine = make_engine(url)
    try:
        revision, newest = current_revision(engine), head_revision()
    except Exception as exc:
        return CheckResult("state DB", "FAIL", f"cannot open {_shown_url(url)}: {exc}")
    finally:
        engine.dispose()
    note = "up to date" if revision == newest else "the daemon upgrades it at start"
    return CheckResult(
        "state DB",
        "OK",
        f"{_shown_url(url)}: schema {revision or 'none'} (newest {newest}; {note})",
    )


def check_writeback(settings: Settings) -> CheckResult:
    """Which side writes xMatters activity back to Ivanti: the daemon, the original
    workflow's own write-back steps, or both with the daemon looking first."""
    wb, xm = settings.writeback, settings.xmatters
    if xm is None or not xm.rest_enabled or not wb.enabled:
        why = (
            "IXM_WRITEBACK=false" if xm is not None and xm.rest_enabled else "no XMATTERS_BASE_URL"
        )
        return CheckResult(
            "write-back",
            "OK",
            f"the daemon writes nothing back ({why}): only the original workflow's own "
            "write-back steps can, where xMatters reaches Ivanti",
        )
    if wb.workflow_writeback == "on":
        message = (
            "the original workflow writes notes back (IXM_WORKFLOW_WRITEBACK=on); the daemon "
            "writes none: keep the workflow's write-back steps, and xMatters able to reach Ivanti"
        )
    elif wb.workflow_writeback == "off":
        message = (
            "the daemon writes every note (IXM_WORKFLOW_WRITEBACK=off): remove the original "
            "workflow's write-back steps, or each note is written twice"
        )
    else:
        message = (
            "the daemon writes notes, each after looking in the incident's journal "
            f"{_fmt_wait(wb.workflow_writeback_wait)} after the activity "
            "(IXM_WORKFLOW_WRITEBACK=check): a note the original workflow's own write-back "
            "steps wrote is not written again"
        )
    return CheckResult("write-back", "OK", message)


def _fmt_wait(seconds: float) -> str:
    return f"{seconds:g} s"


def run_checks(
    settings: Settings,
    *,
    now: Callable[[], datetime] = utcnow,
    transport: httpx.BaseTransport | None = None,
) -> list[CheckResult]:
    """Every check, in order; each failure carries its fix. ``transport`` is for tests."""
    xm = settings.xmatters
    assert xm is not None and settings.ivanti is not None
    results = [CheckResult("config", "OK", "settings are valid"), check_state_db(settings)]
    results.append(check_writeback(settings))
    results += check_ivanti(settings, now, transport)
    results.append(check_xmatters_rest(settings, transport))
    urls = [("xmatters trigger", "XMATTERS_TRIGGER_URL", xm.trigger_url)]
    if xm.form_trigger_url and xm.form_trigger_url != xm.trigger_url:
        urls.append(("xmatters form trigger", "XMATTERS_FORM_TRIGGER_URL", xm.form_trigger_url))
    date: datetime | None = None
    for name, var, url in urls:
        result, seen = check_trigger(name, var, url, settings, transport)
        results.append(result)
        date = date or seen
    results.append(_skew("xmatters clock", "xMatters", date, now()))
    return results


def render_checks(results: Sequence[CheckResult]) -> str:
    width = max(len(r.name) for r in results)
    lines = [f"{r.status:<4}  {r.name.ljust(width)}  {r.message}" for r in results]
    failed = sum(r.status == "FAIL" for r in results)
    lines.append(
        f"{failed} of {len(results)} checks failed"
        if failed
        else f"all {len(results)} checks passed"
    )
    return "\n".join(lines)


# =========================================================================== the commands


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the operations commands on the ``ivanti-xmatters`` parser."""

    def parser(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--json", action="store_true", help="print machine-readable JSON")
        return p

    status = parser("status", "health at a glance: last poll, lag, cycles, outbox, last errors")
    status.add_argument(
        "--cycles",
        type=_positive,
        default=10,
        metavar="N",
        help="recent cycles to show (default 10)",
    )

    incidents = parser("incidents", "tracked incidents with their paging state")
    incidents.add_argument("--state", choices=INCIDENT_STATES, help="only incidents in this state")
    incidents.add_argument("--team", metavar="T", help="only this OwnerTeam (case-insensitive)")
    incidents.add_argument("--priority", metavar="P", help="only this Priority")
    incidents.add_argument(
        "--limit", type=_positive, default=50, metavar="N", help="at most N (default 50)"
    )

    explain = parser(
        "explain", "the whole story of one incident: changes, rules, actions, events, responses"
    )
    explain.add_argument("incident", metavar="INCIDENT", help="IncidentNumber or RecId")

    outbox = parser("outbox", "queued, done, dead and skipped actions (newest first)")
    outbox.add_argument(
        "--dead", action="store_true", help="only dead actions (same as --state dead)"
    )
    outbox.add_argument("--state", choices=OUTBOX_STATES, help="only actions in this state")
    outbox.add_argument(
        "--limit", type=_positive, default=50, metavar="N", help="at most N (default 50)"
    )

    retry = parser("retry", "put dead actions back in the queue (WRITES the state DB)")
    retry.add_argument("ids", nargs="*", type=int, metavar="ID", help="dead action id(s)")
    retry.add_argument("--all-dead", action="store_true", help="every dead action")

    skip = parser("skip", "give up a pending or dead action, with a reason (WRITES the state DB)")
    skip.add_argument("id", type=int, metavar="ID", help="action id")
    skip.add_argument("--reason", required=True, metavar="TEXT", help="why (kept in the record)")

    check = parser("check", "validate the configuration and call both APIs (creates nothing)")
    check.add_argument("--quiet", action="store_true", help="do not print the effective settings")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def dispatch(args: argparse.Namespace) -> int:
    """Run an operations command; the exit status."""
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "status": _cmd_status,
        "incidents": _cmd_incidents,
        "explain": _cmd_explain,
        "outbox": _cmd_outbox,
        "retry": _cmd_retry,
        "skip": _cmd_skip,
        "check": _cmd_check,
    }
    handler = handlers.get(args.command)
    if handler is None:
        print(f"unknown command {args.command!r}", file=sys.stderr)
        return 2
    try:
        return handler(args)
    except NoDatabase as exc:
        return _fail(args, str(exc))


def _fail(args: argparse.Namespace, message: str, code: int = 1, **extra: Any) -> int:
    if getattr(args, "json", False):
        _dump({"ok": False, "error": message, **extra})
    else:
        print(message, file=sys.stderr)
    return code


def _db_settings(args: argparse.Namespace) -> Settings:
    return load(args, require_targets=False)


def _read(args: argparse.Namespace, work: Callable[[Store, Unit, Settings], int]) -> int:
    settings = _db_settings(args)
    store = open_store(settings)
    try:
        with store.unit(rollback=True) as u:
            return work(store, u, settings)
    finally:
        store.close()


def _write(args: argparse.Namespace, work: Callable[[Unit], int]) -> int:
    """One short transaction; ``work`` refuses (non-zero) before changing anything."""
    settings = _db_settings(args)
    store = open_store(settings)
    try:
        with store.unit() as u:
            return work(u)
    finally:
        store.close()


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


STANDBY_RECENT = timedelta(hours=1)


def _standbys_line(standbys: list[dict[str, Any]]) -> str:
    if not standbys:
        return "standbys: none heard from in the last hour"
    seen = "; ".join(
        f"{d['holder']} (seen {d['seconds_ago']:g} s ago"
        + (": silent since, stopped or cut off from the DB)" if d["silent"] else ")")
        for d in standbys
    )
    return f"standbys: {seen}"


def _cmd_status(args: argparse.Namespace) -> int:
    def work(store: Store, u: Unit, settings: Settings) -> int:
        now = utcnow()
        revision, newest = current_revision(store.engine), head_revision()
        schema = {
            "url": _shown_url(settings.state_db_url),
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
            _dump(data)
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

    return _read(args, work)


def _cmd_incidents(args: argparse.Namespace) -> int:
    def work(store: Store, u: Unit, settings: Settings) -> int:
        now = utcnow()
        items = gather_incidents(
            u, state=args.state, team=args.team, priority=args.priority, limit=args.limit
        )
        if args.json:
            _dump(items)
        else:
            print(render_incidents(items, now))
        return 0

    return _read(args, work)


def _cmd_explain(args: argparse.Namespace) -> int:
    def work(store: Store, u: Unit, settings: Settings) -> int:
        now = utcnow()
        data = gather_explain(u, args.incident, now=now)
        if data is None:
            return _fail(
                args,
                f"incident {args.incident!r} is not tracked: no IncidentNumber or RecId matches "
                "(it may be out of IVANTI_SCOPE_FILTER, or not changed since the daemon started)",
            )
        if args.json:
            _dump({k: v for k, v in data.items() if k != "lines"})
        else:
            print(render_explain(data, now))
        return 0

    return _read(args, work)


def _cmd_outbox(args: argparse.Namespace) -> int:
    def work(store: Store, u: Unit, settings: Settings) -> int:
        now = utcnow()
        states = [s for s in (args.state, "dead" if args.dead else None) if s]
        items = gather_outbox(u, states=sorted(set(states)), limit=args.limit)
        if args.json:
            _dump(items)
        else:
            print(render_outbox(items, now))
        return 0

    return _read(args, work)


def _cmd_retry(args: argparse.Namespace) -> int:
    if bool(args.ids) == bool(args.all_dead):
        return _fail(args, "usage: ivanti-xmatters retry ID [ID ...] | --all-dead", code=2)

    def work(u: Unit) -> int:
        requeued, refusals = retry_actions(
            u, None if args.all_dead else args.ids, now=utcnow(), by=operator_name()
        )
        if refusals:
            return _fail(args, "nothing requeued: " + "; ".join(refusals), refused=refusals)
        if args.json:
            _dump({"ok": True, "requeued": requeued})
        elif not requeued:
            print("no dead actions: nothing to requeue")
        else:
            for d in requeued:
                print(
                    f"requeued action #{d['id']} {d['kind']} for incident {d['incident']} "
                    f"(it died: {truncate(d['outcome'] or d['last_error'] or '?', 120)})"
                )
        return 0

    return _write(args, work)


def _cmd_skip(args: argparse.Namespace) -> int:
    if not args.reason.strip():
        return _fail(args, "--reason must say why the action is skipped", code=2)

    def work(u: Unit) -> int:
        action, message = skip_action(u, args.id, args.reason, now=utcnow())
        if action is None:
            return _fail(args, message)
        if args.json:
            _dump({"ok": True, "skipped": action, "message": message})
        else:
            print(message)
        return 0

    return _write(args, work)


def _cmd_check(args: argparse.Namespace) -> int:
    try:
        settings = load(args, require_targets=True)
    except ConfigError as exc:
        failed = [CheckResult("config", "FAIL", problem) for problem in exc.problems]
        for warning in exc.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        if args.json:
            _dump(
                {
                    "ok": False,
                    "config_error": str(exc),
                    "checks": [r.as_dict() for r in failed],
                }
            )
        else:
            print(render_checks(failed))
        return EX_CONFIG
    described = settings.describe()
    results = run_checks(settings, now=utcnow)
    ok = all(r.status != "FAIL" for r in results)
    if args.json:
        data: dict[str, Any] = {"ok": ok, "checks": [r.as_dict() for r in results]}
        if not args.quiet:
            data["settings"] = dict(described)
        _dump(data)
    else:
        if not args.quiet:
            print("effective settings (secrets masked):")
            print(pairs(described, indent="  "))
            print()
        print(render_checks(results))
    return 0 if ok else 1
