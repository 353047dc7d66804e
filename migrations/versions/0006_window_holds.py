"""maintenance windows: the pages they held, released once when they close

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 01:00:00.000000

A transition that would page, seen while a maintenance window of the rules file covers
the incident, is recorded here instead of paged; when the window closes the daemon pages
the incident once if it is still open and critical, and records what it did.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "window_holds",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("rec_id", sa.String(length=32), nullable=False),
        sa.Column("incident_number", sa.Integer(), nullable=False),
        sa.Column("window", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("change_id", sa.Integer(), nullable=True),
        sa.Column("held_at", sa.DateTime(), nullable=False),
        sa.Column("until", sa.DateTime(), nullable=False),
        sa.Column("released_at", sa.DateTime(), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("outbox_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["change_id"], ["changes.id"]),
        sa.ForeignKeyConstraint(["outbox_id"], ["outbox.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_window_holds_rec_id", "window_holds", ["rec_id"])
    op.create_index("ix_window_holds_due", "window_holds", ["released_at", "until"])


def downgrade() -> None:
    op.drop_index("ix_window_holds_due", table_name="window_holds")
    op.drop_index("ix_window_holds_rec_id", table_name="window_holds")
    op.drop_table("window_holds")
