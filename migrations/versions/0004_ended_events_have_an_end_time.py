"""ended events have an end time: re-read those stored TERMINATED without one

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 21:40:00.000000

Before this revision an event first seen already ended (an asynchronous flow's event,
looked up after the incident was resolved) was stored TERMINATED with no
``terminated_at``, outside "live or ended within the grace period", so its audit records
were never read. Such rows get the upgrade's time as their end: each is read once more,
for one grace period, and whatever it holds is written back (records already handled are
skipped by their id, so nothing is written twice).
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    now = datetime.now(UTC).replace(tzinfo=None)  # stored as naive UTC (models.UTCDateTime)
    op.execute(
        sa.text(
            "UPDATE xm_events SET terminated_at = :now "
            "WHERE status = 'TERMINATED' AND terminated_at IS NULL"
        ).bindparams(sa.bindparam("now", now, type_=sa.DateTime()))
    )


def downgrade() -> None:
    pass  # the end times are true enough to keep
