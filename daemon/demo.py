"""``ivanti-xmatters demo``: the whole product against both simulators, no configuration.

A scripted scenario walks one incident through all eight use cases (and a
second one to Canceled), has on-call people respond, comment and receive
notifications, and prints a timeline of what people did in Ivanti and
xMatters and what the daemon saw and did. The simulated clock moves 30 s (one
poll interval) per step, so the run takes seconds of wall time.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from daemon.config import load_settings
from daemon.logs import setup_logging
from daemon.service import Service
from daemon.simulators.clock import SimClock
from daemon.simulators.harness import SimPair

NET = "Network Operations"
DBT = "Database Team"


class _Timeline:
    def __init__(self, sims: SimPair, svc: Service, as_json: bool) -> None:
        self.sims = sims
        self.svc = svc
        self.as_json = as_json
        self.t0 = sims.clock.now()
        self.seen_changes = 0
        self.seen_actions: set[int] = set()
        self.seen_triggers = 0
        self.seen_terminations = 0
        self.lines = 0
        self.numbers: dict[str, int] = {}

    def say(self, who: str, text: str) -> None:
        offset = int((self.sims.clock.now() - self.t0).total_seconds())
        stamp = f"+{offset // 60:02d}:{offset % 60:02d}"
        self.lines += 1
        if self.as_json:
            print(json.dumps({"t": stamp, "who": who, "what": text}))
        else:
            print(f"{stamp}  {who:<9} {text}")

    def inc(self, rec_id: str) -> str:
        return f"INC {self.numbers.get(rec_id, '?')}"

    def cycle(self) -> None:
        report = self.svc.cycle()
        if not report.ok:
            raise RuntimeError(f"daemon cycle failed: {report.error}")
        self._report_daemon()
        self._report_xmatters()
        self.sims.clock.advance(30)

    def _report_daemon(self) -> None:
        with self.svc.store.unit() as u:
            changes = u.changes_since(self.seen_changes)
            actions = sorted(
                u.outbox(["done", "dead", "skipped"], limit=100_000), key=lambda a: a.id
            )
            pending = u.outbox(["pending"])
            baseline = [c for c in changes if c.source == "baseline"]
            if baseline:
                self.say(
                    "daemon",
                    f"first start: baseline of {len(baseline)} open incident(s) recorded; nobody paged",
                )
            for c in changes:
                self.seen_changes = c.id
                self.numbers[c.rec_id] = c.incident_number
                if c.source == "baseline":
                    continue
                if c.transition:
                    self.say("daemon", f"{c.transition}: INC {c.incident_number} ({c.reason})")
                else:
                    self.say("daemon", f"no transition for INC {c.incident_number}: {c.reason}")
            for a in actions:
                if a.id in self.seen_actions:
                    continue
                self.seen_actions.add(a.id)
                if a.kind == "note":
                    extra = ""
                    assign = a.payload.get("assign")
                    if assign:
                        extra = f" (+ Owner={assign['owner']}, Status=Active)"
                    self.say(
                        "daemon",
                        f"wrote note on INC {a.incident_number}: {a.payload.get('note')}{extra}",
                    )
                else:
                    self.say("daemon", f"{a.kind} INC {a.incident_number} {a.state}: {a.outcome}")
            for a in pending:
                if a.outcome and a.outcome.startswith("queued"):
                    self.say("daemon", f"{a.kind} INC {a.incident_number} waiting: {a.outcome}")

    def _report_xmatters(self) -> None:
        triggers = self.sims.xmatters.triggers()
        for t in triggers[self.seen_triggers :]:
            p = t.get("payload") or {}
            self.say(
                "xmatters",
                f"trigger {p.get('Type', '(form)')} for INC {p.get('IncidentID', '?')}: {t.get('outcome')}",
            )
        self.seen_triggers = len(triggers)
        terms = self.sims.xmatters.terminations()
        for term in terms[self.seen_terminations :]:
            self.say("xmatters", f"event {term.get('event_id')} terminated ({term.get('by')})")
        self.seen_terminations = len(terms)

    def live_event(self, rec_id: str) -> dict[str, Any]:
        live = self.sims.xmatters.live_events(rec_id)
        if not live:
            raise RuntimeError(f"demo expected a live event for {rec_id}")
        return live[-1]


def run_demo(*, as_json: bool = False, keep_db: str | None = None) -> int:
    setup_logging("ERROR")
    clock = SimClock(datetime.now(UTC).replace(microsecond=0), frozen=True)
    with tempfile.TemporaryDirectory(prefix="ixm-demo-") as tmp, SimPair(clock=clock) as sims:
        db = Path(keep_db) if keep_db else Path(tmp) / "demo.db"
        if db.exists():
            db.unlink()
        env = sims.daemon_env(db)
        env["XMATTERS_RATE_LIMIT"] = "100"
        svc = Service(load_settings(env, env_file=os.devnull), now=clock.now)
        tl = _Timeline(sims, svc, as_json)
        iv, xm = sims.ivanti, sims.xmatters
        try:
            _scenario(tl, iv, xm)
        finally:
            svc.close()
        notes = sum(len(iv.notes(r)) for r in tl.numbers)
        with svc.store.unit() as u:
            done = u.outbox(["done"], limit=10_000)
        note_actions = sum(1 for a in done if a.kind == "note")
        pages = sum(1 for a in done if a.kind == "page")
        created = sum(1 for t in xm.triggers() if t.get("outcome") == "created")
        _check(tl, xm, notes=notes, note_actions=note_actions, pages=pages, created=created)
        tl.say(
            "demo",
            f"done: {created} events for {pages} pages, {len(xm.terminations())} terminations, "
            f"{notes} notes in Ivanti for {note_actions} write-backs: nothing lost, nothing doubled",
        )
        if keep_db:
            tl.say(
                "demo",
                f"state DB kept at {db}: try `IXM_STATE_DB=sqlite:///{db} ivanti-xmatters explain <number> --env-file /dev/null`",
            )
    return 0


def _scenario(tl: _Timeline, iv: Any, xm: Any) -> None:
    step: Callable[[str, str], None] = tl.say
    old = iv.create_incident(Priority="1", OwnerTeam=NET, Subject="Core router flapping")
    iv.create_incident(Priority="4", OwnerTeam="Service Desk", Subject="Printer jam")
    step(
        "ivanti",
        f"two incidents exist before the daemon starts (INC {old['IncidentNumber']} is P1)",
    )
    tl.cycle()

    inc = iv.create_incident(
        Priority="1", OwnerTeam=NET, Subject="Core switch down", Category="Network"
    )
    rec = inc["RecId"]
    step("ivanti", f"lchen logs INC {inc['IncidentNumber']} P1 for {NET}: 'Core switch down'")
    tl.cycle()

    ev = tl.live_event(rec)
    xm.deliver(ev["id"], person="jsmith", device="Mobile App", status="DELIVERED")
    xm.deliver(ev["id"], person="bwong", device="Work Email", status="FAILED")
    xm.respond(ev["id"], person="jsmith", response="Assign to me", comment="on it, 10 min")
    step(
        "xmatters",
        "jsmith's phone gets it, bwong's email fails; jsmith responds 'Assign to me: on it, 10 min'",
    )
    tl.cycle()
    step("ivanti", "the daemon's own write (note, Owner, Status) is read back on the next poll")
    tl.cycle()

    iv.edit_incident(rec, OwnerTeam=DBT, Owner="")
    step("ivanti", f"INC {inc['IncidentNumber']} reassigned to {DBT}")
    tl.cycle()
    xm.comment(tl.live_event(rec)["id"], person="apatel", text="looking at replication lag")
    step("xmatters", "apatel comments on the event")
    tl.cycle()

    iv.edit_incident(rec, Priority="4")
    step("ivanti", "priority lowered to 4")
    tl.cycle()
    iv.edit_incident(rec, Priority="2")
    step("ivanti", "priority raised to 2")
    tl.cycle()
    iv.edit_incident(rec, Status="Resolved", CauseCode="Hardware", Resolution="Replaced line card")
    step("ivanti", "resolved")
    tl.cycle()
    iv.edit_incident(rec, Status="Active", Owner="apatel")
    step("ivanti", "reopened by apatel")
    tl.cycle()
    xm.respond(tl.live_event(rec)["id"], person="apatel", response="Acknowledge")
    step("xmatters", "apatel acknowledges")
    tl.cycle()
    iv.edit_incident(rec, Status="Closed")
    step("ivanti", "closed")
    tl.cycle()

    other = iv.create_incident(Priority="2", OwnerTeam=DBT, Subject="Backup job failing")
    step("ivanti", f"INC {other['IncidentNumber']} P2 for {DBT}")
    tl.cycle()
    iv.edit_incident(other["RecId"], Status="Cancelled")
    step("ivanti", f"INC {other['IncidentNumber']} canceled (duplicate)")
    tl.cycle()


def _check(
    tl: _Timeline, xm: Any, *, notes: int, note_actions: int, pages: int, created: int
) -> None:
    """The demo proves itself: every use case fired, each page made one event, each
    write-back one note, and nothing is left live or undelivered."""
    with tl.svc.store.unit() as u:
        kinds = [c.transition for c in u.changes_since() if c.transition]
        stuck = u.outbox(["dead", "pending"])
    expected = {
        "New Incident",
        "Reassigned",
        "Reopened",
        "Priority Upgrade",
        "Priority Downgrade",
        "Resolved",
        "Closed",
        "Canceled",
    }
    problems = []
    if expected - set(kinds):
        problems.append(f"use cases not seen: {sorted(expected - set(kinds))}")
    if stuck:
        problems.append(f"{len(stuck)} actions undelivered")
    if created != pages:
        problems.append(f"{created} events for {pages} pages")
    if notes != note_actions:
        problems.append(f"{notes} notes for {note_actions} write-backs")
    if any(xm.live_events(r) for r in tl.numbers):
        problems.append("events still live")
    if problems:
        raise RuntimeError("demo check failed: " + "; ".join(problems))
