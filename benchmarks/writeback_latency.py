"""How long a responder's comment takes to show as a note in Ivanti, at default settings.

The daemon runs as the service does (``Service.run``: the real scheduler, every job on
its default interval) against both simulators on loopback, following real time. First
``N`` live xMatters events are made through the daemon's own pages (set-up only, with
flood control out of the way); then the measured daemon starts on the same state DB
with nothing but the URLs and credentials set, and people comment on random live
events at random moments. For each comment the time until its note is in the
incident's Ivanti journal is taken; xMatters requests a second are counted over the
run.

    ./dev python benchmarks/writeback_latency.py --events 10,100,500 --comments 30

prints one line per size and writes ``benchmarks/results/writeback_latency.json``.
It is a measurement, not a test: it asserts nothing, and each size takes a few
minutes (the run lasts until every comment has arrived or ``--timeout`` passed).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon.config import load_settings
from daemon.service import Service
from daemon.simulators.clock import SimClock
from daemon.simulators.directory import DEFAULT_DIRECTORY
from daemon.simulators.harness import SimPair

RESULTS = Path(__file__).resolve().parent / "results" / "writeback_latency.json"


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _make_events(sims: SimPair, db: Path, n: int) -> list[tuple[str, str]]:
    """``n`` incidents paged through the daemon: [(RecId, event id)]."""
    teams = list(DEFAULT_DIRECTORY.teams)
    env = sims.daemon_env(db)
    env.update({"XMATTERS_FLOOD_LIMIT": "100000", "XMATTERS_RATE_LIMIT": "1000"})
    svc = Service(load_settings(env, env_file=os.devnull), now=sims.clock.now)
    try:
        assert svc.cycle().ok  # baseline
        recs = [
            str(sims.ivanti.create_incident(Priority="1", OwnerTeam=teams[i % len(teams)])["RecId"])
            for i in range(n)
        ]
        time.sleep(1.1)  # past the second the incidents share, so the poll reads them whole
        for _ in range(50):
            report = svc.cycle()
            assert report.ok, report.error
            live = [(r, sims.xmatters.live_events(r)) for r in recs]
            if all(len(e) == 1 for _, e in live):
                return [(r, str(e[0]["id"])) for r, e in live]
            time.sleep(1)
        raise RuntimeError("set-up did not page every incident")
    finally:
        svc.close()


def measure(n: int, comments: int, timeout: float, seed: int, age: float) -> dict[str, Any]:
    rng = random.Random(seed)
    with (
        tempfile.TemporaryDirectory() as tmp,
        SimPair(clock=SimClock(frozen=False), flood_control=False) as sims,
    ):
        db = Path(tmp) / "state.db"
        events = _make_events(sims, db, n)
        sims.clock.advance(age)  # the events were paged `age` seconds ago
        env = sims.daemon_env(db)  # defaults from here on
        env["IXM_LOG_LEVEL"] = "ERROR"
        svc = Service(load_settings(env, env_file=os.devnull), now=sims.clock.now)
        stop = threading.Event()
        runner = threading.Thread(target=svc.run, args=(stop,), daemon=True)
        sims.xmatters.clear_requests()
        started = time.monotonic()
        runner.start()
        pending: dict[str, tuple[str, float]] = {}
        latencies: list[float] = []
        people = [p.login for p in DEFAULT_DIRECTORY.people]
        try:
            time.sleep(100)  # its steady rhythm: every event read a few times already
            sims.xmatters.clear_requests()
            window0 = time.monotonic()
            gaps = sorted(rng.uniform(0, 180) for _ in range(comments))
            t0 = time.monotonic()
            next_i = 0
            deadline = t0 + 180 + timeout
            while time.monotonic() < deadline and (next_i < comments or pending):
                now = time.monotonic()
                while next_i < comments and now - t0 >= gaps[next_i]:
                    rec, ev = rng.choice(events)
                    tag = f"bench-{uuid.uuid4().hex[:12]}"
                    sims.xmatters.comment(ev, person=rng.choice(people), text=tag)
                    pending[tag] = (rec, time.monotonic())
                    next_i += 1
                for tag, (rec, at) in list(pending.items()):
                    if any(tag in str(note["NotesBody"]) for note in sims.ivanti.notes(rec)):
                        latencies.append(time.monotonic() - at)
                        del pending[tag]
                time.sleep(0.2)
            span = time.monotonic() - window0
            xm_requests = sum(
                1 for r in sims.xmatters.requests() if r.path.startswith("/api/xm/1/")
            )
        finally:
            stop.set()
            runner.join(timeout=120)
            svc.close()
        del started
    lat = sorted(latencies)

    def pct(p: float) -> float | None:
        if not lat:
            return None
        return lat[min(len(lat) - 1, round(p / 100 * (len(lat) - 1)))]

    return {
        "live_events": n,
        "event_age_s": age,
        "comments": comments,
        "arrived": len(lat),
        "lost_within_timeout": comments - len(lat),
        "mean_s": round(statistics.fmean(lat), 1) if lat else None,
        "p50_s": round(pct(50) or 0, 1) if lat else None,
        "p95_s": round(pct(95) or 0, 1) if lat else None,
        "max_s": round(lat[-1], 1) if lat else None,
        "xmatters_requests_per_s": round(xm_requests / span, 2) if span else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Time from an xMatters comment to its note in Ivanti, at default settings.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--events", type=_ints, default=[10, 100, 500], help="live events")
    parser.add_argument("--comments", type=int, default=30, help="comments per size")
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for the last note"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--age",
        type=float,
        default=1200.0,
        help="seconds since the events were paged when people comment (0: fresh events)",
    )
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    rows = []
    print("live events | comments | arrived | mean s | p50 s | p95 s | max s | xMatters req/s")
    for n in args.events:
        row = measure(n, args.comments, args.timeout, args.seed, args.age)
        rows.append(row)
        print(
            f"{row['live_events']:>11} | {row['comments']:>8} | {row['arrived']:>7} | "
            f"{row['mean_s']} | {row['p50_s']} | {row['p95_s']} | {row['max_s']} | "
            f"{row['xmatters_requests_per_s']}",
            flush=True,
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
