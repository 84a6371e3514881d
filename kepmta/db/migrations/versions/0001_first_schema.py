"""The first schema: every table as kepmta made it before migrations existed.

The schema did not change from the first release (git history of kepmta/db/schema.py) until this
revision, so a database made by any earlier kepmta is this revision without Alembic's version
table; `kepmta db upgrade` stamps it. The tables are written out here, not taken from
kepmta.db.schema, so that later changes of the schema never change what this revision made.
There is no downgrade: going back from here would drop the evidence ledger.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
_Id = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def _when(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("address", sa.String(254), primary_key=True),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("mailbox_type", sa.String(20), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("first_name", sa.String(100)),
        sa.Column("last_name", sa.String(100)),
        sa.Column("national_id", sa.String(20)),
        sa.Column("mersis", sa.String(16)),
        sa.Column("legal_name", sa.String(300)),
        sa.Column("password_hash", sa.String(200)),
        sa.Column("cert_pem", sa.Text),
        sa.Column("quota", sa.BigInteger, nullable=False),
        sa.Column("quota_warned", sa.Integer, nullable=False),
        _when("created_at"),
        _when("state_changed_at"),
    )
    op.create_table(
        "messages",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("sender", sa.String(254), nullable=False),
        sa.Column("operator", sa.String(254)),
        sa.Column("ua_message_id", sa.String(998)),
        sa.Column("subject", sa.Text, nullable=False),
        _when("submitted_at"),
        _when("authenticated_at", nullable=True),
        sa.Column("digest", sa.LargeBinary),
        sa.Column("size", sa.BigInteger),
        sa.Column("spool_path", sa.Text),
    )
    op.create_table(
        "operators",
        sa.Column("entity", sa.String(254), sa.ForeignKey("accounts.address"), primary_key=True),
        sa.Column("operator", sa.String(254), sa.ForeignKey("accounts.address"), primary_key=True),
        _when("added_at"),
    )
    op.create_table(
        "recipients",
        sa.Column("message_id", sa.String(200), sa.ForeignKey("messages.id"), primary_key=True),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("address", sa.String(254), nullable=False),
    )
    op.create_table(
        "ledger",
        sa.Column("seq", _Id, primary_key=True, autoincrement=False),
        sa.Column("kind", sa.String(12), nullable=False),
        sa.Column("evidence_id", sa.String(200), nullable=False),
        sa.Column("message_id", sa.String(200), sa.ForeignKey("messages.id")),
        sa.Column("event", sa.String(40)),
        sa.Column("reason", sa.String(8)),
        sa.Column("recipient", sa.Integer),
        _when("created_at"),
        sa.Column("xml", sa.LargeBinary),
        sa.Column("der", sa.LargeBinary, nullable=False),
        sa.Column("prev_hash", sa.LargeBinary, nullable=False),
        sa.Column("hash", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_ledger_evidence_id", "ledger", ["evidence_id"])
    op.create_index("ix_ledger_message_id", "ledger", ["message_id"])
    op.create_table(
        "jobs",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("message_id", sa.String(200), sa.ForeignKey("messages.id"), nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        _when("next_at"),
        sa.Column("last_error", sa.Text),
    )
    op.create_index("ix_jobs_state", "jobs", ["state"])
    op.create_table(
        "handovers",
        sa.Column("message_id", sa.String(200), sa.ForeignKey("messages.id"), nullable=False),
        sa.Column("recipient", sa.Integer, nullable=False),
        _when("read_at"),
        sa.UniqueConstraint("message_id", "recipient"),
    )
