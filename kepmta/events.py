"""Turning what happened to a message into evidence: facts in, signed ledger record and receipt out.

Knows nothing of SMTP or IMAP: callers say which event happened to which message (and recipient),
and this makes the EN 319 522 evidence, appends it to the ledger and schedules the receipt to the
sender, all in the caller's transaction.

A TSA failure delays evidence, it never drops it. The evidence is signed first (CAdES-B-B); if no
usable time-stamp comes back, the B-B evidence is committed to the ledger all the same, with a
durable `timestamp` job instead of the receipt job, so the caller may still answer 250 with the
evidence on disk. `StampWorker` later obtains the time-stamp and appends the CAdES-B-T version as a
`timestamp` ledger record under the same evidence id (no row is ever updated); only then is the
receipt scheduled, and only then do dispatches carrying that evidence go out.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from kepmta import metrics
from kepmta.db import utc
from kepmta.db.schema import jobs as jobs_table
from kepmta.db.schema import messages, recipients
from kepmta.evidence.errors import TimeStampError
from kepmta.evidence.ledger import Kind, Ledger, Writes, evidence_record
from kepmta.evidence.model import Event, Evidence, Party, Provider, Reason
from kepmta.evidence.revocation import RevocationCapture
from kepmta.evidence.signer import EvidenceSigner, SignedEvidence, stamp_der
from kepmta.evidence.xml import from_xml
from kepmta.outage import outage
from kepmta.queue import jobs

log = logging.getLogger(__name__)

# The durable job that time-stamps evidence committed as CAdES-B-B (payload: the ledger seq).
TIMESTAMP_JOB = "timestamp"
_IDLE_POLL = 5.0  # seconds between looks at the job table

AUTH_METHOD = "SMTP AUTH over TLS (RFC 4954, RFC 8314)"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


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


_SAVE_MESSAGE = insert(messages)
_SAVE_RECIPIENT = insert(recipients)


def save_facts(
    w: Writes, facts: MessageFacts, *, size: int | None = None, spool_path: str | None = None
) -> None:
    w.add(
        _SAVE_MESSAGE,
        {
            "id": facts.message_id,
            "sender": facts.sender,
            "operator": facts.operator,
            "ua_message_id": facts.ua_message_id,
            "subject": facts.subject,
            "submitted_at": facts.submitted_at,
            "authenticated_at": facts.authenticated_at,
            "digest": facts.digest,
            "size": size,
            "spool_path": spool_path,
        },
    )
    for i, address in enumerate(facts.recipients, start=1):
        w.add(_SAVE_RECIPIENT, {"message_id": facts.message_id, "position": i, "address": address})


async def load_facts(conn: AsyncConnection, message_id: str) -> MessageFacts | None:
    row = (await conn.execute(select(messages).where(messages.c.id == message_id))).first()
    if row is None:
        return None
    rcpts = await conn.execute(
        select(recipients.c.address)
        .where(recipients.c.message_id == message_id)
        .order_by(recipients.c.position)
    )
    submitted = utc(row.submitted_at)
    return MessageFacts(
        message_id=row.id,
        sender=row.sender,
        recipients=tuple(r.address for r in rcpts),
        subject=row.subject,
        ua_message_id=row.ua_message_id,
        submitted_at=submitted,
        authenticated_at=utc(row.authenticated_at) if row.authenticated_at else None,
        digest=row.digest,
        operator=row.operator,
    )


class KnownMessages:
    """Facts of recently accepted messages, kept so the jobs that follow need not read them again.

    A message row is never changed once committed, so a remembered entry cannot go stale. Only
    facts that are committed go in: the acceptance after its transaction, a worker after reading.
    """

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._entries: OrderedDict[str, tuple[MessageFacts, str | None]] = OrderedDict()

    def get(self, message_id: str) -> tuple[MessageFacts, str | None] | None:
        found = self._entries.get(message_id)
        if found is not None:
            self._entries.move_to_end(message_id)
        return found

    def put(self, facts: MessageFacts, spool_path: str | None) -> None:
        self._entries[facts.message_id] = (facts, spool_path)
        self._entries.move_to_end(facts.message_id)
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)


class CommittedEvidence:
    """Recently committed evidence by ledger seq, and each message's time-stamped acceptance, kept
    so the receipt and delivery jobs that follow need not read and parse the ledger again.

    Ledger rows are never changed, so an entry cannot go stale; only committed evidence goes in.
    """

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._by_seq: OrderedDict[int, SignedEvidence] = OrderedDict()
        self._acceptances: OrderedDict[str, SignedEvidence] = OrderedDict()

    def get(self, seq: int) -> SignedEvidence | None:
        return self._by_seq.get(seq)

    def acceptance(self, message_id: str) -> SignedEvidence | None:
        return self._acceptances.get(message_id)

    def put(self, seq: int, signed: SignedEvidence) -> None:
        self._by_seq[seq] = signed
        if len(self._by_seq) > self._size:
            self._by_seq.popitem(last=False)
        ev = signed.evidence
        # A B-B acceptance is not what a dispatch may carry: its B-T version is read from the ledger.
        if ev.event is Event.SUBMISSION_ACCEPTANCE and signed.stamped:
            self._acceptances[ev.message_id] = signed
            if len(self._acceptances) > self._size:
                self._acceptances.popitem(last=False)


@dataclass(frozen=True)
class Issuer:
    """Who signs the evidence and under which policy."""

    name: str
    domain: str
    policy_ids: tuple[str, ...]
    message_type: str


class EventRecorder:
    def __init__(
        self,
        issuer: Issuer,
        signer: EvidenceSigner,
        ledger: Ledger,
        revocation: RevocationCapture | None = None,
    ) -> None:
        self.issuer = issuer
        self.signer = signer
        self.ledger = ledger
        self.revocation = revocation
        self.known = KnownMessages()
        self.committed = CommittedEvidence()
        # Told when the TSA gave a token (StampWorker: evidence waiting for one need not wait on).
        self.on_stamped: Callable[[], None] | None = None

    async def sign(
        self,
        facts: MessageFacts,
        reason: Reason,
        details: str,
        recipient: int | None = None,
        external: Provider | None = None,
    ) -> SignedEvidence:
        """The signed evidence, time-stamped unless the TSA cannot give a usable token now; made
        before the ledger transaction so a slow time-stamp authority never holds the ledger."""
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
            # EN 319 522-3 M05: relay events name the other provider.
            external_provider=external,
        )
        basic = await self.signer.sign_basic(evidence)
        try:
            stamped = await self.signer.stamp(basic)
        except TimeStampError as exc:
            log.warning(
                "evidence %s waits for its time-stamp: %s",
                evidence.evidence_id,
                exc,
                extra={"message_id": facts.message_id},
            )
            return basic
        if self.on_stamped is not None:
            self.on_stamped()
        return stamped

    def commit(self, w: Writes, signed: SignedEvidence) -> int:
        """Append to the ledger and schedule the receipt (or first the time-stamp), in the caller's
        ledger transaction."""
        if self.revocation is not None:
            # Before the evidence in the chain: the CRLs in force when it was made (long-term proof).
            self.revocation.capture(w)
        seq = w.append(evidence_record(signed)).seq
        w.after_commit(lambda: self.committed.put(seq, signed))
        w.after_commit(lambda: metrics.evidence(signed.evidence.event))
        kind = self.receipt_kind(signed.evidence.sender.address) if signed.stamped else TIMESTAMP_JOB
        jobs.enqueue(w, kind, signed.evidence.message_id, {"seq": seq})
        return seq

    def receipt_kind(self, sender: str) -> str:
        """A local sender's receipt is filed here; a peer's sender gets it over the relay path."""
        local = sender.rpartition("@")[2].lower() == self.issuer.domain
        return jobs.RECEIPT if local else jobs.PEER_RECEIPT

    async def record(
        self, facts: MessageFacts, reason: Reason, details: str, *, new_message: bool = False
    ) -> int:
        """Evidence for an event with no other rows of its own (a refusal)."""
        signed = await self.sign(facts, reason, details)

        def unit(w: Writes) -> int:
            if new_message:
                save_facts(w, facts)
            return self.commit(w, signed)

        return await self.ledger.transact(unit)


_WAKE_DISPATCHES = (
    update(jobs_table)
    .where(
        jobs_table.c.message_id == bindparam("waiting"),
        jobs_table.c.kind == jobs.DELIVER,
        jobs_table.c.state == "pending",
    )
    .values(next_at=bindparam("now"))
)


class StampWorker:
    """Completes evidence committed without its time-stamp, retrying until the TSA is back."""

    def __init__(self, recorder: EventRecorder, wake_delivery: Callable[[], None], node: jobs.Node) -> None:
        self.recorder = recorder
        self.node = node
        self.ledger = recorder.ledger
        self.engine = recorder.ledger.engine
        self.wake_delivery = wake_delivery
        self._wake = asyncio.Event()
        # Jobs have failed since the TSA last answered (at start: perhaps, before a restart); and
        # whether it has answered since.
        self._behind = True
        self._tsa_back = False
        recorder.on_stamped = self._answered

    def _answered(self) -> None:
        self._tsa_back = True
        if self._behind:
            self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            try:
                done = await self.run_once()
            except Exception as e:
                # The database or the disk failed outside a job: look again later, never stop.
                if (found := outage(e)) is not None:
                    log.error("time-stamp jobs: %s; trying again: %s", found.what, e)
                else:
                    log.exception("time-stamp jobs could not be run; trying again")
                done = 0
            if not done:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), _IDLE_POLL)

    async def run_once(self) -> int:
        """Try every due time-stamp job once; returns how many completed."""
        if self._behind and self._tsa_back:
            # The TSA answers again: what waited for it is due now, not at its back-off (up to
            # 30 minutes away), and so are the receipts and dispatches that wait behind it.
            self._behind = False
            await jobs.bring_forward(self.engine, (TIMESTAMP_JOB,))
        self._tsa_back = False
        done = 0
        try:
            due = await jobs.due(self.engine, (TIMESTAMP_JOB,), self.node)
            if self._behind and not due:
                # Nothing will ask the TSA before the next back-off (up to 30 minutes away):
                # the job due soonest asks at the next turn, so that evidence is stamped within
                # seconds of the TSA's return, and the others follow it (above).
                self._behind = await jobs.bring_one_forward(self.engine, (TIMESTAMP_JOB,))
            for job in due:
                try:
                    await self._stamp(job)
                    done += 1
                    self._tsa_back = True
                except Exception as exc:  # any failure leaves the job for a later attempt
                    log.warning(
                        "time-stamp job %d (%s) failed; will retry: %s",
                        job.id,
                        job.message_id,
                        exc,
                        extra={"message_id": job.message_id},
                    )
                    self._behind = True
                    await jobs.retry_later(self.engine, job, f"{type(exc).__name__}: {exc}")
        finally:
            if done:
                self.wake_delivery()
        return done

    async def _stamp(self, job: jobs.Job) -> None:
        basic = await self.ledger.get(int(job.payload["seq"]))
        der = await stamp_der(basic.der, self.recorder.signer.tsa)
        # The same evidence, now CAdES-B-T: only the kind, the time of the record and the DER differ.
        record = replace(basic.content(), kind=Kind.TIMESTAMP, created_at=utcnow(), der=der)

        assert basic.xml is not None  # timestamp jobs are made for evidence records only
        sender = from_xml(basic.xml).sender.address

        def unit(w: Writes) -> None:
            stamped = w.append(record)
            jobs.enqueue(w, self.recorder.receipt_kind(sender), job.message_id, {"seq": stamped.seq})
            jobs.complete(w, job)
            # Dispatches of this message waited for a time-stamped acceptance: due now, not at
            # their next back-off.
            w.add(_WAKE_DISPATCHES, {"waiting": job.message_id, "now": utcnow()})

        await self.ledger.transact(unit)
        log.info(
            "evidence %s time-stamped after a delay", basic.evidence_id, extra={"message_id": job.message_id}
        )
