"""Helpers for end-to-end tests that run the daemon as real processes (``python -m daemon
run``) against simulators in this process: start, kill, look into the state DB through
the Store, and wait for conditions (never a bare sleep)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from sqlalchemy import make_url
from sqlalchemy.exc import DBAPIError

from daemon.simulators.harness import SimPair
from daemon.store import LeaseState, Store, Unit
from tests.conftest import is_sqlite

ROOT = Path(__file__).resolve().parents[2]
NET = "Network Operations"
TRIGGERS = "/triggers"
IVANTI_QUERY = r"/businessobject/incidents$"
IVANTI_RECORD = r"/businessobject/incidents\("
DEADLINE = 20.0
T = TypeVar("T")


def wait_until(
    predicate: Callable[[], bool], timeout: float = DEADLINE, what: str = "condition"
) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


class StateDB:
    """Looks into the daemon's state DB while it runs, through the Store on its own
    connection (SQLite in WAL mode, or PostgreSQL), never behind the store's back."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._store: Store | None = None

    def read(self, fn: Callable[[Unit], T], default: T) -> T:
        if is_sqlite(self.url) and not Path(make_url(self.url).database or "").exists():
            return default
        try:
            if self._store is None:
                self._store = Store(self.url, migrate=False)
            with self._store.unit(rollback=True) as u:
                return fn(u)
        except DBAPIError:  # not migrated yet
            return default

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    def lease(self) -> LeaseState | None:
        """The leader lease (with the database's clock), on a connection of its own each
        time, so it reads right after the database restarted."""
        store = Store(self.url, migrate=False)
        try:
            return store.read_lease()
        finally:
            store.close()

    def baseline_done(self) -> bool:
        return self.read(lambda u: u.get_state("baseline_done") is not None, False)

    def ok_polls_started_after(self, when: datetime) -> int:
        return self.read(
            lambda u: sum(
                1 for c in u.last_cycles("poll", limit=100) if c.ok and c.started_at > when
            ),
            0,
        )

    def actions(self) -> list[tuple[str, str, str]]:
        return self.read(
            lambda u: [(a.rec_id, a.kind, a.state) for a in reversed(u.outbox(limit=10_000))],
            [],
        )

    def pending(self) -> int:
        return self.read(lambda u: u.outbox_counts().get("pending", 0), 0)

    def unfinished_attempts(self) -> int:
        def count(u: Unit) -> int:
            by_action = u.attempts_by_action(a.id for a in u.outbox(limit=10_000))
            return sum(1 for rows in by_action.values() for a in rows if a.finished_at is None)

        return self.read(count, 0)

    def attempt_outcomes(self, rec_id: str) -> list[str]:
        def outcomes(u: Unit) -> list[str]:
            rows = [t for a in u.outbox_for(rec_id) for t in u.attempts_for(a.id)]
            return [str(t.outcome) for t in sorted(rows, key=lambda t: t.id)]

        return self.read(outcomes, [])

    def changes(self, rec_id: str) -> int:
        return self.read(lambda u: len(u.changes_for(rec_id)), 0)


class Daemon:
    """``python -m daemon run`` as a child process, with its output kept in a file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start {self.starts} =====\n".encode())
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "daemon", "--env-file", os.devnull, "run"],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        assert self.proc is not None and self.alive(), self.log()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self) -> int:
        assert self.proc is not None and self.alive(), self.log()
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=DEADLINE)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def cleanup(self) -> None:
        if self.proc is not None and self.alive():
            self.proc.kill()
            self.proc.wait(timeout=10)


def daemon_env(sims: SimPair, state_db_url: str, **extra: str) -> dict[str, str]:
    """The environment of a daemon process for these simulators, with short intervals."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("IVANTI_", "XMATTERS_", "IXM_", "CREDENTIALS_DIRECTORY"))
    }
    env.update(sims.daemon_env(state_db_url))
    env.update(
        {
            "IXM_POLL_INTERVAL": "1",
            "IXM_DELIVERY_INTERVAL": "0.2",
            "IXM_WRITEBACK_INTERVAL": "1",
            "IXM_WORKFLOW_WRITEBACK_WAIT": "0",  # the journal check stays on; no 5 s wait
            "IXM_LOG_LEVEL": "INFO",
            "XMATTERS_RATE_LIMIT": "1000",
            # short request timeouts: an attempt cut short is checked after timeout + 5 s
            "IVANTI_TIMEOUT": "2",
            "XMATTERS_TIMEOUT": "2",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


def run_cli(
    env: dict[str, str], *argv: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """One ``python -m daemon`` command to its end, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "daemon", "--env-file", os.devnull, *argv],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def started(d: Daemon, db: StateDB) -> None:
    d.start()
    wait_until(lambda: db.baseline_done() or not d.alive(), what="the baseline")
    assert d.alive(), d.log()


def trigger_log(sims: SimPair) -> list[tuple[str, str, str]]:
    """Every trigger: (RecId, Type, outcome), once the asynchronous flows due have run
    (the clock follows real time here, so this waits for them)."""
    wait_until(lambda: sims.xmatters.flows_due_in() == 0, what="the flows to run")
    return [
        (str(t["payload"].get("RecId")), str(t["payload"].get("Type")), str(t["outcome"]))
        for t in sims.xmatters.triggers()
    ]


def quiesce(d: Daemon, db: StateDB, ready: Callable[[], bool], what: str) -> None:
    """Wait for ``ready`` and an empty outbox, then for a whole poll started after
    that (anything left to happen would have happened), then stop the daemon cleanly."""
    wait_until(lambda: (ready() and db.pending() == 0) or not d.alive(), what=what)
    assert d.alive(), d.log()
    since = datetime.now(UTC)
    wait_until(lambda: db.ok_polls_started_after(since) >= 1 or not d.alive(), what="one more poll")
    assert d.terminate() == 0, d.log()
    assert db.unfinished_attempts() == 0
    assert db.pending() == 0
