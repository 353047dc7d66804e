"""the leader lease: one row per lease, with its holder, fencing token and expiry

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 21:40:00.000000

Replicas on one PostgreSQL state DB compete for the ``leader`` row: the holder polls,
delivers and writes back; the token goes up by one at every acquisition, and every unit
of work the leader commits checks it in the same transaction (fencing).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("token", sa.Integer(), nullable=False),
        sa.Column("acquired_at", sa.DateTime(), nullable=False),
        sa.Column("renewed_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("leases")
