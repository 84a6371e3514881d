"""The database schema: one definition for SQLite and PostgreSQL (SQLAlchemy Core)."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
_Id = BigInteger().with_variant(Integer, "sqlite")

accounts = Table(
    "accounts",
    metadata,
    # Never deleted: a closed address stays here so it is never assigned to anyone else.
    Column("address", String(254), primary_key=True),
    Column("kind", String(10), nullable=False),  # "person" | "entity"
    Column("mailbox_type", String(20), nullable=False),  # "sender_recipient" | "recipient_only"
    Column("state", String(20), nullable=False),
    Column("display_name", String(200), nullable=False),
    Column("first_name", String(100)),
    Column("last_name", String(100)),
    Column("national_id", String(20)),  # T.C. kimlik no of a person: its certificate's serialNumber
    Column("mersis", String(16)),
    Column("legal_name", String(300)),
    Column("password_hash", String(200)),  # NULL for a legal entity: its operators log in
    Column("cert_pem", Text),  # the registered signing certificate, if any
    Column("quota", BigInteger, nullable=False),
    Column("quota_warned", Integer, nullable=False, default=0),  # last warning sent, in percent
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("state_changed_at", DateTime(timezone=True), nullable=False),
)

# A legal entity's authorised operators (işlem yetkilisi): person accounts that may send as it.
operators = Table(
    "operators",
    metadata,
    Column("entity", String(254), ForeignKey("accounts.address"), primary_key=True),
    Column("operator", String(254), ForeignKey("accounts.address"), primary_key=True),
    Column("added_at", DateTime(timezone=True), nullable=False),
)

messages = Table(
    "messages",
    metadata,
    Column("id", String(200), primary_key=True),  # the provider message id
    Column("sender", String(254), nullable=False),
    Column("operator", String(254)),  # the person who sent for a legal entity
    Column("ua_message_id", String(998)),
    Column("subject", Text, nullable=False),
    Column("submitted_at", DateTime(timezone=True), nullable=False),
    Column("authenticated_at", DateTime(timezone=True)),
    Column("digest", LargeBinary),  # SHA-256 of the original as attached to the dispatch
    Column("size", BigInteger),
    # file name of the original as attached, in the spool's originals/; absent for a refusal
    Column("spool_path", Text),
)

recipients = Table(
    "recipients",
    metadata,
    Column("message_id", String(200), ForeignKey("messages.id"), primary_key=True),
    Column("position", Integer, primary_key=True),  # 1-based, as EvidenceRefersToRecipient
    Column("address", String(254), nullable=False),
)

# The evidence ledger. Rows are only ever inserted: `hash` chains each record to the one before.
# `kind` says what a record holds (kepmta.evidence.ledger.Kind): a signed evidence, the time-stamped
# version of an evidence signed while the TSA was away, a checkpoint sealing the chain head, an
# RFC 4998 evidence record renewing an evidence, or a CRL of the provider CA chain. `seq` is given by
# the writer (head + 1), so two writers racing for the same place collide instead of forking the chain.
ledger = Table(
    "ledger",
    metadata,
    Column("seq", _Id, primary_key=True, autoincrement=False),
    Column("kind", String(12), nullable=False),
    # The evidence a record concerns (every version of one evidence shares it), or the record's own id.
    Column("evidence_id", String(200), nullable=False, index=True),
    Column("message_id", String(200), ForeignKey("messages.id"), index=True),
    Column("event", String(40)),
    Column("reason", String(8)),
    Column("recipient", Integer),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("xml", LargeBinary),
    Column("der", LargeBinary, nullable=False),
    Column("prev_hash", LargeBinary, nullable=False),
    Column("hash", LargeBinary, nullable=False),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("kind", String(20), nullable=False),  # "deliver" | "receipt"
    Column("message_id", String(200), ForeignKey("messages.id"), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("state", String(10), nullable=False, index=True),  # "pending" | "done"
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_at", DateTime(timezone=True), nullable=False),
    Column("last_error", Text),
    # The node that last claimed the job (kepmta.queue.jobs), kept after the claim ends: a job
    # claimed before may have been begun. NULL: never claimed.
    Column("claimed_by", String(64)),
    # Until when the claim holds; NULL once it ended (done, failed, or put back for a retry).
    Column("lease_until", DateTime(timezone=True)),
)

# One row the first time a recipient opens a dispatch: what keeps ContentHandover once-only.
handovers = Table(
    "handovers",
    metadata,
    Column("message_id", String(200), ForeignKey("messages.id"), nullable=False),
    Column("recipient", Integer, nullable=False),
    Column("read_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("message_id", "recipient"),
)

# Integration API tokens (kepmta.api.tokens). Only the SHA-256 of a token is kept: whoever reads the
# database cannot act with it. `address` is the person the token logs in as; `entity`, when set, the
# legal entity that person acts for as its authorised operator.
api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", String(16), primary_key=True),
    Column("token_hash", LargeBinary(32), nullable=False, unique=True),
    Column("address", String(254), ForeignKey("accounts.address"), nullable=False),
    Column("entity", String(254), ForeignKey("accounts.address")),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
)

# The persons who opted in to the KEP directory (rehber), and when (KEP.md "directory"): a row is
# their consent. Legal entities are always listed and have none.
directory_listing = Table(
    "directory_listing",
    metadata,
    Column("address", String(254), ForeignKey("accounts.address"), primary_key=True),
    Column("listed_at", DateTime(timezone=True), nullable=False),
)

# Where an account is told that a KEP reached its mailbox (KEP.md "notifications"): a mobile
# number for an SMS and an ordinary e-mail address for a notice. Both optional; a row is the
# holder's choice, with its time, and no row means no notices.
notify_contacts = Table(
    "notify_contacts",
    metadata,
    Column("address", String(254), ForeignKey("accounts.address"), primary_key=True),
    Column("phone", String(32)),
    Column("email", String(254)),
    Column("changed_at", DateTime(timezone=True), nullable=False),
)
