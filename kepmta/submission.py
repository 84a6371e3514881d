"""Submission policy and acceptance, independent of the protocol that carries it.

The SMTP edge calls these steps in order; each either returns or raises PolicyError carrying the
refusal. A refusal to an authenticated sender is recorded as SubmissionRejection evidence before
the edge answers; an acceptance returns only once the original, its SubmissionAcceptance evidence
and its delivery jobs are on disk.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.parser
import email.policy
import hashlib
import logging
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from sqlalchemy import select

from kepmta.accounts import Account, AccountStore
from kepmta.db.schema import messages
from kepmta.events import EventRecorder, MessageFacts, clean_text, new_id, save_facts, utcnow
from kepmta.evidence.model import Reason
from kepmta.policy.recipient import check_recipient
from kepmta.policy.refusal import PolicyError, refuse
from kepmta.policy.sender import check_sender
from kepmta.policy.signature import check_signature
from kepmta.policy.size import check_declared_size, too_big
from kepmta.queue import jobs
from kepmta.smime.sender import verify_sender
from kepmta.smtp.data import DataOutcome

log = logging.getLogger(__name__)

_HEADER_LIMIT = 1024 * 1024  # a header block larger than this is not a message we accept
_COPY_CHUNK = 1024 * 1024


def originals_dir(spool_dir: Path) -> Path:
    """Where accepted originals live, as attached to their dispatches, named by message."""
    return spool_dir / "originals"


@dataclass
class Transaction:
    """One MAIL … DATA transaction of an authenticated sender."""

    account: Account
    authenticated_at: dt.datetime
    message_id: str
    recipients: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Headers:
    subject: str
    ua_message_id: str | None  # without <>
    header_end: int  # offset of the first body byte


def read_headers(path: Path) -> Headers:
    """The header facts evidence needs; raises PolicyError when there is no header block."""
    with path.open("rb") as f:
        head = f.read(_HEADER_LIMIT)
    if head.startswith(b"\r\n"):
        end = 2
    else:
        sep = head.find(b"\r\n\r\n")
        if sep < 0:
            # RFC 5322 §2.1: header fields, then an empty line, then the body
            raise refuse(554, "5.6.0", Reason.RA02, "the message has no header block ending in an empty line")
        end = sep + 4
    parsed = email.parser.BytesParser(policy=email.policy.default).parsebytes(head[:end], headersonly=True)
    subject = clean_text(str(parsed.get("Subject", "")))
    raw_id = parsed.get("Message-ID")
    ua_id = None
    if raw_id is not None:
        found = re.search(r"<([^<>\s]+)>", str(raw_id))
        ua_id = found.group(1) if found else None
    return Headers(subject, ua_id, end)


def write_original(incoming: Path, target: Path, provider_id: str, header_end: int) -> tuple[bytes, int]:
    """Copy the message as it will be attached to the dispatch: its Message-ID replaced by the
    provider message id (EN 319 532-3; the user's id stays in REM-UAMessageIdentifier), ending in
    CRLF. Returns the SHA-256 of exactly those bytes (the REM digest) and their size."""
    digest = hashlib.sha256()
    size = 0
    with incoming.open("rb") as src, target.open("wb") as out:

        def put(data: bytes) -> None:
            nonlocal size
            digest.update(data)
            out.write(data)
            size += len(data)

        head = src.read(header_end)
        lines = head[: header_end - 4].split(b"\r\n") if header_end > 2 else []
        kept: list[bytes] = []
        skipping = False
        for line in lines:
            if line[:1] in (b" ", b"\t") and skipping:
                continue  # RFC 5322 §2.2.3: a folded continuation of the dropped field
            skipping = line.lower().startswith(b"message-id:")
            if not skipping:
                kept.append(line)
        put(f"Message-ID: <{provider_id}>\r\n".encode())
        put(b"".join(line + b"\r\n" for line in kept) + b"\r\n")
        last = b"\r\n"
        while chunk := src.read(_COPY_CHUNK):
            put(chunk)
            last = (last + chunk)[-2:]
        if last != b"\r\n":
            put(b"\r\n")
        out.flush()
        os.fsync(out.fileno())
    return digest.digest(), size


class SubmissionService:
    def __init__(
        self,
        accounts: AccountStore,
        recorder: EventRecorder,
        *,
        domain: str,
        spool_dir: Path,
        size_limit: int,
        qualified_trust: list[x509.Certificate],
        wake_delivery: Callable[[], None],
    ) -> None:
        self.accounts = accounts
        self.recorder = recorder
        self.domain = domain
        self.size_limit = size_limit
        self.trust = qualified_trust
        self.wake_delivery = wake_delivery
        self.incoming_dir = spool_dir / "incoming"
        self.originals_dir = originals_dir(spool_dir)
        self.incoming_dir.mkdir(parents=True, exist_ok=True)
        self.originals_dir.mkdir(parents=True, exist_ok=True)

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

    async def authenticate(self, username: str, password: str) -> Account | None:
        return await self.accounts.authenticate(username, password)

    async def _rejected(
        self,
        error: PolicyError,
        account: Account,
        authenticated_at: dt.datetime,
        *,
        recipients: tuple[str, ...] = (),
        headers: Headers | None = None,
        digest: bytes | None = None,
    ) -> PolicyError:
        """Record SubmissionRejection evidence for a refusal; returns the error to raise."""
        facts = MessageFacts(
            message_id=new_id(self.domain),
            sender=account.address,
            recipients=recipients,
            subject=headers.subject if headers else "",
            ua_message_id=headers.ua_message_id if headers else None,
            submitted_at=utcnow(),
            authenticated_at=authenticated_at,
            digest=digest,
        )
        await self.recorder.record(facts, error.refusal.reason, error.refusal.text, new_message=True)
        self.wake_delivery()
        return error

    async def mail_from(
        self, account: Account, authenticated_at: dt.datetime, address: str, declared_size: int | None
    ) -> Transaction:
        try:
            check_sender(account, address)
            check_declared_size(declared_size, self.size_limit)  # RFC 1870 §6.3
        except PolicyError as e:
            raise await self._rejected(e, account, authenticated_at) from None
        return Transaction(account, authenticated_at, new_id(self.domain))

    async def rcpt_to(self, tx: Transaction, address: str) -> None:
        try:
            rcpt = await check_recipient(self.accounts, address, frozenset({self.domain}))
        except PolicyError as e:
            raise await self._rejected(e, tx.account, tx.authenticated_at, recipients=(address,)) from None
        if rcpt not in tx.recipients:
            tx.recipients.append(rcpt)

    def new_spool_file(self) -> Path:
        return self.incoming_dir / f"{secrets.token_hex(12)}.eml"

    async def data(self, tx: Transaction, incoming: Path, outcome: DataOutcome, digest: bytes) -> str:
        """Accept the spooled message or raise PolicyError; returns the provider message id."""
        try:
            return await self._accept(tx, incoming, outcome, digest)
        finally:
            incoming.unlink(missing_ok=True)

    async def _accept(self, tx: Transaction, incoming: Path, outcome: DataOutcome, digest: bytes) -> str:
        rcpts = tuple(tx.recipients)
        headers: Headers | None = None
        try:
            try:
                headers = await asyncio.to_thread(read_headers, incoming)
            except PolicyError as e:
                header_error: PolicyError | None = e
            else:
                header_error = None
            # The size and line-ending refusals come first; the headers, when readable, still let
            # their evidence name the message.
            if outcome.too_big:
                raise too_big(self.size_limit)  # RFC 5321 §4.5.3.1.10, answered after the data ends
            if outcome.bare_line_end:
                raise refuse(
                    554,
                    "5.6.0",
                    Reason.RA02,
                    "the message has a bare CR or LF; every line must end with CRLF (RFC 5322 section 2.3)",
                )
            if header_error is not None:
                raise header_error
            assert headers is not None
            verdict = await asyncio.to_thread(
                verify_sender, incoming, tx.account.address, self.trust, utcnow()
            )
            check_signature(verdict)
        except PolicyError as e:
            raise await self._rejected(
                e, tx.account, tx.authenticated_at, recipients=rcpts, headers=headers, digest=digest
            ) from None
        original = self.originals_dir / f"{tx.message_id.split('@')[0]}.eml"
        rem_digest, size = await asyncio.to_thread(
            write_original, incoming, original, tx.message_id, headers.header_end
        )
        facts = MessageFacts(
            message_id=tx.message_id,
            sender=tx.account.address,
            recipients=rcpts,
            subject=headers.subject,
            ua_message_id=headers.ua_message_id,
            submitted_at=utcnow(),
            authenticated_at=tx.authenticated_at,
            digest=rem_digest,
        )
        signed = await self.recorder.sign(facts, Reason.RA01, Reason.RA01.label)
        try:
            async with self.recorder.ledger.writing() as conn:
                await save_facts(conn, facts, size=size, spool_path=original.name)
                await self.recorder.commit(conn, signed)
                for position, rcpt in enumerate(rcpts, start=1):
                    await jobs.enqueue(
                        conn, jobs.DELIVER, tx.message_id, {"recipient": position, "address": rcpt}
                    )
        except BaseException:
            original.unlink(missing_ok=True)
            raise
        self.wake_delivery()
        log.info("accepted %s from %s for %d recipient(s)", tx.message_id, tx.account.address, len(rcpts))
        return tx.message_id
