"""Submission policy and acceptance, independent of the protocol that carries it.

The SMTP edge calls these steps in order; each either returns or raises PolicyError carrying the
refusal. A refusal to an authenticated sender is recorded as SubmissionRejection evidence before
the edge answers; an acceptance returns only once the original, its SubmissionAcceptance evidence
and its delivery jobs are on disk.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import select

from kepmta.accounts import Account, AccountStore, Login
from kepmta.config import Policy
from kepmta.db.schema import messages
from kepmta.events import EventRecorder, MessageFacts, new_id, save_facts, utcnow
from kepmta.evidence.ledger import Writes
from kepmta.evidence.model import Reason
from kepmta.headers import Headers
from kepmta.inspection import Signer
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


def originals_dir(spool_dir: Path) -> Path:
    """Where accepted originals live, as attached to their dispatches, named by message."""
    return spool_dir / "originals"


@dataclass
class Transaction:
    """One MAIL … DATA transaction of an authenticated user."""

    login: Account
    sender: Sender
    authenticated_at: dt.datetime
    message_id: str
    declared_size: int | None
    recipients: list[Recipient] = field(default_factory=list)

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
        policy: Policy,
        peers: PeerRegistry,
        workers: WorkerPool,
        wake_delivery: Callable[[], None],
    ) -> None:
        self.accounts = accounts
        self.recorder = recorder
        self.domain = domain
        self.policy = policy
        self.peers = peers
        self.workers = workers
        self.wake_delivery = wake_delivery
        self.incoming_dir = spool_dir / "incoming"
        self.originals_dir = originals_dir(spool_dir)
        self.incoming_dir.mkdir(parents=True, exist_ok=True)
        self.originals_dir.mkdir(parents=True, exist_ok=True)

    @property
    def advertised_size(self) -> int:
        """RFC 1870 §4: the largest message accepted at all (every recipient here)."""
        return self.policy.local_max_size

    def size_limit(self, tx: Transaction) -> int:
        return self.policy.peer_max_size if tx.to_peer else self.policy.local_max_size

    async def recover(self) -> None:
        """After a crash: drop what was never acknowledged. An incoming file is a DATA phase that
        did not finish; an original that no message row names was never committed."""
        for stale in self.incoming_dir.iterdir():
            stale.unlink()
        async with self.recorder.ledger.engine.connect() as conn:
            kept = {row.spool_path for row in await conn.execute(select(messages.c.spool_path))}
        for original in self.originals_dir.iterdir():
            if original.name not in kept:
                log.warning("removing %s: its acceptance was never committed", original)
                original.unlink()

    async def login(self, username: str, password: str, peer_ip: str) -> Login:
        return await self.accounts.login(username, password, peer_ip)

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
        await self.recorder.record(facts, error.refusal.reason, error.refusal.details, new_message=True)
        self.wake_delivery()
        return error

    async def mail_from(
        self, login: Account, authenticated_at: dt.datetime, address: str, declared_size: int | None
    ) -> Transaction:
        try:
            sender = await resolve_sender(self.accounts, login, address)
            # The account as read at login or by resolve_sender: its quota needs no second read.
            check_sender_quota(sender.account.address, await self.accounts.usage_of(sender.account))
            check_declared_size(declared_size, self.policy.local_max_size, peer=False)  # RFC 1870 §6.3
        except PolicyError as e:
            raise await self._rejected(e, None, login, authenticated_at) from None
        return Transaction(login, sender, authenticated_at, new_id(self.domain), declared_size)

    async def rcpt_to(self, tx: Transaction, address: str) -> None:
        try:
            rcpt = await check_recipient(
                self.accounts, address, frozenset({self.domain}), self.peers.current.domains
            )
            if not rcpt.local:
                # RFC 1870 §6.3: a declared size too big for this recipient's size class
                check_declared_size(tx.declared_size, self.policy.peer_max_size, peer=True)
        except PolicyError as e:
            raise await self._rejected(e, tx, tx.login, tx.authenticated_at, recipients=(address,)) from None
        if all(r.address != rcpt.address for r in tx.recipients):
            tx.recipients.append(rcpt)

    def new_spool_file(self) -> Path:
        return self.incoming_dir / f"{secrets.token_hex(12)}.eml"

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
        original = self.originals_dir / f"{tx.message_id.split('@')[0]}.eml"
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
        log.info(
            "accepted %s from %s for %d recipient(s)",
            tx.message_id,
            tx.sender.account.address,
            len(tx.recipients),
        )
        return tx.message_id
