"""PostgreSQL replicas: how long a failover takes, and what the leader lease costs.

Two (``--replicas``) daemons run as the service does (``python -m daemon run``, real
processes) on one fresh PostgreSQL database, against both simulators on loopback, with
the poll interval ``--poll`` and the default lease (``IXM_LEASE_TTL`` = the poll
interval). Each trial kills the leader with SIGKILL and takes the time from the kill
to the end of the first poll cycle a standby commits as the new leader (the cycles
table, read through the store); the killed one is started again as a standby. Then,
with every replica idle, the cost of the lease: the rows the lease and the heartbeats
write a second (PostgreSQL's own table statistics, ``pg_stat_user_tables``), the
transactions a second of the whole database, and the statements one lease try and the
fence check of one unit send (counted on the engine, in this process).

    .ci/with-postgres .venv/bin/python benchmarks/failover.py --trials 5 --poll 2

It needs PostgreSQL: ``--url`` (an admin URL; a database is created and dropped) or
``IXM_TEST_POSTGRES`` as ``.ci/with-postgres`` sets it. It is a measurement, not a
test: it prints figures and writes ``benchmarks/results/failover.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.pool import NullPool

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from daemon.lease import Leadership  # noqa: E402
from daemon.simulators.clock import SimClock  # noqa: E402
from daemon.simulators.harness import SimPair  # noqa: E402
from daemon.store import Store  # noqa: E402
from tests.e2e.daemons import Daemon  # noqa: E402
from tests.pgdatabase import throwaway_database  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "failover.json"
LEASE_TABLES = ("leases", "replicas")


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise SystemExit(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


def _leader(store: Store, replicas: Sequence[Daemon]) -> Daemon | None:
    lease = store.read_lease()
    if lease is None or lease.expires_at <= lease.now:
        return None
    for r in replicas:
        if r.proc is not None and r.alive() and f" pid {r.proc.pid} " in lease.holder:
            return r
    return None


def _first_poll_after(store: Store, when: datetime) -> datetime | None:
    with store.unit(rollback=True) as u:
        done = [
            c.finished_at
            for c in u.last_cycles("poll", limit=20)
            if c.ok and c.started_at > when and c.finished_at is not None
        ]
    return min(done) if done else None


def _table_writes(engine: Any) -> int:
    q = text(
        "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) FROM pg_stat_user_tables "
        "WHERE relname = ANY(:names)"
    )
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT pg_stat_clear_snapshot()")
        return int(conn.execute(q, {"names": list(LEASE_TABLES)}).scalar_one())


def _commits(engine: Any) -> int:
    q = text("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT pg_stat_clear_snapshot()")
        return int(conn.execute(q).scalar_one())


def _statements(url: str) -> dict[str, int]:
    """Statements one lease try and one fenced unit send (a standby's try, a leader's
    renewal, the fence check of a unit that commits nothing)."""
    store = Store(url)
    count = [0]

    @event.listens_for(store.engine, "before_cursor_execute")
    def _count(*_a: Any) -> None:
        count[0] += 1

    try:
        lead = Leadership(store, 30.0)
        lead.step()  # takes it (an expired or free lease)
        out: dict[str, int] = {}
        count[0] = 0
        lead.step()
        out["lease_renewal"] = count[0]
        other = Leadership(store, 30.0)
        other.step()  # its first try also inserts its heartbeat row
        count[0] = 0
        other.step()
        out["standby_try"] = count[0]
        store.fence = lead
        lead.active = True
        count[0] = 0
        with store.unit():
            pass
        out["fence_check_per_unit"] = count[0]
        lead.release()
        other.release()
        return out
    finally:
        store.close()


def run(admin_url: str, *, trials: int, poll: float, replicas: int, idle: float) -> dict[str, Any]:
    with (
        SimPair(clock=SimClock(frozen=False)) as sims,
        throwaway_database(admin_url, "ixm_failover") as url,
        tempfile.TemporaryDirectory() as tmp,
    ):
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("IVANTI_", "XMATTERS_", "IXM_", "CREDENTIALS_DIRECTORY"))
        }
        env.update(sims.daemon_env(url))
        env.update({"IXM_POLL_INTERVAL": f"{poll:g}", "IXM_LOG_LEVEL": "INFO"})
        fleet = [Daemon(env, Path(tmp) / f"r{i}.log") for i in range(replicas)]
        store = Store(url)  # migrates: the replicas start on a ready schema
        admin = create_engine(url, poolclass=NullPool)
        try:
            for r in fleet:
                r.start()
            _wait(lambda: _leader(store, fleet) is not None, 60, "a first leader")
            _wait(
                lambda: _first_poll_after(store, datetime(2000, 1, 1, tzinfo=UTC)) is not None,
                60,
                "the baseline and a first poll",
            )
            times: list[float] = []
            for _ in range(trials):
                leader = _leader(store, fleet)
                assert leader is not None and leader.proc is not None
                killed_at = datetime.now(UTC)
                leader.kill9()
                _wait(
                    lambda old=leader, since=killed_at: (
                        (_leader(store, fleet) not in (None, old))
                        and _first_poll_after(store, since) is not None
                    ),
                    10 * poll + 30,
                    "a standby's first cycle",
                )
                first = _first_poll_after(store, killed_at)
                assert first is not None
                times.append((first - killed_at).total_seconds())
                leader.start()  # back as a standby, once its first lease try is on record
                _wait(
                    lambda old=leader: (
                        old.proc is not None
                        and any(rep.pid == old.proc.pid for rep in store.read_replicas()[0])
                    ),
                    10 * poll + 30,
                    "the restarted replica's first lease try",
                )
            # the cost of the lease, everything idle
            w0, c0, t0 = _table_writes(admin), _commits(admin), time.monotonic()
            time.sleep(idle)
            w1, c1, t1 = _table_writes(admin), _commits(admin), time.monotonic()
        finally:
            for r in fleet:
                if r.alive():
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        r.terminate()
                r.cleanup()
            admin.dispose()
            store.close()
        statements = _statements(url)
        span = t1 - t0
        return {
            "replicas": replicas,
            "poll_interval_s": poll,
            "lease_ttl_s": poll,
            "trials": trials,
            "failover_s": [round(t, 2) for t in times],
            "failover_mean_s": round(statistics.mean(times), 2),
            "failover_max_s": round(max(times), 2),
            "failover_max_poll_intervals": round(max(times) / poll, 2),
            "lease_row_writes_per_s": round((w1 - w0) / span, 2),
            "db_commits_per_s_idle": round((c1 - c0) / span, 2),
            "statements": statements,
        }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=os.environ.get("IXM_TEST_POSTGRES", ""))
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--poll", type=float, default=2.0, help="IXM_POLL_INTERVAL (and the lease)")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--idle", type=float, default=20.0, help="seconds the cost is measured over")
    args = p.parse_args(argv)
    if not args.url:
        print("needs PostgreSQL: --url or .ci/with-postgres", file=sys.stderr)
        return 2
    r = run(args.url, trials=args.trials, poll=args.poll, replicas=args.replicas, idle=args.idle)
    print(
        f"{r['replicas']} replicas, poll interval {r['poll_interval_s']:g} s (lease the same): "
        f"failover {r['failover_mean_s']:g} s mean, {r['failover_max_s']:g} s max "
        f"({r['failover_max_poll_intervals']:g} poll intervals) over {r['trials']} kill -9; "
        f"trials {r['failover_s']}"
    )
    s = r["statements"]
    print(
        f"lease cost, idle: {r['lease_row_writes_per_s']:g} rows written/s (leases + "
        f"heartbeats), {r['db_commits_per_s_idle']:g} commits/s in the whole DB; statements: "
        f"{s['lease_renewal']} per renewal, {s['standby_try']} per standby try, "
        f"{s['fence_check_per_unit']} per unit for the fence"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(r, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
