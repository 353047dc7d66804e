"""outbox: settle unknown outcomes across retries, confirm pages by their event, requeue history

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 21:50:00.000000

- ``unsettled``: an earlier attempt may have reached the peer and no check has settled it
  yet. It used to live in ``outcome = 'unknown'``, which a dead-letter overwrote, so a
  ``retry`` of that action re-sent blindly.
- ``accepted_at``: xMatters accepted the page's trigger at (about) this time; the page
  stays pending until its event is seen, so a trigger accepted but suppressed by flood
  control or failed in the flow is not taken for a page that reached someone.
- ``queued_at``: the action's age (``IXM_MAX_AGE``) counts from here: when it was
  created, or when a person last put it back with ``retry``.
- ``requeues``, ``requeued_at``, ``requeued_by``: who put a dead action back, and when.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMNs (no batch copy of the table, which the views depend on).
    op.add_column(
        "outbox", sa.Column("unsettled", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    op.add_column("outbox", sa.Column("accepted_at", sa.DateTime(), nullable=True))
    op.add_column("outbox", sa.Column("queued_at", sa.DateTime(), nullable=True))
    op.add_column("outbox", sa.Column("requeues", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("outbox", sa.Column("requeued_at", sa.DateTime(), nullable=True))
    op.add_column("outbox", sa.Column("requeued_by", sa.String(200), nullable=True))
    # Carry the old marker over: an action whose outcome said "unknown" is unsettled.
    op.execute("UPDATE outbox SET unsettled = (outcome = 'unknown')")


def downgrade() -> None:
    for name in (
        "requeued_by",
        "requeued_at",
        "requeues",
        "queued_at",
        "accepted_at",
        "unsettled",
    ):
        op.drop_column("outbox", name)
