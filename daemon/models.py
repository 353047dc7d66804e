"""The state DB schema (SQLAlchemy 2 declarative models).

Every change here needs an alembic revision in ``migrations/versions``; the
daemon applies pending revisions at start. People read this DB with sqlite3 to
learn why someone was, or was not, paged, so column names say what they hold.
Times are UTC; see ``UTCDateTime``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeEngine


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC (``YYYY-MM-DD HH:MM:SS.ffffff`` in SQLite, sortable as text)
    and hands back timezone-aware UTC datetimes."""

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return _SQLiteText()
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | str | None:
        if value is None:
            return None
        utc = value if value.tzinfo is UTC else _as_utc(value)  # (the daemon's are UTC)
        if dialect.name == "sqlite":
            # the very text SQLAlchemy's SQLite DATETIME stores, in one step (it builds
            # a dict a value; a busy poll binds thousands of these)
            return _SQLITE_TEXT % (
                utc.year,
                utc.month,
                utc.day,
                utc.hour,
                utc.minute,
                utc.second,
                utc.microsecond,
            )
        return utc.replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


def _as_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column")
    return value.astimezone(UTC)


_SQLITE_TEXT = "%04d-%02d-%02d %02d:%02d:%02d.%06d"


class _SQLiteText(sqlite.DATETIME):
    """SQLite's DATETIME, bound as the text ``UTCDateTime`` has already made."""

    def bind_processor(self, dialect: Dialect) -> None:
        return None


class Base(DeclarativeBase):
    pass


class PollState(Base):
    """Named cursor values: ``watermark`` (server time the next poll starts from),
    ``baseline_done``, ``last_reconcile``, ``last_poll_ok``…"""

    __tablename__ = "poll_state"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Incident(Base):
    """The last snapshot of each incident in scope, and whether it is paging."""

    __tablename__ = "incidents"
    rec_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    incident_number: Mapped[int] = mapped_column(Integer, index=True)
    status: Mapped[str] = mapped_column(String(100))
    status_class: Mapped[str] = mapped_column(String(16))
    priority: Mapped[str] = mapped_column(String(16))
    critical: Mapped[bool] = mapped_column(Boolean)
    owner: Mapped[str] = mapped_column(String(100))
    owner_team: Mapped[str] = mapped_column(String(200), index=True)
    last_mod: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    last_mod_by: Mapped[str] = mapped_column(String(100))
    snapshot: Mapped[dict[str, Any]] = mapped_column(JSON)
    # True from the moment a page is planned until a terminate is planned: the
    # incident has (or will have) live xMatters events made by this daemon.
    alerting: Mapped[bool] = mapped_column(Boolean, default=False)
    baseline: Mapped[bool] = mapped_column(Boolean, default=False)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    # LastModDateTime Ivanti gave the daemon's own last write-back, so the change
    # it causes is recognised (and explained) as the daemon's own.
    own_write_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Cycle(Base):
    """One row per poll / reconcile / write-back cycle."""

    __tablename__ = "cycles"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16), index=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ok: Mapped[bool | None] = mapped_column(Boolean)
    rows_read: Mapped[int] = mapped_column(Integer, default=0)
    changes: Mapped[int] = mapped_column(Integer, default=0)
    transitions: Mapped[int] = mapped_column(Integer, default=0)
    actions: Mapped[int] = mapped_column(Integer, default=0)
    requests: Mapped[int] = mapped_column(Integer, default=0)
    rejected: Mapped[int] = mapped_column(Integer, default=0)
    watermark_before: Mapped[str | None] = mapped_column(String(40))
    watermark_after: Mapped[str | None] = mapped_column(String(40))
    error: Mapped[str | None] = mapped_column(Text)


class Change(Base):
    """Every change seen on an incident, with the transition that fired or why none did."""

    __tablename__ = "changes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    cycle_id: Mapped[int | None] = mapped_column(ForeignKey("cycles.id"))
    rec_id: Mapped[str] = mapped_column(String(32), index=True)
    incident_number: Mapped[int] = mapped_column(Integer, index=True)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_mod: Mapped[datetime] = mapped_column(UTCDateTime)
    last_mod_by: Mapped[str] = mapped_column(String(100))
    prev_status: Mapped[str | None] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(100))
    prev_priority: Mapped[str | None] = mapped_column(String(16))
    priority: Mapped[str] = mapped_column(String(16))
    prev_owner_team: Mapped[str | None] = mapped_column(String(200))
    owner_team: Mapped[str] = mapped_column(String(200))
    prev_owner: Mapped[str | None] = mapped_column(String(100))
    owner: Mapped[str] = mapped_column(String(100))
    transition: Mapped[str | None] = mapped_column(String(32), index=True)
    reason: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(16), default="poll")  # poll|reconcile|baseline


class OutboxAction(Base):
    """An action to carry out on xMatters or Ivanti, delivered in order per incident.

    state: pending -> done | dead (kept for inspection and replay) | skipped (by a person).
    """

    __tablename__ = "outbox"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rec_id: Mapped[str] = mapped_column(String(32), index=True)
    incident_number: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))  # page|terminate|note
    change_id: Mapped[int | None] = mapped_column(ForeignKey("changes.id"))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    reason: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    recipient: Mapped[str | None] = mapped_column(String(200))
    request_id: Mapped[str | None] = mapped_column(String(64))
    outcome: Mapped[str | None] = mapped_column(Text)
    last_error: Mapped[str | None] = mapped_column(Text)
    # An earlier attempt may have reached the peer and no check has settled it yet:
    # the next try asks the peer before re-sending (kept through dead-letter and retry).
    unsettled: Mapped[bool] = mapped_column(Boolean, default=False)
    # When xMatters accepted this page's trigger; the page stays pending until its
    # event is seen (a suppressed or failed flow makes none).
    accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The age limit (IXM_MAX_AGE) counts from here: creation, or the last `retry`.
    queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    requeues: Mapped[int] = mapped_column(Integer, default=0)
    requeued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    requeued_by: Mapped[str | None] = mapped_column(String(200))
    # Unique key for actions born from an xMatters audit record, so a record
    # read twice never becomes two notes.
    dedupe_key: Mapped[str | None] = mapped_column(String(128), unique=True)

    __table_args__ = (Index("ix_outbox_state_due", "state", "next_attempt_at"),)


class Attempt(Base):
    """Each delivery attempt. A row with no ``finished_at`` was cut short (crash):
    its outcome is unknown, and the deliverer checks the peer before re-sending."""

    __tablename__ = "attempts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    outbox_id: Mapped[int] = mapped_column(ForeignKey("outbox.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    outcome: Mapped[str | None] = mapped_column(String(16))  # ok|retry|unknown|dead|found|no_event
    http_status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    # who sent it: "host pid N" (a replica's lease holder on PostgreSQL); NULL before 0007
    replica: Mapped[str | None] = mapped_column(String(200))


class XmEvent(Base):
    """xMatters events made for an incident (the incident -> events map)."""

    __tablename__ = "xm_events"
    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    rec_id: Mapped[str] = mapped_column(String(32), index=True)
    outbox_id: Mapped[int | None] = mapped_column(ForeignKey("outbox.id"))
    request_id: Mapped[str | None] = mapped_column(String(64))
    number: Mapped[str | None] = mapped_column(String(32))  # xMatters numeric eventId
    status: Mapped[str] = mapped_column(String(16))  # ACTIVE|SUSPENDED|TERMINATED
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    terminated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_polled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_activity_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    polls: Mapped[int] = mapped_column(Integer, default=0)
    delivered: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    responded: Mapped[int] = mapped_column(Integer, default=0)


class AuditSeen(Base):
    """Each xMatters audit record handled, so nothing is written back twice."""

    __tablename__ = "audits_seen"
    audit_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(64), index=True)
    rec_id: Mapped[str] = mapped_column(String(32), index=True)
    type: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    handled_at: Mapped[datetime] = mapped_column(UTCDateTime)
    summary: Mapped[str] = mapped_column(Text)
    outbox_id: Mapped[int | None] = mapped_column(ForeignKey("outbox.id"))


class Rejected(Base):
    """Malformed records from Ivanti, kept for inspection; the daemon skips them and goes on."""

    __tablename__ = "rejected_records"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    cycle_id: Mapped[int | None] = mapped_column(ForeignKey("cycles.id"))
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    rec_id: Mapped[str | None] = mapped_column(String(64))
    problem: Mapped[str] = mapped_column(Text)
    raw: Mapped[str] = mapped_column(Text)


class Lease(Base):
    """A lease replicas compete for (``leader``): who holds it, until when, and the
    fencing token, one more at every acquisition. Times are the DB server's clock."""

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))  # "host pid <random>"
    token: Mapped[int] = mapped_column(Integer)
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime)
    renewed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class WindowHold(Base):
    """A page a maintenance window held back (rules file ``[[windows]]``): recorded when
    the transition was seen, released once when the window closes: paged then only if the
    incident is still open and critical (``outcome`` says what happened)."""

    __tablename__ = "window_holds"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rec_id: Mapped[str] = mapped_column(String(32), index=True)
    incident_number: Mapped[int] = mapped_column(Integer)
    window: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32))  # the use case held (New Incident, ...)
    reason: Mapped[str] = mapped_column(Text)
    change_id: Mapped[int | None] = mapped_column(ForeignKey("changes.id"))
    held_at: Mapped[datetime] = mapped_column(UTCDateTime)
    until: Mapped[datetime] = mapped_column(UTCDateTime)  # the window's end, UTC
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    outcome: Mapped[str | None] = mapped_column(Text)
    outbox_id: Mapped[int | None] = mapped_column(ForeignKey("outbox.id"))

    __table_args__ = (Index("ix_window_holds_due", "released_at", "until"),)


class Replica(Base):
    """A daemon process that took part in the leader lease (PostgreSQL), as it last
    reached the DB: a heartbeat at every lease try. Times are the DB server's clock."""

    __tablename__ = "replicas"
    holder: Mapped[str] = mapped_column(String(200), primary_key=True)
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    leading: Mapped[bool] = mapped_column(Boolean)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
