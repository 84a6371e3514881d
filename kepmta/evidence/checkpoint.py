"""Ledger checkpoints, and the audit that walks the whole ledger.

A hash chain alone shows that records fit together, not that the chain is the one the provider
wrote: someone able to rewrite the table could rebuild every hash after a change. So every N records
or T minutes a checkpoint record states the chain head (seq and hash), signed with the transaction
certificate and time-stamped (CAdES-B-T, like evidence). Rewriting history before a checkpoint then
needs the provider's key and a back-dated time-stamp.

`audit` checks every record's hash and link (`ChainAudit`), and what each record says: evidence
signatures and time-stamps, that its columns match its signed XML, checkpoints against the hashes
they seal, evidence records against their evidence, CRLs against their ids; a peer's received
evidence by what it proves without the peer's anchors.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cryptography import x509

from kepmta.db import Turn, alone
from kepmta.evidence import archive
from kepmta.evidence.errors import TimeStampError
from kepmta.evidence.ledger import OWN_EVIDENCE, ChainAudit, Kind, Ledger, LedgerRecord, NewRecord, Problem
from kepmta.evidence.revocation import load_crl, record_id
from kepmta.evidence.signer import EvidenceSigner
from kepmta.evidence.verify import CONTENT, SELF_CONTAINED, STRUCTURE, TIMESTAMP, verify_evidence
from kepmta.evidence.xml import from_xml
from kepmta.smime import cms

log = logging.getLogger(__name__)

NAMESPACE = "urn:kepmta:ledger-checkpoint:1"
_FORMAT = re.compile(
    rb"<LedgerCheckpoint xmlns=\"" + NAMESPACE.encode() + rb"\">"
    rb"<Provider>([^<]*)</Provider><HeadSeq>([0-9]+)</HeadSeq>"
    rb"<HeadHash Algorithm=\"sha256\">([0-9a-f]{64})</HeadHash>"
    rb"<Time>([0-9TZ:-]+)</Time></LedgerCheckpoint>\n?\Z"
)


def statement(domain: str, seq: int, head_hash: bytes, at: dt.datetime) -> bytes:
    """The signed content of a checkpoint: which ledger, up to which record, with which hash."""
    when = at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<LedgerCheckpoint xmlns="{NAMESPACE}">'
        f"<Provider>{domain}</Provider><HeadSeq>{seq}</HeadSeq>"
        f'<HeadHash Algorithm="sha256">{head_hash.hex()}</HeadHash>'
        f"<Time>{when}</Time></LedgerCheckpoint>\n"
    ).encode()


def read_statement(content: bytes) -> tuple[int, bytes]:
    """(seq, head hash) a checkpoint statement seals; ValueError if it is not one."""
    body = content.split(b"?>\n", 1)[-1]
    found = _FORMAT.match(body)
    if found is None:
        raise ValueError("the signed content is not a ledger checkpoint statement")
    return int(found.group(2)), bytes.fromhex(found.group(3).decode())


class Checkpointer:
    """Seals the chain head every `every_records` records or `every` time, whichever comes first.

    Several nodes on one database each run one; a node looks and makes a checkpoint only while it
    holds the checkpoint turn (`kepmta.db.alone`), so two never seal the same stretch of the chain.
    """

    def __init__(
        self, ledger: Ledger, signer: EvidenceSigner, domain: str, *, every_records: int, every: dt.timedelta
    ) -> None:
        self.ledger = ledger
        self.signer = signer
        self.domain = domain
        self.every_records = every_records
        self.every = every
        self._appended = 0
        self._wake = asyncio.Event()

    def appended(self) -> None:
        """Ledger.on_append: count in memory, look at the database only when a checkpoint may be due."""
        self._appended += 1
        if self._appended >= self.every_records:
            self._wake.set()

    async def due(self) -> LedgerRecord | None:
        """The head to seal, if a checkpoint is due."""
        head = await self.ledger.head()
        if head is None or head.kind is Kind.CHECKPOINT:
            return None
        last = await self.ledger.latest(Kind.CHECKPOINT)
        since = await self.ledger.count_after(last.seq if last else 0)
        # Counted on from the whole ledger's figure: other nodes append too.
        self._appended = since
        started = last.created_at if last else (await self.ledger.get(1)).created_at
        if since >= self.every_records or dt.datetime.now(dt.UTC) - started >= self.every:
            return head
        return None

    async def make(self, head: LedgerRecord) -> LedgerRecord:
        """Sign and time-stamp a statement of `head`, and append it; raises TimeStampError without a TSA."""
        now = dt.datetime.now(dt.UTC)
        der = await self.signer.sign_statement(statement(self.domain, head.seq, head.hash, now))
        record = NewRecord(
            kind=Kind.CHECKPOINT, evidence_id=f"checkpoint.{head.seq}", created_at=now, der=der
        )

        rec = await self.ledger.transact(lambda w: w.append(record))
        self._appended = 0
        log.info("ledger checkpoint at seq %d seals seq %d", rec.seq, head.seq)
        return rec

    async def run(self) -> None:
        poll = min(60.0, self.every.total_seconds())
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), poll)
            self._wake.clear()
            try:
                async with alone(self.ledger.engine, Turn.CHECKPOINTS) as mine:
                    # Another node holding the turn is making one: it is not due here.
                    head = await self.due() if mine else None
                    if head is not None:
                        await self.make(head)
            except TimeStampError as exc:
                # A checkpoint is not evidence of an event: it simply comes at the next attempt.
                log.warning("ledger checkpoint postponed: %s", exc)


@dataclass
class AuditResult:
    records: int = 0
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checkpoints: int = 0
    head_seq: int = 0
    head_hash: bytes = b""

    @property
    def ok(self) -> bool:
        return not self.problems


async def audit(
    ledger: Ledger,
    provider_trust: Sequence[x509.Certificate],
    tsa_trust: Sequence[x509.Certificate],
    weak: Mapping[str, dt.datetime] | None = None,
) -> AuditResult:
    """Walk the whole ledger in order; every problem with its position. Evidence records are
    judged against the hash algorithms `weak` names (archive.verify_record)."""
    result = AuditResult()
    chain = ChainAudit()
    unstamped: dict[str, bytes] = {}  # evidence id → signature value, while its time-stamp is pending
    received = 0
    async for rec in ledger.walk():
        result.problems += chain.feed(rec)
        result.problems += [
            Problem(rec.seq, what)
            for what in await _content(rec, ledger, provider_trust, tsa_trust, unstamped, weak)
        ]
        result.checkpoints += rec.kind is Kind.CHECKPOINT
        received += rec.kind is Kind.RECEIVED
    result.records = chain.count
    result.head_seq, result.head_hash = chain.last_seq, chain.last_hash
    result.notes += [f"evidence {eid} still waits for its time-stamp" for eid in unstamped]
    if received:
        result.notes.append(
            f"{received} received evidence of peer providers checked with the signer certificate "
            "each carries; their chain to the peer's CA and their time-stamp are checked against the "
            "peer's anchors by `kepmta evidence show` and in exported bundles"
        )
    return result


async def _content(
    rec: LedgerRecord,
    ledger: Ledger,
    provider_trust: Sequence[x509.Certificate],
    tsa_trust: Sequence[x509.Certificate],
    unstamped: dict[str, bytes],
    weak: Mapping[str, dt.datetime] | None,
) -> list[str]:
    try:
        if rec.kind in OWN_EVIDENCE:
            return _evidence(rec, provider_trust, tsa_trust, unstamped)
        if rec.kind is Kind.RECEIVED:
            return _received(rec)
        if rec.kind is Kind.CHECKPOINT:
            return await _checkpoint(rec, ledger, provider_trust, tsa_trust)
        if rec.kind is Kind.ARCHIVE:
            return await _archive(rec, ledger, tsa_trust, weak)
        if record_id(load_crl(rec.der)) != rec.evidence_id:
            return ["revocation record: the CRL is not the one its id names"]
        return []
    except Exception as exc:  # an audit reports whatever a damaged record holds, it never stops
        return [f"{rec.kind.value} record unreadable: {exc}"]


def _evidence(
    rec: LedgerRecord,
    provider_trust: Sequence[x509.Certificate],
    tsa_trust: Sequence[x509.Certificate],
    unstamped: dict[str, bytes],
) -> list[str]:
    report = verify_evidence(rec.der, provider_trust, tsa_trust, at=rec.created_at)
    pending = rec.kind is Kind.EVIDENCE and cms.signature_timestamp_token(cms.load(rec.der)) is None
    failed = [c for c in report.checks if not c.ok and not (pending and c.name == TIMESTAMP)]
    problems = [f"{rec.kind.value} {rec.evidence_id}: {c.name} check fails: {c.detail}" for c in failed]
    signature = cms.signature_value(cms.load(rec.der))
    if pending:
        unstamped[rec.evidence_id] = signature
    elif rec.kind is Kind.TIMESTAMP:
        earlier = unstamped.pop(rec.evidence_id, None)
        # The time-stamped version must be the same signature as the evidence committed before.
        if earlier is None or not hmac.compare_digest(earlier, signature):
            problems.append(f"time-stamp record for {rec.evidence_id} follows no matching unstamped evidence")
    if any(c.name == CONTENT for c in failed):
        return problems
    return problems + _columns(rec)


def _columns(rec: LedgerRecord) -> list[str]:
    """The stored XML is the signed content, and the columns say what it says."""
    if rec.xml is None:
        return [f"{rec.kind.value} record without its XML"]
    problems = []
    if cms.encapsulated_content(cms.load(rec.der)) != rec.xml:
        problems.append("the stored XML is not the signed content")
    ev = from_xml(rec.xml)
    columns = (rec.evidence_id, rec.message_id, rec.event, rec.reason, rec.recipient)
    signed = (ev.evidence_id, ev.message_id, ev.event.value, ev.reason.value, ev.refers_to_recipient)
    if columns != signed:
        problems.append(f"the record's columns {columns} do not match its signed evidence {signed}")
    return problems


def _received(rec: LedgerRecord) -> list[str]:
    """A peer's evidence, kept as it arrived: the audit has only our own anchors, so it checks
    what the evidence proves by itself (its structure, its signature by the certificate it
    carries with signingCertificateV2 naming it, its XML) and that the record is that evidence.
    The peer's chain and time-stamp need the peer's anchors (timeline.check, bundle.verify)."""
    report = verify_evidence(rec.der, (), ())
    failed = [c for c in report.checks if not c.ok and c.name in SELF_CONTAINED]
    problems = [f"received {rec.evidence_id}: {c.name} check fails: {c.detail}" for c in failed]
    if any(c.name in (STRUCTURE, CONTENT) for c in failed):
        return problems
    return problems + _columns(rec)


async def _checkpoint(
    rec: LedgerRecord,
    ledger: Ledger,
    provider_trust: Sequence[x509.Certificate],
    tsa_trust: Sequence[x509.Certificate],
) -> list[str]:
    report = verify_evidence(rec.der, provider_trust, tsa_trust, at=rec.created_at)
    # The content check reads evidence XML; a checkpoint's statement is checked below instead.
    problems = [
        f"checkpoint: {c.name} check fails: {c.detail}"
        for c in report.checks
        if not c.ok and c.name != CONTENT
    ]
    content = cms.encapsulated_content(cms.load(rec.der)) or b""
    seq, sealed = read_statement(content)
    if seq >= rec.seq:
        return [*problems, f"checkpoint seals seq {seq}, which is not before it"]
    try:
        target = await ledger.get(seq)
    except Exception:  # no such row
        return [*problems, f"checkpoint seals seq {seq}, which is no longer in the ledger (records removed)"]
    if not hmac.compare_digest(target.hash, sealed):
        problems.append(
            f"checkpoint seals seq {seq} with another hash: the ledger up to seq {seq} was rewritten"
        )
    return problems


async def _archive(
    rec: LedgerRecord,
    ledger: Ledger,
    tsa_trust: Sequence[x509.Certificate],
    weak: Mapping[str, dt.datetime] | None,
) -> list[str]:
    versions = [
        v
        for v in await ledger.versions(rec.evidence_id)
        if v.seq < rec.seq and v.kind in archive.ARCHIVABLE and cms.is_time_stamped(v.der)
    ]
    if not versions:
        return [
            f"evidence record for {rec.evidence_id} covers no time-stamped evidence or checkpoint before it"
        ]
    er = archive.parse(rec.der)
    try:
        archive.verify_record(er, versions[-1].der, tsa_trust, rec.created_at, weak)
    except archive.ArchiveError as exc:
        return [f"evidence record for {rec.evidence_id}: {exc}"]
    return []


def digest_line(result: AuditResult) -> str:
    """The one line an intact ledger gets: what an operator may publish to pin the head."""
    head = result.head_hash.hex() if result.head_hash else hashlib.sha256(b"").hexdigest()
    return (
        f"ledger intact: {result.records} records, {result.checkpoints} checkpoints, "
        f"head seq {result.head_seq} sha256 {head}"
    )
