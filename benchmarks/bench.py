"""Benchmark: cost per cycle at tenant scale, side by side with naive polling (issue 7).

Polling must cost next to nothing when nothing changes and grow with the changes, not
with the tenant. This program measures that against the simulators and prints one
table (the same figures go to ``benchmarks/results/latest.json``): per tenant size,
live xMatters events and changes per cycle, what one cycle of the daemon costs in
Ivanti and xMatters requests, wall and CPU time, memory, state DB growth and detection
latency, beside a naive poller (``benchmarks/naive.py``) measured in the same run.

How it measures (also printed above the table):

* Every (tenant size, poller) pair runs in a fresh worker process, so its peak RSS is
  its own; the simulators run in a child process of that worker, so the CPU time of
  the daemon (``time.process_time`` of the worker, including the write-back threads)
  never contains the simulators'. The simulators' CPU per cycle is reported apart.
  The worker drives the simulated tenant (bulk loads, edits, the clock) over a pipe
  to that child rather than its ``/_sim/`` HTTP routes: a thousand edits a cycle are
  then one message, and none of it happens inside a measured cycle.
* The simulated clock is frozen and moved by hand; the daemon gets a mirror of it
  that moves in step, so both sides agree on "now". A cycle's edits are spread over
  ``EDIT_SPAN_S`` simulated seconds (the default poll interval); each sets a new
  Subject, so it pages nobody and is a change to detect and commit.
* Steady state, at default settings: a poll every ``EDIT_SPAN_S`` (the default
  interval), nothing moved past ``IXM_OVERLAP``, so each poll also reads earlier
  cycles' changes once more after their overlap (the settle read, deduplicated, never
  re-paged). The "adv" column repeats the measurement with the clock moved past the
  overlap before each poll, as the figures before issue 12 were taken. Target: at most
  1.25 x the lower bound ceil(changes / 100) + 1 every cycle.
* Live events are made by raising incidents to Priority 1 and letting the daemon
  page them; once every event has been polled three times the clock moves past the
  write-back busy window, so the cycles measure quiet events, read every
  ``IXM_QUIET_POLL_EVERY``-th cycle. Sim flood control is off and the daemon's
  xMatters rate limit is raised for the run; "xM s@4/s" says how long the same
  requests take at the default limit of 4 requests a second.
* Detection latency runs the real scheduler (``Service.run``) against a real-time
  clock: an incident is raised to Priority 1 at a random moment, and the latency is
  the simulated xMatters event's creation time minus the edit time.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import random
import resource
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Self, TypeVar

import httpx

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import floor
from benchmarks.naive import NaiveConfig, NaivePoller
from daemon.config import load_settings
from daemon.logs import setup_logging
from daemon.service import Service, build_ivanti, settle_heap
from daemon.simulators.clock import SimClock
from daemon.simulators.harness import SimPair

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_JSON = REPO / "benchmarks" / "results" / "latest.json"
START = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)
EDIT_SPAN_S = 30.0  # simulated seconds a cycle's edits are spread over (default poll interval)
BOUND_SLACK = 1.25  # issue 12: a busy cycle costs at most 1.25 x the lower bound
OVERLAP_S = 60.0  # IXM_OVERLAP, set explicitly so the steady-state advance below is right
BUSY_WINDOW_S = 15 * 60  # WritebackConfig.busy_window: events this fresh are read every cycle
DEFAULT_XM_RATE = 4.0  # XMATTERS_RATE_LIMIT default, for the "at the default rate" figure
IDLE_WARMUP = 2
SETUP_ROUNDS = 40
PAGE_SIZE = 100
MEMORY_TARGET = 0.25
THROUGHPUT_TARGET = 5000.0
THROUGHPUT_MIN_CHANGES = 1000  # below this a cycle's fixed cost hides the per-change rate
FLOOR_TARGET = 0.60  # issue 12: detect+commit at >= 60% of the raw floor on the realistic mix
REALISTIC_MIX = "random"
MILLION = 1_000_000

XM_KINDS = {
    "xm.trigger": "triggers",
    "xm.events.change": "terminations",
    "xm.events.list": "lookups",
    "xm.events.get": "lookups",
    "xm.audits": "audits",
}


# ==================================================================================== options
@dataclass(frozen=True)
class Options:
    sizes: tuple[int, ...] = (1000, 10000, 100000)
    changes: tuple[int, ...] = (0, 10, 1000)
    events: tuple[int, ...] = (10, 500)
    cycles: int = 4
    # polls of each change mix, each beside its own floor replay: the ratio is their
    # median, as one poll's ratio moves between 34% and 107% on a shared 2-core VM
    mix_cycles: int = 20
    naive_cycles: int = 2
    poll_interval: float = 2.0
    delivery_interval: float = 1.0
    latency_samples: int = 5
    naive_measure_limit: float = 20.0
    json_path: Path = DEFAULT_JSON
    smoke: bool = False
    mixes: tuple[str, ...] = ("consecutive", "random")
    naive: bool = True
    reconcile: bool = True
    # the simulated tenant's @odata.count: "asked" spares the simulator a count of every
    # match on each page, which at a million rows is most of what serving a page costs it
    odata_count: str = "always"

    @property
    def max_events(self) -> int:
        return max(self.events, default=0)


SMOKE = Options(sizes=(1000,), changes=(0, 10), events=(10,), latency_samples=3, smoke=True)
# --million: the daemon alone (a naive full scan of a million incidents takes many minutes
# a cycle), idle and 1,000 changes a poll, 10 live events
MILLION_RUN = Options(
    sizes=(MILLION,),
    changes=(0, 1000),
    events=(10,),
    latency_samples=3,
    reconcile=False,
    odata_count="asked",
)


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v.replace("_", "")) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers: {text!r}") from exc
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected non-negative integers: {text!r}")
    return tuple(sorted(set(values)))


def _mixes(text: str) -> tuple[str, ...]:
    values = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    unknown = [v for v in values if v not in MIXES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown mixes {unknown}; known: {', '.join(MIXES)}")
    return values


def _csv(values: Iterable[int]) -> str:
    return ",".join(str(v) for v in values)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench.py",
        description=(
            "Cost per poll cycle of the ivanti-xmatters daemon at tenant scale, beside a "
            "naive full-scan poller, measured against the simulators. Prints one table "
            "and writes the same figures as JSON."
        ),
        epilog=(
            "Full run (defaults): tenants of 1,000, 10,000 and 100,000 incidents; 0, 10 and "
            "1,000 changes per cycle; 10 and 500 live xMatters events; about 10 minutes on "
            "2 cores. --smoke is what CI runs: 1,000 incidents, 0 and 10 changes, 10 events."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d = Options()
    parser.add_argument(
        "--smoke", action="store_true", help="the smallest case only (CI): overrides the lists"
    )
    parser.add_argument(
        "--million",
        action="store_true",
        help="opt-in: one tenant of 1,000,000 incidents, the daemon only (no naive poller, no "
        "reconcile sweep: it reads the whole tenant again, as the baseline does), 0 and 1,000 "
        "changes, 10 live events (overrides the lists)",
    )
    parser.add_argument(
        "--no-reconcile", action="store_true", help="skip the timed reconcile sweep"
    )
    parser.add_argument(
        "--sizes", type=_ints, default=_csv(d.sizes), help="tenant sizes (incidents)"
    )
    parser.add_argument(
        "--mixes",
        type=_mixes,
        default=",".join(d.mixes),
        help="change mixes measured beside the raw floor at the largest --changes count: "
        "consecutive (a new Subject on consecutive incidents, the cheapest), random (random "
        "incidents; a tenth raised to P1, three tenths reassigned)",
    )
    parser.add_argument(
        "--no-naive", action="store_true", help="measure the daemon only, not the naive poller"
    )
    parser.add_argument("--changes", type=_ints, default=_csv(d.changes), help="changes per cycle")
    parser.add_argument("--events", type=_ints, default=_csv(d.events), help="live xMatters events")
    parser.add_argument(
        "--cycles",
        type=int,
        default=d.cycles,
        help="measured daemon cycles per case (a multiple of IXM_QUIET_POLL_EVERY=4 "
        "averages the quiet-event polls exactly)",
    )
    parser.add_argument(
        "--naive-cycles", type=int, default=d.naive_cycles, help="measured naive cycles per case"
    )
    parser.add_argument(
        "--mix-cycles",
        type=int,
        default=d.mix_cycles,
        help="measured polls per change mix, each set beside the raw floor's replay of its own "
        "pages; the d+c/floor ratio is their median (default %(default)s)",
    )
    parser.add_argument(
        "--naive-measure-limit",
        type=float,
        default=d.naive_measure_limit,
        help="seconds: when one naive scan takes longer, the naive poller is measured at the "
        "largest change count only (its cost does not depend on it) and its latency is "
        "derived from the scan time instead of waited for",
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=d.poll_interval,
        help="IXM_POLL_INTERVAL (s) for the real-time latency measurement",
    )
    parser.add_argument(
        "--delivery-interval",
        type=float,
        default=d.delivery_interval,
        help="IXM_DELIVERY_INTERVAL (s) for the real-time latency measurement",
    )
    parser.add_argument(
        "--latency-samples",
        type=int,
        default=d.latency_samples,
        help="edits timed from Ivanti to the xMatters event, per tenant size and poller",
    )
    parser.add_argument("--json", type=Path, default=d.json_path, help="where to write the JSON")
    return parser


def parse_options(argv: Sequence[str] | None) -> Options:
    args = build_parser().parse_args(argv)
    for name in ("cycles", "mix_cycles", "naive_cycles", "latency_samples"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be at least 1")
    if args.poll_interval < 1 or args.delivery_interval <= 0:
        raise SystemExit("--poll-interval must be >= 1 s and --delivery-interval > 0")
    events = tuple(e for e in args.events if e)  # the idle case (no live event) always runs
    if not events:
        raise SystemExit("--events needs a positive count (0 live events is always measured)")
    if args.smoke:
        base = SMOKE
    elif args.million:
        base = replace(MILLION_RUN, naive=False)
    else:
        base = Options(args.sizes, args.changes, events, naive=not args.no_naive)
    opts = replace(
        base,
        mixes=args.mixes,
        naive=base.naive and not args.no_naive,
        reconcile=base.reconcile and not args.no_reconcile,
        cycles=args.cycles,
        mix_cycles=args.mix_cycles,
        naive_cycles=args.naive_cycles,
        poll_interval=args.poll_interval,
        delivery_interval=args.delivery_interval,
        latency_samples=min(args.latency_samples, 3)
        if args.smoke or args.million
        else args.latency_samples,
        naive_measure_limit=args.naive_measure_limit,
        json_path=args.json,
    )
    too_small = [n for n in opts.sizes if n < opts.max_events + opts.latency_samples + 1]
    if too_small:
        raise SystemExit(f"tenant sizes {too_small} cannot hold {opts.max_events} live events")
    return opts


# ============================================================================ process probes
def _status_bytes(field_name: str) -> int | None:
    """A ``Vm*`` figure of this process from /proc (Linux), in bytes."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def rss_bytes() -> int | None:
    return _status_bytes("VmRSS")


def peak_rss_bytes() -> int:
    """Peak RSS since start or the last ``reset_peak_rss`` (ru_maxrss where /proc lacks it)."""
    hwm = _status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> bool:
    """Start a new peak (Linux: writing 5 to clear_refs resets VmHWM to the current RSS)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def db_usage(path: Path) -> dict[str, Any]:
    """Bytes in use in the state DB (WAL content included), in total and per table."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        try:
            tables = dict(conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"))
        except sqlite3.OperationalError:  # SQLite built without dbstat
            tables = {}
    finally:
        conn.close()
    return {"used_bytes": (pages - free) * page_size, "tables": tables}


def wait_for(probe: Callable[[], T | None], timeout: float, every: float = 0.05) -> T:
    """Poll a condition in another process until it holds (there is nothing to block on)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout:.0f} s")
        time.sleep(every)


def _mean(values: Iterable[float]) -> float:
    vals = list(values)
    return sum(vals) / len(vals) if vals else 0.0


# ==================================================================== the simulator process
class SimOps:
    """Runs inside the simulator process: the benchmark's hands on the simulated tenant."""

    def __init__(self, start: datetime) -> None:
        self.clock = SimClock(start, frozen=True)
        self.pair = SimPair(clock=self.clock).start()
        self.pair.xmatters.set_flood_control(False)
        self.ids: list[str] = []
        self.editor: Editor | None = None

    def close(self) -> None:
        self.pair.stop()

    def env(self, db: str) -> dict[str, str]:
        return self.pair.daemon_env(db)

    def serve_count(self, mode: str) -> None:
        self.pair.ivanti.odata_count = mode

    def bulk(self, n: int, fields: dict[str, Any]) -> int:
        """Load ``n`` incidents; their RecIds stay here (``ids``), not in the worker, whose
        peak RSS is the daemon's figure."""
        self.ids.extend(self.pair.ivanti.bulk_create(n, spacing=0.5, **fields))
        return len(self.ids)

    def ids_slice(self, start: int, stop: int) -> list[str]:
        return self.ids[start:stop]

    def set_pool(self, reserved_start: int, reserved_stop: int, seed: int) -> int:
        """Edit every loaded incident but those in ``ids[reserved_start:reserved_stop]``."""
        pool = self.ids[:reserved_start] + self.ids[reserved_stop:]
        self.editor = Editor(pool, seed)
        return len(pool)

    def edit_next(self, count: int, span: float, mix: str) -> None:
        """The next ``count`` edits of ``mix`` (see ``Editor``), spread over ``span``."""
        assert self.editor is not None, "set_pool first"
        self.edit_each(self.editor.next(count, mix), span)

    def edit(self, rec_ids: list[str], span: float, fields: dict[str, Any]) -> None:
        """Edit ``rec_ids`` evenly over ``span`` simulated seconds, the last at the end."""
        self.edit_each([(r, fields) for r in rec_ids], span)

    def edit_each(self, edits: list[tuple[str, dict[str, Any]]], span: float) -> None:
        step = span / len(edits) if edits else span
        if not edits:
            self.clock.advance(span)
        for rec_id, fields in edits:
            self.clock.advance(step)
            self.pair.ivanti.edit_incident(rec_id, **fields)

    def edit_now(self, rec_id: str, fields: dict[str, Any]) -> str:
        at = self.clock.now()
        self.pair.ivanti.edit_incident(rec_id, **fields)
        return at.isoformat()

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def realtime(self) -> str:
        """Let the clock follow real time from its current reading."""
        self.clock.freeze(False)
        return self.clock.now().isoformat()

    def counts(self) -> dict[str, dict[str, int]]:
        """Requests per route since the last call (then forgotten)."""
        out = {
            "ivanti": self.pair.ivanti.request_counts(),
            "xmatters": self.pair.xmatters.request_counts(),
        }
        self.pair.ivanti.clear_requests()
        self.pair.xmatters.clear_requests()
        return out

    def cpu(self) -> float:
        return time.process_time()

    def first_event(self, rec_id: str) -> str | None:
        events = self.pair.xmatters.events(rec_id)
        return str(events[0]["created"]) if events else None

    def live_events(self) -> int:
        return len(self.pair.xmatters.events(status="ACTIVE"))


def _serve(conn: Connection, make: Callable[..., Any], args: tuple[Any, ...]) -> None:
    """Child process: build ``make(*args)``, say whether that worked, then call its methods
    as the pipe asks until told to stop."""
    try:
        ops = make(*args)
    except Exception as exc:
        conn.send(("err", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ok", None))
    try:
        while True:
            op, kwargs = conn.recv()
            if op == "stop":
                conn.send(("ok", None))
                return
            try:
                conn.send(("ok", getattr(ops, op)(**kwargs)))
            except Exception as exc:
                conn.send(("err", f"{type(exc).__name__}: {exc}"))
    finally:
        ops.close()


class Served:
    """An object built and kept in a child process of its own (so its CPU and memory are
    not the daemon worker's), its methods called over a pipe."""

    def __init__(self, make: Callable[..., Any], *args: Any, name: str) -> None:
        ctx = mp.get_context("spawn")
        self.name = name
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, make, args), name=name, daemon=True)
        self._proc.start()
        child.close()
        self._answer("start")

    def _answer(self, op: str) -> Any:
        try:
            status, value = self._conn.recv()
        except EOFError as exc:
            self._proc.join(timeout=10)
            raise RuntimeError(f"{self.name} died (exit {self._proc.exitcode})") from exc
        if status != "ok":
            raise RuntimeError(f"{self.name} {op} failed: {value}")
        return value

    def call(self, op: str, **kwargs: Any) -> Any:
        self._conn.send((op, kwargs))
        return self._answer(op)

    def close(self) -> None:
        try:
            self.call("stop")
        except (OSError, EOFError, RuntimeError):
            pass
        self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SimProcess(Served):
    """Both simulators in a child process, driven by messages over a pipe."""

    def __init__(self, start: datetime = START) -> None:
        super().__init__(SimOps, start, name="simulators")


class Tenant:
    """The simulated tenant as the worker sees it, with a local mirror of the sim clock."""

    def __init__(self, sim: SimProcess, start: datetime = START) -> None:
        self.sim = sim
        self.clock = SimClock(start, frozen=True)

    def advance(self, seconds: float) -> None:
        self.sim.call("advance", seconds=seconds)
        self.clock.advance(seconds)

    def edit(self, rec_ids: Sequence[str], span: float, fields: dict[str, Any]) -> None:
        self.sim.call("edit", rec_ids=list(rec_ids), span=span, fields=fields)
        self.clock.advance(span)

    def edit_next(self, count: int, span: float, mix: str = "consecutive") -> None:
        """The next ``count`` edits of ``mix``, chosen in the simulator process."""
        self.sim.call("edit_next", count=count, span=span, mix=mix)
        self.clock.advance(span)

    def realtime(self) -> None:
        self.clock.set(datetime.fromisoformat(self.sim.call("realtime")))
        self.clock.freeze(False)

    def first_event(self, rec_id: str) -> str | None:
        """Creation time of the incident's first xMatters event, if it has one yet."""
        created = self.sim.call("first_event", rec_id=rec_id)
        return str(created) if created is not None else None


class TimedTransport(httpx.BaseTransport):
    """Counts the seconds spent in HTTP round trips (body included), so the daemon's own
    detect-and-commit time can be told apart from the time Ivanti takes to answer."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.seconds = 0.0
        self.capture: list[bytes] | None = None  # bodies of incident queries, for the floor

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        started = time.perf_counter()
        try:
            response = self.inner.handle_request(request)
            response.read()
        finally:
            self.seconds += time.perf_counter() - started
        if self.capture is not None and request.url.path.endswith("/businessobject/incidents"):
            self.capture.append(response.content)
        return response

    def close(self) -> None:
        self.inner.close()


MIXES = ("consecutive", "random")


class Editor:
    """Hands out the edits of a cycle (in the simulator process, beside the tenant).

    ``consecutive`` (the cheapest): a new Subject on the next incidents of the pool,
    round-robin, so a cycle's rows sit side by side in the feed and page nobody.
    ``random`` (realistic, as in ``benchmarks/pollcost.py``): incidents drawn at random
    from the whole pool; a tenth raised to Priority 1 (they page), three tenths
    reassigned to another owner, the rest a new Subject."""

    def __init__(self, pool: Sequence[str], seed: int = 12) -> None:
        self.pool = list(pool)
        self.cursor = 0
        self.batch = 0
        self.rnd = random.Random(seed)

    def next(self, count: int, mix: str = "consecutive") -> list[tuple[str, dict[str, Any]]]:
        self.batch += 1
        if mix == "consecutive":
            ids = [self.pool[(self.cursor + i) % len(self.pool)] for i in range(count)]
            self.cursor = (self.cursor + count) % len(self.pool)
            return [(r, {"Subject": f"benchmark edit {self.batch}"}) for r in ids]
        if mix != "random":
            raise ValueError(f"unknown change mix {mix!r}")
        out = []
        for i, rec_id in enumerate(self.rnd.sample(self.pool, min(count, len(self.pool)))):
            roll = self.rnd.random()
            fields: dict[str, Any] = {"Subject": f"benchmark {self.batch} s {i}"}
            if roll < 0.1:
                fields["Priority"] = "1"
            elif roll < 0.4:
                fields["Owner"] = self.rnd.choice(("jsmith", "bwong", ""))
            out.append((rec_id, fields))
        return out


# ============================================================================= measurements
@dataclass
class Sample:
    """One measured cycle."""

    ivanti: dict[str, int]
    xmatters: dict[str, int]
    wall: float
    cpu: float
    sim_cpu: float
    poll_wall: float
    poll_cpu: float
    poll_io: float  # of poll_wall, seconds spent in Ivanti round trips
    changes: int
    rows: int


def _xm_kinds(routes: dict[str, int]) -> dict[str, int]:
    kinds = dict.fromkeys(("triggers", "terminations", "lookups", "audits", "other"), 0)
    for route, n in routes.items():
        kinds[XM_KINDS.get(route, "other")] += n
    return kinds


def summarize(samples: Sequence[Sample]) -> dict[str, Any]:
    """Per-cycle means (and maxima where a target is judged on the worst cycle)."""
    iv = [sum(s.ivanti.values()) for s in samples]
    xm = [sum(s.xmatters.values()) for s in samples]
    kinds = [_xm_kinds(s.xmatters) for s in samples]
    limited = [x - k["triggers"] for x, k in zip(xm, kinds, strict=True)]
    changes = sum(s.changes for s in samples)
    poll_wall = sum(s.poll_wall for s in samples)
    poll_cpu = sum(s.poll_cpu for s in samples)
    own = poll_wall - sum(s.poll_io for s in samples)
    routes = sorted({r for s in samples for r in (*s.ivanti, *s.xmatters)})
    return {
        "cycles": len(samples),
        "ivanti_requests": _mean(iv),
        "ivanti_requests_max": max(iv, default=0),
        "ivanti_rows": _mean(s.rows for s in samples),
        "xm_requests": _mean(xm),
        "xm_requests_max": max(xm, default=0),
        "xm_by_kind": {k: _mean(d[k] for d in kinds) for k in kinds[0]} if kinds else {},
        "by_route": {
            r: _mean(s.ivanti.get(r, 0) + s.xmatters.get(r, 0) for s in samples) for r in routes
        },
        "xm_seconds_at_default_rate": _mean(limited) / DEFAULT_XM_RATE,
        "wall_s": _mean(s.wall for s in samples),
        "wall_s_max": max((s.wall for s in samples), default=0.0),
        "cpu_s": _mean(s.cpu for s in samples),
        "sim_cpu_s": _mean(s.sim_cpu for s in samples),
        "poll_wall_s": _mean(s.poll_wall for s in samples),
        "poll_cpu_s": _mean(s.poll_cpu for s in samples),
        "poll_ivanti_io_s": _mean(s.poll_io for s in samples),
        "changes": changes / len(samples) if samples else 0.0,
        "detect_commit_per_s": changes / own if changes and own > 0 else None,
        "poll_throughput_per_s": changes / poll_wall if changes and poll_wall else None,
        "cpu_throughput_per_s": changes / poll_cpu if changes and poll_cpu else None,
    }


def latency_summary(values: Sequence[float], *, derived: bool = False) -> dict[str, Any]:
    return {
        "samples": len(values),
        "mean_s": _mean(values) if values else None,
        "max_s": max(values) if values else None,
        "values_s": list(values),
        "derived": derived,
    }


PollFigures = tuple[float, float, float, int, int]  # wall, CPU, Ivanti I/O, changes, rows


def _measured(tenant: Tenant, run: Callable[[], PollFigures]) -> Sample:
    """Time ``run`` (which returns its poll's figures) and collect the requests the
    simulators saw meanwhile."""
    tenant.sim.call("counts")  # forget what came before
    sim0 = tenant.sim.call("cpu")
    w0, c0 = time.perf_counter(), time.process_time()
    poll_wall, poll_cpu, poll_io, changes, rows = run()
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    sim_cpu = tenant.sim.call("cpu") - sim0
    counts = tenant.sim.call("counts")
    return Sample(
        ivanti=counts["ivanti"],
        xmatters=counts["xmatters"],
        wall=wall,
        cpu=cpu,
        sim_cpu=sim_cpu,
        poll_wall=poll_wall,
        poll_cpu=poll_cpu,
        poll_io=poll_io,
        changes=changes,
        rows=rows,
    )


def _progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ================================================================================== daemon
class DaemonRun:
    """One tenant size measured with the daemon, inside one worker process."""

    def __init__(self, size: int, opts: Options, tenant: Tenant, workdir: Path) -> None:
        self.size = size
        self.opts = opts
        self.tenant = tenant
        self.db = workdir / "state.db"
        # the RecIds stay in the simulator process (edits are chosen there): a list of
        # them here would be the harness's memory in the daemon's peak RSS (~90 MB at 1M)
        tenant.sim.call("bulk", n=size, fields={"Priority": "3"})
        self.candidates: list[str] = tenant.sim.call("ids_slice", start=0, stop=opts.max_events)
        # raised to Priority 1 to time detection; every other incident may be edited
        self.probes: list[str] = tenant.sim.call(
            "ids_slice", start=size - opts.latency_samples, stop=size
        )
        tenant.sim.call(
            "set_pool", reserved_start=size - opts.latency_samples, reserved_stop=size, seed=size
        )
        env = tenant.sim.call("env", db=str(self.db))
        env.update(
            XMATTERS_RATE_LIMIT="1000",
            XMATTERS_FLOOD_LIMIT="100000",
            IXM_OVERLAP=str(int(OVERLAP_S)),
            IXM_WRITEBACK="true",
            IXM_POLL_INTERVAL=str(opts.poll_interval),
            IXM_DELIVERY_INTERVAL=str(opts.delivery_interval),
        )
        env.pop("IXM_LOG_LEVEL", None)  # the default (INFO), not the test harness's quiet
        self.settings = load_settings(env, env_file=os.devnull)
        # logging as `ivanti-xmatters run` sets it up (a line for each transition is part
        # of what a poll costs), into a file instead of the journal
        self.log_path = workdir / "daemon.log"
        self._log = self.log_path.open("w", encoding="utf-8")
        setup_logging(self.settings.ops.log_level, self._log, fmt=self.settings.ops.log_format)
        self.ivanti_io = TimedTransport()
        self.svc = Service(
            self.settings,
            ivanti=build_ivanti(self.settings, transport=self.ivanti_io),
            now=tenant.clock.now,
        )
        settle_heap()  # as `ivanti-xmatters run` does before its first job
        self.live = 0
        self.capture: list[bytes] | None = None  # set: the poll's pages are kept there

    # ----- one cycle ---------------------------------------------------------------------
    def _cycle(self) -> PollFigures:
        """What ``Service.cycle`` runs, with the poll timed on its own."""
        io0 = self.ivanti_io.seconds
        self.ivanti_io.capture = self.capture
        w0, c0 = time.perf_counter(), time.process_time()
        try:
            poll = self.svc.poll_job()
        finally:
            poll_wall, poll_cpu = time.perf_counter() - w0, time.process_time() - c0
            self.ivanti_io.capture = None
        poll_io = self.ivanti_io.seconds - io0
        self.svc.deliver_job()
        self.svc.writeback_job()
        self.svc.deliver_job()
        return poll_wall, poll_cpu, poll_io, poll.changes, poll.rows_read

    def measure(self) -> Sample:
        return _measured(self.tenant, self._cycle)

    def steady(self, changes: int, *, past_overlap: bool = False) -> Sample:
        """A cycle at default settings: the edits spread over one poll interval, then
        the poll (which also reads the earlier cycles' changes once more, after their
        overlap). ``past_overlap`` moves the clock past the overlap first, as the
        figures before issue 12 did."""
        self.tenant.edit_next(changes, EDIT_SPAN_S)
        if past_overlap:
            self.tenant.advance(OVERLAP_S + 1)
        return self.measure()

    # ----- phases ------------------------------------------------------------------------
    def baseline(self) -> dict[str, Any]:
        sample = self.measure()
        self.tenant.advance(OVERLAP_S + 1)
        return _one_off(sample)

    def reconcile(self) -> dict[str, Any]:
        """One reconcile sweep (hourly by default): every open incident re-read."""

        def sweep() -> PollFigures:
            io0 = self.ivanti_io.seconds
            w0, c0 = time.perf_counter(), time.process_time()
            result = self.svc.reconcile_job()
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            return wall, cpu, self.ivanti_io.seconds - io0, result.changes, result.rows_read

        sample = _measured(self.tenant, sweep)
        self.tenant.advance(OVERLAP_S + 1)
        return _one_off(sample)

    def case(self, events: int, changes: int, *, overlap: bool) -> dict[str, Any]:
        db0 = db_usage(self.db)["used_bytes"]
        warm = [self.steady(changes) for _ in range(IDLE_WARMUP if changes == 0 else 1)]
        samples = [self.steady(changes) for _ in range(self.opts.cycles)]
        grown = db_usage(self.db)["used_bytes"] - db0
        committed = sum(s.changes for s in (*warm, *samples))
        cycles = len(warm) + len(samples)
        out = summarize(samples)
        out["db_bytes_per_cycle"] = grown / cycles
        out["db_bytes_per_1000_changes"] = grown / committed * 1000 if committed else None
        if overlap:
            ovl = summarize(
                [self.steady(changes, past_overlap=True) for _ in range(self.opts.cycles)]
            )
            out["overlap"] = {
                k: ovl[k] for k in ("ivanti_requests", "ivanti_requests_max", "ivanti_rows")
            }
        return out

    def mix_case(self, mix: str, changes: int) -> dict[str, Any]:
        """``changes`` edits of ``mix`` a cycle at default settings, and the raw floor
        (``benchmarks/floor.py``) for the very pages each poll read, replayed in a
        process of its own right after that poll: each poll is set beside its own floor,
        timed on the machine as it was that moment, and the ratio is their median."""

        def cycle() -> tuple[Sample, list[bytes]]:
            pages: list[bytes] = []
            self.capture = pages
            try:
                self.tenant.edit_next(changes, EDIT_SPAN_S, mix)
                return self.measure(), pages
            finally:
                self.capture = None

        floor_db = str(self.db.with_name("floor.db"))
        with Served(floor.Floor, floor_db, str(self.db), name="floor") as fl:
            fl.call("replay", pages=cycle()[1])  # the warm-up poll's pages, untimed
            timed = []
            for _ in range(self.opts.mix_cycles):
                sample, pages = cycle()
                timed.append((sample, fl.call("replay", pages=pages)))
            seeded = fl.call("seeded_incidents")
        out = summarize([sample for sample, _ in timed])
        out["mix"] = mix
        out["floor"] = _floor_summary(seeded, [replayed for _, replayed in timed])
        out["by_poll"] = [
            {
                "changes": s.changes,
                "own_wall_ms": (s.poll_wall - s.poll_io) * 1000,
                "cpu_ms": s.poll_cpu * 1000,
                "floor_rows": f["rows_written"],
                "floor_wall_ms": f["wall_s"] * 1000,
                "floor_cpu_ms": f["cpu_s"] * 1000,
                "daemon_over_floor": _ratio(_dc_rate(s), _rate(f["rows_written"], f["wall_s"])),
            }
            for s, f in timed
        ]
        ratios = [p["daemon_over_floor"] for p in out["by_poll"]]
        known = [r for r in ratios if r is not None]
        out["daemon_over_floor"] = statistics.median(known) if known else None
        return out

    def make_live_events(self, target: int) -> dict[str, Any]:
        """Page ``target`` incidents in all, then let their events go quiet."""
        started = time.perf_counter()
        self.tenant.edit(self.candidates[self.live : target], 10.0, {"Priority": "1"})
        rounds = 0
        while not self._events_settled(target):
            rounds += 1
            if rounds > SETUP_ROUNDS:
                raise RuntimeError(f"{target} live events did not settle in {SETUP_ROUNDS} cycles")
            report = self.svc.cycle()
            if not report.ok:
                raise RuntimeError(f"daemon cycle failed while paging: {report.error}")
            self.tenant.advance(OVERLAP_S + 1)
        self.tenant.advance(BUSY_WINDOW_S + 60)
        self.live = target
        live_in_sim = self.tenant.sim.call("live_events")
        if live_in_sim != target:
            raise RuntimeError(f"expected {target} live events in xMatters, found {live_in_sim}")
        return {"events": target, "cycles": rounds, "wall_s": time.perf_counter() - started}

    def _events_settled(self, target: int) -> bool:
        with self.svc.store.unit() as u:
            events = u.live_events()
            return len(events) >= target and all(ev.polls >= 3 for ev in events)

    def latency(self) -> dict[str, Any]:
        """Real scheduler, real-time clock: edit -> xMatters event, per probe incident."""
        self.tenant.realtime()
        stop = threading.Event()
        runner = threading.Thread(target=self.svc.run, args=(stop,), name="daemon", daemon=True)
        runner.start()
        try:
            wait_for(lambda: self.svc.last_poll_ok, timeout=120)
            values = time_detections(
                self.tenant, self.probes, self.opts.poll_interval, 120.0, seed=self.size
            )
        finally:
            stop.set()
            runner.join(timeout=60)
        return latency_summary(values)

    def log_lines(self) -> int:
        self._log.flush()
        with self.log_path.open("rb") as f:
            return sum(1 for _ in f)

    def close(self) -> None:
        self.svc.close()
        self._log.close()


def time_detections(
    tenant: Tenant, probes: Sequence[str], interval: float, timeout: float, seed: int
) -> list[float]:
    """Raise each probe incident to Priority 1 at a random moment of the poll schedule;
    seconds from that edit to the creation of its xMatters event (both on the sim clock)."""
    rng = random.Random(seed)
    values: list[float] = []
    for rec_id in probes:
        time.sleep(rng.uniform(0, interval))  # deliberate: a random phase, not a wait
        edited = datetime.fromisoformat(
            tenant.sim.call("edit_now", rec_id=rec_id, fields={"Priority": "1"})
        )
        created = wait_for(partial(tenant.first_event, rec_id), timeout=timeout)
        values.append((_xm_time(created) - edited).total_seconds())
    return values


def _one_off(sample: Sample) -> dict[str, Any]:
    return {
        "requests": sum(sample.ivanti.values()),
        "rows": sample.rows,
        "changes": sample.changes,
        "wall_s": sample.wall,
        "cpu_s": sample.cpu,
        "sim_cpu_s": sample.sim_cpu,
    }


def _xm_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _next_peak() -> int:
    """The peak RSS of the phase that just ended; the next phase starts a new one.

    Where the peak cannot be reset (no /proc), each phase reports the peak so far."""
    peak = peak_rss_bytes()
    reset_peak_rss()
    return peak


def run_daemon(size: int, opts: Options) -> dict[str, Any]:
    """Everything measured for the daemon at one tenant size (runs in a worker process)."""
    rss_start = rss_bytes()
    reset_peak_rss()
    peaks: dict[str, int] = {}
    workdir = Path(tempfile.mkdtemp(prefix="ixm-bench-"))
    with SimProcess() as sim:
        sim.call("serve_count", mode=opts.odata_count)
        tenant = Tenant(sim)
        run = DaemonRun(size, opts, tenant, workdir)
        try:
            _progress(f"daemon {size:,}: baseline")
            baseline = run.baseline()
            db_baseline = db_usage(run.db)
            peaks["baseline"] = _next_peak()
            cases: dict[str, Any] = {"0/0": run.case(0, 0, overlap=False)}
            setups = []
            for events in opts.events:
                _progress(f"daemon {size:,}: {events} live events")
                setups.append(run.make_live_events(events))
                for changes in opts.changes:
                    overlap = events == opts.events[0] and changes > 0
                    cases[f"{events}/{changes}"] = run.case(events, changes, overlap=overlap)
            peaks["cycles"] = _next_peak()
            mixes: dict[str, Any] = {}
            mix_changes = max(opts.changes)
            for mix in opts.mixes if mix_changes else ():
                _progress(f"daemon {size:,}: {mix} mix, {mix_changes} changes, raw floor")
                mixes[mix] = run.mix_case(mix, mix_changes)
            if mixes:
                peaks["mixes"] = _next_peak()
            reconcile = None
            if opts.reconcile:
                _progress(f"daemon {size:,}: reconcile sweep")
                reconcile = run.reconcile()
                peaks["reconcile"] = _next_peak()
            _progress(f"daemon {size:,}: detection latency")
            latency = run.latency()
            peaks["latency"] = _next_peak()
            db_final = db_usage(run.db)
            log_lines = run.log_lines()
        finally:
            run.close()
            shutil.rmtree(workdir, ignore_errors=True)
    return {
        "baseline": baseline,
        "reconcile": reconcile,
        "cases": cases,
        "mixes": mixes,
        "event_setup": setups,
        "latency": latency,
        "memory": {
            "rss_at_start_bytes": rss_start,
            "peak_rss_by_phase_bytes": peaks,
            "peak_rss_bytes": max(peaks.values()),
        },
        "db": {
            "after_baseline_bytes": db_baseline["used_bytes"],
            "after_baseline_per_1000_incidents": db_baseline["used_bytes"] / size * 1000,
            "final_bytes": db_final["used_bytes"],
            "final_tables": db_final["tables"],
        },
        "daemon_log_lines": log_lines,
        "settings": {
            "log_level": run.settings.ops.log_level,
            "quiet_poll_every": run.settings.writeback.quiet_poll_every,
            "writeback_interval": run.settings.writeback.interval,
        },
    }


# =================================================================================== naive
class NaiveRun:
    """One tenant size measured with the naive poller, inside one worker process."""

    def __init__(self, size: int, opts: Options, tenant: Tenant) -> None:
        self.size = size
        self.opts = opts
        self.tenant = tenant
        quiet = size - opts.max_events
        tenant.sim.call("bulk", n=quiet, fields={"Priority": "3"})
        tenant.sim.call("bulk", n=opts.max_events, fields={"Priority": "1"})
        lo = quiet - opts.latency_samples
        self.probes: list[str] = tenant.sim.call("ids_slice", start=lo, stop=quiet)
        tenant.sim.call("set_pool", reserved_start=lo, reserved_stop=quiet, seed=size)
        env = tenant.sim.call("env", db=os.devnull)
        self.poller = NaivePoller(NaiveConfig.from_env(env))

    def _cycle(self) -> PollFigures:
        w0, c0 = time.perf_counter(), time.process_time()
        result = self.poller.cycle()
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        return wall, cpu, 0.0, result.changes, result.rows_read

    def steady(self, changes: int) -> Sample:
        self.tenant.edit_next(changes, EDIT_SPAN_S)
        self.tenant.advance(OVERLAP_S + 1)
        return _measured(self.tenant, self._cycle)

    def latency(self) -> dict[str, Any]:
        self.tenant.realtime()
        stop = threading.Event()
        runner = threading.Thread(
            target=self.poller.run,
            args=(stop, self.opts.poll_interval),
            name="naive",
            daemon=True,
        )
        runner.start()
        try:
            timeout = max(120.0, 4 * self.opts.naive_measure_limit)
            values = time_detections(
                self.tenant, self.probes, self.opts.poll_interval, timeout, seed=self.size
            )
        finally:
            stop.set()
            runner.join(timeout=300)
        return latency_summary(values)

    def close(self) -> None:
        self.poller.close()


def run_naive(size: int, opts: Options) -> dict[str, Any]:
    """Everything measured for the naive poller at one tenant size (in a worker process)."""
    rss_start = rss_bytes()
    reset_peak_rss()
    with SimProcess() as sim:
        tenant = Tenant(sim)
        run = NaiveRun(size, opts, tenant)
        try:
            _progress(f"naive {size:,}: first scan")
            first = _measured(tenant, run._cycle)
            tenant.advance(OVERLAP_S + 1)
            scan_s = first.wall
            quick = scan_s <= opts.naive_measure_limit
            wanted = sorted({0, *opts.changes})  # the table always has the idle row
            measured = wanted if quick else wanted[-1:]
            cases: dict[str, Any] = {}
            for changes in measured:
                _progress(f"naive {size:,}: {changes} changes per cycle")
                cases[str(changes)] = summarize(
                    [run.steady(changes) for _ in range(opts.naive_cycles)]
                )
            for changes in wanted:
                if str(changes) not in cases:
                    reused = dict(cases[str(measured[-1])])
                    reused["reused_from_changes"] = measured[-1]
                    cases[str(changes)] = reused
            period = _mean(c["wall_s"] for c in cases.values()) + opts.poll_interval
            model = latency_summary([period / 2, period], derived=True)
            model["values_s"] = []
            if quick:
                _progress(f"naive {size:,}: detection latency")
                latency = run.latency()
            else:
                latency = model
            latency["model_mean_s"], latency["model_max_s"] = period / 2, period
        finally:
            run.close()
    return {
        "first_scan": {
            "requests": sum(first.ivanti.values()),
            "rows": first.rows,
            "wall_s": first.wall,
            "cpu_s": first.cpu,
            "sim_cpu_s": first.sim_cpu,
        },
        "cases": cases,
        "latency": latency,
        "memory": {
            "rss_at_start_bytes": rss_start,
            "peak_rss_bytes": peak_rss_bytes(),
        },
    }


# ============================================================================ orchestration
def _isolated_entry(fn: Callable[..., Any], args: tuple[Any, ...], conn: Connection) -> None:
    try:
        conn.send(("ok", fn(*args)))
    except BaseException:
        conn.send(("err", traceback.format_exc()))
    finally:
        conn.close()


def run_isolated(fn: Callable[..., T], *args: Any, name: str) -> T:
    """``fn(*args)`` in a fresh process (its memory and CPU its own); its result."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_isolated_entry, args=(fn, args, child), name=name)
    proc.start()
    child.close()
    try:
        status, value = parent.recv()
    except EOFError as exc:
        proc.join()
        raise RuntimeError(f"{name} died (exit {proc.exitcode})") from exc
    proc.join()
    if status != "ok":
        raise RuntimeError(f"{name} failed:\n{value}")
    return value


def run_worker(kind: str, size: int, opts: Options) -> dict[str, Any]:
    """Run one (poller, size) measurement in a fresh process and return its figures."""
    fn = run_daemon if kind == "daemon" else run_naive
    return dict(run_isolated(fn, size, opts, name=f"bench-{kind}-{size}"))


def lower_bound(changes: int) -> int:
    return math.ceil(changes / PAGE_SIZE) + 1


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _rate(count: float, seconds: float) -> float | None:
    return count / seconds if count and seconds > 0 else None


def _dc_rate(sample: Sample) -> float | None:
    """A poll's detect-and-commit rate: changes / (poll wall - Ivanti round trips)."""
    return _rate(sample.changes, sample.poll_wall - sample.poll_io)


def _floor_summary(seeded: int, replays: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The floor's replays of the measured polls' pages, added up."""
    total = {k: sum(r[k] for r in replays) for k in ("pages", "rows_decoded", "rows_written")}
    wall = sum(r["wall_s"] for r in replays)
    return {
        "seeded_incidents": seeded,
        **total,
        "wall_s": wall,
        "cpu_s": sum(r["cpu_s"] for r in replays),
        "per_s": _rate(total["rows_written"], wall),
    }


def build_rows(
    opts: Options, ours: dict[int, dict[str, Any]], naive: dict[int, dict[str, Any]]
) -> list[dict[str, Any]]:
    rows = []
    for size in opts.sizes:
        keys = [(0, 0)] + [(e, c) for e in opts.events for c in opts.changes]
        for events, changes in keys:
            mine = ours[size]["cases"][f"{events}/{changes}"]
            theirs = naive[size]["cases"][str(changes)] if size in naive else None
            bound = lower_bound(changes)
            rows.append(
                {
                    "size": size,
                    "events": events,
                    "changes": changes,
                    "lower_bound": bound,
                    "ours": mine,
                    "naive": theirs,
                    "ours_over_bound": mine["ivanti_requests"] / bound,
                    "naive_over_ours": {
                        k: _ratio(theirs[k], mine[k]) if theirs else None
                        for k in ("ivanti_requests", "xm_requests", "wall_s", "cpu_s")
                    },
                }
            )
    return rows


def evaluate_targets(
    opts: Options,
    rows: Sequence[dict[str, Any]],
    ours: dict[int, dict[str, Any]],
) -> list[dict[str, Any]]:
    """Each target with the measured value and PASS / MISS (or n/a when not measured)."""
    targets: list[dict[str, Any]] = []
    for row in rows:
        if row["events"] == 0 and row["changes"] == 0:
            o = row["ours"]
            ok = o["ivanti_requests_max"] == 1 and o["xm_requests_max"] == 0
            targets.append(
                _target(
                    "idle cycle: 1 Ivanti request, 0 xMatters requests (no live event)",
                    row,
                    f"{o['ivanti_requests_max']} / {o['xm_requests_max']}",
                    ok,
                )
            )
    bound_rows = [r for r in rows if not (r["events"] == 0 and r["changes"] == 0)]
    for row in bound_rows:
        worst = row["ours"]["ivanti_requests_max"]
        targets.append(
            _target(
                "Ivanti requests <= 1.25 x lower bound ceil(changes/100)+1, default "
                "settings (every cycle)",
                row,
                f"{worst} <= {BOUND_SLACK * row['lower_bound']:g}",
                worst <= BOUND_SLACK * row["lower_bound"],
            )
        )
    targets.append(_memory_target(opts, ours))
    for row in rows:
        rate = row["ours"]["detect_commit_per_s"]
        if row["changes"] >= THROUGHPUT_MIN_CHANGES and rate is not None:
            targets.append(
                _target(
                    f"detect-and-commit >= {THROUGHPUT_TARGET:,.0f} changes/s",
                    row,
                    f"{rate:,.0f}/s",
                    rate >= THROUGHPUT_TARGET,
                )
            )
    for size in opts.sizes:
        mix = ours[size].get("mixes", {}).get(REALISTIC_MIX)
        if mix is None:
            continue
        ratio = mix["daemon_over_floor"]
        targets.append(
            {
                "target": f"detect-and-commit >= {FLOOR_TARGET:.0%} of the raw floor "
                f"({REALISTIC_MIX} mix, each poll beside its own pages' replay, median)",
                "case": f"{size:,} incidents, {mix['changes']:,.0f} changes",
                "value": "n/a"
                if ratio is None
                else f"{ratio:.0%} ({_f(mix['detect_commit_per_s'])} vs "
                f"{_f(mix['floor']['per_s'])}/s)",
                "result": "n/a" if ratio is None else ("PASS" if ratio >= FLOOR_TARGET else "MISS"),
            }
        )
    if not any(r["changes"] >= THROUGHPUT_MIN_CHANGES for r in rows):
        targets.append(
            {
                "target": f"detect-and-commit >= {THROUGHPUT_TARGET:,.0f} changes/s",
                "case": None,
                "value": f"n/a: needs >= {THROUGHPUT_MIN_CHANGES} changes per cycle",
                "result": "n/a",
            }
        )
    return targets


def _target(name: str, row: dict[str, Any], value: str, ok: bool) -> dict[str, Any]:
    case = f"{row['size']:,} incidents, {row['events']} events, {row['changes']} changes"
    return {"target": name, "case": case, "value": value, "result": "PASS" if ok else "MISS"}


def _memory_target(opts: Options, ours: dict[int, dict[str, Any]]) -> dict[str, Any]:
    name = f"daemon peak RSS at the largest tenant within {MEMORY_TARGET:.0%} of the smallest"
    small, large = min(opts.sizes), max(opts.sizes)
    if small == large:
        return {"target": name, "case": None, "value": "n/a: one size", "result": "n/a"}
    lo, hi = ours[small]["memory"], ours[large]["memory"]
    growth = hi["peak_rss_bytes"] / lo["peak_rss_bytes"] - 1
    phases = ", ".join(
        f"{phase} {hi_b / 2**20:.0f} vs {lo['peak_rss_by_phase_bytes'][phase] / 2**20:.0f}"
        for phase, hi_b in hi["peak_rss_by_phase_bytes"].items()
    )
    return {
        "target": name,
        "case": f"{large:,} vs {small:,} incidents",
        "value": f"{hi['peak_rss_bytes'] / 2**20:.0f} vs {lo['peak_rss_bytes'] / 2**20:.0f} MB "
        f"({growth:+.0%}); by phase (MB): {phases}; process at start "
        f"{(hi['rss_at_start_bytes'] or 0) / 2**20:.0f} MB",
        "result": "PASS" if growth <= MEMORY_TARGET else "MISS",
    }


# ================================================================================= output
def _f(value: float | None, digits: int = 0, scale: float = 1.0) -> str:
    if value is None:
        return "-"
    return f"{value * scale:,.{digits}f}"


def _lat(lat: dict[str, Any]) -> str:
    if lat.get("mean_s") is None:
        return "-"
    mark = "~" if lat.get("derived") else ""
    return f"{mark}{lat['mean_s']:.1f}/{lat['max_s']:.1f}"


def _mix(kinds: dict[str, float]) -> str:
    return "/".join(
        _f(kinds.get(k), 0 if float(kinds.get(k, 0)).is_integer() else 1)
        for k in ("triggers", "terminations", "lookups", "audits")
    )


Column = tuple[str, str, int, Callable[[dict[str, Any], dict[str, Any]], str]]


def _columns() -> list[Column]:
    """(header, sub-header, width, cell) for the one table."""

    def ours(r: dict[str, Any]) -> dict[str, Any]:
        return dict(r["ours"])

    def naive(r: dict[str, Any]) -> dict[str, Any]:
        return dict(r["naive"] or {})

    def bound_ratio(r: dict[str, Any], s: dict[str, Any]) -> str:
        worst = r["ours"]["ivanti_requests_max"]
        ok = "PASS" if worst <= BOUND_SLACK * r["lower_bound"] else "MISS"
        if r["events"] == 0 and r["changes"] == 0:
            ok = "PASS" if r["ours"]["ivanti_requests_max"] == 1 else "MISS"
        return f"{r['ours_over_bound']:.2f} {ok}"

    def throughput(r: dict[str, Any], s: dict[str, Any]) -> str:
        rate = ours(r)["detect_commit_per_s"]
        if rate is None:
            return "-"
        verdict = ""
        if r["changes"] >= THROUGHPUT_MIN_CHANGES:
            verdict = " PASS" if rate >= THROUGHPUT_TARGET else " MISS"
        return f"{rate:,.0f}{verdict}"

    def overlap(r: dict[str, Any], s: dict[str, Any]) -> str:
        ovl = ours(r).get("overlap")
        return _f(ovl["ivanti_requests"], 1) if ovl else "-"

    def xm_ours(r: dict[str, Any], s: dict[str, Any]) -> str:
        verdict = ""
        if r["events"] == 0 and r["changes"] == 0:
            verdict = " PASS" if ours(r)["xm_requests_max"] == 0 else " MISS"
        return _f(ours(r)["xm_requests"], 1) + verdict

    def naive_cell(key: str, scale: float = 1.0, digits: int = 0) -> Callable[..., str]:
        def cell(r: dict[str, Any], s: dict[str, Any]) -> str:
            mark = "*" if "reused_from_changes" in naive(r) else ""
            return _f(naive(r).get(key), digits, scale) + mark

        return cell

    def ratio(key: str) -> Callable[..., str]:
        return lambda r, s: _f(r["naive_over_ours"][key], 1)

    def mem(kind: str) -> Callable[..., str]:
        return lambda r, s: (
            _f(s[kind]["memory"]["peak_rss_bytes"], 0, 1 / 2**20) if s.get(kind) else "-"
        )

    return [
        ("case", "tenant", 7, lambda r, s: f"{r['size']:,}"),
        ("", "ev", 3, lambda r, s: str(r["events"])),
        ("", "chg", 5, lambda r, s: f"{r['changes']:,}"),
        ("Ivanti req/cycle", "ours", 5, lambda r, s: _f(ours(r)["ivanti_requests"], 1)),
        ("", "bound", 5, lambda r, s: str(r["lower_bound"])),
        ("", "ratio", 9, bound_ratio),
        ("", "adv", 5, overlap),
        ("", "naive", 7, naive_cell("ivanti_requests", digits=0)),
        ("", "n/o", 6, ratio("ivanti_requests")),
        ("xMatters req/cycle", "ours", 10, xm_ours),
        ("", "t/x/l/a", 11, lambda r, s: _mix(ours(r)["xm_by_kind"])),
        ("", "s@4/s", 5, lambda r, s: _f(ours(r)["xm_seconds_at_default_rate"], 1)),
        ("", "naive", 5, naive_cell("xm_requests", digits=0)),
        ("wall ms/cycle", "ours", 6, lambda r, s: _f(ours(r)["wall_s"], 0, 1000)),
        ("", "naive", 8, naive_cell("wall_s", 1000)),
        ("", "n/o", 6, ratio("wall_s")),
        ("CPU ms/cycle", "ours", 6, lambda r, s: _f(ours(r)["cpu_s"], 0, 1000)),
        ("", "sims", 5, lambda r, s: _f(ours(r)["sim_cpu_s"], 0, 1000)),
        ("", "naive", 8, naive_cell("cpu_s", 1000)),
        ("", "n/o", 6, ratio("cpu_s")),
        ("changes/s", "d+c", 11, throughput),
        ("", "poll", 6, lambda r, s: _f(ours(r)["poll_throughput_per_s"])),
        ("peak RSS MB", "ours", 5, mem("ours")),
        ("", "naive", 5, mem("naive")),
        ("DB KB", "/1k chg", 7, lambda r, s: _f(ours(r)["db_bytes_per_1000_changes"], 0, 1e-3)),
        ("latency s mean/max", "ours", 9, lambda r, s: _lat(s["ours"]["latency"])),
        ("", "naive", 11, lambda r, s: _lat(s["naive"]["latency"]) if s.get("naive") else "-"),
    ]


def render_table(report: dict[str, Any]) -> str:
    cols = _columns()
    sizes = report["sizes"]
    lines = [_group_header(cols), _join(cols, [sub for _, sub, _, _ in cols])]
    lines.append("-" * len(lines[1]))
    previous = None
    for row in report["rows"]:
        if previous is not None and row["size"] != previous:
            lines.append("")
        previous = row["size"]
        per_size = sizes[str(row["size"])]
        lines.append(_join(cols, [cell(row, per_size) for _, _, _, cell in cols]))
    return "\n".join(lines)


def _group_header(cols: Sequence[Column]) -> str:
    """Group titles over their columns: a title spans the untitled columns after it."""
    groups: list[tuple[str, int]] = []
    for title, _, width, _ in cols:
        if title or not groups:
            groups.append((title, width))
        else:
            groups[-1] = (groups[-1][0], groups[-1][1] + 1 + width)
    return " | ".join(title.center(width) for title, width in groups)


def _join(cols: Sequence[Column], cells: Sequence[str]) -> str:
    """Cells right-aligned; a bar before each group, a space within one."""
    out = ""
    for i, ((title, _, width, _), text) in enumerate(zip(cols, cells, strict=True)):
        if i:
            out += " | " if title else " "
        out += text.rjust(width)
    return out


def render_header(report: dict[str, Any]) -> str:
    meta = report["meta"]
    base = "; ".join(
        f"{int(k):,}: daemon baseline {_once(v['ours']['baseline'])}, reconcile sweep "
        f"{_once(v['ours']['reconcile'])}"
        + (f", naive first scan {_once(v['naive']['first_scan'])}" if v.get("naive") else "")
        for k, v in report["sizes"].items()
    )
    lines = [
        "ivanti-xmatters benchmark: cost per poll cycle; ours = the daemon, naive = a full "
        "$top/$skip re-read every cycle",
        f"  {meta['python']} on {meta['machine']}, {meta['cpus']} CPUs; started "
        f"{meta['started']}, took {meta['duration_s']:.0f} s. {meta['cycles']} daemon / "
        f"{meta['naive_cycles']} naive measured cycles per case (means per cycle).",
        "  Processes: every (size, poller) pair runs in a fresh worker process, the "
        "simulators in a child of it: 'CPU ours' is the daemon alone",
        "  (all its threads), 'sims' the simulators' CPU during the same cycle, peak RSS "
        "the worker's own.",
        f"  Steady state: a cycle's edits (Subject only: changes that page nobody) are "
        f"spread over {EDIT_SPAN_S:.0f} sim seconds, then the clock",
        f"  polls (default settings: every {EDIT_SPAN_S:.0f} s, IXM_OVERLAP={OVERLAP_S:.0f} s "
        "not skipped), so a poll also settles earlier cycles' changes;",
        f"  'adv' = the same edits with the clock moved {OVERLAP_S + 1:.0f} s past the "
        "overlap before each poll (how figures were taken before issue 12). "
        "Target: <= 1.25 x bound.",
        "  xMatters t/x/l/a = triggers/terminations/event look-ups/audit polls; quiet live "
        f"events are polled every {meta['quiet_poll_every']}th cycle. 's@4/s' = seconds",
        "  those requests take at the default XMATTERS_RATE_LIMIT of 4/s (this run used "
        "1000/s so rate limiting does not hide the cost).",
        "  changes/s: 'd+c' = changes / (poll wall - Ivanti round trips), the daemon's "
        "detect-and-commit rate (the target);",
        "  'poll' = changes / whole poll wall, including the simulated Ivanti answering.",
        "  Latency: real scheduler and real-time clock, IXM_POLL_INTERVAL="
        f"{meta['poll_interval']:g} s, IXM_DELIVERY_INTERVAL={meta['delivery_interval']:g} s; "
        "edit -> xMatters event created.",
        f"  '~' = derived (period/2, period) for naive scans slower than "
        f"{meta['naive_measure_limit']:g} s; '*' = naive measured at the largest change "
        "count and reused.",
        "  DB KB/1k chg = state DB growth per 1,000 committed changes (change row + "
        "snapshot update, plus the cycle rows).",
        "  Peak RSS ours = the daemon process over its life: baseline, all cases, one "
        "reconcile sweep (hourly by default), the latency run;",
        "  the tenant's RecIds and the choice of edits stay in the simulator process and "
        "the raw floor runs in its own, so it is the daemon's memory.",
        f"  One-off: {base}.",
    ]
    return "\n".join(lines)


def render_floor(report: dict[str, Any]) -> str:
    """Detect+commit per change mix beside the raw floor measured on the same pages."""
    head = (
        f"{'tenant':>9} {'mix':<11} {'chg/poll':>8} {'req':>5} {'rows':>6} "
        f"{'d+c/s':>7} {'floor/s':>7} {'floor rows':>10} {'d+c/floor':>9}  by poll"
    )
    lines = [
        "Detect+commit beside the raw floor: plain sqlite3 (WAL, synchronous=FULL, one "
        "transaction a page) + json decoding the same pages, each poll's replayed right after it",
        "  (d+c/s = changes / (poll wall - Ivanti round trips); floor/s = rows written / "
        "floor wall; rows = rows read a poll; d+c/floor = the median of each poll's ratio to "
        "its own replay; benchmarks/floor.py).",
        head,
        "-" * len(head),
    ]
    for size, sides in report["sizes"].items():
        for mix, m in sides["ours"].get("mixes", {}).items():
            fl = m["floor"]
            ratio = m["daemon_over_floor"]
            polls = " ".join(
                "-" if p["daemon_over_floor"] is None else f"{p['daemon_over_floor']:.0%}"
                for p in m.get("by_poll", ())
            )
            lines.append(
                f"{int(size):>9,} {mix:<11} {m['changes']:>8,.0f} {m['ivanti_requests']:>5.1f} "
                f"{m['ivanti_rows']:>6,.0f} {_f(m['detect_commit_per_s']):>7} "
                f"{_f(fl['per_s']):>7} {fl['rows_written'] / max(1, m['cycles']):>10,.0f} "
                f"{'-' if ratio is None else f'{ratio:.0%}':>9}  {polls}"
            )
    return "\n".join(lines)


def _once(figures: dict[str, Any] | None) -> str:
    if figures is None:
        return "not run"
    return f"{figures['wall_s']:.1f} s / {figures['requests']:,} req"


def render_targets(targets: Sequence[dict[str, Any]]) -> str:
    lines = ["Targets:"]
    for t in targets:
        case = f" [{t['case']}]" if t["case"] else ""
        lines.append(f"  {t['result']:<4}  {t['target']}{case}: {t['value']}")
    return "\n".join(lines)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def run(opts: Options) -> dict[str, Any]:
    """Measure every size with both pollers and assemble the report."""
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    ours: dict[int, dict[str, Any]] = {}
    naive: dict[int, dict[str, Any]] = {}
    for size in opts.sizes:
        ours[size] = run_worker("daemon", size, opts)
        if opts.naive:
            naive[size] = run_worker("naive", size, opts)
    rows = build_rows(opts, ours, naive)
    first = ours[opts.sizes[0]]["settings"]
    return {
        "meta": {
            "started": started.isoformat(timespec="seconds"),
            "duration_s": time.perf_counter() - t0,
            "python": f"Python {platform.python_version()}",
            "machine": platform.platform(terse=True),
            "cpus": os.cpu_count(),
            "options": asdict(opts),
            "edit_span_s": EDIT_SPAN_S,
            "overlap_s": OVERLAP_S,
            "poll_interval": opts.poll_interval,
            "delivery_interval": opts.delivery_interval,
            "naive_measure_limit": opts.naive_measure_limit,
            "cycles": opts.cycles,
            "naive_cycles": opts.naive_cycles,
            "quiet_poll_every": first["quiet_poll_every"],
            "xm_rate_limit_default": DEFAULT_XM_RATE,
        },
        "rows": rows,
        "sizes": {str(s): {"ours": ours[s], "naive": naive.get(s)} for s in opts.sizes},
        "targets": evaluate_targets(opts, rows, ours),
    }


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_options(argv)
    report = run(opts)
    print(render_header(report))
    print()
    print(render_table(report))
    if any(v["ours"].get("mixes") for v in report["sizes"].values()):
        print()
        print(render_floor(report))
    print()
    print(render_targets(report["targets"]))
    opts.json_path.parent.mkdir(parents=True, exist_ok=True)
    opts.json_path.write_text(json.dumps(report, indent=2, default=_json_safe) + "\n")
    print(f"\nJSON: {opts.json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
