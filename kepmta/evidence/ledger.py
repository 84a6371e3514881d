"""The append-only evidence ledger: every signed evidence, each row chained to the one before.

Nothing here updates or deletes a row. A record's `hash` is SHA-256(prev_hash || SHA-256(content)),
where the content is an unambiguous encoding of every column but `seq` and the two hashes. So
altering any byte of a row breaks its own hash, and removing, inserting or reordering rows breaks
the `prev_hash` link of the row after. `ChainAudit` finds exactly that, with the position.

An evidence may have several records, all under its evidence id: the signed evidence itself, then
(if the TSA was away when it was signed) the `timestamp` record holding the CAdES-B-T version, then
any number of `archive` records holding its RFC 4998 evidence record as renewed over the years.
A peer provider's evidence about one of our messages is one `received` record: its bytes as the
peer signed them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import Connection, Insert, Update, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from kepmta.db import Turn, take_turn, utc
from kepmta.db.runner import runner
from kepmta.db.schema import ledger, metadata
from kepmta.evidence.model import Evidence
from kepmta.evidence.signer import SignedEvidence
from kepmta.evidence.xml import from_xml
from kepmta.smime import cms

GENESIS = bytes(32)
_NULL = b"\xff\xff\xff\xff"  # a length no field can have: NULL differs from every value, even b""


class Kind(StrEnum):
    EVIDENCE = "evidence"  # a signed evidence, CAdES-B-T, or B-B while its time-stamp is pending
    TIMESTAMP = "timestamp"  # the CAdES-B-T version of an evidence committed as B-B
    CHECKPOINT = "checkpoint"  # a signed, time-stamped statement of the chain head
    ARCHIVE = "archive"  # an RFC 4998 evidence record over an evidence and its validation data
    REVOCATION = "revocation"  # a CRL of the provider CA chain, in force when evidence was made
    # A peer provider's evidence about one of our messages, kept exactly as it arrived: signed by
    # the peer's transaction certificate, never by ours (KEP between providers, issue #10).
    RECEIVED = "received"


# The kinds whose `der` is our own signed evidence (ContentInfo, the XML attached).
OWN_EVIDENCE = (Kind.EVIDENCE, Kind.TIMESTAMP)
# The kinds whose `der` is an evidence itself, ours or a peer's.
EVIDENCE_VERSIONS = (*OWN_EVIDENCE, Kind.RECEIVED)


@dataclass(frozen=True)
class NewRecord:
    kind: Kind
    evidence_id: str
    created_at: dt.datetime
    der: bytes
    message_id: str | None = None
    event: str | None = None
    reason: str | None = None
    recipient: int | None = None
    xml: bytes | None = None


@dataclass(frozen=True)
class LedgerRecord:
    seq: int
    kind: Kind
    evidence_id: str
    message_id: str | None
    event: str | None
    reason: str | None
    recipient: int | None
    created_at: dt.datetime
    xml: bytes | None
    der: bytes
    prev_hash: bytes
    hash: bytes

    @property
    def stamped(self) -> bool:
        """An evidence version carrying its signature time-stamp (CAdES-B-T)."""
        if self.kind not in EVIDENCE_VERSIONS:
            return False
        return cms.is_time_stamped(self.der)

    def content(self) -> NewRecord:
        return NewRecord(
            kind=self.kind,
            evidence_id=self.evidence_id,
            created_at=self.created_at,
            der=self.der,
            message_id=self.message_id,
            event=self.event,
            reason=self.reason,
            recipient=self.recipient,
            xml=self.xml,
        )


def _field(value: str | int | bytes | None) -> bytes:
    if value is None:
        return _NULL
    data = value if isinstance(value, bytes) else str(value).encode()
    return len(data).to_bytes(4, "big") + data


def content_digest(rec: NewRecord) -> bytes:
    """SHA-256 over every column a writer supplies, each length-prefixed so fields cannot shift."""
    # Microseconds kept: both databases store them, so the value read back encodes the same.
    when = utc(rec.created_at).isoformat(timespec="microseconds")
    parts = (
        rec.kind.value,
        rec.evidence_id,
        rec.message_id,
        rec.event,
        rec.reason,
        rec.recipient,
        when,
        rec.xml,
        rec.der,
    )
    return hashlib.sha256(b"".join(_field(p) for p in parts)).digest()


def chain_hash(prev_hash: bytes, rec: NewRecord) -> bytes:
    return hashlib.sha256(prev_hash + content_digest(rec)).digest()


# Built once: statement construction is a large part of an append's CPU.
_HEAD = select(ledger.c.seq, ledger.c.hash).order_by(ledger.c.seq.desc()).limit(1)
_INSERT = insert(ledger)
# Rows are sent table by table, parents first, so a batch never breaks a foreign key.
_TABLE_ORDER = {table: i for i, table in enumerate(metadata.sorted_tables)}

T = TypeVar("T")
Statement = Insert | Update


def _order(statement: Statement) -> tuple[int, bool]:
    return _TABLE_ORDER[statement.table], isinstance(statement, Update)  # type: ignore[index]


def evidence_record(signed: SignedEvidence) -> NewRecord:
    ev = signed.evidence
    return NewRecord(
        kind=Kind.EVIDENCE,
        evidence_id=ev.evidence_id,
        message_id=ev.message_id,
        event=ev.event.value,
        reason=ev.reason.value,
        recipient=ev.refers_to_recipient,
        created_at=ev.event_time,
        xml=signed.xml,
        der=signed.der,
    )


def received_record(der: bytes, evidence: Evidence) -> NewRecord:
    """A peer's evidence (CMS SignedData, the XML attached) as it arrived, under the evidence id,
    our message id, event and reason it states; `evidence` is what its XML says, already parsed
    by the caller, who has verified the peer's signature."""
    content = cms.encapsulated_content(cms.load(der))
    if content is None:
        raise ValueError("received evidence must carry its XML attached")
    # The columns are what the peer signed: an audit compares them with the XML (checkpoint.audit).
    if from_xml(content) != evidence:
        raise ValueError(f"evidence {evidence.evidence_id} is not what the received evidence's XML says")
    return NewRecord(
        kind=Kind.RECEIVED,
        evidence_id=evidence.evidence_id,
        message_id=evidence.message_id,
        event=evidence.event.value,
        reason=evidence.reason.value,
        recipient=evidence.refers_to_recipient,
        # When it reached us: the peer's event time is in its XML, vouched for by its time-stamp.
        created_at=dt.datetime.now(dt.UTC),
        xml=content,
        der=der,
    )


class StaleWrite(Exception):
    """A write that had to change exactly one row changed none: what the transaction assumed of
    that row (e.g. who holds a job's lease) no longer holds, so none of it is committed."""


# A statement, its rows, and whether each row must change exactly one row (`Writes.require`).
Step = tuple[Statement, list[dict[str, Any]], bool]


def _execute(steps: list[Step], conn: Connection) -> None:
    for statement, rows, exact in steps:
        if not exact:
            conn.execute(statement, rows)
            continue
        # One by one: a driver's executemany need not say how many rows each set changed.
        for row in rows:
            if conn.execute(statement, row).rowcount != 1:
                raise StaleWrite(f"{statement.table} row {row} is not as this transaction assumed")


def _read_head(conn: Connection) -> tuple[int, bytes]:
    row = conn.execute(_HEAD).first()
    return (row.seq, row.hash) if row is not None else (0, GENESIS)


class Writes:
    """The writes of one transaction, gathered in memory and sent when it commits: each statement
    once, with all its rows (kepmta.db.runner), so the work of many callers costs one round trip
    and one fsync."""

    def __init__(self, head: tuple[int, bytes]) -> None:
        self.head = head
        self.records: list[LedgerRecord] = []
        self._rows: dict[Statement, list[dict[str, Any]]] = {}
        self._exact: set[Statement] = set()  # statements each of whose rows must change one row
        self._committed: list[Callable[[], None]] = []

    def append(self, new: NewRecord) -> LedgerRecord:
        """Chain `new` after the current head; it is in the ledger once the transaction commits."""
        seq, prev = self.head[0] + 1, self.head[1]
        digest = chain_hash(prev, new)
        self.add(_INSERT, _row(seq, new, prev, digest))
        self.head = (seq, digest)
        record = _record_of(seq, new, prev, digest)
        self.records.append(record)
        return record

    def appended(self, evidence_id: str) -> bool:
        """Whether this transaction already appends a record under `evidence_id`."""
        return any(r.evidence_id == evidence_id for r in self.records)

    def add(self, statement: Statement, params: dict[str, Any]) -> None:
        """Run `statement` (built once, the same object each time) with `params` at commit."""
        self._rows.setdefault(statement, []).append(params)

    def require(self, statement: Update, params: dict[str, Any]) -> None:
        """As `add`, but the update must change exactly one row, or the whole transaction fails
        with StaleWrite (and `Ledger.transact` raises it to this unit's caller alone)."""
        self._exact.add(statement)
        self.add(statement, params)

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call `callback` once this transaction has committed, never if it rolls back."""
        self._committed.append(callback)

    def steps(self) -> list[Step]:
        return [(s, self._rows[s], s in self._exact) for s in sorted(self._rows, key=_order)]

    def _mark(self) -> tuple[tuple[int, bytes], int, dict[Statement, int], int]:
        return self.head, len(self.records), {k: len(v) for k, v in self._rows.items()}, len(self._committed)

    def _undo(self, mark: tuple[tuple[int, bytes], int, dict[Statement, int], int]) -> None:
        """Forget what was added since `mark` (a unit that raised)."""
        self.head, records, rows, committed = mark
        del self.records[records:]
        for statement in list(self._rows):
            kept = rows.get(statement, 0)
            if kept:
                del self._rows[statement][kept:]
            else:
                del self._rows[statement]
        del self._committed[committed:]


Unit = Callable[[Writes], T]
_Sent = tuple[Writes, list[tuple[asyncio.Future[Any], Any]]]


def _run_units(batch: list[tuple[Unit[Any], asyncio.Future[Any]]], head: tuple[int, bytes]) -> _Sent:
    """Every unit of `batch` on one Writes from `head`; a unit that raises is resolved with its
    error and leaves nothing behind."""
    w = Writes(head)
    results: list[tuple[asyncio.Future[Any], Any]] = []
    for unit, done in batch:
        mark = w._mark()
        try:
            results.append((done, unit(w)))
        except Exception as exc:
            w._undo(mark)
            done.set_exception(exc)
    return w, results


class Ledger:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._db = runner(engine)
        # Told after each committed append, so a checkpointer can count records without polling.
        self.on_append: Callable[[], None] | None = None
        # (seq, hash) of the last record this process committed, or None: read the head instead.
        self._head: tuple[int, bytes] | None = None
        self._in_turn = engine.dialect.name != "sqlite"
        self._queue: list[tuple[Unit[Any], asyncio.Future[Any]]] = []
        # The one task that commits: one transaction at a time keeps the chain linear, and the
        # units queued meanwhile share the next.
        self._flusher: asyncio.Task[None] | None = None

    async def transact(self, unit: Unit[T]) -> T:
        """Run `unit` in a transaction shared with the units queued at the same moment (group commit),
        and return what it returns once that transaction has committed.

        `unit` only appends records, adds rows and registers callbacks on its `Writes`, so it can
        run again: if the shared transaction fails, each of its units is run once more alone, from
        the head as it is then, and only a failing one raises. Cancelling the caller does not
        withdraw a unit already queued: it may be committing.
        """
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((unit, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await asyncio.shield(done)

    async def _flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                if not await self._commit(batch, final=False):
                    # The head this process remembered may be stale (another process appended),
                    # and one unit's rows must not take the others down.
                    for item in batch:
                        if not item[1].done():  # not a unit that raised by itself
                            await self._commit([item], final=True)
            except BaseException:  # cancelled at shutdown: so are the callers still waiting
                for _, done in batch:
                    done.cancel()
                raise

    async def _commit(self, batch: list[tuple[Unit[Any], asyncio.Future[Any]]], *, final: bool) -> bool:
        """One transaction for `batch`. If the database refuses it: False, with only the units that
        raised by themselves resolved, or when `final`, every unit failed with the refusal."""
        try:
            w, results = await (self._send_in_turn if self._in_turn else self._send_after_head)(batch)
        except Exception as exc:
            self._head = None
            if not final:
                return False
            for _, done in batch:
                if not done.done():
                    done.set_exception(exc)
            return True
        self._head = w.head
        for callback in w._committed:
            callback()
        if self.on_append is not None:
            for _ in w.records:
                self.on_append()
        for done, result in results:
            done.set_result(result)
        return True

    async def _send_after_head(self, batch: list[tuple[Unit[Any], asyncio.Future[Any]]]) -> _Sent:
        """SQLite: the units run from the head this process last committed (or read), and a seq
        taken meanwhile by another process makes the primary key refuse the transaction."""
        if self._head is None:
            self._head = await self._db.read(_read_head)
        w, results = _run_units(batch, self._head)
        steps = w.steps()
        if steps:
            await self._db.write(functools.partial(_execute, steps))
        return w, results

    async def _send_in_turn(self, batch: list[tuple[Unit[Any], asyncio.Future[Any]]]) -> _Sent:
        """PostgreSQL: several processes, on several machines, append to one chain. Each transaction
        takes the ledger's turn (an advisory lock) before it reads the head, so the next seq and its
        prev_hash are the database's, whichever process appended last."""
        async with self.engine.begin() as conn:
            await conn.run_sync(take_turn, Turn.LEDGER)
            w, results = _run_units(batch, await conn.run_sync(_read_head))
            steps = w.steps()
            if steps:
                await conn.run_sync(functools.partial(_execute, steps))
        return w, results

    async def get(self, seq: int) -> LedgerRecord:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(ledger).where(ledger.c.seq == seq))).one()
        return _record(row)

    async def head(self) -> LedgerRecord | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(ledger).order_by(ledger.c.seq.desc()).limit(1))).first()
        return _record(row) if row is not None else None

    async def latest(self, kind: Kind) -> LedgerRecord | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(ledger).where(ledger.c.kind == kind.value).order_by(ledger.c.seq.desc()).limit(1)
                )
            ).first()
        return _record(row) if row is not None else None

    async def count_after(self, seq: int) -> int:
        async with self.engine.connect() as conn:
            n = (await conn.execute(select(func.count()).where(ledger.c.seq > seq))).scalar()
        return int(n or 0)

    async def versions(self, evidence_id: str) -> list[LedgerRecord]:
        """Every record of one evidence, oldest first."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(ledger).where(ledger.c.evidence_id == evidence_id).order_by(ledger.c.seq)
            )
            return [_record(r) for r in rows]

    async def current(self, evidence_id: str) -> LedgerRecord | None:
        """The newest version of an evidence itself (time-stamped if that has happened)."""
        found = [r for r in await self.versions(evidence_id) if r.kind in EVIDENCE_VERSIONS]
        return found[-1] if found else None

    async def for_message(self, message_id: str) -> list[LedgerRecord]:
        """The newest version of each evidence of a message, in the order they were made."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(ledger)
                .where(
                    ledger.c.message_id == message_id,
                    ledger.c.kind.in_([k.value for k in EVIDENCE_VERSIONS]),
                )
                .order_by(ledger.c.seq)
            )
            # Insertion order is first appearance; a later version replaces the value in place.
            newest: dict[str, LedgerRecord] = {}
            for row in rows:
                rec = _record(row)
                newest[rec.evidence_id] = rec
        return list(newest.values())

    async def walk(
        self, kinds: tuple[Kind, ...] | None = None, batch: int = 500
    ) -> AsyncIterator[LedgerRecord]:
        """Every record in chain order, read in batches so a large ledger is never held whole."""
        after = 0
        while True:
            query = select(ledger).where(ledger.c.seq > after)
            if kinds is not None:
                query = query.where(ledger.c.kind.in_([k.value for k in kinds]))
            async with self.engine.connect() as conn:
                rows = [_record(r) for r in await conn.execute(query.order_by(ledger.c.seq).limit(batch))]
            if not rows:
                return
            for rec in rows:
                yield rec
            after = rows[-1].seq


def _row(seq: int, new: NewRecord, prev: bytes, digest: bytes) -> dict[str, object]:
    return {
        "seq": seq,
        "kind": new.kind.value,
        "evidence_id": new.evidence_id,
        "message_id": new.message_id,
        "event": new.event,
        "reason": new.reason,
        "recipient": new.recipient,
        "created_at": new.created_at,
        "xml": new.xml,
        "der": new.der,
        "prev_hash": prev,
        "hash": digest,
    }


def _record_of(seq: int, new: NewRecord, prev: bytes, digest: bytes) -> LedgerRecord:
    return LedgerRecord(
        seq=seq,
        kind=new.kind,
        evidence_id=new.evidence_id,
        message_id=new.message_id,
        event=new.event,
        reason=new.reason,
        recipient=new.recipient,
        created_at=utc(new.created_at),
        xml=new.xml,
        der=new.der,
        prev_hash=prev,
        hash=digest,
    )


def _record(row: object) -> LedgerRecord:
    r = row._mapping  # type: ignore[attr-defined]
    return LedgerRecord(
        seq=int(r["seq"]),
        kind=Kind(r["kind"]),
        evidence_id=r["evidence_id"],
        message_id=r["message_id"],
        event=r["event"],
        reason=r["reason"],
        recipient=r["recipient"],
        created_at=utc(r["created_at"]),
        xml=r["xml"],
        der=r["der"],
        prev_hash=r["prev_hash"],
        hash=r["hash"],
    )


@dataclass(frozen=True)
class Problem:
    """One finding of an audit: where in the ledger, and what is wrong there."""

    seq: int
    what: str

    def __str__(self) -> str:
        return f"seq {self.seq}: {self.what}"


class ChainAudit:
    """Feed every record in `seq` order; each call returns what is wrong at that position.

    Only the chain itself: what the records say (signatures, time-stamps) is checked elsewhere.
    """

    def __init__(self) -> None:
        self.count = 0
        self.last_seq = 0
        self.last_hash = GENESIS

    def feed(self, rec: LedgerRecord) -> list[Problem]:
        problems: list[Problem] = []
        try:
            own = chain_hash(rec.prev_hash, rec.content())
        except (ValueError, TypeError) as exc:  # a column holding a value of the wrong type
            own, problems = b"", [Problem(rec.seq, f"record altered: unreadable content ({exc})")]
        if own and own != rec.hash:
            problems.append(Problem(rec.seq, "record altered: its hash does not match its content"))
        if rec.seq > self.last_seq + 1:
            missing = (
                f"{self.last_seq + 1}"
                if rec.seq == self.last_seq + 2
                else f"{self.last_seq + 1}–{rec.seq - 1}"
            )
            problems.append(Problem(rec.seq, f"records removed: seq {missing} missing before this one"))
        elif rec.prev_hash != self.last_hash:
            before = f"seq {self.last_seq}" if self.last_seq else "the start of the ledger"
            problems.append(
                Problem(
                    rec.seq,
                    f"chain broken: prev_hash does not match {before} "
                    "(a record was reordered, inserted or removed here)",
                )
            )
        self.count += 1
        self.last_seq = rec.seq
        self.last_hash = rec.hash
        return problems
