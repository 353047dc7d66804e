"""read-only views for people using sqlite3: timeline, pending actions, dead letters, live events

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 01:00:00.000000

The daemon never reads these views; they exist so that ``sqlite3 state.db`` answers
"why was (or wasn't) someone paged?" without knowing the schema::

    SELECT at, kind, what, detail FROM v_incident_timeline WHERE incident_number = 12345;
    SELECT * FROM v_pending_actions;
    SELECT * FROM v_dead_letters;
    SELECT * FROM v_live_events;

Plain SQL (``||``, ``COALESCE``, ``CAST``, ``UNION ALL``) so the views work on SQLite and
PostgreSQL alike. Times are the stored UTC values. ``v_incident_timeline`` mixes the
daemon's own clock (changes, actions, attempts, events) with xMatters' clock for audit
records (``audits_seen.at``, falling back to when the daemon handled the record). Rows
of equal time are ordered change, action (each followed by its attempts), event, audit.
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

VIEWS: tuple[str, ...] = (
    "v_incident_timeline",
    "v_pending_actions",
    "v_dead_letters",
    "v_live_events",
)

INCIDENT_TIMELINE = """
CREATE VIEW v_incident_timeline AS
SELECT rec_id, incident_number, at, kind, what, detail FROM (
    SELECT
        c.rec_id AS rec_id,
        c.incident_number AS incident_number,
        c.seen_at AS at,
        'change' AS kind,
        COALESCE(c.transition, 'no transition') AS what,
        'status ' || COALESCE(c.prev_status, '(new)') || ' -> ' || c.status
            || '; priority ' || COALESCE(c.prev_priority, '(new)') || ' -> ' || c.priority
            || '; team ' || COALESCE(c.prev_owner_team, '(new)') || ' -> ' || c.owner_team
            || '; owner ' || COALESCE(c.prev_owner, '(new)') || ' -> ' || c.owner
            || '; modified by ' || c.last_mod_by || ' (seen by ' || c.source || ')'
            || '; ' || c.reason AS detail,
        1 AS seq,
        c.id AS sub_id,
        0 AS sub_seq
    FROM changes c
    UNION ALL
    SELECT
        o.rec_id, o.incident_number, o.created_at,
        'action:' || o.kind,
        o.state,
        '#' || CAST(o.id AS TEXT) || ' ' || o.reason
            || COALESCE('; outcome: ' || o.outcome, '')
            || COALESCE('; last error: ' || o.last_error, ''),
        2, o.id, 0
    FROM outbox o
    UNION ALL
    SELECT
        o.rec_id, o.incident_number, a.started_at,
        'attempt',
        COALESCE(a.outcome, 'unfinished'),
        'action #' || CAST(a.outbox_id AS TEXT) || ' (' || o.kind || ') try '
            || CAST(a.number AS TEXT)
            || COALESCE('; HTTP ' || CAST(a.http_status AS TEXT), '')
            || COALESCE('; ' || a.error, ''),
        2, a.outbox_id, a.number
    FROM attempts a JOIN outbox o ON o.id = a.outbox_id
    UNION ALL
    SELECT
        e.rec_id, i.incident_number, e.created_at,
        'xm_event',
        e.status,
        'event ' || e.event_id || COALESCE(' (#' || e.number || ')', '')
            || COALESCE(' made by action #' || CAST(e.outbox_id AS TEXT), ''),
        4, 0, 0
    FROM xm_events e LEFT JOIN incidents i ON i.rec_id = e.rec_id
    UNION ALL
    SELECT
        e.rec_id, i.incident_number, e.terminated_at,
        'xm_event_terminated',
        'TERMINATED',
        'event ' || e.event_id || COALESCE(' (#' || e.number || ')', ''),
        5, 0, 0
    FROM xm_events e LEFT JOIN incidents i ON i.rec_id = e.rec_id
    WHERE e.terminated_at IS NOT NULL
    UNION ALL
    SELECT
        s.rec_id, i.incident_number, COALESCE(s.at, s.handled_at),
        'audit',
        s.type,
        s.summary || COALESCE(' -> note action #' || CAST(s.outbox_id AS TEXT), ' (no note)'),
        6, 0, 0
    FROM audits_seen s LEFT JOIN incidents i ON i.rec_id = s.rec_id
) AS t
ORDER BY at, seq, sub_id, sub_seq
"""

PENDING_ACTIONS = """
CREATE VIEW v_pending_actions AS
SELECT
    o.id AS id,
    o.incident_number AS incident_number,
    o.rec_id AS rec_id,
    o.kind AS kind,
    o.attempts AS attempts,
    o.next_attempt_at AS next_attempt_at,
    o.created_at AS created_at,
    o.outcome AS outcome,
    o.last_error AS last_error,
    o.recipient AS recipient,
    o.reason AS reason,
    i.status AS incident_status,
    i.owner_team AS incident_team
FROM outbox o LEFT JOIN incidents i ON i.rec_id = o.rec_id
WHERE o.state = 'pending'
ORDER BY o.created_at, o.id
"""

DEAD_LETTERS = """
CREATE VIEW v_dead_letters AS
SELECT
    o.id AS id,
    o.incident_number AS incident_number,
    o.rec_id AS rec_id,
    o.kind AS kind,
    o.attempts AS attempts,
    o.created_at AS created_at,
    o.updated_at AS died_at,
    o.outcome AS dead_reason,
    o.last_error AS last_error,
    (SELECT a.http_status FROM attempts a WHERE a.outbox_id = o.id
     ORDER BY a.id DESC LIMIT 1) AS last_http_status,
    o.reason AS reason
FROM outbox o
WHERE o.state = 'dead'
ORDER BY o.updated_at, o.id
"""

LIVE_EVENTS = """
CREATE VIEW v_live_events AS
SELECT
    e.event_id AS event_id,
    e.number AS event_number,
    i.incident_number AS incident_number,
    e.rec_id AS rec_id,
    e.status AS status,
    e.created_at AS created_at,
    e.last_activity_at AS last_activity_at,
    e.outbox_id AS outbox_id,
    e.delivered AS delivered,
    e.failed AS failed,
    e.responded AS responded
FROM xm_events e LEFT JOIN incidents i ON i.rec_id = e.rec_id
WHERE e.status <> 'TERMINATED'
ORDER BY e.created_at
"""


def upgrade() -> None:
    for statement in (INCIDENT_TIMELINE, PENDING_ACTIONS, DEAD_LETTERS, LIVE_EVENTS):
        op.execute(statement)


def downgrade() -> None:
    for view in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {view}")
