"""replicas seen, and which replica made each delivery attempt

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 01:00:00.000000

``replicas``: one row per daemon process that took part in the leader lease, with when it
last reached the DB and whether it led then (``status`` lists the standbys seen
recently). ``attempts.replica``: who sent the attempt (``host pid …``); NULL for the
attempts made before this revision.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "replicas",
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("host", sa.String(length=200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("leading", sa.Boolean(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("seen_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("holder"),
    )
    op.add_column("attempts", sa.Column("replica", sa.String(length=200), nullable=True))


def downgrade() -> None:
    # a plain DROP COLUMN (SQLite 3.35+): a batch copy of the table would break the
    # views over it
    op.drop_column("attempts", "replica")
    op.drop_table("replicas")
