"""The append-only evidence ledger: every signed evidence, each row chained to the one before.

Nothing here updates or deletes a row. `hash` = SHA-256(prev_hash || SHA-256(der)), so changing,
removing or reordering any record breaks every hash after it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from kepmta.db.schema import ledger
from kepmta.evidence.signer import SignedEvidence

GENESIS = bytes(32)


@dataclass(frozen=True)
class LedgerRecord:
    seq: int
    evidence_id: str
    message_id: str
    event: str
    reason: str
    recipient: int | None
    created_at: dt.datetime
    xml: bytes
    der: bytes


def chain_hash(prev_hash: bytes, der: bytes) -> bytes:
    return hashlib.sha256(prev_hash + hashlib.sha256(der).digest()).digest()


class Ledger:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # One writer at a time keeps the chain linear; the writer's other rows join its transaction.
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def writing(self) -> AsyncIterator[AsyncConnection]:
        async with self._lock, self.engine.begin() as conn:
            yield conn

    async def append(self, conn: AsyncConnection, signed: SignedEvidence) -> int:
        """Add `signed` inside a `writing()` transaction; returns its sequence number."""
        ev = signed.evidence
        head = (await conn.execute(select(ledger.c.hash).order_by(ledger.c.seq.desc()).limit(1))).scalar()
        prev = head if head is not None else GENESIS
        result = await conn.execute(
            insert(ledger).values(
                evidence_id=ev.evidence_id,
                message_id=ev.message_id,
                event=ev.event.value,
                reason=ev.reason.value,
                recipient=ev.refers_to_recipient,
                created_at=ev.event_time,
                xml=signed.xml,
                der=signed.der,
                prev_hash=prev,
                hash=chain_hash(prev, signed.der),
            )
        )
        seq = result.inserted_primary_key
        assert seq is not None
        return int(seq[0])

    async def get(self, seq: int) -> LedgerRecord:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(ledger).where(ledger.c.seq == seq))).one()
        return _record(row)

    async def for_message(self, message_id: str) -> list[LedgerRecord]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(ledger).where(ledger.c.message_id == message_id).order_by(ledger.c.seq)
            )
            return [_record(r) for r in rows]


def _record(row: object) -> LedgerRecord:
    r = row._mapping  # type: ignore[attr-defined]
    created = r["created_at"]
    if created.tzinfo is None:  # SQLite returns naive datetimes; everything stored is UTC
        created = created.replace(tzinfo=dt.UTC)
    return LedgerRecord(
        r["seq"],
        r["evidence_id"],
        r["message_id"],
        r["event"],
        r["reason"],
        r["recipient"],
        created,
        r["xml"],
        r["der"],
    )
