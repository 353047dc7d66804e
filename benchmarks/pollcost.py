"""What a poll costs in Ivanti requests at DEFAULT settings (issue 12), and whether a row
committed late is still seen.

Runs the daemon in-process against the simulators with the simulated clock moved as the
real one would be: a poll every ``IXM_POLL_INTERVAL`` (30 s), the edits of a cycle spread
over the 30 s before it, nothing moved past ``IXM_OVERLAP``. Prints one line per case:

* ``mass update``: ``--mass`` incidents saved in one second, then idle cycles: what each
  of those idle cycles costs (the target is 1).
* ``busy <mix> <n>``: ``n`` changes a cycle for ``--cycles`` cycles, then idle cycles;
  the busiest cycle's requests against the lower bound ceil(n / 100) + 1 and the target
  1.25 x that bound. Mixes: ``consecutive`` (one field edited on consecutive incidents,
  the cheapest), ``random`` (random incidents, a tenth of the changes raise an incident to
  P1 and page, the rest reassign within the team or edit the subject).
* ``late``: during a busy cycle one incident is saved with a LastModDateTime 50 s behind
  the server's clock (a save committed late); how many cycles until the daemon has it.

    .venv/bin/python benchmarks/pollcost.py                 # the default grid (~1 min)
    .venv/bin/python benchmarks/pollcost.py --changes 10 --cycles 3 --tenant 300   # quick

Each case runs on its own fresh simulators and state DB; ``--reading`` picks the feed
reading (``whole``, ``subsecond``, ``guid``: see daemon/simulators/ivanti.py).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon.config import load_settings
from daemon.service import Service
from daemon.simulators.clock import SimClock
from daemon.simulators.harness import SimPair

START = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)
INTERVAL = 30.0
READINGS: dict[str, dict[str, Any]] = {
    "whole": {},
    "subsecond": {"subsecond_times": True},
    "guid": {"recid_sort": "guid"},
}
TEAMS = ("Network Operations", "Database Team", "Service Desk")


class Case:
    """Fresh simulators, a state DB and a daemon that took its baseline of ``tenant``."""

    def __init__(self, tenant: int, reading: str, env: dict[str, str]) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.sims = SimPair(
            clock=SimClock(START, frozen=True),
            flood_control=False,
            ivanti_kwargs=READINGS[reading],
        ).start()
        self.recs = self.sims.ivanti.bulk_create(tenant, spacing=1.0, OwnerTeam=TEAMS[0])
        db = os.path.join(self.tmp.name, "state.db")
        full = self.sims.daemon_env(db)
        full.update({"XMATTERS_RATE_LIMIT": "1000", "IXM_WORKFLOW_WRITEBACK_WAIT": "0"})
        full.update(env)
        self.svc = Service(load_settings(full, env_file=os.devnull), now=self.sims.clock.now)
        self.sims.clock.advance(INTERVAL)
        self.poll()  # the baseline
        self.sims.clock.advance(INTERVAL)

    def poll(self) -> int:
        report = self.svc.cycle()
        if not report.ok or report.poll is None:
            raise RuntimeError(f"cycle failed: {report.error}")
        return report.poll.requests

    def cycle(self, edits: list[Callable[[], None]]) -> int:
        """The edits spread over one interval, then a poll: its Ivanti requests."""
        step = INTERVAL / max(1, len(edits))
        for edit in edits:
            edit()
            self.sims.clock.advance(step)
        if not edits:
            self.sims.clock.advance(INTERVAL)
        return self.poll()

    def seen(self, rec_id: str, when: datetime) -> bool:
        """Whether the daemon has recorded the incident's version saved at ``when``."""
        with self.svc.store.unit() as u:
            row = u.incident(rec_id)
            return row is not None and row.last_mod >= when.replace(microsecond=0)

    def close(self) -> None:
        self.svc.close()
        self.sims.stop()
        self.tmp.cleanup()


def bound(changes: int) -> int:
    return math.ceil(changes / 100) + 1


def edits_for(case: Case, mix: str, n: int, rnd: random.Random, cycle: int) -> list[Any]:
    iv = case.sims.ivanti
    if mix == "consecutive":
        start = (cycle * n) % len(case.recs)
        recs = [case.recs[(start + i) % len(case.recs)] for i in range(n)]
        return [
            lambda r=r, i=i: iv.edit_incident(r, Subject=f"c{cycle} e{i}")
            for i, r in enumerate(recs)
        ]
    out = []
    for i, r in enumerate(rnd.sample(case.recs, n)):
        roll = rnd.random()
        if roll < 0.1:
            fields = {"Priority": "1", "Subject": f"c{cycle} p1 {i}"}
        elif roll < 0.4:
            fields = {"Owner": rnd.choice(("jsmith", "bwong", "")), "Subject": f"c{cycle} o {i}"}
        else:
            fields = {"Subject": f"c{cycle} s {i}"}
        out.append(lambda r=r, f=fields: iv.edit_incident(r, **f))
    return out


def run_mass(args: argparse.Namespace) -> None:
    case = Case(args.tenant, args.reading, {})
    try:
        iv = case.sims.ivanti
        first = case.cycle([])
        for r in case.recs[: args.mass]:  # one second: the clock is frozen
            iv.edit_incident(r, Subject="mass update")
        costs = [case.cycle([]) for _ in range(args.idle)]
        print(
            f"mass update {args.mass:>5} in one second | idle before: {first} | poll right after "
            f"(reads them): {costs[0]} (bound {bound(args.mass)}) | the idle polls after: "
            f"{costs[1:]} (target 1 each)"
        )
    finally:
        case.close()


def run_busy(args: argparse.Namespace, mix: str, n: int) -> None:
    case = Case(args.tenant, args.reading, {})
    rnd = random.Random(args.seed)
    try:
        busy = [case.cycle(edits_for(case, mix, n, rnd, c)) for c in range(args.cycles)]
        idle = [case.cycle([]) for _ in range(args.idle)]
        worst = max(busy)
        target = 1.25 * bound(n)
        print(
            f"busy {mix:<11} {n:>5}/cycle | requests/cycle {busy} then idle {idle} | "
            f"max {worst} vs bound {bound(n)}: {worst / bound(n):.2f}x "
            f"({'PASS' if worst <= target else 'MISS'} <= {target:.2f})"
        )
    finally:
        case.close()


def run_late(args: argparse.Namespace, n: int) -> None:
    case = Case(args.tenant, args.reading, {})
    rnd = random.Random(args.seed)
    try:
        for c in range(2):
            case.cycle(edits_for(case, "consecutive", n, rnd, c))
        # an incident the cycles' own edits never touch
        late = case.sims.ivanti.create_incident(OwnerTeam=TEAMS[1])["RecId"]
        edits = edits_for(case, "consecutive", n, rnd, 2)

        stamp: list[datetime] = []

        def commit_late() -> None:
            when = case.sims.clock.now() - timedelta(seconds=50)
            stamp.append(when)
            case.sims.ivanti.edit_incident(late, Subject="committed late", LastModDateTime=when)

        edits.insert(len(edits) // 2, commit_late)
        cycles = 0
        case.cycle(edits)
        cycles = 1
        while not case.seen(late, stamp[0]) and cycles < 20:
            case.cycle(edits_for(case, "consecutive", n, rnd, 3 + cycles))
            cycles += 1
        found = case.seen(late, stamp[0])
        print(
            f"late commit (50 s behind) amid {n:>4} changes/cycle | seen after {cycles} "
            f"cycle(s) ({cycles * INTERVAL:.0f} s)" + ("" if found else ": NOT SEEN")
        )
    finally:
        case.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tenant", type=int, default=3000, help="incidents in the tenant")
    p.add_argument("--changes", default="10,100,300,1000", help="changes a cycle, comma-separated")
    p.add_argument("--mixes", default="consecutive,random")
    p.add_argument("--cycles", type=int, default=5, help="busy cycles per case")
    p.add_argument("--idle", type=int, default=5, help="idle cycles after")
    p.add_argument("--mass", type=int, default=150, help="incidents in the mass update")
    p.add_argument("--reading", choices=list(READINGS), default="whole")
    p.add_argument("--seed", type=int, default=12)
    args = p.parse_args(argv)
    changes = [int(c) for c in args.changes.split(",") if c]
    print(
        f"default settings (IXM_POLL_INTERVAL=30, IXM_OVERLAP=60), reading={args.reading}, "
        f"tenant={args.tenant:,}"
    )
    run_mass(args)
    for mix in args.mixes.split(","):
        for n in changes:
            run_busy(args, mix, min(n, args.tenant))
    for n in (0, max(changes)):
        run_late(args, min(n, args.tenant))
    return 0


if __name__ == "__main__":
    sys.exit(main())
