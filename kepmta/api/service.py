"""What the integration API does, apart from HTTP: submission through the SubmissionService that
SMTP submission uses, and reading one's messages, evidence and quota.

A submission goes through the same steps, in the same order, as over SMTP: MAIL FROM (the token's
account, or the entity its operator acts for; a declared Content-Length plays SIZE=), then the
message is streamed to a spool file, then RCPT TO for each address of its To and Cc headers, then
DATA with the spooled file. So the same rules refuse with the same codes and the same
SubmissionRejection evidence, and an acceptance comes only once the original, its
SubmissionAcceptance evidence and the delivery jobs are on disk. One difference, chosen for
programs: a submission is all or nothing. If any recipient is refused, nothing is sent, and the
refused recipients are recorded together as one SubmissionRejection, as when an SMTP client gives
up after refused RCPTs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import select
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from kepmta import config, pki
from kepmta.accounts import AccountStore, Usage
from kepmta.api.errors import ApiError, Step, refusal_detail, refused
from kepmta.api.tokens import Principal
from kepmta.cli.evidence_people import peer_trust, provider_trust
from kepmta.db import utc
from kepmta.db.schema import messages, recipients
from kepmta.evidence import bundle, timeline
from kepmta.evidence.ledger import Kind, Ledger, LedgerRecord
from kepmta.evidence.model import Evidence
from kepmta.evidence.xml import from_xml
from kepmta.headers import HeaderError, read_headers
from kepmta.message.addresses import addr_specs
from kepmta.peers import PeerRegistry
from kepmta.pki import KeyPair
from kepmta.policy.malware import ScanUnavailable
from kepmta.policy.refusal import PolicyError
from kepmta.smtp.data import DataOutcome
from kepmta.submission import SessionRefusals, SubmissionService, TooManyRefusals, Transaction
from kepmta.workers import WorkerError

log = logging.getLogger(__name__)


def _try_later(what: str, what_tr: str) -> ApiError:
    # As SMTP's 451 4.3.0: nothing was decided; the client keeps the message and tries again.
    return ApiError(
        503,
        "try_later",
        f"{what}; try again later",
        f"{what_tr}; daha sonra yeniden deneyin",
        headers={"Retry-After": "60"},
    )


def _not_found(message_id: str) -> ApiError:
    # The same answer for a message that does not exist and for another sender's: ids are not
    # secret, and this says nothing about messages that are not the caller's.
    return ApiError(
        404,
        "message_not_found",
        f"you have no message {message_id}",
        f"{message_id} kimlikli bir iletiniz yok",
    )


class _Spool:
    """The uploaded message on its way to the spool file: counted, written up to `limit` bytes,
    and checked for line endings that are not CRLF (as SMTP's DataReader checks them)."""

    def __init__(self, path: Path, limit: int) -> None:
        self.path = path
        self.limit = limit
        self.size = 0
        self.bare_line_end = False
        self._cr = False  # the block so far ended in a CR whose LF may come next
        self._last = b""
        self._file: BinaryIO = path.open("wb")

    def write(self, chunk: bytes) -> None:
        if not chunk:
            return
        block = (b"\r" if self._cr else b"") + chunk
        self._cr = block.endswith(b"\r")
        if self._cr:
            block = block[:-1]
        pairs = block.count(b"\r\n")
        if block.count(b"\r") != pairs or block.count(b"\n") != pairs:
            self.bare_line_end = True
        room = self.limit - self.size
        if room > 0:
            self._file.write(chunk[:room])
        self.size += len(chunk)
        self._last = (self._last + chunk)[-2:]

    def close(self) -> None:
        if self._cr:
            self.bare_line_end = True  # the message ends in a CR with no LF after it
        # RFC 5321 §4.1.1.4: over SMTP the data always ends with CRLF before the final dot, and
        # every SMTP client adds one to a message without it; the stored original is the same.
        if self.size and not self._last.endswith(b"\r\n") and self.size + 2 <= self.limit:
            self._file.write(b"\r\n")
            self.size += 2
        self._file.close()

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)

    @property
    def too_big(self) -> bool:
        return self.size > self.limit


def _recipients(path: Path) -> list[str]:
    """The addresses of the To and Cc headers, each once, in order (KEP has no Bcc)."""
    try:
        head = read_headers(path).addresses
    except HeaderError:
        return []
    return list(dict.fromkeys(addr_specs([*head.to, *head.cc])))


@dataclass(frozen=True)
class Accepted:
    message_id: str
    sender: str
    operator: str | None
    recipients: tuple[str, ...]


@dataclass(frozen=True)
class Event:
    evidence_id: str
    evidence: Evidence
    received: bool  # issued by a peer provider


@dataclass(frozen=True)
class Status:
    message_id: str
    sender: str
    operator: str | None
    subject: str
    submitted_at: dt.datetime
    size: int | None
    digest: bytes | None
    recipients: tuple[str, ...]
    events: tuple[Event, ...]


class ApiService:
    def __init__(
        self,
        settings: config.Settings,
        accounts: AccountStore,
        submission: SubmissionService,
        ledger: Ledger,
        registry: PeerRegistry,
        signer: KeyPair,
    ) -> None:
        self.settings = settings
        self.accounts = accounts
        self.submission = submission
        self.ledger = ledger
        self.engine = ledger.engine
        self.registry = registry
        self.signer = signer

    # -- submitting -----------------------------------------------------------------------------

    async def submit(self, who: Principal, body: AsyncIterator[bytes], declared: int | None) -> Accepted:
        service = self.submission
        try:
            tx = await service.mail_from(
                who.login, who.authenticated_at, who.acting_as.address, declared, SessionRefusals()
            )
        except PolicyError as e:
            raise refused(Step.SENDER, e.refusal) from None
        try:
            return await self._transaction(tx, body)
        finally:
            # Records the refused recipients, if any, as one SubmissionRejection; idempotent.
            await service.end(tx)

    async def _transaction(self, tx: Transaction, body: AsyncIterator[bytes]) -> Accepted:
        service = self.submission
        path = service.new_spool_file()
        spool = _Spool(path, service.policy.local_max_size)
        try:
            async for chunk in body:
                spool.write(chunk)
                if spool.too_big:
                    break  # refused below, as over SMTP; the rest need not be read
            spool.close()
            wanted = _recipients(path)
            if not wanted:
                raise ApiError(
                    422,
                    "no_recipients",
                    "the message names no recipient: the recipients are the addresses of its To and "
                    "Cc headers",
                    "iletide alıcı yok: alıcılar To ve Cc başlıklarındaki adreslerdir",
                )
            await self._recipients(tx, wanted)
        except BaseException:
            spool.discard()
            raise
        outcome = DataOutcome(spool.size, spool.bare_line_end, spool.size > service.size_limit(tx))
        try:
            message_id = await service.data(tx, path, outcome)
        except PolicyError as e:
            raise refused(Step.MESSAGE, e.refusal) from None
        except ScanUnavailable as e:
            log.error("malware scan unavailable: %s", e)
            raise _try_later(
                "the message could not be scanned for malware now",
                "ileti şu anda zararlı yazılım taramasından geçirilemedi",
            ) from None
        except WorkerError as e:
            log.error("message not checked: %s", e)
            raise _try_later("the message could not be checked now", "ileti şu anda denetlenemedi") from None
        operator = tx.sender.operator.address if tx.sender.operator else None
        addresses = tuple(r.address for r in tx.recipients)
        return Accepted(message_id, tx.sender.account.address, operator, addresses)

    async def _recipients(self, tx: Transaction, wanted: list[str]) -> None:
        details = []
        first = None
        for address in wanted:
            try:
                await self.submission.rcpt_to(tx, address)
            except TooManyRefusals as e:
                raise refused(Step.RECIPIENT, e.refusal) from None
            except PolicyError as e:
                first = first or e.refusal
                details.append(refusal_detail(Step.RECIPIENT, address, e.refusal))
        if first is not None:
            raise refused(Step.RECIPIENT, first, tuple(details))

    # -- reading --------------------------------------------------------------------------------

    async def _own(self, conn: AsyncConnection, who: Principal, message_id: str) -> Row[Any]:
        """The message row, if the caller's account (or entity) sent it."""
        query = select(messages).where(
            messages.c.id == message_id, messages.c.sender == who.acting_as.address
        )
        row = (await conn.execute(query)).first()
        if row is None:
            raise _not_found(message_id)
        return row

    async def status(self, who: Principal, message_id: str) -> Status:
        async with self.engine.connect() as conn:
            row = await self._own(conn, who, message_id)
            rcpts = await conn.execute(
                select(recipients.c.address)
                .where(recipients.c.message_id == message_id)
                .order_by(recipients.c.position)
            )
            addresses = tuple(r.address for r in rcpts)
        events = tuple(self._event(r) for r in await self.ledger.for_message(message_id))
        return Status(
            message_id=row.id,
            sender=row.sender,
            operator=row.operator,
            subject=row.subject,
            submitted_at=utc(row.submitted_at),
            size=row.size,
            digest=None if row.digest is None else bytes(row.digest),
            recipients=addresses,
            events=events,
        )

    @staticmethod
    def _event(record: LedgerRecord) -> Event:
        return Event(record.evidence_id, from_xml(record.xml or b""), record.kind is Kind.RECEIVED)

    async def evidence(self, who: Principal, message_id: str, evidence_id: str) -> tuple[Evidence, bytes]:
        """One evidence of one's message: what it says, and its newest signed version (DER)."""
        async with self.engine.connect() as conn:
            await self._own(conn, who, message_id)
        record = await self.ledger.current(evidence_id)
        if record is None or record.message_id != message_id:
            raise ApiError(
                404,
                "evidence_not_found",
                f"message {message_id} has no evidence {evidence_id}",
                f"{message_id} iletisinin {evidence_id} kimlikli bir kanıtı yok",
            )
        return from_xml(record.xml or b""), record.der

    async def bundle(self, who: Principal, message_id: str) -> bytes:
        """The bundle `kepmta evidence export` writes, for one's message."""
        async with self.engine.connect() as conn:
            await self._own(conn, who, message_id)
        message = await timeline.load(self.engine, message_id)
        s = self.settings
        # The peers as the registry holds them now, not as at start.
        current = dataclasses.replace(s, peers=self.registry.current.peers)
        anchors, tsa_anchors = provider_trust(s)
        return await asyncio.to_thread(
            bundle.build,
            message,
            provider_name=s.provider_name,
            provider_ca=anchors,
            tsa_ca=tsa_anchors,
            signer=self.signer,
            chain=pki.load_certs(s.evidence_cert)[1:],
            peer_anchors=peer_trust(current),
        )

    async def quota(self, who: Principal) -> Usage:
        return await self.accounts.usage_of(who.acting_as)
