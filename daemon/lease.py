"""Who may write the state DB: one daemon per SQLite file.

SQLite: the daemon (``run``, or ``once``) holds an exclusive ``flock`` on
``<state DB>.lock`` for its whole life and writes who it is there (host, pid, since
when). The kernel drops the lock when the process dies, ``kill -9`` included, so a
restart never waits for anything stale. A second daemon refuses to start with one
line naming the holder. Read-only commands (``status``, ``explain``…) take no lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import make_url

EX_TEMPFAIL = 75  # sysexits.h: "try again later"; the CLI exits with it when refused


class AlreadyRunning(RuntimeError):
    """Another daemon holds the state DB; the message names it."""


def holder_text(host: str, pid: int | str, since: str) -> str:
    return f"host {host}, pid {pid}, since {since}"


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (None for in-memory or another backend)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


class InstanceLock:
    """The exclusive lock of one SQLite state DB, held until ``release`` or exit."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.path = db_path.with_name(db_path.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
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
    if path is None:
        return None
    lock = InstanceLock(path)
    lock.acquire()
    return lock
