"""Turning what happened to a message into evidence: facts in, signed ledger record and receipt out.

Knows nothing of SMTP or IMAP: callers say which event happened to which message (and recipient),
and this makes the EN 319 522 evidence, appends it to the ledger and schedules the receipt to the
sender, all in the caller's transaction.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from kepmta.db.schema import messages, recipients
from kepmta.evidence.ledger import Ledger
from kepmta.evidence.model import Evidence, Party, Reason
from kepmta.evidence.signer import EvidenceSigner, SignedEvidence
from kepmta.queue import jobs

AUTH_METHOD = "SMTP AUTH over TLS (RFC 4954, RFC 8314)"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    if value is not None and value.tzinfo is None:  # SQLite hands back naive UTC
        return value.replace(tzinfo=dt.UTC)
    return value


def new_id(domain: str, at: dt.datetime | None = None) -> str:
    """A provider message or evidence id: Message-ID form without <> (RFC 5322 §3.6.4)."""
    stamp = (at or utcnow()).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}.{secrets.token_hex(8)}@{domain}"


@dataclass(frozen=True)
class MessageFacts:
    """What the evidence of every event says about the message it concerns."""

    message_id: str
    sender: str
    recipients: tuple[str, ...]
    subject: str
    ua_message_id: str | None  # without <>
    submitted_at: dt.datetime
    authenticated_at: dt.datetime | None
    digest: bytes | None
    operator: str | None = None  # the person who sent for a legal entity


async def save_facts(
    conn: AsyncConnection, facts: MessageFacts, *, size: int | None = None, spool_path: str | None = None
) -> None:
    await conn.execute(
        insert(messages).values(
            id=facts.message_id,
            sender=facts.sender,
            operator=facts.operator,
            ua_message_id=facts.ua_message_id,
            subject=facts.subject,
            submitted_at=facts.submitted_at,
            authenticated_at=facts.authenticated_at,
            digest=facts.digest,
            size=size,
            spool_path=spool_path,
        )
    )
    if facts.recipients:
        await conn.execute(
            insert(recipients),
            [
                {"message_id": facts.message_id, "position": i, "address": a}
                for i, a in enumerate(facts.recipients, start=1)
            ],
        )


async def load_facts(conn: AsyncConnection, message_id: str) -> MessageFacts | None:
    row = (await conn.execute(select(messages).where(messages.c.id == message_id))).first()
    if row is None:
        return None
    rcpts = await conn.execute(
        select(recipients.c.address)
        .where(recipients.c.message_id == message_id)
        .order_by(recipients.c.position)
    )
    submitted = _aware(row.submitted_at)
    assert submitted is not None
    return MessageFacts(
        message_id=row.id,
        sender=row.sender,
        recipients=tuple(r.address for r in rcpts),
        subject=row.subject,
        ua_message_id=row.ua_message_id,
        submitted_at=submitted,
        authenticated_at=_aware(row.authenticated_at),
        digest=row.digest,
        operator=row.operator,
    )


@dataclass(frozen=True)
class Issuer:
    """Who signs the evidence and under which policy."""

    name: str
    domain: str
    policy_ids: tuple[str, ...]
    message_type: str


class EventRecorder:
    def __init__(self, issuer: Issuer, signer: EvidenceSigner, ledger: Ledger) -> None:
        self.issuer = issuer
        self.signer = signer
        self.ledger = ledger

    async def sign(
        self, facts: MessageFacts, reason: Reason, details: str, recipient: int | None = None
    ) -> SignedEvidence:
        """The signed, time-stamped evidence; made before the ledger transaction so a slow
        time-stamp authority never holds the ledger."""
        event = reason.event
        evidence = Evidence(
            evidence_id=new_id(self.issuer.domain),
            event=event,
            reason=reason,
            details=details,
            event_time=utcnow(),
            issuer_name=self.issuer.name,
            issuer_domain=self.issuer.domain,
            policy_ids=self.issuer.policy_ids,
            sender=Party(facts.sender),
            sender_auth_time=facts.authenticated_at,
            sender_auth_method=AUTH_METHOD if facts.authenticated_at else None,
            recipients=tuple(Party(r) for r in facts.recipients),
            refers_to_recipient=recipient if event.per_recipient else None,
            message_id=facts.message_id,
            ua_message_id=facts.ua_message_id,
            submission_time=facts.submitted_at,
            digest_sha256=facts.digest,
            subject=facts.subject,
            message_type=self.issuer.message_type,
            operator=Party(facts.operator) if facts.operator else None,
        )
        return await self.signer.sign(evidence)

    async def commit(self, conn: AsyncConnection, signed: SignedEvidence) -> int:
        """Append to the ledger and schedule the receipt, in the caller's `ledger.writing()`."""
        seq = await self.ledger.append(conn, signed)
        await jobs.enqueue(conn, jobs.RECEIPT, signed.evidence.message_id, {"seq": seq})
        return seq

    async def record(
        self, facts: MessageFacts, reason: Reason, details: str, *, new_message: bool = False
    ) -> int:
        """Evidence for an event with no other rows of its own (a refusal)."""
        signed = await self.sign(facts, reason, details)
        async with self.ledger.writing() as conn:
            if new_message:
                await save_facts(conn, facts)
            return await self.commit(conn, signed)
