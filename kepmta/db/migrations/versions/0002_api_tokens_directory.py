"""Integration API tokens and the directory opt-in of persons (issue 14).

Two new tables and no change to an existing one: a person's consent to be listed is a row of its
own, with its time, rather than a column of `accounts`.
There is no downgrade: the tokens and consents would be lost.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("token_hash", sa.LargeBinary(32), nullable=False, unique=True),
        sa.Column("address", sa.String(254), sa.ForeignKey("accounts.address"), nullable=False),
        sa.Column("entity", sa.String(254), sa.ForeignKey("accounts.address")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True)),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
    )
    op.create_table(
        "directory_listing",
        sa.Column("address", sa.String(254), sa.ForeignKey("accounts.address"), primary_key=True),
        sa.Column("listed_at", sa.DateTime(timezone=True), nullable=False),
    )
