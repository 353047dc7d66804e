"""initial schema: incidents, cursor, cycles, changes, outbox, attempts, events, audits

Revision ID: 0001
Revises:
Create Date: 2026-11-28 00:10:21.228304
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "cycles",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("ok", sa.Boolean(), nullable=True),
        sa.Column("rows_read", sa.Integer(), nullable=False),
        sa.Column("changes", sa.Integer(), nullable=False),
        sa.Column("transitions", sa.Integer(), nullable=False),
        sa.Column("actions", sa.Integer(), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("rejected", sa.Integer(), nullable=False),
        sa.Column("watermark_before", sa.String(length=40), nullable=True),
        sa.Column("watermark_after", sa.String(length=40), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("cycles", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_cycles_kind"), ["kind"], unique=False)
        batch_op.create_index(batch_op.f("ix_cycles_started_at"), ["started_at"], unique=False)

    op.create_table(
        "incidents",
        sa.Column("rec_id", sa.String(length=32), nullable=False),
        sa.Column("incident_number", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=100), nullable=False),
        sa.Column("status_class", sa.String(length=16), nullable=False),
        sa.Column("priority", sa.String(length=16), nullable=False),
        sa.Column("critical", sa.Boolean(), nullable=False),
        sa.Column("owner", sa.String(length=100), nullable=False),
        sa.Column("owner_team", sa.String(length=200), nullable=False),
        sa.Column("last_mod", sa.DateTime(), nullable=False),
        sa.Column("last_mod_by", sa.String(length=100), nullable=False),
        sa.Column("snapshot", sa.JSON(), nullable=False),
        sa.Column("alerting", sa.Boolean(), nullable=False),
        sa.Column("baseline", sa.Boolean(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("own_write_at", sa.DateTime(), nullable=True),
        sa.Column("first_seen_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("rec_id"),
    )
    with op.batch_alter_table("incidents", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_incidents_incident_number"), ["incident_number"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_incidents_last_mod"), ["last_mod"], unique=False)
        batch_op.create_index(batch_op.f("ix_incidents_owner_team"), ["owner_team"], unique=False)

    op.create_table(
        "poll_state",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "changes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("cycle_id", sa.Integer(), nullable=True),
        sa.Column("rec_id", sa.String(length=32), nullable=False),
        sa.Column("incident_number", sa.Integer(), nullable=False),
        sa.Column("seen_at", sa.DateTime(), nullable=False),
        sa.Column("last_mod", sa.DateTime(), nullable=False),
        sa.Column("last_mod_by", sa.String(length=100), nullable=False),
        sa.Column("prev_status", sa.String(length=100), nullable=True),
        sa.Column("status", sa.String(length=100), nullable=False),
        sa.Column("prev_priority", sa.String(length=16), nullable=True),
        sa.Column("priority", sa.String(length=16), nullable=False),
        sa.Column("prev_owner_team", sa.String(length=200), nullable=True),
        sa.Column("owner_team", sa.String(length=200), nullable=False),
        sa.Column("prev_owner", sa.String(length=100), nullable=True),
        sa.Column("owner", sa.String(length=100), nullable=False),
        sa.Column("transition", sa.String(length=32), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(
            ["cycle_id"],
            ["cycles.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("changes", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_changes_incident_number"), ["incident_number"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_changes_rec_id"), ["rec_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_changes_transition"), ["transition"], unique=False)

    op.create_table(
        "rejected_records",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("cycle_id", sa.Integer(), nullable=True),
        sa.Column("seen_at", sa.DateTime(), nullable=False),
        sa.Column("rec_id", sa.String(length=64), nullable=True),
        sa.Column("problem", sa.Text(), nullable=False),
        sa.Column("raw", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["cycle_id"],
            ["cycles.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("rec_id", sa.String(length=32), nullable=False),
        sa.Column("incident_number", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("change_id", sa.Integer(), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("done_at", sa.DateTime(), nullable=True),
        sa.Column("sent_at", sa.DateTime(), nullable=True),
        sa.Column("recipient", sa.String(length=200), nullable=True),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("dedupe_key", sa.String(length=128), nullable=True),
        sa.ForeignKeyConstraint(
            ["change_id"],
            ["changes.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("dedupe_key"),
    )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_outbox_rec_id"), ["rec_id"], unique=False)
        batch_op.create_index("ix_outbox_state_due", ["state", "next_attempt_at"], unique=False)

    op.create_table(
        "attempts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("outbox_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["outbox_id"],
            ["outbox.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_attempts_outbox_id"), ["outbox_id"], unique=False)

    op.create_table(
        "audits_seen",
        sa.Column("audit_id", sa.String(length=64), nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("rec_id", sa.String(length=32), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=True),
        sa.Column("handled_at", sa.DateTime(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("outbox_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["outbox_id"],
            ["outbox.id"],
        ),
        sa.PrimaryKeyConstraint("audit_id"),
    )
    with op.batch_alter_table("audits_seen", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audits_seen_event_id"), ["event_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_audits_seen_rec_id"), ["rec_id"], unique=False)

    op.create_table(
        "xm_events",
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("rec_id", sa.String(length=32), nullable=False),
        sa.Column("outbox_id", sa.Integer(), nullable=True),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column("number", sa.String(length=32), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("terminated_at", sa.DateTime(), nullable=True),
        sa.Column("last_polled_at", sa.DateTime(), nullable=True),
        sa.Column("last_activity_at", sa.DateTime(), nullable=True),
        sa.Column("polls", sa.Integer(), nullable=False),
        sa.Column("delivered", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("responded", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["outbox_id"],
            ["outbox.id"],
        ),
        sa.PrimaryKeyConstraint("event_id"),
    )
    with op.batch_alter_table("xm_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_xm_events_rec_id"), ["rec_id"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("xm_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_xm_events_rec_id"))

    op.drop_table("xm_events")
    with op.batch_alter_table("audits_seen", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audits_seen_rec_id"))
        batch_op.drop_index(batch_op.f("ix_audits_seen_event_id"))

    op.drop_table("audits_seen")
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_attempts_outbox_id"))

    op.drop_table("attempts")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_state_due")
        batch_op.drop_index(batch_op.f("ix_outbox_rec_id"))

    op.drop_table("outbox")
    op.drop_table("rejected_records")
    with op.batch_alter_table("changes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_changes_transition"))
        batch_op.drop_index(batch_op.f("ix_changes_rec_id"))
        batch_op.drop_index(batch_op.f("ix_changes_incident_number"))

    op.drop_table("changes")
    op.drop_table("poll_state")
    with op.batch_alter_table("incidents", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_incidents_owner_team"))
        batch_op.drop_index(batch_op.f("ix_incidents_last_mod"))
        batch_op.drop_index(batch_op.f("ix_incidents_incident_number"))

    op.drop_table("incidents")
    with op.batch_alter_table("cycles", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_cycles_started_at"))
        batch_op.drop_index(batch_op.f("ix_cycles_kind"))

    op.drop_table("cycles")
