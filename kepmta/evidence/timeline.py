"""One message's evidence, read back from the database as a timeline for people and for bundles.

Read-only: the ledger rows of the message in ledger order, with their chain hashes, each evidence
parsed and (on request) verified offline. `kepmta evidence show`, `export` and `report` all start
from the `MessageEvidence` this module loads.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography import x509
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from kepmta.db import utc
from kepmta.db.schema import messages, recipients
from kepmta.evidence.checkpoint import read_statement
from kepmta.evidence.ledger import (
    EVIDENCE_VERSIONS,
    Kind,
    Ledger,
    LedgerRecord,
    chain_hash,
    content_digest,
)
from kepmta.evidence.model import Event, Evidence
from kepmta.evidence.revocation import in_force, load_crl
from kepmta.evidence.verify import ARCHIVE, SELF_CONTAINED, Check, Report, verify_evidence
from kepmta.evidence.xml import from_xml
from kepmta.smime import cms

# Turkish names of the events as KEP users know them (PTT's evidence list), for people.
EVENT_NAMES_TR: dict[Event, str] = {
    Event.SUBMISSION_ACCEPTANCE: "Gönderim kabul edildi",
    Event.SUBMISSION_REJECTION: "Gönderim reddedildi",
    Event.RELAY_ACCEPTANCE: "Alıcı hizmet sağlayıcısı kabul etti",
    Event.RELAY_REJECTION: "Alıcı hizmet sağlayıcısı reddetti",
    Event.RELAY_FAILURE: "Alıcı hizmet sağlayıcısına iletilemedi",
    Event.CONTENT_CONSIGNMENT: "Alıcının posta kutusuna teslim edildi",
    Event.CONTENT_CONSIGNMENT_FAILURE: "Alıcının posta kutusuna teslim edilemedi",
    Event.CONTENT_HANDOVER: "Alıcı iletiyi açtı",
}
EVENT_NAMES_EN: dict[Event, str] = {
    Event.SUBMISSION_ACCEPTANCE: "Submission accepted",
    Event.SUBMISSION_REJECTION: "Submission rejected",
    Event.RELAY_ACCEPTANCE: "Accepted by the recipient's provider",
    Event.RELAY_REJECTION: "Rejected by the recipient's provider",
    Event.RELAY_FAILURE: "Could not be relayed",
    Event.CONTENT_CONSIGNMENT: "Delivered to the recipient's mailbox",
    Event.CONTENT_CONSIGNMENT_FAILURE: "Could not be delivered",
    Event.CONTENT_HANDOVER: "Opened by the recipient",
}


class NotFound(LookupError):
    """No message, or no single message, answers to the id given."""


@dataclass(frozen=True)
class Entry:
    """One evidence of the message: its newest version in the ledger and what it says."""

    record: LedgerRecord  # the newest evidence version (time-stamped, if that came later)
    evidence: Evidence

    @property
    def seq(self) -> int:
        return self.record.seq

    @property
    def der(self) -> bytes:
        return self.record.der

    @property
    def xml(self) -> bytes:
        return self.record.xml or b""

    @property
    def received(self) -> bool:
        """A peer provider's evidence, kept as it signed it (not ours)."""
        return self.record.kind is Kind.RECEIVED

    @property
    def issuer(self) -> str:
        """Who issued the evidence, as its XML names the issuer: `Name (domain)`."""
        return f"{self.evidence.issuer_name} ({self.evidence.issuer_domain})"

    @property
    def name(self) -> str:
        """A file name stem unique within the message: `000012-ContentConsignment-r2`."""
        ev = self.evidence
        suffix = f"-r{ev.refers_to_recipient}" if ev.refers_to_recipient is not None else ""
        return f"{self.seq:06d}-{ev.event.value}{suffix}"


def record_ok(record: LedgerRecord) -> bool:
    """Whether a record's hash is the one the ledger computed over its content and prev_hash."""
    return chain_hash(record.prev_hash, record.content()) == record.hash


@dataclass(frozen=True)
class MessageEvidence:
    """A message's facts as the database holds them, its evidence in ledger order, and the other
    ledger records a verifier needs: earlier versions of each evidence, the revocation data in force
    when each was made, and the chain from the message's last record to the next checkpoint."""

    message_id: str
    ua_message_id: str | None  # without <>
    sender: str
    operator: str | None
    recipients: tuple[str, ...]
    subject: str
    submitted_at: dt.datetime
    digest: bytes | None
    entries: tuple[Entry, ...]
    records: tuple[LedgerRecord, ...] = ()  # every record the bundle carries in full, in ledger order
    chain: tuple[Link, ...] = ()  # every position from the first record to the next checkpoint


@dataclass(frozen=True)
class Checked:
    """An entry with the offline verifier's report on its evidence."""

    entry: Entry
    report: Report

    @property
    def ok(self) -> bool:
        return self.report.ok and record_ok(self.entry.record)

    @property
    def renewal(self) -> str | None:
        """For an evidence verified through its evidence record: "renewed, chain 1 SHA-256, …"."""
        found = [c for c in self.report.checks if c.name == ARCHIVE and c.ok]
        if not found:
            return None
        return "renewed, " + found[0].detail.split(": ", 1)[-1]


def bare_id(text: str) -> str:
    """A Message-ID as typed by a person: surrounding white space and angle brackets dropped."""
    value = text.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1].strip()
    return value


async def resolve(conn: AsyncConnection, text: str) -> str:
    """The provider message id meant by `text`: the provider id, or a unique user agent Message-ID."""
    wanted = bare_id(text)
    if not wanted:
        raise NotFound("give a Message-ID")
    found = (await conn.execute(select(messages.c.id).where(messages.c.id == wanted))).scalar()
    if found is not None:
        return str(found)
    by_ua = (await conn.execute(select(messages.c.id).where(messages.c.ua_message_id == wanted))).scalars()
    ids = sorted(str(i) for i in by_ua)
    if not ids:
        raise NotFound(f"no message with the id <{wanted}>")
    if len(ids) > 1:
        # A user agent id is the sender's choice, so two messages may share it; guessing would
        # show a person the wrong message's evidence.
        raise NotFound(f"<{wanted}> is the user agent Message-ID of {len(ids)} messages: {', '.join(ids)}")
    return ids[0]


async def _revocation_before(book: Ledger, entries: Sequence[Entry]) -> list[LedgerRecord]:
    """For each entry, the newest CRL record of each issuer that precedes it and was in force at its
    event time: the revocation data captured for it (kepmta.evidence.revocation)."""
    found: dict[int, LedgerRecord] = {}
    newest: dict[bytes, tuple[LedgerRecord, x509.CertificateRevocationList]] = {}
    wanted = sorted(entries, key=lambda e: e.seq)

    def settle(entry: Entry) -> None:
        for rec, crl in newest.values():
            if in_force(crl, entry.evidence.event_time):
                found[rec.seq] = rec

    async for rec in book.walk((Kind.REVOCATION,)):
        while wanted and rec.seq > wanted[0].seq:
            settle(wanted.pop(0))
        if not wanted:
            break
        try:
            crl = load_crl(rec.der)
        except ValueError:
            continue  # a record that is no CRL cannot be revocation data for anything
        newest[crl.issuer.public_bytes()] = (rec, crl)
    for entry in wanted:
        settle(entry)
    return sorted(found.values(), key=lambda r: r.seq)


@dataclass(frozen=True)
class Link:
    """One position of the ledger chain, shown without its content: enough to recompute the chain."""

    seq: int
    kind: str
    content_sha256: bytes  # ledger.content_digest of the record
    prev_hash: bytes
    hash: bytes


async def _chain(book: Ledger, first: int, last: int) -> tuple[list[Link], LedgerRecord | None]:
    """The chain from `first` to the first checkpoint that seals `last` (or to `last` if none yet).

    Every hash includes the one before, so these links tie each of the message's records to the
    others and to the checkpoint, whose signed, time-stamped statement of the chain head seals them.
    """
    links: list[Link] = []
    async for rec in book.walk():
        if rec.seq < first:
            continue
        links.append(Link(rec.seq, rec.kind.value, content_digest(rec.content()), rec.prev_hash, rec.hash))
        if rec.seq > last and rec.kind is Kind.CHECKPOINT and _seals(rec) >= last:
            return links, rec
    return [link for link in links if link.seq <= last], None


def _seals(rec: LedgerRecord) -> int:
    """The seq a checkpoint record's statement seals (0 if it cannot be read)."""
    try:
        return read_statement(cms.encapsulated_content(cms.load(rec.der)) or b"")[0]
    except ValueError:
        return 0


async def load(engine: AsyncEngine, text: str) -> MessageEvidence:
    """The message `text` names and its ledger records (see `resolve`)."""
    async with engine.connect() as conn:
        message_id = await resolve(conn, text)
        row = (await conn.execute(select(messages).where(messages.c.id == message_id))).one()
        rcpts = await conn.execute(
            select(recipients.c.address)
            .where(recipients.c.message_id == message_id)
            .order_by(recipients.c.position)
        )
        addresses = tuple(r.address for r in rcpts)
    book = Ledger(engine)
    current = await book.for_message(message_id)
    entries = tuple(Entry(r, from_xml(r.xml or b"")) for r in current)
    versions: list[LedgerRecord] = []
    for r in current:
        versions += await book.versions(r.evidence_id)
    own = [v.seq for v in versions]
    versions += await _revocation_before(book, entries)
    links: list[Link] = []
    if own:
        links, checkpoint = await _chain(book, min(own), max(own))
        if checkpoint is not None:
            versions.append(checkpoint)
            # Its newest evidence record only: each renewal holds the whole record before it.
            renewals = [r for r in await book.versions(checkpoint.evidence_id) if r.kind is Kind.ARCHIVE]
            versions += renewals[-1:]
    return MessageEvidence(
        message_id=row.id,
        ua_message_id=row.ua_message_id,
        sender=row.sender,
        operator=row.operator,
        recipients=addresses,
        subject=row.subject,
        submitted_at=utc(row.submitted_at),
        digest=None if row.digest is None else bytes(row.digest),
        entries=entries,
        records=tuple(sorted(versions, key=lambda v: v.seq)),
        chain=tuple(links),
    )


def open_readonly(url: str) -> AsyncEngine:
    """An engine on an existing database; unlike `db.engine.open_engine` it creates nothing.

    A mistyped --data must not leave an empty database behind, so a missing SQLite file is an error.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = parsed.database
        if not path or path == ":memory:" or not Path(path).is_file():
            raise NotFound(f"no database at {path or url}")
    return create_async_engine(url)


async def load_message(url: str, text: str) -> MessageEvidence:
    engine = open_readonly(url)
    try:
        return await load(engine, text)
    finally:
        await engine.dispose()


async def renewed_evidence(url: str, text: str) -> tuple[LedgerRecord, LedgerRecord]:
    """The newest version of the evidence `text` names and its newest evidence record."""
    evidence_id = bare_id(text)
    engine = open_readonly(url)
    try:
        found = await Ledger(engine).versions(evidence_id)
    finally:
        await engine.dispose()
    versions = [r for r in found if r.kind in EVIDENCE_VERSIONS]
    if not versions:
        raise NotFound(f"no evidence with the id {evidence_id}")
    renewals = [r for r in found if r.kind is Kind.ARCHIVE]
    if not renewals:
        raise NotFound(f"evidence {evidence_id} has no evidence record yet: run `kepmta evidence renew`")
    return versions[-1], renewals[-1]


def check(
    message: MessageEvidence,
    provider_trust: Sequence[x509.Certificate],
    tsa_trust: Sequence[x509.Certificate],
    weak: Mapping[str, dt.datetime] | None = None,
    *,
    peers: Mapping[str, Sequence[x509.Certificate]] | None = None,
) -> tuple[Checked, ...]:
    """Every entry verified offline, as `kepmta evidence verify` would verify its file: through its
    newest evidence record when it was renewed (`verify X.p7m --ers X.ers`), since an old
    evidence's own time-stamp no longer speaks once its TSA certificate has expired.

    A peer's received evidence is verified against that peer's anchors in `peers` (by the issuer
    domain its XML states: the CAs of its transaction certificate and of its TSA), never ours."""
    newest = {
        r.evidence_id: r.der
        for r in message.records
        if r.kind is Kind.ARCHIVE and r.message_id == message.message_id
    }
    return tuple(
        Checked(
            e,
            _received(e, (peers or {}).get(e.evidence.issuer_domain), weak)
            if e.received
            else verify_evidence(
                e.der,
                provider_trust,
                tsa_trust,
                evidence_record=newest.get(e.record.evidence_id),
                weak=weak,
            ),
        )
        for e in message.entries
    )


def _received(
    entry: Entry, anchors: Sequence[x509.Certificate] | None, weak: Mapping[str, dt.datetime] | None
) -> Report:
    if anchors:
        return verify_evidence(entry.der, anchors, anchors, weak=weak)
    # Without the peer's anchors only what the evidence proves by itself can be checked; the
    # rest is reported as not checked, so the evidence never passes for verified.
    alone = verify_evidence(entry.der, (), ())
    missing = f"not checked: no trust anchors of the peer provider {entry.evidence.issuer_domain}"
    return replace(
        alone,
        checks=tuple(c if c.name in SELF_CONTAINED else Check(c.name, False, missing) for c in alone.checks),
        timestamp_time=None,
    )


def _when(value: dt.datetime) -> str:
    return f"{value.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    line = ["  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip() for cells in rows]
    head = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()
    return [head, "  ".join("-" * w for w in widths), *line]


def render(message: MessageEvidence, checked: Sequence[Checked] | None = None) -> str:
    """The message and its evidence as a timeline table for a terminal."""
    lines = [
        f"Message      <{message.message_id}>",
        f"Subject      {message.subject}",
        f"Sender       {message.sender}" + (f" (operator {message.operator})" if message.operator else ""),
    ]
    for i, r in enumerate(message.recipients, 1):
        lines.append(f"Recipient {i}  {r}")
    lines.append(f"Submitted    {_when(message.submitted_at)} UTC")
    if message.ua_message_id:
        lines.append(f"UA id        <{message.ua_message_id}>")
    lines.append(f"SHA-256      {message.digest.hex() if message.digest else '-'}")
    lines.append("")
    if not message.entries:
        lines.append("No evidence has been recorded for this message yet.")
        return "\n".join(lines)
    results = {c.entry.seq: c for c in checked or ()}
    received = [e for e in message.entries if e.received]
    header = ["Time (UTC)", "Code", "Event", "Reason", "Recipient", "Ledger", "Evidence id"]
    if received:
        header.append("Issuer")
    if checked is not None:
        header.append("Verified")
    rows = []
    for e in message.entries:
        ev = e.evidence
        row = [
            _when(ev.event_time),
            str(ev.event.ptt_code),
            ev.event.value,
            ev.reason.value,
            ev.recipient.address if ev.recipient else "-",
            f"#{e.seq}",
            ev.evidence_id,
        ]
        if received:
            row.append(f"peer {ev.issuer_domain}" if e.received else ev.issuer_domain)
        if checked is not None:
            result = results.get(e.seq)
            row.append(_verdict(result))
        rows.append(row)
    lines += _table(header, rows)
    if received:
        lines.append("")
        lines.append("Received from peer providers, kept exactly as they signed it:")
        lines += [f"  #{e.seq} {e.evidence.event.value}: issued by {e.issuer}" for e in received]
    if checked is not None:
        failed = [c for c in checked if not c.ok]
        lines.append("")
        lines.append(
            f"All {len(checked)} evidence verified."
            if not failed
            else f"{len(failed)} of {len(checked)} evidence did NOT verify:"
        )
        for c in failed:
            lines.append(f"  #{c.entry.seq} {c.entry.evidence.event.value}:")
            lines += [f"    ✗ {x.name}: {x.detail}" for x in c.report.checks if not x.ok]
            if not record_ok(c.entry.record):
                lines.append("    ✗ ledger: the record's hash does not match its evidence")
        for c in checked:
            if c.ok and c.renewal is not None:
                lines.append(f"  #{c.entry.seq} {c.entry.evidence.event.value}: {c.renewal}")
    return "\n".join(lines)


def _verdict(result: Checked | None) -> str:
    if result is None:
        return "-"
    return "✓ yes" if result.ok else "✗ NO"
