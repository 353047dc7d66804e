"""The raw floor the benchmark sets beside the daemon's detect-and-commit rate (issue 12).

What the daemon must do at the least to commit a poll's changes durably, done with nothing
but the standard library: decode the very pages the simulated Ivanti served the daemon
(the bytes are captured from the daemon's own HTTP transport during the measured polls)
and, for every row whose content differs from the stored copy, upsert the incident's
snapshot and insert a change row, one transaction per page as the daemon's unit of work
does, in a plain ``sqlite3`` database set up as the daemon's store sets up its own
(``daemon/store.py``: ``journal_mode=WAL``, ``synchronous=FULL``, ``BEGIN IMMEDIATE``)
on the same file system. The tables carry the daemon's indexes on those columns
(incidents by IncidentNumber, OwnerTeam and LastModDateTime; changes by RecId and
IncidentNumber), and the incidents table starts as a copy of the daemon's, so it holds
the whole tenant as the daemon's does.

What the floor leaves out, on purpose (it is the floor): the transitions and rules, the
outbox, the cycle row and the poll's state rows, the ORM, validating fields. Rows read
again by the settle read are decoded and looked up like any other and written only when
they changed (so, as for the daemon, not at all).

It runs in a process of its own (``Floor``, kept by the benchmark), so neither its CPU
nor its memory counts in the daemon worker's figures.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE incidents (
    rec_id TEXT PRIMARY KEY, incident_number INTEGER, owner_team TEXT, last_mod TEXT,
    snapshot TEXT
);
CREATE TABLE changes (
    id INTEGER PRIMARY KEY AUTOINCREMENT, rec_id TEXT, incident_number INTEGER,
    last_mod TEXT, last_mod_by TEXT, status TEXT, priority TEXT, owner_team TEXT, owner TEXT
);
"""
INDEXES = """
CREATE INDEX ix_incidents_number ON incidents (incident_number);
CREATE INDEX ix_incidents_team ON incidents (owner_team);
CREATE INDEX ix_incidents_last_mod ON incidents (last_mod);
CREATE INDEX ix_changes_rec_id ON changes (rec_id);
CREATE INDEX ix_changes_number ON changes (incident_number);
"""
UPSERT = (
    "INSERT INTO incidents (rec_id, incident_number, owner_team, last_mod, snapshot) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (rec_id) DO UPDATE SET "
    "incident_number = excluded.incident_number, owner_team = excluded.owner_team, "
    "last_mod = excluded.last_mod, snapshot = excluded.snapshot "
    "WHERE incidents.snapshot IS NOT excluded.snapshot"
)
CHANGE = (
    "INSERT INTO changes (rec_id, incident_number, last_mod, last_mod_by, status, priority, "
    "owner_team, owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


def connect(path: Path) -> sqlite3.Connection:
    """As the daemon's store connects (explicit transactions, WAL, synchronous=FULL)."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def seed(path: Path, daemon_db: Path) -> int:
    """A fresh floor DB holding a copy of the daemon's incidents (untimed)."""
    path.unlink(missing_ok=True)
    conn = connect(path)
    try:
        conn.executescript(SCHEMA)
        conn.execute("ATTACH DATABASE ? AS d", (f"file:{daemon_db}?mode=ro",))
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT INTO incidents SELECT rec_id, incident_number, owner_team, "
            "CAST(last_mod AS TEXT), CAST(snapshot AS TEXT) FROM d.incidents"
        )
        conn.execute("COMMIT")
        conn.execute("DETACH DATABASE d")
        conn.executescript(INDEXES)
        return int(conn.execute("SELECT COUNT(*) FROM incidents").fetchone()[0])
    finally:
        conn.close()


def replay(conn: sqlite3.Connection, pages: Sequence[bytes]) -> tuple[int, int]:
    """Decode and commit ``pages`` (one transaction each): (rows decoded, rows written)."""
    rows_read = written = 0
    for body in pages:
        rows = json.loads(body)["value"]
        rows_read += len(rows)
        conn.execute("BEGIN IMMEDIATE")
        for row in rows:
            before = conn.total_changes
            conn.execute(
                UPSERT,
                (
                    row["RecId"],
                    row["IncidentNumber"],
                    row["OwnerTeam"],
                    row["LastModDateTime"],
                    json.dumps(row, sort_keys=True),
                ),
            )
            if conn.total_changes != before:
                conn.execute(
                    CHANGE,
                    (
                        row["RecId"],
                        row["IncidentNumber"],
                        row["LastModDateTime"],
                        row.get("LastModBy"),
                        row.get("Status"),
                        row.get("Priority"),
                        row["OwnerTeam"],
                        row.get("Owner"),
                    ),
                )
                written += 1
        conn.execute("COMMIT")
    return rows_read, written


class Floor:
    """A floor DB seeded from the daemon's as it is now, replaying pages on request.

    The benchmark keeps one in a process of its own and has it replay each measured
    poll's pages right after that poll, so the two are timed on the machine as it is at
    that moment (on a shared VM its speed moves by a third from one minute to the next).
    """

    def __init__(self, path: str, daemon_db: str) -> None:
        self.path = Path(path)
        self.seeded = seed(self.path, Path(daemon_db))
        self.conn = connect(self.path)

    def seeded_incidents(self) -> int:
        return self.seeded

    def replay(self, pages: Sequence[bytes]) -> dict[str, Any]:
        """Decode and commit ``pages`` (one transaction each), timed."""
        w0, c0 = time.perf_counter(), time.process_time()
        rows, written = replay(self.conn, pages)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        return {
            "pages": len(pages),
            "rows_decoded": rows,
            "rows_written": written,
            "wall_s": wall,
            "cpu_s": cpu,
        }

    def close(self) -> None:
        self.conn.close()
        for suffix in ("", "-wal", "-shm"):
            Path(str(self.path) + suffix).unlink(missing_ok=True)
