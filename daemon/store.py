"""The one module that owns the SQL: engine, migrations, and the unit of work.

``Store.unit()`` opens one transaction and hands out a ``Unit`` whose methods
read and write rows; everything done inside commits together or not at all
(snapshot + change + outbox actions, the "one transaction" promise).

SQLite runs in WAL mode so people can read the DB with sqlite3 while the daemon
writes; ``synchronous=FULL`` so a committed transition survives power loss, and a
busy timeout so a reader never makes the daemon fail.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import tempfile
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from pathlib import Path
from typing import Any, Protocol, cast

from sqlalchemy import (
    JSON,
    Engine,
    Table,
    Text,
    bindparam,
    case,
    create_engine,
    event,
    func,
    insert,
    make_url,
    or_,
    select,
    text,
    update,
)
from sqlalchemy import cast as sa_cast
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.schema import ScalarElementColumnDefault

from daemon.domain import Policy, Snapshot
from daemon.models import (
    Attempt,
    AuditSeen,
    Change,
    Cycle,
    Incident,
    Lease,
    OutboxAction,
    PollState,
    Rejected,
    Replica,
    WindowHold,
    XmEvent,
)
from daemon.snapshot import (
    snapshot_from_json,
    snapshot_from_text,
    snapshot_text,
    snapshot_to_json,
)

# The tables the bulk writes use as Core tables: the ORM's bulk paths cost about as
# much per row as building ORM objects.
_INCIDENTS = cast(Table, Incident.__table__)
_CHANGES = cast(Table, Change.__table__)
_OUTBOX = cast(Table, OutboxAction.__table__)
_HOLDS = cast(Table, WindowHold.__table__)
_LEASES = cast(Table, Lease.__table__)
_REPLICAS = cast(Table, Replica.__table__)
LEADER = "leader"
# a replica not heard from for this long is forgotten (its row deleted at the next try)
REPLICA_FORGOTTEN_AFTER = timedelta(days=1)


class _Bulk:
    """One INSERT, or one UPDATE of the row whose ``key`` column matches, compiled once
    for a dialect and run as one driver executemany with each parameter put through
    the column type's own bind processor (SQLAlchemy's, so values are stored exactly
    as a Core ``execute`` stores them). Core's executemany builds and processes a
    parameter dict per row; for the thousand rows of a busy poll that cost as much as
    the rest of the diff (measured: 52 vs 27 ms for 1,000 incident updates, SQLite).

    Columns an inserted row leaves out take their scalar default; one whose default is
    not a scalar cannot be left out (raised when the statement is compiled). The JSON
    columns named in ``json_text`` are given as JSON text, stored as it is (SQLite keeps
    the text; PostgreSQL casts it to json, which keeps it too)."""

    def __init__(
        self,
        dialect: Dialect,
        table: Table,
        columns: tuple[str, ...],
        key: str | None,
        json_text: tuple[str, ...] = (),
    ):
        defaults: dict[str, Any] = {}
        if key is None:  # an insert: what a row leaves out takes the column's default
            for c in table.columns:
                if c.key not in columns and isinstance(c.default, ScalarElementColumnDefault):
                    defaults[c.key] = c.default.arg
        values: dict[str, Any] = {
            name: bindparam(name) for name in (*columns, *defaults) if name != key
        }
        for name in json_text:
            if name in values:
                as_text = bindparam(name, type_=Text)
                values[name] = as_text if dialect.name == "sqlite" else sa_cast(as_text, JSON)
        if key is None:
            stmt: Any = insert(table).values(values)
        else:
            where = table.c[key] == bindparam("key_" + key)
            stmt = update(table).where(where).values(values)
        compiled = stmt.compile(dialect=dialect)
        if compiled.insert_prefetch or compiled.update_prefetch:
            raise ValueError(f"{table.name}: columns with non-scalar defaults must be given")
        names = list(compiled.positiontup or compiled.binds)
        self.sql = compiled.string
        self.keys = (
            None if compiled.positiontup else [compiled.escaped_bind_names.get(n, n) for n in names]
        )
        self.defaults = defaults
        # each parameter in the statement's order: the row's value (a getter in C for
        # them all at once), then the bind processors of the types that have one
        source = [key if key is not None and n == "key_" + key else n for n in names]
        self.get = itemgetter(*source) if len(source) > 1 else lambda r: (r[source[0]],)
        self.procs: list[tuple[int, Callable[[Any], Any]]] = []
        for i, name in enumerate(names):
            proc = compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
            if proc is not None:
                self.procs.append((i, proc))

    def run(self, session: Session, rows: Sequence[Mapping[str, Any]]) -> None:
        get, procs, defaults, keys = self.get, self.procs, self.defaults, self.keys
        out: list[Any] = []
        for row in rows:
            values = list(get({**defaults, **row} if defaults else row))
            for i, proc in procs:
                values[i] = proc(values[i])
            out.append(tuple(values) if keys is None else dict(zip(keys, values, strict=True)))
        session.connection().exec_driver_sql(self.sql, out)


_Shape = tuple[str, tuple[str, ...], str | None, tuple[str, ...]]
_BULK: weakref.WeakKeyDictionary[Dialect, dict[_Shape, _Bulk]]
_BULK = weakref.WeakKeyDictionary()


def _bulk(
    session: Session,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    key: str | None = None,
    json_text: tuple[str, ...] = (),
) -> None:
    """Insert ``rows`` into ``table`` (``key`` None) or update each row found by its
    ``key`` column, in order, one executemany per run of rows that set the same columns
    (``json_text``: see ``_Bulk``)."""
    dialect = session.get_bind().dialect
    compiled = _BULK.setdefault(dialect, {})
    start = 0
    while start < len(rows):
        columns = tuple(rows[start])
        end = start + 1
        while end < len(rows) and tuple(rows[end]) == columns:
            end += 1
        shape = (table.name, columns, key, json_text)
        bulk = compiled.get(shape)
        if bulk is None:
            bulk = compiled[shape] = _Bulk(dialect, table, columns, key, json_text)
        bulk.run(session, rows[start:end])
        start = end


class LeaseLost(RuntimeError):
    """This replica does not hold the leader lease (any more): it must commit nothing."""


class Fence(Protocol):
    """Who this process is and the fencing token it believes it holds (None: none)."""

    holder: str
    token: int | None


@dataclass(frozen=True)
class LeaseState:
    holder: str
    token: int
    acquired_at: datetime
    renewed_at: datetime
    expires_at: datetime
    now: datetime  # the DB server's clock when this was read


# The delivery lane of an action: xMatters (pages, terminations) or Ivanti (notes).
_LANE = case((OutboxAction.kind == "note", "ivanti"), else_="xmatters")

# Statements each page runs, built once (building and keying one per call cost about as
# much as running it): what is stored of given incidents, and their queued notes.
_STATES = select(
    Incident.rec_id,
    Incident.last_mod,
    Incident.deleted,
    Incident.alerting,
    Incident.own_write_at,
    sa_cast(Incident.snapshot, Text),  # decoded by snapshot_from_text, mostly a lookup
).where(Incident.rec_id.in_(bindparam("ids", expanding=True)))
_NOTES_PENDING = select(OutboxAction.rec_id, OutboxAction.payload).where(
    OutboxAction.state == "pending",
    OutboxAction.kind == "note",
    OutboxAction.rec_id.in_(bindparam("ids", expanding=True)),
)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
_BEGIN_OPTION = "ixm_sqlite_begin"


# libpq's own bounds on every PostgreSQL connection: a connect gives up after 5 s; a
# connection whose peer stopped answering fails within about 11 s while idle or waiting
# for a result (TCP keepalives after 5 s, every 2 s, 3 lost) and within 10 s when what
# it sent goes unacknowledged (TCP_USER_TIMEOUT); the unit then fails and is retried.
PG_CONNECT_ARGS: dict[str, Any] = {
    "options": "-c idle_in_transaction_session_timeout=5000",
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
}


def make_engine(url: str) -> Engine:
    _create_owner_only(url)
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        # psycopg 3 (the "postgres" extra), not SQLAlchemy's default psycopg2
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "postgresql":
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise RuntimeError(
                "IXM_STATE_DB is a PostgreSQL URL but the driver is missing: "
                "pip install 'ivanti-xmatters[postgres]'"
            ) from None
        # pre_ping: a connection the server dropped (restart, failover) is replaced
        # before use instead of failing the unit that picked it from the pool.
        # idle_in_transaction_session_timeout: a replica frozen inside a transaction
        # (SIGSTOP, a hung VM) would hold the lease row's lock for ever; the server ends
        # its session after 5 s (a unit never waits on anything but the DB inside it).
        # The client side is bounded too (PG_CONNECT_ARGS): without it, a connection
        # opened while the server restarts, or one whose peer vanished, waits for ever,
        # and the thread that holds it (write-back, say) stops for good while the lease
        # thread goes on renewing the lease, so no standby takes over either.
        return create_engine(parsed, future=True, pool_pre_ping=True, connect_args=PG_CONNECT_ARGS)
    engine = create_engine(parsed, future=True)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # the driver's own implicit BEGIN (deferred, at the first write) off: the
            # "begin" hook below says which kind each transaction takes
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA busy_timeout=10000")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # a write unit takes the write lock at its start (IMMEDIATE): what it reads
            # stays true until it commits, and it never fails half-way with "database
            # is locked" because another writer committed after its first read
            mode = conn.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
            conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def _alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return cfg


def upgrade(engine: Engine) -> None:
    """Apply pending alembic revisions (the daemon calls this at start)."""
    from alembic import command

    cfg = _alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()


class Store:
    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = url
        self.engine = make_engine(url)
        if migrate:
            upgrade(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # set on a replica under a leader lease: every committing unit checks it
        self.fence: Fence | None = None
        # who this process is, recorded on each delivery attempt (the lease holder on
        # PostgreSQL replicas, set by the service)
        self.replica = f"{socket.gethostname()} pid {os.getpid()}"

    @contextmanager
    def unit(self, *, rollback: bool = False) -> Iterator[Unit]:
        """One transaction. ``rollback=True`` (dry runs, reads) discards everything at the end.

        A unit that may commit takes the write lock at its start (SQLite: BEGIN
        IMMEDIATE), so everything it reads is one consistent state; a rollback unit
        reads without blocking the daemon's writers."""
        with self._sessions() as session:
            tx = session.begin()
            if not rollback and self.engine.dialect.name == "sqlite":
                session.connection(execution_options={_BEGIN_OPTION: "IMMEDIATE"})
            try:
                if not rollback and self.fence is not None:
                    self._check_fence(session, self.fence)
                yield Unit(session, self.replica)
            except BaseException:
                tx.rollback()
                raise
            if rollback:
                tx.rollback()
            else:
                tx.commit()

    def close(self) -> None:
        self.engine.dispose()

    # ----- the leader lease (PostgreSQL replicas) ---------------------------------------
    def _check_fence(self, session: Session, fence: Fence) -> None:
        """Lock the lease row for this transaction and check it is still ours: while the
        row is locked nobody can take the lease over, so what this unit commits is
        fenced by the token (and write units of all replicas run one at a time)."""
        q = select(_LEASES).where(_LEASES.c.name == LEADER).with_for_update()
        row = session.execute(q).first()
        now = _db_now(session.connection())
        token = fence.token
        if token is None or row is None or row.token != token or row.holder != fence.holder:
            who = f"{row.holder} holds it with token {row.token}" if row else "nobody holds it"
            raise LeaseLost(f"not the leader (token {token}; {who}): nothing committed")
        if row.expires_at <= now:
            raise LeaseLost(f"the lease (token {token}) expired at {row.expires_at.isoformat()}")

    def claim_lease(
        self, holder: str, ttl: float, *, host: str = "", pid: int = 0
    ) -> tuple[bool, LeaseState | None]:
        """One transaction on the locked lease row: renew it if ours and live, take it
        (token + 1) if free or expired; else leave it. Returns (ours now, the row).
        The same transaction records this replica's heartbeat (``replicas``)."""
        with self.engine.begin() as conn:
            ours, state = self._claim(conn, holder, ttl)
            self._heartbeat(conn, holder, host, pid, ours, state.now if state else None)
            return ours, state

    @staticmethod
    def _heartbeat(
        conn: Any, holder: str, host: str, pid: int, leading: bool, now: datetime | None
    ) -> None:
        now = now or _db_now(conn)
        seen = {"seen_at": now, "leading": leading}
        done = conn.execute(update(_REPLICAS).where(_REPLICAS.c.holder == holder).values(**seen))
        if done.rowcount == 0:  # its first try (the holder is unique to the process)
            conn.execute(
                insert(_REPLICAS).values(holder=holder, host=host, pid=pid, started_at=now, **seen)
            )
            conn.execute(
                _REPLICAS.delete().where(_REPLICAS.c.seen_at < now - REPLICA_FORGOTTEN_AFTER)
            )

    @staticmethod
    def _claim(conn: Any, holder: str, ttl: float) -> tuple[bool, LeaseState | None]:
        now = _db_now(conn)
        until = now + timedelta(seconds=ttl)
        q = select(_LEASES).where(_LEASES.c.name == LEADER).with_for_update()
        row = conn.execute(q).first()
        if row is None:
            new = LeaseState(holder, 1, now, now, until, now)
            conn.execute(
                insert(_LEASES).values(
                    name=LEADER,
                    holder=holder,
                    token=1,
                    acquired_at=now,
                    renewed_at=now,
                    expires_at=until,
                )
            )
            return True, new
        state = LeaseState(
            row.holder, row.token, row.acquired_at, row.renewed_at, row.expires_at, now
        )
        live = row.expires_at > now
        if live and row.holder != holder:
            return False, state
        values: dict[str, Any]
        if live:  # ours: renew
            values = {"renewed_at": now, "expires_at": until}
            acquired_at, token = row.acquired_at, row.token
        else:  # free: a new holder (or us again after a gap) gets a new token
            token = row.token + 1
            acquired_at = now
            values = {
                "holder": holder,
                "token": token,
                "acquired_at": now,
                "renewed_at": now,
                "expires_at": until,
            }
        conn.execute(update(_LEASES).where(_LEASES.c.name == LEADER).values(**values))
        return True, LeaseState(holder, token, acquired_at, now, until, now)

    def release_lease(self, holder: str) -> None:
        """Give the lease up at a clean stop, so a standby takes over at its next try;
        this replica is no longer one (its heartbeat row goes)."""
        with self.engine.begin() as conn:
            now = _db_now(conn)
            conn.execute(
                update(_LEASES)
                .where(_LEASES.c.name == LEADER, _LEASES.c.holder == holder)
                .values(expires_at=now)
            )
            conn.execute(_REPLICAS.delete().where(_REPLICAS.c.holder == holder))

    def read_replicas(self) -> tuple[list[Replica], datetime]:
        """Every replica heard from in the last day, the most recent first, and the DB
        server's clock now (to say how long ago)."""
        with self._sessions() as session:
            rows = list(session.scalars(select(Replica).order_by(Replica.seen_at.desc())))
            return rows, _db_now(session.connection())

    def read_lease(self) -> LeaseState | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(_LEASES).where(_LEASES.c.name == LEADER)).first()
            if row is None:
                return None
            now = _db_now(conn)
            return LeaseState(
                row.holder, row.token, row.acquired_at, row.renewed_at, row.expires_at, now
            )


def _db_now(conn: Any) -> datetime:
    """The DB server's clock (the replicas' clocks may disagree; the lease's must not)."""
    if conn.dialect.name == "postgresql":
        value = conn.execute(select(func.clock_timestamp())).scalar_one()
        return cast(datetime, value).astimezone(UTC)
    return datetime.now(UTC)


def _incident_columns(
    snap: Snapshot, policy: Policy, now: datetime, stored: object
) -> dict[str, Any]:
    """The incident columns a snapshot sets; ``stored`` is its ``snapshot`` value."""
    return {
        "incident_number": snap.incident_number,
        "status": snap.status,
        "status_class": policy.status_class(snap.status).value,
        "priority": snap.priority,
        "critical": policy.critical(snap),
        "owner": snap.owner,
        "owner_team": snap.owner_team,
        "last_mod": snap.last_mod,
        "last_mod_by": snap.last_mod_by,
        "snapshot": stored,
        "updated_at": now,
        "deleted": False,
    }


@dataclass(slots=True)
class IncidentState:
    """The columns of one stored incident that the diff reads, without an ORM object.

    Loading, tracking and flushing full ``Incident`` objects cost more than the rest
    of the diff at 1,000s of changes a poll; the poller reads these, updates them in
    place as it goes through the page, and writes its results back in bulk.
    """

    rec_id: str
    last_mod: datetime
    deleted: bool
    alerting: bool
    own_write_at: datetime | None
    snapshot: Snapshot


@dataclass(frozen=True)
class Head:
    """The oldest pending action of one incident (actions run in order per incident)."""

    action: OutboxAction
    unfinished_attempt: Attempt | None


class Unit:
    """Repository methods bound to one open transaction."""

    def __init__(self, session: Session, replica: str | None = None) -> None:
        self.s = session
        self.replica = replica  # who this process is, recorded on each attempt

    # ----- cursor ----------------------------------------------------------------------
    def get_state(self, name: str) -> str | None:
        row = self.s.get(PollState, name)
        return row.value if row else None

    def set_state(self, name: str, value: str, now: datetime) -> None:
        row = self.s.get(PollState, name)
        if row is None:
            self.s.add(PollState(name=name, value=value, updated_at=now))
        else:
            row.value = value
            row.updated_at = now

    def all_state(self) -> dict[str, tuple[str, datetime]]:
        return {r.name: (r.value, r.updated_at) for r in self.s.scalars(select(PollState))}

    # ----- cycles ----------------------------------------------------------------------
    def start_cycle(self, kind: str, now: datetime, watermark: str | None = None) -> Cycle:
        cycle = Cycle(kind=kind, started_at=now, watermark_before=watermark)
        self.s.add(cycle)
        self.s.flush()
        return cycle

    def cycle(self, cycle_id: int) -> Cycle:
        row = self.s.get(Cycle, cycle_id)
        assert row is not None
        return row

    def last_cycles(self, kind: str | None = None, limit: int = 20) -> list[Cycle]:
        q = select(Cycle).order_by(Cycle.id.desc()).limit(limit)
        if kind:
            q = q.where(Cycle.kind == kind)
        return list(self.s.scalars(q))

    def last_ok_cycle(self, kind: str) -> Cycle | None:
        q = (
            select(Cycle)
            .where(Cycle.kind == kind, Cycle.ok.is_(True))
            .order_by(Cycle.id.desc())
            .limit(1)
        )
        return self.s.scalars(q).first()

    # ----- incidents -------------------------------------------------------------------
    def incident(self, rec_id: str) -> Incident | None:
        return self.s.get(Incident, rec_id)

    def open_incident_ids(self, after: int | None = None, upto: int | None = None) -> list[str]:
        """RecIds of tracked open incidents, optionally with IncidentNumber in
        (after, upto]: the reconcile sweep compares them a page at a time."""
        q = select(Incident.rec_id).where(
            Incident.status_class == "open", Incident.deleted.is_(False)
        )
        if after is not None:
            q = q.where(Incident.incident_number > after)
        if upto is not None:
            q = q.where(Incident.incident_number <= upto)
        return list(self.s.scalars(q))

    def known_versions(
        self, lo: datetime, hi: datetime | None, after: int | None, limit: int
    ) -> list[tuple[datetime, int]]:
        """(LastModDateTime, IncidentNumber) of the followed incidents whose stored
        version was modified in [lo, hi) (``hi`` None: no end), in that order, at most
        ``limit``; with ``after``, those of ``lo``'s second numbered up to ``after``
        are left out. The poller sizes its settle reads by them (index on last_mod)."""
        q = select(Incident.last_mod, Incident.incident_number).where(
            Incident.deleted.is_(False), Incident.last_mod >= lo
        )
        if hi is not None:
            q = q.where(Incident.last_mod < hi)
        if after is not None:
            q = q.where(
                or_(
                    Incident.last_mod >= lo + timedelta(seconds=1),
                    Incident.incident_number > after,
                )
            )
        q = q.order_by(Incident.last_mod, Incident.incident_number).limit(limit)
        return [(m, n) for m, n in self.s.execute(q)]

    def list_incidents(self) -> list[Incident]:
        return list(self.s.scalars(select(Incident).order_by(Incident.incident_number)))

    def incident_states(self, rec_ids: Iterable[str]) -> dict[str, IncidentState]:
        """The stored state of each given incident that exists (one select per 500)."""
        ids = list(set(rec_ids))
        out: dict[str, IncidentState] = {}
        self.s.flush()  # (as Session.execute would: what this unit staged is seen)
        conn = self.s.connection()
        for i in range(0, len(ids), 500):
            for rec_id, last_mod, deleted, alerting, own_write_at, snapshot in conn.execute(
                _STATES, {"ids": ids[i : i + 500]}
            ):
                out[rec_id] = IncidentState(
                    rec_id,
                    last_mod,
                    bool(deleted),
                    bool(alerting),
                    own_write_at,
                    snapshot_from_text(snapshot),
                )
        return out

    @staticmethod
    def snapshot_values(snap: Snapshot, policy: Policy, now: datetime) -> dict[str, Any]:
        """The incident columns a snapshot sets, for the bulk writes (the snapshot as
        its stored text, ``snapshot_text``)."""
        return _incident_columns(snap, policy, now, snapshot_text(snap))

    def insert_incidents(self, rows: Sequence[dict[str, Any]]) -> None:
        """New incident rows (keyed like ``snapshot_values`` plus ``rec_id``,
        ``first_seen_at``, ``baseline``, ``alerting``) in one executemany."""
        _bulk(self.s, _INCIDENTS, rows, json_text=("snapshot",))

    def update_incidents(self, rows: Sequence[dict[str, Any]]) -> None:
        """Set the given columns of each incident (``snapshot`` as its stored text),
        found by its ``rec_id``: one executemany per set of columns (not the ORM bulk
        UPDATE, which costs as much per row as the rest of the diff)."""
        rows = sorted(rows, key=lambda row: sorted(row))
        _bulk(self.s, _INCIDENTS, rows, key="rec_id", json_text=("snapshot",))

    def save_snapshot(
        self,
        snap: Snapshot,
        policy: Policy,
        now: datetime,
        *,
        alerting: bool | None = None,
        baseline: bool = False,
        existing: Incident | None = None,
    ) -> Incident:
        row = existing if existing is not None else self.s.get(Incident, snap.rec_id)
        values = _incident_columns(snap, policy, now, snapshot_to_json(snap))
        if row is None:
            row = Incident(
                rec_id=snap.rec_id,
                first_seen_at=now,
                baseline=baseline,
                alerting=bool(alerting),
                **values,
            )
            self.s.add(row)
        else:
            for k, v in values.items():
                setattr(row, k, v)
            if alerting is not None:
                row.alerting = alerting
        return row

    @staticmethod
    def snapshot_of(row: Incident) -> Snapshot:
        return snapshot_from_json(row.snapshot)

    # ----- changes and rejects ---------------------------------------------------------
    def add_change(self, change: Change, *, need_id: bool = False) -> Change:
        """Stage a change row; ``need_id`` flushes it now so actions can point at it
        (flushing every change would cost more than the rest of the diff)."""
        self.s.add(change)
        if need_id:
            self.s.flush()
        return change

    def insert_changes(self, rows: Sequence[dict[str, Any]]) -> list[int]:
        """Insert change rows in the order given, in one executemany; returns their ids,
        in order (outbox actions point at them).

        The ids are taken before the insert: on SQLite the next ones after the largest
        (this unit holds the write lock, so no other writer can take them); on
        PostgreSQL from the table's sequence. A RETURNING per row cost a statement per
        change that pages; SQLite cannot tie a multi-row RETURNING to its rows."""
        if not rows:
            return []
        self.s.flush()  # a change the ORM staged takes its id first
        if self.s.get_bind().dialect.name == "postgresql":
            q = text(
                "SELECT nextval(pg_get_serial_sequence('changes', 'id')) "
                "FROM generate_series(1, :n)"
            )
            ids = sorted(self.s.scalars(q, {"n": len(rows)}))
        else:
            last = self.s.connection().exec_driver_sql("SELECT max(id) FROM changes").scalar() or 0
            ids = list(range(last + 1, last + 1 + len(rows)))
        _bulk(self.s, _CHANGES, [{**row, "id": i} for row, i in zip(rows, ids, strict=True)])
        return ids

    def changes_since(self, after_id: int = 0) -> list[Change]:
        """Changes recorded after the one with ``after_id``, oldest first."""
        q = select(Change).where(Change.id > after_id).order_by(Change.id)
        return list(self.s.scalars(q))

    def changes_for(self, rec_id: str) -> list[Change]:
        return list(
            self.s.scalars(select(Change).where(Change.rec_id == rec_id).order_by(Change.id))
        )

    def add_rejected(
        self, cycle_id: int | None, now: datetime, rec_id: str | None, problem: str, raw: object
    ) -> None:
        try:
            text = json.dumps(raw, default=str)[:100_000]
        except (TypeError, ValueError):
            text = repr(raw)[:100_000]
        self.s.add(
            Rejected(cycle_id=cycle_id, seen_at=now, rec_id=rec_id, problem=problem, raw=text)
        )

    def rejected(self, limit: int = 50) -> list[Rejected]:
        return list(self.s.scalars(select(Rejected).order_by(Rejected.id.desc()).limit(limit)))

    # ----- outbox ----------------------------------------------------------------------
    def add_action(
        self,
        *,
        rec_id: str,
        incident_number: int,
        kind: str,
        payload: dict[str, Any],
        reason: str,
        now: datetime,
        change_id: int | None = None,
        recipient: str | None = None,
        dedupe_key: str | None = None,
    ) -> OutboxAction:
        action = OutboxAction(
            **self.action_values(
                rec_id=rec_id,
                incident_number=incident_number,
                kind=kind,
                payload=payload,
                reason=reason,
                now=now,
                change_id=change_id,
                recipient=recipient,
                dedupe_key=dedupe_key,
            )
        )
        self.s.add(action)
        self.s.flush()
        return action

    @staticmethod
    def action_values(
        *,
        rec_id: str,
        incident_number: int,
        kind: str,
        payload: dict[str, Any],
        reason: str,
        now: datetime,
        change_id: int | None = None,
        recipient: str | None = None,
        dedupe_key: str | None = None,
    ) -> dict[str, Any]:
        """The columns of a new pending action (``add_action`` and ``insert_actions``)."""
        return {
            "rec_id": rec_id,
            "incident_number": incident_number,
            "kind": kind,
            "payload": payload,
            "reason": reason,
            "state": "pending",
            "attempts": 0,
            "created_at": now,
            "queued_at": now,
            "next_attempt_at": now,
            "updated_at": now,
            "change_id": change_id,
            "recipient": recipient,
            "dedupe_key": dedupe_key,
        }

    def insert_actions(self, rows: Sequence[dict[str, Any]]) -> None:
        """Pending actions (built by ``action_values``) in one executemany, ids in order."""
        _bulk(self.s, _OUTBOX, rows)

    def action(self, action_id: int) -> OutboxAction | None:
        return self.s.get(OutboxAction, action_id)

    def pending_assignments(self, rec_ids: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
        """The Owner/Status writes the daemon has queued (not yet done) per incident."""
        ids = list(rec_ids)
        out: dict[str, list[dict[str, Any]]] = {}
        if not ids:
            return out
        self.s.flush()
        for rec_id, payload in self.s.connection().execute(_NOTES_PENDING, {"ids": ids}):
            assign = (payload or {}).get("assign")
            if assign:
                out.setdefault(rec_id, []).append(assign)
        return out

    def has_dedupe_key(self, key: str) -> bool:
        q = select(OutboxAction.id).where(OutboxAction.dedupe_key == key)
        return self.s.scalars(q).first() is not None

    def heads(self, now: datetime, limit: int = 200) -> list[Head]:
        """The oldest pending action of each incident in each lane, if it is due.

        Two lanes, so one API's trouble never holds up the other's actions: pages and
        terminations (xMatters) keep their order, a terminate never overtaking its
        page; notes (Ivanti) keep theirs. A note failing for an hour delays no page.
        """
        first = (
            select(OutboxAction.rec_id, func.min(OutboxAction.id).label("first_id"))
            .where(OutboxAction.state == "pending")
            .group_by(OutboxAction.rec_id, _LANE)
            .subquery()
        )
        q = (
            select(OutboxAction)
            .join(first, OutboxAction.id == first.c.first_id)
            .where(OutboxAction.next_attempt_at <= now)
            .order_by(OutboxAction.id)
            .limit(limit)
        )
        out = []
        for action in self.s.scalars(q):
            out.append(Head(action, self.unfinished_attempt(action.id)))
        return out

    def unfinished_attempt(self, action_id: int) -> Attempt | None:
        q = (
            select(Attempt)
            .where(Attempt.outbox_id == action_id, Attempt.finished_at.is_(None))
            .order_by(Attempt.id.desc())
        )
        return self.s.scalars(q).first()

    def attempts_for(self, action_id: int) -> list[Attempt]:
        return list(
            self.s.scalars(
                select(Attempt).where(Attempt.outbox_id == action_id).order_by(Attempt.id)
            )
        )

    def start_attempt(self, action: OutboxAction, now: datetime) -> Attempt:
        action.attempts += 1
        action.updated_at = now
        if action.kind == "page":
            # Counts towards flood control from now; moved to when xMatters answered
            # once it did (see ``pages_sent_since``).
            action.sent_at = now
        attempt = Attempt(
            outbox_id=action.id, number=action.attempts, started_at=now, replica=self.replica
        )
        self.s.add(attempt)
        self.s.flush()
        return attempt

    def finish_attempt(
        self, action_id: int, attempt_id: int, now: datetime
    ) -> tuple[OutboxAction, Attempt]:
        """The action and its attempt, the attempt marked finished (the caller sets how)."""
        action = self.s.get(OutboxAction, action_id)
        attempt = self.s.get(Attempt, attempt_id)
        if action is None or attempt is None or attempt.outbox_id != action_id:
            raise LookupError(f"no attempt {attempt_id} of outbox action {action_id}")
        attempt.finished_at = now
        action.updated_at = now
        return action, attempt

    # ----- maintenance windows ----------------------------------------------------------
    def insert_holds(self, rows: Sequence[dict[str, Any]]) -> None:
        """Pages held by a maintenance window (``window_holds`` columns), in one executemany."""
        _bulk(self.s, _HOLDS, rows)

    def due_holds(self, closed_by: datetime) -> list[WindowHold]:
        """Unreleased holds whose window closed at or before ``closed_by``, oldest first,
        locked for this transaction where the database can (a second leader cannot
        release them too)."""
        q = (
            select(WindowHold)
            .where(WindowHold.released_at.is_(None), WindowHold.until <= closed_by)
            .order_by(WindowHold.id)
            .with_for_update()
        )
        return list(self.s.scalars(q))

    def quiet_open_incidents(self) -> list[Incident]:
        """Tracked open incidents with no live page of the daemon's, by IncidentNumber."""
        q = (
            select(Incident)
            .where(
                Incident.status_class == "open",
                Incident.alerting.is_(False),
                Incident.deleted.is_(False),
            )
            .order_by(Incident.incident_number)
        )
        return list(self.s.scalars(q))

    def holds_for(self, rec_id: str) -> list[WindowHold]:
        return list(
            self.s.scalars(
                select(WindowHold).where(WindowHold.rec_id == rec_id).order_by(WindowHold.id)
            )
        )

    def last_page_planned(self, rec_id: str) -> datetime | None:
        """When the incident's newest page was planned (any state), None if never."""
        q = select(func.max(OutboxAction.created_at)).where(
            OutboxAction.rec_id == rec_id, OutboxAction.kind == "page"
        )
        return self.s.scalar(q)

    def pages_sent_since(
        self, recipient: str, since: datetime, *, besides: int | None = None
    ) -> list[datetime]:
        """When pages to this recipient were (or may have been) counted by xMatters'
        flood control: ``sent_at`` is the latest time xMatters may have accepted each
        (when it answered, or when the request was cut off), never earlier."""
        q = select(OutboxAction.sent_at).where(
            OutboxAction.kind == "page",
            OutboxAction.recipient == recipient,
            OutboxAction.sent_at.is_not(None),
            OutboxAction.sent_at >= since,
        )
        if besides is not None:
            q = q.where(OutboxAction.id != besides)
        return sorted(t for t in self.s.scalars(q) if t is not None)

    def outbox(self, states: Sequence[str] | None = None, limit: int = 200) -> list[OutboxAction]:
        q = select(OutboxAction).order_by(OutboxAction.id.desc()).limit(limit)
        if states:
            q = q.where(OutboxAction.state.in_(states))
        return list(self.s.scalars(q))

    def outbox_for(self, rec_id: str) -> list[OutboxAction]:
        q = select(OutboxAction).where(OutboxAction.rec_id == rec_id).order_by(OutboxAction.id)
        return list(self.s.scalars(q))

    def delivery_concerns(self) -> dict[str, int]:
        """Pending actions worth a look: pages waiting for their event, actions with an
        unsettled outcome, actions whose last attempt got a 401; and attempts ever
        accepted by xMatters that never made an event."""
        pending = select(OutboxAction).where(OutboxAction.state == "pending")
        awaiting = unsettled = auth = 0
        for a in self.s.scalars(pending):
            awaiting += a.accepted_at is not None
            unsettled += bool(a.unsettled)
        last = (
            select(func.max(Attempt.id))
            .join(OutboxAction, OutboxAction.id == Attempt.outbox_id)
            .where(OutboxAction.state == "pending")
            .group_by(Attempt.outbox_id)
        )
        auth = int(
            self.s.scalar(
                select(func.count()).where(Attempt.id.in_(last), Attempt.http_status == 401)
            )
            or 0
        )
        no_event = int(
            self.s.scalar(select(func.count()).where(Attempt.outcome == "no_event")) or 0
        )
        return {
            "awaiting_event": awaiting,
            "unsettled": unsettled,
            "auth_failing": auth,
            "no_event": no_event,
        }

    def outbox_counts(self) -> dict[str, int]:
        q = select(OutboxAction.state, func.count()).group_by(OutboxAction.state)
        return {state: n for state, n in self.s.execute(q)}

    def done_notes_with_text(self, rec_id: str, text: str) -> int:
        n = 0
        for a in self.s.scalars(
            select(OutboxAction).where(
                OutboxAction.rec_id == rec_id,
                OutboxAction.kind == "note",
                OutboxAction.state == "done",
            )
        ):
            if a.payload.get("note") == text:
                n += 1
        return n

    def retry_dead(
        self, action_ids: Sequence[int] | None, now: datetime, *, by: str | None = None
    ) -> int:
        """Put dead actions back in the queue, as new: attempts and age start again
        (``queued_at``), and who did it is kept. ``unsettled`` is kept too: an action
        that died with an unknown outcome is checked with the peer before any re-send."""
        q = update(OutboxAction).where(OutboxAction.state == "dead")
        if action_ids is not None:
            q = q.where(OutboxAction.id.in_(list(action_ids)))
        result = self.s.execute(
            q.values(
                state="pending",
                next_attempt_at=now,
                updated_at=now,
                attempts=0,
                queued_at=now,
                accepted_at=None,
                requeues=OutboxAction.requeues + 1,
                requeued_at=now,
                requeued_by=by,
            )
        )
        return int(getattr(result, "rowcount", 0) or 0)

    # ----- xMatters events -------------------------------------------------------------
    def add_event(
        self,
        *,
        event_id: str,
        rec_id: str,
        outbox_id: int | None,
        request_id: str | None,
        number: str | None,
        status: str,
        now: datetime,
    ) -> XmEvent:
        row = self.s.get(XmEvent, event_id)
        if row is None:
            row = XmEvent(
                event_id=event_id,
                rec_id=rec_id,
                outbox_id=outbox_id,
                request_id=request_id,
                number=number,
                status=status,
                created_at=now,
                # An event first seen already ended has an end time too (else no poll
                # would ever read it): from now, since none of its records was read yet.
                terminated_at=None if status in ("ACTIVE", "SUSPENDED") else now,
                polls=0,
                delivered=0,
                failed=0,
                responded=0,
            )
            self.s.add(row)
        return row

    def event(self, event_id: str) -> XmEvent | None:
        return self.s.get(XmEvent, event_id)

    def events_for(self, rec_id: str) -> list[XmEvent]:
        q = select(XmEvent).where(XmEvent.rec_id == rec_id).order_by(XmEvent.created_at)
        return list(self.s.scalars(q))

    def live_events(self, rec_id: str | None = None) -> list[XmEvent]:
        q = select(XmEvent).where(XmEvent.status != "TERMINATED")
        if rec_id is not None:
            q = q.where(XmEvent.rec_id == rec_id)
        return list(self.s.scalars(q))

    def mark_terminated(self, rec_id: str, now: datetime, except_ids: Iterable[str] = ()) -> int:
        keep = set(except_ids)
        n = 0
        for ev in self.live_events(rec_id):
            if ev.event_id in keep:
                continue
            ev.status = "TERMINATED"
            ev.terminated_at = now
            n += 1
        return n

    def writeback_lag(self, now: datetime) -> float:
        """Seconds the least recently read live event has gone unread (0 if none)."""
        q = select(func.min(func.coalesce(XmEvent.last_polled_at, XmEvent.created_at))).where(
            XmEvent.status != "TERMINATED"
        )
        oldest = self.s.scalar(q)
        if oldest is None:
            return 0.0
        if isinstance(oldest, str):  # SQLite hands back coalesce() as text
            oldest = datetime.fromisoformat(oldest)
        if oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=UTC)
        return max(0.0, (now - oldest).total_seconds())

    def events_to_poll(self, now: datetime, grace: timedelta) -> list[XmEvent]:
        q = select(XmEvent).where(
            (XmEvent.status != "TERMINATED") | (XmEvent.terminated_at >= now - grace)
        )
        return list(self.s.scalars(q))

    def undiscovered_requests(self, since: datetime) -> list[OutboxAction]:
        """Pages whose trigger was accepted but whose event id is not known yet."""
        known = select(XmEvent.outbox_id).where(XmEvent.outbox_id.is_not(None))
        q = select(OutboxAction).where(
            OutboxAction.kind == "page",
            OutboxAction.state == "done",
            OutboxAction.request_id.is_not(None),
            OutboxAction.done_at >= since,
            OutboxAction.id.not_in(known),
        )
        return list(self.s.scalars(q))

    # ----- audits ----------------------------------------------------------------------
    def audit_seen(self, audit_id: str) -> bool:
        return self.s.get(AuditSeen, audit_id) is not None

    def add_audit(self, row: AuditSeen) -> None:
        self.s.add(row)

    def audits_for(self, rec_id: str) -> list[AuditSeen]:
        q = select(AuditSeen).where(AuditSeen.rec_id == rec_id).order_by(AuditSeen.handled_at)
        return list(self.s.scalars(q))

    # ----- read models for the ops CLI ----
    def last_failed_cycle(self) -> Cycle | None:
        """The newest poll/baseline/reconcile cycle that failed: Ivanti's last read error."""
        q = select(Cycle).where(Cycle.ok.is_(False)).order_by(Cycle.id.desc()).limit(1)
        return self.s.scalars(q).first()

    def last_failed_attempt(self, kinds: Sequence[str]) -> tuple[Attempt, OutboxAction] | None:
        """The newest attempt on actions of ``kinds`` that did not succeed, with its action."""
        q = (
            select(Attempt, OutboxAction)
            .join(OutboxAction, OutboxAction.id == Attempt.outbox_id)
            .where(
                OutboxAction.kind.in_(list(kinds)),
                Attempt.outcome.in_(("retry", "unknown", "dead")),
            )
            .order_by(Attempt.id.desc())
            .limit(1)
        )
        row = self.s.execute(q).first()
        return (row[0], row[1]) if row is not None else None

    def live_event_counts(self) -> dict[str, int]:
        """Live (not TERMINATED) xMatters events per RecId."""
        q = (
            select(XmEvent.rec_id, func.count())
            .where(XmEvent.status != "TERMINATED")
            .group_by(XmEvent.rec_id)
        )
        return {rec_id: int(n) for rec_id, n in self.s.execute(q)}

    def incident_counts(self) -> dict[str, int]:
        """Tracked (not deleted) incidents: total, open and alerting."""
        base = select(func.count()).select_from(Incident).where(Incident.deleted.is_(False))
        return {
            "total": int(self.s.scalar(base) or 0),
            "open": int(self.s.scalar(base.where(Incident.status_class == "open")) or 0),
            "alerting": int(self.s.scalar(base.where(Incident.alerting.is_(True))) or 0),
        }

    def latest_changes(self, rec_ids: Iterable[str]) -> dict[str, Change]:
        """The newest change row of each given incident."""
        ids = list(set(rec_ids))
        out: dict[str, Change] = {}
        for i in range(0, len(ids), 500):
            newest = (
                select(func.max(Change.id))
                .where(Change.rec_id.in_(ids[i : i + 500]))
                .group_by(Change.rec_id)
            )
            for row in self.s.scalars(select(Change).where(Change.id.in_(newest))):
                out[row.rec_id] = row
        return out

    def find_incidents(
        self,
        *,
        status_class: str | None = None,
        alerting: bool | None = None,
        team: str | None = None,
        priority: str | None = None,
        limit: int = 50,
    ) -> list[Incident]:
        """Tracked incidents, newest IncidentNumber first; ``team`` compares case-blind."""
        q = select(Incident)
        if status_class is not None:
            q = q.where(Incident.status_class == status_class)
        if alerting is not None:
            q = q.where(Incident.alerting.is_(alerting))
        if team:
            q = q.where(func.lower(Incident.owner_team) == team.strip().lower())
        if priority:
            q = q.where(Incident.priority == priority.strip())
        q = q.order_by(Incident.incident_number.desc()).limit(limit)
        return list(self.s.scalars(q))

    def find_incident(self, ref: str) -> Incident | None:
        """By IncidentNumber (all digits) or RecId (any letter case)."""
        text = ref.strip()
        if text.isdigit():
            q = (
                select(Incident)
                .where(Incident.incident_number == int(text))
                .order_by(Incident.updated_at.desc())
            )
            row = self.s.scalars(q).first()
            if row is not None:
                return row
        q = select(Incident).where(func.upper(Incident.rec_id) == text.upper())
        return self.s.scalars(q).first()

    def attempts_by_action(self, action_ids: Iterable[int]) -> dict[int, list[Attempt]]:
        """Attempts of the given actions, oldest first, keyed by action id."""
        ids = list(set(action_ids))
        out: dict[int, list[Attempt]] = {}
        for i in range(0, len(ids), 500):
            q = select(Attempt).where(Attempt.outbox_id.in_(ids[i : i + 500])).order_by(Attempt.id)
            for row in self.s.scalars(q):
                out.setdefault(row.outbox_id, []).append(row)
        return out

    def actions_with_last_attempt(
        self, action_ids: Iterable[int]
    ) -> list[tuple[OutboxAction, Attempt | None]]:
        """Each given action with its newest attempt (for metrics on a delivery round)."""
        ids = list(set(action_ids))
        out: list[tuple[OutboxAction, Attempt | None]] = []
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            newest = (
                select(func.max(Attempt.id))
                .where(Attempt.outbox_id.in_(chunk))
                .group_by(Attempt.outbox_id)
            )
            last = {
                a.outbox_id: a
                for a in self.s.scalars(select(Attempt).where(Attempt.id.in_(newest)))
            }
            actions = self.s.scalars(
                select(OutboxAction).where(OutboxAction.id.in_(chunk)).order_by(OutboxAction.id)
            )
            out += [(a, last.get(a.id)) for a in actions]
        return out


# ----- the file's permissions ------------------------------------------------------------
def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL; None for other databases and in-memory ones."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _create_owner_only(url: str) -> None:
    """Create a new SQLite state DB as an empty owner-only (0600) file before SQLite
    opens it: it holds names, phone numbers and comments, and outside systemd's
    UMask the process umask would leave it world-readable. SQLite gives its -wal and
    -shm files the same mode."""
    path = sqlite_file(url)
    if path is None or path.exists() or not path.parent.is_dir():
        return
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


# ----- dry runs --------------------------------------------------------------------------
class DryRunUnavailable(RuntimeError):
    """The state DB cannot be read for a dry run without changing it."""


class _ReadOnlyStore(Store):
    """Every transaction rolls back, whatever its caller asked."""

    @contextmanager
    def unit(self, *, rollback: bool = False) -> Iterator[Unit]:
        with super().unit(rollback=True) as u:
            yield u


class _PrivateCopy(Store):
    """A throw-away SQLite DB in a private directory, migrated, removed on close."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        super().__init__(f"sqlite:///{directory / 'state.db'}")

    def close(self) -> None:
        try:
            super().close()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


def _copy_sqlite(path: Path, target: Path) -> None:
    """Copy a SQLite DB without writing to it: read-only while a writer's -wal/-shm
    exist; otherwise ``immutable``, so no -shm file is created beside it (one made by
    another user, e.g. root running the CLI, would lock the daemon out of its DB)."""
    live = any(Path(f"{path}-{suffix}").exists() for suffix in ("wal", "shm"))
    uri = path.resolve().as_uri() + ("?mode=ro" if live else "?mode=ro&immutable=1")
    src = sqlite3.connect(uri, uri=True)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()


def open_dry_run(url: str) -> tuple[Store, str]:
    """A store a dry run may read and write as it likes while the state DB stays as it
    is: never created, never migrated, never written. A SQLite DB is read through a
    private copy (migrated if it is at an older revision); none yet means an empty
    copy, as at a first start. Another database is read in place, every transaction
    rolled back, and only at the newest revision. Returns the store and a sentence
    saying which of these it is; raises ``DryRunUnavailable`` when none can be done."""
    head = head_revision()
    path = sqlite_file(url)
    if path is None:
        store = _ReadOnlyStore(url, migrate=False)
        try:
            revision = current_revision(store.engine)
        except Exception:
            store.close()
            raise
        if revision == head:
            return store, "reading the state DB in place; every transaction is rolled back"
        store.close()
        if revision is not None:
            raise DryRunUnavailable(
                f"the state DB is at revision {revision} and this version needs {head}; a "
                "dry run does not migrate it: run `ivanti-xmatters db upgrade` first"
            )
        note = "the state DB has no schema yet: the dry run starts from an empty private copy"
        return _PrivateCopy(Path(tempfile.mkdtemp(prefix="ixm-dry-run-"))), note
    directory = Path(tempfile.mkdtemp(prefix="ixm-dry-run-"))  # 0700
    try:
        if not path.exists():
            note = (
                f"no state DB at {path} yet: the dry run starts from an empty private copy, "
                "as a first start would (the file is not created)"
            )
        else:
            copy = directory / "state.db"
            try:
                _copy_sqlite(path, copy)
            except sqlite3.Error as exc:
                raise DryRunUnavailable(
                    f"cannot read the state DB {path} for a dry run: {exc}"
                ) from exc
            engine = make_engine(f"sqlite:///{copy}")
            try:
                revision = current_revision(engine)
            finally:
                engine.dispose()
            note = f"reading a private copy of {path}; the file is not changed"
            if revision != head:
                note += (
                    f" (it is at revision {revision or 'none'}; the copy is migrated to "
                    f"{head}, the file is not)"
                )
        try:
            return _PrivateCopy(directory), note
        except Exception as exc:
            raise DryRunUnavailable(
                f"cannot read the state DB {path} for a dry run: {exc}"
            ) from exc
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
