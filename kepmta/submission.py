"""Submission policy and acceptance, independent of the protocol that carries it.

The SMTP edge calls these steps in order; each either returns or raises PolicyError carrying the
refusal. Every refusal to an authenticated sender is recorded as SubmissionRejection evidence: a
refused MAIL FROM or message before the edge answers; the refused recipients of a transaction
together, once, when the transaction ends (see `end`). An acceptance returns only once the
original, its SubmissionAcceptance evidence and its delivery jobs are on disk.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import select

from kepmta import addresses, metrics, spool
from kepmta.accounts import Account, AccountStore, Login
from kepmta.config import Policy
from kepmta.db.schema import jobs as jobs_table
from kepmta.db.schema import messages
from kepmta.events import EventRecorder, MessageFacts, new_id, save_facts, utcnow
from kepmta.evidence.ledger import Writes
from kepmta.evidence.model import Reason
from kepmta.headers import Headers
from kepmta.inspection import Signer
from kepmta.live import Live
from kepmta.peers import PeerRegistry
from kepmta.policy.malware import scan
from kepmta.policy.quota import check_sender_quota
from kepmta.policy.recipient import Recipient, check_recipient
from kepmta.policy.refusal import PolicyError, Refusal, refuse
from kepmta.policy.sender import Sender, resolve_sender
from kepmta.policy.size import check_declared_size, too_big
from kepmta.queue import jobs
from kepmta.smtp.data import DataOutcome
from kepmta.workers import WorkerPool

log = logging.getLogger(__name__)

_COPY_CHUNK = 1024 * 1024


def _well_formed(address: str) -> str | None:
    try:
        return str(addresses.parse(address))
    except addresses.AddressError:
        return None


def originals_dir(spool_dir: Path) -> Path:
    """Where accepted originals live, as attached to their dispatches, named by message."""
    return spool_dir / "originals"


class TooManyRefusals(PolicyError):
    """Past the policy's refusals per transaction or per session: the edge answers and closes."""


@dataclass
class SessionRefusals:
    """Refused MAIL FROMs and RCPT TOs of one SMTP session so far."""

    count: int = 0


@dataclass(frozen=True)
class RefusedRecipient:
    given: str  # as the client wrote it
    address: str | None  # normalised, when it is a well-formed address an evidence can name
    refusal: Refusal


@dataclass
class Transaction:
    """One MAIL … DATA transaction of an authenticated user."""

    login: Account
    sender: Sender
    authenticated_at: dt.datetime
    message_id: str
    declared_size: int | None
    session: SessionRefusals = field(default_factory=SessionRefusals)
    recipients: list[Recipient] = field(default_factory=list)
    refused: list[RefusedRecipient] = field(default_factory=list)  # not yet recorded

    @property
    def to_peer(self) -> bool:
        return any(not r.local for r in self.recipients)


class SubmissionService:
    def __init__(
        self,
        accounts: AccountStore,
        recorder: EventRecorder,
        *,
        domain: str,
        spool_dir: Path,
        live: Live,
        peers: PeerRegistry,
        workers: WorkerPool,
        wake_delivery: Callable[[], None],
        node: str,
    ) -> None:
        self.node = node
        self.accounts = accounts
        self.recorder = recorder
        self.domain = domain
        self.live = live
        self.peers = peers
        self.workers = workers
        self.wake_delivery = wake_delivery
        self.incoming_dir = spool_dir / "incoming"
        self.originals_dir = originals_dir(spool_dir)
        self.incoming_dir.mkdir(parents=True, exist_ok=True)
        self.originals_dir.mkdir(parents=True, exist_ok=True)

    @property
    def policy(self) -> Policy:
        """The policy in force, read at each step: a reload reaches the next transaction."""
        return self.live.policy

    @property
    def advertised_size(self) -> int:
        """RFC 1870 §4: the largest message accepted at all (every recipient here)."""
        return self.policy.local_max_size

    def size_limit(self, tx: Transaction) -> int:
        return self.policy.peer_max_size if tx.to_peer else self.policy.local_max_size

    async def recover(self) -> None:
        """After a crash: drop what was never acknowledged. An incoming file is a DATA phase that
        did not finish; an original that no message row names (nor a job still to file a peer's
        evidence) was never committed. Only this node's own, or long abandoned (kepmta.spool)."""
        engine = self.recorder.ledger.engine
        alone = engine.dialect.name == "sqlite"
        for stale in spool.leftovers(self.incoming_dir, self.node, alone=alone):
            stale.unlink(missing_ok=True)
        pending = select(jobs_table.c.payload).where(
            jobs_table.c.kind == jobs.FILE_RECEIVED, jobs_table.c.state == jobs.PENDING
        )
        async with engine.connect() as conn:
            kept = {row.spool_path for row in await conn.execute(select(messages.c.spool_path))}
            kept |= {row.payload["file"] for row in await conn.execute(pending)}
        for original in spool.leftovers(self.originals_dir, self.node, alone=alone, named=kept):
            log.warning("removing %s: its acceptance was never committed", original)
            original.unlink(missing_ok=True)

    async def login(self, username: str, password: str, peer_ip: str, *, authzid: str = "") -> Login:
        return await self.accounts.login(username, password, peer_ip, authzid=authzid)

    async def _rejected(
        self,
        error: PolicyError,
        tx: Transaction | None,
        login: Account,
        authenticated_at: dt.datetime,
        *,
        recipients: tuple[str, ...] = (),
        headers: Headers | None = None,
    ) -> PolicyError:
        """Record SubmissionRejection evidence for a refusal; returns the error to raise."""
        metrics.refused(error.refusal.reason)
        await self._record(
            error.refusal.reason, error.refusal.details, tx, login, authenticated_at, recipients, headers
        )
        return error

    async def _record(
        self,
        reason: Reason,
        details: str,
        tx: Transaction | None,
        login: Account,
        authenticated_at: dt.datetime,
        recipients: tuple[str, ...],
        headers: Headers | None,
    ) -> None:
        sender = tx.sender if tx else None
        facts = MessageFacts(
            message_id=new_id(self.domain),
            sender=sender.account.address if sender else login.address,
            operator=sender.operator.address if sender and sender.operator else None,
            recipients=recipients,
            subject=headers.subject if headers else "",
            ua_message_id=headers.message_id if headers else None,
            submitted_at=utcnow(),
            authenticated_at=authenticated_at,
            digest=None,  # a refused message has no original, so nothing the REM digest covers
        )
        await self.recorder.record(facts, reason, details, new_message=True)
        self.wake_delivery()
        log.info(
            "refused a submission from %s: %s",
            facts.sender,
            details,
            extra={"message_id": facts.message_id, "reason": reason.value},
        )

    def _too_many(self, session: SessionRefusals, tx: Transaction | None) -> TooManyRefusals | None:
        """The refusal that ends the session, once a transaction or the session has had too many."""
        policy = self.policy
        in_tx = len(tx.refused) if tx else 0
        if in_tx <= policy.max_refused_recipients and session.count <= policy.max_refused_per_session:
            return None
        # RFC 5321 §3.8: 421, then close. A client that keeps sending refused addresses is
        # harvesting them or broken, and every refusal costs a signature and a time-stamp.
        return TooManyRefusals(
            refuse(
                421,
                "4.7.0",
                Reason.RA05,
                "too many refused addresses in this session; closing it",
                "bu oturumda reddedilen adres sayısı çok fazla; oturum kapatılıyor",
            ).refusal
        )

    async def mail_from(
        self,
        login: Account,
        authenticated_at: dt.datetime,
        address: str,
        declared_size: int | None,
        session: SessionRefusals,
    ) -> Transaction:
        """Start a transaction, or raise PolicyError (TooManyRefusals past the session's limit)."""
        try:
            sender = await resolve_sender(self.accounts, login, address)
            # The account as read at login or by resolve_sender: its quota needs no second read.
            check_sender_quota(sender.account.address, await self.accounts.usage_of(sender.account))
            check_declared_size(declared_size, self.policy.local_max_size, peer=False)  # RFC 1870 §6.3
        except PolicyError as e:
            await self._rejected(e, None, login, authenticated_at)
            session.count += 1
            raise (self._too_many(session, None) or e) from None
        return Transaction(login, sender, authenticated_at, new_id(self.domain), declared_size, session)

    async def rcpt_to(self, tx: Transaction, address: str) -> None:
        """Add a recipient, or raise PolicyError: the refusal is kept in `tx` for `end` to record.

        Past the policy's limits, the refusals so far are recorded at once and TooManyRefusals
        raised: the edge answers it and closes the session."""
        try:
            rcpt = await check_recipient(
                self.accounts, address, frozenset({self.domain}), self.peers.current.domains
            )
            if not rcpt.local:
                # RFC 1870 §6.3: a declared size too big for this recipient's size class
                check_declared_size(tx.declared_size, self.policy.peer_max_size, peer=True)
        except PolicyError as e:
            metrics.refused(e.refusal.reason)
            tx.refused.append(RefusedRecipient(address, _well_formed(address), e.refusal))
            tx.session.count += 1
            flood = self._too_many(tx.session, tx)
            if flood is not None:
                await self.end(tx, ended_by=flood.refusal)
                raise flood from None
            raise
        if all(r.address != rcpt.address for r in tx.recipients):
            tx.recipients.append(rcpt)

    async def end(self, tx: Transaction, *, ended_by: Refusal | None = None) -> None:
        """The transaction is over (DATA answered, RSET, HELO/EHLO, QUIT, the client gone, or the
        session closed for too many refusals): record its refused recipients as ONE
        SubmissionRejection naming them all, if it has any. Idempotent.

        One evidence per transaction, not per RCPT: EN 319 532 ties a SubmissionRejection to a
        submission attempt, and a transaction is one; and a client sending a thousand bad
        recipients must not cost a thousand signatures, time-stamps and receipts (the reply to
        each RCPT no longer waits for them either). A server crash before the transaction ends
        loses that record; the client still holds its 5xx replies, and nothing was accepted."""
        refused, tx.refused = tx.refused, []
        if not refused:
            return
        details = "; ".join(r.refusal.details for r in refused)
        if ended_by is not None:
            details += f"; {ended_by.details}"
        named = tuple(dict.fromkeys(r.address for r in refused if r.address is not None))
        reason = refused[0].refusal.reason
        await self._record(reason, details, tx, tx.login, tx.authenticated_at, named, None)

    def new_spool_file(self) -> Path:
        return self.incoming_dir / spool.file_name(self.node)

    async def data(self, tx: Transaction, incoming: Path, outcome: DataOutcome) -> str:
        """Accept the spooled message or raise PolicyError; returns the provider message id.

        Raises ScanUnavailable when the malware scanner cannot give a verdict: nothing is decided."""
        try:
            return await self._accept(tx, incoming, outcome)
        except BaseException:
            incoming.unlink(missing_ok=True)  # on acceptance the worker has already moved it
            raise

    def _early_refusal(self, tx: Transaction, outcome: DataOutcome) -> Refusal | None:
        """What the data phase itself decided: size and line endings come before any other check."""
        if outcome.too_big:
            # RFC 5321 §4.5.3.1.10: answered after the end of the data
            return too_big(self.size_limit(tx), peer=tx.to_peer).refusal
        if outcome.bare_line_end:
            return refuse(
                554,
                "5.6.0",
                Reason.RA02,
                "the message has a bare CR or LF; every line must end with CRLF (RFC 5322 section 2.3)",
                "iletide tek başına CR veya LF var; her satır CRLF ile bitmelidir",
            ).refusal
        return None

    async def _accept(self, tx: Transaction, incoming: Path, outcome: DataOutcome) -> str:
        original = self.originals_dir / spool.file_name(self.node, tx.message_id.split("@")[0])
        signer = tx.sender.signer
        cert = signer.certificate.public_bytes(Encoding.DER) if signer.certificate else None
        inspection = await self.workers.inspect(
            incoming,
            original,
            tx.message_id,
            self._early_refusal(tx, outcome),
            tx.sender.account.address,
            tuple(r.address for r in tx.recipients),
            Signer(signer.address, cert, signer.national_id),
        )
        headers, stored = inspection.headers, inspection.stored
        try:
            if inspection.refusal is not None:
                raise PolicyError(inspection.refusal)
            # After storing: a clean scan, the usual answer, then costs no second trip to a thread.
            await scan(self.policy.malware_command, original)
        except PolicyError as e:
            original.unlink(missing_ok=True)
            rcpts = tuple(r.address for r in tx.recipients)
            raise await self._rejected(
                e, tx, tx.login, tx.authenticated_at, recipients=rcpts, headers=headers
            ) from None
        except BaseException:  # the scanner could not answer: nothing is decided
            original.unlink(missing_ok=True)
            raise
        assert headers is not None and stored is not None
        rem_digest, size = stored
        facts = MessageFacts(
            message_id=tx.message_id,
            sender=tx.sender.account.address,
            operator=tx.sender.operator.address if tx.sender.operator else None,
            recipients=tuple(r.address for r in tx.recipients),
            subject=headers.subject,
            ua_message_id=headers.message_id,
            submitted_at=utcnow(),
            authenticated_at=tx.authenticated_at,
            digest=rem_digest,
        )
        signed = await self.recorder.sign(facts, Reason.RA01, Reason.RA01.label)

        def unit(w: Writes) -> None:
            save_facts(w, facts, size=size, spool_path=original.name)
            self.recorder.commit(w, signed)
            by_domain: dict[str, list[tuple[int, str]]] = {}
            for position, rcpt in enumerate(tx.recipients, start=1):
                if rcpt.local:
                    jobs.enqueue(
                        w, jobs.DELIVER, tx.message_id, {"recipient": position, "address": rcpt.address}
                    )
                else:
                    by_domain.setdefault(rcpt.address.rpartition("@")[2], []).append((position, rcpt.address))
            for domain, rcpts in by_domain.items():
                jobs.enqueue_relay(w, tx.message_id, domain, rcpts, facts.submitted_at, self.policy.relay)

        try:
            await self.recorder.ledger.transact(unit)
        except Exception:
            # Not on cancellation: the unit may still commit, and then its original must be there.
            original.unlink(missing_ok=True)
            raise
        self.recorder.known.put(facts, original.name)
        self.wake_delivery()
        metrics.accepted("submission")
        log.info(
            "accepted %s from %s for %d recipient(s)",
            tx.message_id,
            tx.sender.account.address,
            len(tx.recipients),
            extra={"message_id": tx.message_id},
        )
        return tx.message_id
