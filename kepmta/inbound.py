"""Mail from peer providers: who may relay to us, and what their dispatches and receipts become.

Independent of the protocol that carries it: the relay listener (kepmta.smtp.relay) asks, in
order, who the client is (its TLS client certificate against the peer registry), whether MAIL
FROM and RCPT TO fit that peer, and what to do with the data. Anything that is not a registered
peer's signed REM message leaves no trace.

A dispatch from a peer (EN 319 532-3) makes, per recipient, RelayAcceptance and a delivery of the
peer's dispatch as received, or RelayRejection with its reason (EN 319 522-2 RB02–RB06); each goes
back to the peer as a receipt. A receipt from a peer carries the peer's evidence for one of our
senders: verified against the peer's evidence certificates, kept in the ledger as received, never
re-signed, and filed for the sender as the peer sent it.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import hashlib
import logging
import os
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from sqlalchemy import select

from kepmta import dkim, metrics, spool
from kepmta.accounts import AccountState, AccountStore
from kepmta.addresses import AddressError, parse
from kepmta.db.schema import ledger as ledger_table
from kepmta.db.schema import messages
from kepmta.events import EventRecorder, MessageFacts, load_facts, save_facts, utcnow
from kepmta.evidence.ledger import Writes, received_record
from kepmta.evidence.model import Event, Evidence, Provider, Reason
from kepmta.evidence.verify import verify_evidence
from kepmta.evidence.xml import from_xml
from kepmta.live import Live
from kepmta.peers import Peer, PeerRegistry
from kepmta.queue import jobs
from kepmta.rem.inbound import RemError, RemHeaders, read_rem, read_rem_headers
from kepmta.smime import cms

log = logging.getLogger(__name__)

DISPATCH, RECEIPT = "dispatch", "receipt"
# Evidence a peer may send us about our senders' messages (KEP.md events 20, 21, 40, 41, 60).
_RECEIVABLE = frozenset(
    {
        Event.RELAY_ACCEPTANCE,
        Event.RELAY_REJECTION,
        Event.CONTENT_CONSIGNMENT,
        Event.CONTENT_CONSIGNMENT_FAILURE,
        Event.CONTENT_HANDOVER,
    }
)
# EN 319 522-2: which RelayRejection reason a failed check of a dispatch is.
_REJECTION = {
    "format": Reason.RB02,
    "digest": Reason.RB02,
    "signature": Reason.RB04,
    "certificate": Reason.RB05,
}


class Refused(Exception):
    """An SMTP refusal that leaves no evidence (the client is not a peer, or its message cannot be
    attributed to it)."""

    def __init__(self, code: int, status: str, text: str) -> None:
        super().__init__(text)
        self.reply = f"{code} {status} {text}"


@dataclass(frozen=True)
class Checked:
    """What a worker found in a relayed message (only picklable values: it crosses processes)."""

    headers: RemHeaders
    # None when every check passed; else (RemError reason or "dkim", sentence).
    failure: tuple[str, str] | None
    evidence_der: bytes | None = None
    evidence_xml: bytes | None = None


def check_relayed(
    path: Path, domains: tuple[str, ...], keys: tuple[dkim.PublicKey, ...], trust: bytes
) -> Checked:
    """Worker side: DKIM with the peer's registered keys (RFC 6376), then the REM checks."""
    headers = read_rem_headers(path)
    raw = path.read_bytes()
    problems = []
    for domain in domains:
        try:
            dkim.verify(raw, domain, keys)
            break
        except dkim.DkimError as e:
            problems.append(str(e))
    else:
        return Checked(headers, ("dkim", "; ".join(problems)))
    anchors = x509.load_pem_x509_certificates(trust)
    try:
        rem = read_rem(path, anchors)
    except RemError as e:
        return Checked(headers, (e.reason, e.text))
    if rem.kind == RECEIPT:
        if rem.evidence_der is None:
            return Checked(headers, ("format", "the receipt carries no evidence"))
        report = verify_evidence(rem.evidence_der, anchors, anchors)
        if not report.ok:
            failed = "; ".join(f"{c.name}: {c.detail}" for c in report.checks if not c.ok)
            return Checked(headers, ("evidence", f"its evidence does not verify ({failed})"))
    return Checked(headers, None, rem.evidence_der, rem.evidence_xml)


@dataclass(frozen=True)
class PeerClient:
    """A connection that proved to be a registered peer."""

    peer: Peer
    certificate: str  # SHA-256 of its client certificate, for the log


def _names(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return {n.lower() for n in san.get_values_for_type(x509.DNSName)}
    except x509.ExtensionNotFound:
        return set()


def _issued_by_any(cert: x509.Certificate, anchors: Sequence[x509.Certificate]) -> bool:
    for anchor in anchors:
        try:
            cert.verify_directly_issued_by(anchor)
            return True
        except (ValueError, TypeError, InvalidSignature):
            continue
    return False


def anchors(path: Path) -> tuple[bytes, tuple[x509.Certificate, ...]]:
    """A registered CA file as PEM and as certificates, read again only when it changes: every
    MAIL and every message from a peer needs them."""
    return _anchors(path, path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _anchors(path: Path, version: int) -> tuple[bytes, tuple[x509.Certificate, ...]]:
    pem = path.read_bytes()
    return pem, tuple(x509.load_pem_x509_certificates(pem))


# The worker-pool call that runs check_relayed in another process.
Checker = Callable[[Path, tuple[str, ...], tuple[dkim.PublicKey, ...], bytes], Awaitable[Checked]]


class InboundService:
    def __init__(
        self,
        accounts: AccountStore,
        recorder: EventRecorder,
        registry: PeerRegistry,
        *,
        domain: str,
        spool_dir: Path,
        live: Live,
        check: Checker,
        wake_delivery: Callable[[], None],
        wake_relay: Callable[[], None],
        node: str,
    ) -> None:
        self.node = node
        self.accounts = accounts
        self.recorder = recorder
        self.ledger = recorder.ledger
        self.registry = registry
        self.domain = domain
        self.live = live
        self.check = check
        self.wake_delivery = wake_delivery
        self.wake_relay = wake_relay
        self.incoming_dir = spool_dir / "relay-incoming"
        self.originals_dir = spool_dir / "originals"
        self.incoming_dir.mkdir(parents=True, exist_ok=True)
        self.originals_dir.mkdir(parents=True, exist_ok=True)

    @property
    def max_size(self) -> int:
        """The policy's limit for mail from peers, as in force now (kepmta.live)."""
        return self.live.policy.peer_max_size

    def recover(self) -> None:
        """After a crash: an incoming file is a DATA phase that never got its answer (this node's
        own, or long abandoned: kepmta.spool). A kept file whose commit never came is an original
        no row names: SubmissionService.recover removes those."""
        alone = self.ledger.engine.dialect.name == "sqlite"
        for stale in spool.leftovers(self.incoming_dir, self.node, alone=alone):
            stale.unlink(missing_ok=True)

    def new_spool_file(self) -> Path:
        return self.incoming_dir / spool.file_name(self.node)

    # --- who is talking ---------------------------------------------------------------------------

    def identify(self, der: bytes | None) -> PeerClient:
        """The registered peer whose TLS client certificate this is (RFC 8446 §4.4.2, mutual TLS)."""
        if der is None:
            raise Refused(
                530, "5.7.0", "only registered KEP providers relay here: present your TLS client certificate"
            )
        cert = x509.load_der_x509_certificate(der)
        fingerprint = hashlib.sha256(der).hexdigest()
        names = _names(cert)
        for peer in self.registry.current.peers:
            if peer.tls_ca is None or not names & set(peer.domains):
                continue
            if peer.tls_pins and fingerprint not in peer.tls_pins:
                continue
            if _issued_by_any(cert, anchors(peer.tls_ca)[1]):
                return PeerClient(peer, fingerprint)
        raise Refused(550, "5.7.1", "your TLS client certificate belongs to no registered KEP provider")

    def mail_from(self, client: PeerClient, address: str) -> str:
        addr = self._address(address)
        if addr.rpartition("@")[2] not in client.peer.domains:
            raise Refused(550, "5.7.1", f"{client.peer.name} may only send from its own domains")
        return addr

    def rcpt_to(self, address: str) -> str:
        addr = self._address(address)
        if addr.rpartition("@")[2] != self.domain:
            raise Refused(550, "5.7.1", f"relaying denied: only addresses at {self.domain} are served here")
        return addr

    @staticmethod
    def _address(address: str) -> str:
        try:
            return str(parse(address))
        except AddressError as e:
            raise Refused(553, "5.1.3", f"invalid address: {e}") from None

    # --- what it sent --------------------------------------------------------------------------------

    async def data(self, client: PeerClient, rcpts: list[str], incoming: Path, too_big: bool) -> str:
        """Decide on a relayed message in `incoming`; returns the SMTP reply. Any evidence it
        makes is committed, with its receipt and delivery jobs, before the reply."""
        try:
            return await self._data(client, rcpts, incoming, too_big)
        finally:
            incoming.unlink(missing_ok=True)  # kept ones were moved

    async def _data(self, client: PeerClient, rcpts: list[str], incoming: Path, too_big: bool) -> str:
        peer = client.peer
        if too_big:
            headers = read_rem_headers(incoming)
            details = f"the message is larger than {self.max_size} bytes, the limit for mail from peers"
            if self._attributable(headers, peer):
                await self._reject(peer, headers, rcpts, Reason.RB06, details)
                return f"552 5.3.4 {details}; RelayRejection evidence follows"
            return f"552 5.3.4 {details}"
        trust = anchors(peer.evidence_ca)[0] if peer.evidence_ca else b""
        if not trust:
            raise Refused(451, "4.7.0", f"the registry has no evidence certificates for {peer.name}")
        keys = tuple(dkim.PublicKey(k.selector, k.algorithm, k.public_key) for k in peer.dkim)
        checked = await self.check(incoming, peer.domains, keys, trust)
        headers = checked.headers
        if checked.failure is not None:
            kind, text = checked.failure
            reason = _REJECTION.get(kind)
            if reason is not None and headers.kind == DISPATCH and self._attributable(headers, peer):
                await self._reject(
                    peer, headers, rcpts, reason, f"the dispatch failed the {kind} check: {text}"
                )
                return f"554 5.7.0 the dispatch failed the {kind} check; RelayRejection evidence follows"
            log.warning("refused a message from %s: %s check: %s", peer.name, kind, text)
            code = "5.7.20" if kind == "dkim" else "5.7.0"  # RFC 7372 §3.1
            return f"550 {code} refused: {kind} check failed: {text}"
        if headers.kind == DISPATCH:
            return await self._dispatch(peer, headers, checked, rcpts, incoming)
        if headers.kind == RECEIPT:
            return await self._receipt(peer, checked, rcpts, incoming)
        return "550 5.6.0 only REM dispatches and receipts are relayed between KEP providers"

    @staticmethod
    def _attributable(headers: RemHeaders, peer: Peer) -> bool:
        """A refused dispatch names a message of that peer, so evidence can refer to it."""
        mid = headers.provider_message_id
        return (
            headers.kind == DISPATCH
            and mid is not None
            and mid.rpartition("@")[2] in peer.domains
            and headers.sender is not None
        )

    async def _known(self, message_id: str) -> bool:
        async with self.ledger.engine.connect() as conn:
            found = await conn.execute(select(messages.c.id).where(messages.c.id == message_id))
            return found.first() is not None

    def _facts(self, headers: RemHeaders, rcpts: list[str], submitted: dt.datetime | None) -> MessageFacts:
        assert headers.provider_message_id is not None and headers.sender is not None
        digest = None
        if headers.digest_b64:
            try:
                digest = base64.b64decode(headers.digest_b64, validate=True)
            except (binascii.Error, ValueError):
                digest = None
        return MessageFacts(
            message_id=headers.provider_message_id,
            sender=headers.sender,
            recipients=tuple(rcpts),
            subject=headers.subject,
            ua_message_id=headers.ua_message_id,
            submitted_at=submitted or utcnow(),
            authenticated_at=None,
            digest=digest,
        )

    async def _reject(
        self, peer: Peer, headers: RemHeaders, rcpts: list[str], reason: Reason, details: str
    ) -> None:
        """RelayRejection for every recipient of a dispatch we will not take."""
        assert headers.provider_message_id is not None
        if await self._known(headers.provider_message_id):
            return  # decided when it first came
        facts = self._facts(headers, rcpts, None)
        external = Provider(peer.name, peer.domains[0])
        signed = [
            await self.recorder.sign(facts, reason, details, recipient=i, external=external)
            for i in range(1, len(rcpts) + 1)
        ]

        def unit(w: Writes) -> None:
            save_facts(w, facts)
            for evidence in signed:
                self.recorder.commit(w, evidence)

        await self.ledger.transact(unit)
        self.wake_relay()
        log.info(
            "rejected %s from %s: %s",
            facts.message_id,
            peer.name,
            details,
            extra={"message_id": facts.message_id},
        )

    async def _dispatch(
        self, peer: Peer, headers: RemHeaders, checked: Checked, rcpts: list[str], incoming: Path
    ) -> str:
        mid = headers.provider_message_id
        if not self._attributable(headers, peer) or mid is None:
            return f"550 5.7.1 the dispatch's message id is not of {peer.name}'s domains"
        if await self._known(mid):
            # A resend after a lost answer (RFC 5321 §6.1): taken once, answered again.
            return f"250 2.0.0 <{mid}> was already received"
        facts = self._facts(headers, rcpts, _submission_time(checked.evidence_xml))
        stored = self._keep(incoming, "relayed")
        external = Provider(peer.name, peer.domains[0])
        decisions: list[tuple[int, str, Reason, str]] = []
        for position, address in enumerate(rcpts, start=1):
            account = await self.accounts.get(address)
            if account is not None and account.state is AccountState.ACTIVE:
                decisions.append((position, address, Reason.RB01, Reason.RB01.label))
            else:
                state = "unknown" if account is None else account.state.value
                details = f"the recipient {address} is {state} at {self.domain}"
                decisions.append((position, address, Reason.RB06, details))
        signed = [
            await self.recorder.sign(facts, reason, details, recipient=position, external=external)
            for position, _, reason, details in decisions
        ]

        def unit(w: Writes) -> None:
            save_facts(w, facts, size=stored.stat().st_size, spool_path=stored.name)
            for evidence in signed:
                self.recorder.commit(w, evidence)
            for position, address, reason, _ in decisions:
                if reason is Reason.RB01:
                    payload = {"recipient": position, "address": address, "relayed": True}
                    jobs.enqueue(w, jobs.DELIVER, mid, payload)

        await self._commit(unit, stored)
        taken = sum(1 for d in decisions if d[2] is Reason.RB01)
        metrics.accepted("relay")
        log.info(
            "took %s from %s for %d of %d recipient(s)",
            mid,
            peer.name,
            taken,
            len(rcpts),
            extra={"message_id": mid},
        )
        return f"250 2.0.0 <{mid}> taken for {taken} of {len(rcpts)} recipient(s); evidence follows"

    async def _receipt(self, peer: Peer, checked: Checked, rcpts: list[str], incoming: Path) -> str:
        assert checked.evidence_der is not None
        evidence = self._evidence_of(checked)
        if evidence is None:
            return "550 5.6.0 the receipt's evidence cannot be read"
        problem = await self._receipt_problem(peer, evidence, rcpts)
        if problem is not None:
            log.warning("refused a receipt from %s: %s", peer.name, problem)
            return f"550 5.7.1 receipt refused: {problem}"
        async with self.ledger.engine.connect() as conn:
            seen = await conn.execute(
                select(ledger_table.c.seq).where(ledger_table.c.evidence_id == evidence.evidence_id)
            )
            if seen.first() is not None:
                return f"250 2.0.0 evidence {evidence.evidence_id} was already received"
        stored = self._keep(incoming, "received")
        record = received_record(checked.evidence_der, evidence)
        sender = evidence.sender.address

        def unit(w: Writes) -> None:
            w.append(record)
            jobs.enqueue(w, jobs.FILE_RECEIVED, evidence.message_id, {"file": stored.name, "address": sender})

        await self._commit(unit, stored)
        log.info(
            "kept %s evidence %s from %s",
            evidence.event.value,
            evidence.evidence_id,
            peer.name,
            extra={"message_id": evidence.message_id},
        )
        return f"250 2.0.0 evidence {evidence.evidence_id} kept"

    def _keep(self, incoming: Path, kind: str) -> Path:
        """Move a message we take into the originals folder, durably (its directory synced)."""
        stored = self.originals_dir / spool.file_name(self.node, f"{kind}-{secrets.token_hex(12)}")
        os.replace(incoming, stored)
        _sync_dir(stored.parent)
        return stored

    async def _commit(self, unit: Callable[[Writes], None], stored: Path) -> None:
        """Commit what a kept message caused; without that commit, the file is not kept either."""
        try:
            await self.ledger.transact(unit)
        except Exception:
            stored.unlink(missing_ok=True)
            raise
        self.wake_delivery()
        self.wake_relay()

    @staticmethod
    def _evidence_of(checked: Checked) -> Evidence | None:
        # The worker verified this signature; reading its content again here is cheap.
        try:
            content = cms.encapsulated_content(cms.load(checked.evidence_der or b""))
            return from_xml(content) if content else None
        except (ValueError, TypeError, KeyError):
            return None

    async def _receipt_problem(self, peer: Peer, evidence: Evidence, rcpts: list[str]) -> str | None:
        """Why this evidence is not the peer's word on one of our senders' messages, or None."""
        if evidence.issuer_domain not in peer.domains:
            return f"its evidence was issued by {evidence.issuer_domain}, not by {peer.name}"
        if evidence.event not in _RECEIVABLE:
            return f"{evidence.event.value} is not evidence a peer provider issues for our senders"
        async with self.ledger.engine.connect() as conn:
            facts = await load_facts(conn, evidence.message_id)
        if facts is None or facts.sender.rpartition("@")[2] != self.domain:
            return f"no message {evidence.message_id} was sent from here"
        recipient = evidence.recipient
        if recipient is None or recipient.address not in facts.recipients:
            return "its evidence names no recipient of that message"
        if recipient.address.rpartition("@")[2] not in peer.domains:
            return f"{recipient.address} is not at {peer.name}"
        if rcpts != [facts.sender]:
            return f"a receipt for {evidence.message_id} goes to its sender {facts.sender} only"
        return None


def _submission_time(xml: bytes | None) -> dt.datetime | None:
    """When the sender's provider accepted the message, as its attached evidence says; None
    when that evidence is not one we can read (the dispatch itself passed every check)."""
    if xml is None:
        return None
    try:
        return from_xml(xml).submission_time
    except ValueError:
        return None


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
