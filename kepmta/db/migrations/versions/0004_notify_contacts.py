"""Notification contacts (issue 14): an account's mobile number and ordinary e-mail address for
the notices that a KEP reached its mailbox (kepmta.notify). A new table, no change to another.
There is no downgrade: the holders' choices would be lost.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notify_contacts",
        sa.Column("address", sa.String(254), sa.ForeignKey("accounts.address"), primary_key=True),
        sa.Column("phone", sa.String(32)),
        sa.Column("email", sa.String(254)),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
    )
