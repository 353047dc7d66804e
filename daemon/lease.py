"""Who may write the state DB: one daemon per SQLite file; one leader on PostgreSQL.

SQLite: the daemon (``run``, or ``once``) holds an exclusive ``flock`` on
``<state DB>.lock`` for its whole life and writes who it is there (host, pid, since
when). The kernel drops the lock when the process dies, ``kill -9`` included, so a
restart never waits for anything stale. A second daemon refuses to start with one
line naming the holder. Read-only commands (``status``, ``explain``…) take no lock.

PostgreSQL: any number of replicas; the one holding the ``leader`` lease works, the
others stand by and retry (``Leadership``).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
from sqlalchemy import make_url

from daemon.logs import log_event
from daemon.store import LeaseLost, LeaseState, Store, sqlite_file

log = logging.getLogger("daemon.lease")

EX_TEMPFAIL = 75  # sysexits.h: "try again later"; the CLI exits with it when refused


class AlreadyRunning(RuntimeError):
    """Another daemon holds the state DB; the message names it."""


def holder_text(host: str, pid: int | str, since: str) -> str:
    return f"host {host}, pid {pid}, since {since}"


class InstanceLock:
    """The exclusive lock of one SQLite state DB, held until ``release`` or exit."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.path = db_path.with_name(db_path.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._read_holder(fd)
            os.close(fd)
            raise AlreadyRunning(
                f"another daemon is using the state DB {self.db_path} ({holder}): one daemon "
                "per SQLite state DB; stop it first (status, explain and the other read-only "
                "commands work beside it)"
            ) from None
        since = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
        info = {"host": socket.gethostname(), "pid": os.getpid(), "since": since}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        os.fsync(fd)
        self._fd = fd

    @staticmethod
    def _read_holder(fd: int) -> str:
        try:
            info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
            return holder_text(info["host"], info["pid"], info["since"])
        except (ValueError, KeyError, OSError):
            return "holder unknown"

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays (no unlink race)
            self._fd = None


def hold_instance(url: str) -> InstanceLock | None:
    """Take the one-daemon lock of a SQLite state DB (``AlreadyRunning`` if held)."""
    path = sqlite_file(url)
    if path is None or not path.parent.is_dir():
        return None  # not SQLite, or a directory that is not there: opening the DB says so
    lock = InstanceLock(path)
    lock.acquire()
    return lock


# --------------------------------------------------------------------------- PostgreSQL


def is_postgres(url: str) -> bool:
    return make_url(url).get_backend_name() == "postgresql"


class Leadership:
    """PostgreSQL: this replica's side of the leader lease (``leases`` row ``leader``).

    ``step()`` renews the lease if ours or takes it if free or expired (the fencing
    token goes up by one at every acquisition); the service calls it every third of
    the lease. The store checks ``token`` inside every unit that commits, and
    ``guard()`` refuses any HTTP request once the lease may have run out by this
    process's own monotonic clock (it cannot know it was paused; the clock can).
    """

    def __init__(self, store: Store, ttl: float) -> None:
        self.store = store
        self.ttl = ttl
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.holder = f"{self.host} pid {self.pid} {uuid.uuid4().hex[:8]}"
        self.token: int | None = None
        self.valid_until = 0.0  # time.monotonic() bound of our belief
        self.seen: LeaseState | None = None  # the lease as last read
        self.last_contact: float | None = None  # monotonic time of the last DB answer
        self.changes = 0  # acquisitions and losses, for metrics
        self.active = False  # set by run() and `once`; until then guard() lets all pass

    def is_leader(self) -> bool:
        return self.token is not None and time.monotonic() < self.valid_until

    def step(self) -> bool:
        """One try; returns whether this replica leads now. Logs every change."""
        t0 = time.monotonic()
        was = self.token
        try:
            ours, state = self.store.claim_lease(
                self.holder, self.ttl, host=self.host, pid=self.pid
            )
        except Exception as exc:  # DB unreachable: our belief lapses at valid_until
            log_event(log, logging.WARNING, "lease: cannot reach the state DB", error=str(exc))
            return self.is_leader()
        self.last_contact = time.monotonic()
        self.seen = state
        if ours and state is not None:
            self.token = state.token
            self.valid_until = t0 + self.ttl  # from before the request: never later than the DB's
            if was != state.token:
                self.changes += 1
                log_event(
                    log,
                    logging.INFO,  # expected at every start (and every `once`)
                    "lease: this replica is the leader now",
                    token=state.token,
                    expires=state.expires_at.isoformat(),
                )
            return True
        if was is not None:
            self.changes += 1
            log_event(
                log,
                logging.WARNING,
                "lease: lost the leader lease; standing by",
                token=was,
                leader=self.leader_text(),
            )
        self.token = None
        self.valid_until = 0.0
        return False

    def leader_text(self) -> str:
        s = self.seen
        if s is None:
            return "unknown"
        return f"{s.holder} (token {s.token}, lease until {s.expires_at.isoformat()})"

    def guard(self) -> None:
        if self.active and not self.is_leader():
            raise LeaseLost(
                f"not the leader (any more): this replica's lease (token {self.token}) may have "
                "run out; the request is not sent"
            )

    def release(self) -> None:
        """At a clean stop: the lease, if ours, goes to a standby's next try; either way
        this replica's heartbeat goes (``once`` refused beside a leader is no standby)."""
        if self.token is not None or self.last_contact is not None:
            try:
                self.store.release_lease(self.holder)
            except Exception as exc:
                log_event(log, logging.WARNING, "lease: could not release", error=str(exc))
            self.token = None
            self.valid_until = 0.0
            self.last_contact = None


class FencedTransport(httpx.BaseTransport):
    """An HTTP transport that sends nothing unless this replica leads (``guard``)."""

    def __init__(self, leadership: Leadership, inner: httpx.BaseTransport | None = None) -> None:
        self.leadership = leadership
        self.inner = inner or httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.leadership.guard()
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()
