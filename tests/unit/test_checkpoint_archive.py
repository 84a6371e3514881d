"""Renewed checkpoints, on the clock-shifted PKI of test_archive: a checkpoint signed and
time-stamped in 2020 by certificates long expired still proves the chain head it seals, through the
RFC 4998 evidence record `kepmta evidence renew` keeps for it, in the audit and in a bundle."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import AsyncIterator, Callable

import pytest
from evidence_fixtures import sample_evidence
from sqlalchemy.ext.asyncio import AsyncEngine
from test_archive import NOW, SIGNED_AT, World, shift_clock, utc
from test_archive import issued_at_now as issued_at_now  # autouse: certificates start at NOW
from test_bundle import DIGEST, RECIPIENTS, SENDER, SUBJECT, _members

from kepmta import pki
from kepmta.db.engine import open_engine
from kepmta.events import MessageFacts, save_facts
from kepmta.evidence import archive, bundle, timeline
from kepmta.evidence.checkpoint import audit, statement
from kepmta.evidence.ledger import Kind, Ledger, NewRecord, Writes, evidence_record
from kepmta.evidence.revocation import crl_der, record_id
from kepmta.evidence.signer import EvidenceSigner

MESSAGE_ID = "20190601120000.cp@hs01.kep.tr"
SEALED_AT = utc(2020, 3, 2)
CHECKPOINT_RENEWED_AT = utc(2020, 12, 1)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[dt.datetime], None]:
    return lambda when: shift_clock(monkeypatch, when)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = await open_engine(database_url)
    yield eng
    await eng.dispose()


class CheckpointWorld(World):
    """test_archive's world, and what a provider had in 2020: a new transaction certificate and
    CRL, and a long-lived TSA that keeps the evidence's own record valid until today."""

    def __init__(self) -> None:
        super().__init__()
        self.signer2020 = pki.issue(
            "Transaction Certificate 2020", pki.Role.EVIDENCE, self.provider_ca,
            not_before=utc(2020, 1, 1), not_after=utc(2021, 1, 1),
        )  # fmt: skip
        self.crl2020 = pki.issue_crl(
            self.provider_ca, (), this_update=utc(2020, 3, 1), next_update=utc(2020, 5, 1)
        )
        self.tsa_long = self._tsa("TSA long", utc(2020, 1, 1), NOW + dt.timedelta(days=5 * 365))

    def trust(self) -> tuple[list[pki.x509.Certificate], list[pki.x509.Certificate]]:
        return [self.provider_ca.cert], [self.tsa_ca.cert]


async def _history(w: CheckpointWorld, move: Callable[[dt.datetime], None], engine: AsyncEngine) -> Ledger:
    """A 2019 evidence archived in March 2020, then a checkpoint sealing it time-stamped by TSA 2020
    (which expired on 2021-01-01), then (when the checkpoint's TSA is about to expire) a renewal
    run that only the checkpoint needs."""
    book = Ledger(engine)
    facts = MessageFacts(MESSAGE_ID, SENDER, RECIPIENTS, SUBJECT, "ua@laptop", SIGNED_AT, SIGNED_AT, DIGEST)
    crl = NewRecord(Kind.REVOCATION, record_id(w.crl), utc(2019, 5, 1), crl_der(w.crl))

    def first(tx: Writes) -> None:
        save_facts(tx, facts)
        tx.append(crl)

    await book.transact(first)
    move(SIGNED_AT)
    ev = sample_evidence(evidence_id=f"ev-{MESSAGE_ID}", message_id=MESSAGE_ID, event_time=SIGNED_AT)
    signed = await EvidenceSigner(w.signer, [w.provider_ca.cert], w.tsa1).sign(ev)
    crl2020 = NewRecord(Kind.REVOCATION, record_id(w.crl2020), utc(2020, 3, 1), crl_der(w.crl2020))

    def second(tx: Writes) -> None:
        tx.append(evidence_record(signed))
        tx.append(crl2020)

    await book.transact(second)
    trust, validation = [w.tsa_ca.cert], [w.provider_ca.cert, w.tsa_ca.cert]
    move(utc(2020, 3, 1))
    done = await archive.renew(book, w.tsa_long, trust, validation, deadline=None)
    assert (done.renewed, done.started) == (1, 1)
    move(SEALED_AT)
    head = await book.head()
    assert head is not None
    sealer = EvidenceSigner(w.signer2020, [w.provider_ca.cert], w.tsa2)
    der = await sealer.sign_statement(statement("hs01.kep.tr", head.seq, head.hash, SEALED_AT))
    # What Checkpointer.make appends, at the time it would have been made.
    checkpoint = NewRecord(Kind.CHECKPOINT, f"checkpoint.{head.seq}", SEALED_AT, der)
    await book.transact(lambda tx: tx.append(checkpoint))
    return book


async def _renew_checkpoint(w: CheckpointWorld, move: Callable[[dt.datetime], None], book: Ledger) -> None:
    move(CHECKPOINT_RENEWED_AT)
    done = await archive.renew(
        book,
        w.tsa3,
        [w.tsa_ca.cert],
        [w.provider_ca.cert, w.tsa_ca.cert],
        deadline=CHECKPOINT_RENEWED_AT + dt.timedelta(days=180),
    )
    # The evidence's record lasts (TSA long); the checkpoint's TSA 2020 ends within 180 days.
    assert (done.renewed, done.started) == (1, 1)
    [rec] = [r async for r in book.walk((Kind.ARCHIVE,)) if r.evidence_id.startswith("checkpoint.")]
    assert [c.algorithm for c in archive.parse(rec.der).chains] == ["sha256"]


def _build(w: CheckpointWorld, message: timeline.MessageEvidence) -> bytes:
    return bundle.build(
        message,
        provider_name="Test KEP",
        provider_ca=[w.provider_ca.cert],
        tsa_ca=[w.tsa_ca.cert],
        signer=pki.issue("Transaction Certificate now", pki.Role.EVIDENCE, w.provider_ca),
        chain=[w.provider_ca.cert],
    )


def _checkpoint_check(report: bundle.BundleReport) -> bundle.Check:
    [found] = [c for c in report.checks if c.name.startswith("checkpoint ")]
    return found


async def test_a_renewed_old_checkpoint_audits_clean_and_its_bundle_verifies(
    clock: Callable[[dt.datetime], None], engine: AsyncEngine
) -> None:
    w = CheckpointWorld()
    book = await _history(w, clock, engine)
    await _renew_checkpoint(w, clock, book)
    clock(NOW)
    result = await audit(book, *w.trust())
    assert result.ok, result.problems
    assert result.checkpoints == 1
    message = await timeline.load(engine, MESSAGE_ID)
    data = _build(w, message)
    report = bundle.verify(data, *w.trust())
    assert report.ok, bundle.describe(report)
    check = _checkpoint_check(report)
    checkpoint = next(r for r in message.records if r.kind is Kind.CHECKPOINT)
    ers = f"ledger/{checkpoint.seq:06d}-checkpoint.ers"
    assert check.detail.endswith(f"renewed by {ers}")
    members = _members(data)
    renewal = next(
        r for r in message.records if r.kind is Kind.ARCHIVE and r.evidence_id == checkpoint.evidence_id
    )
    assert members[ers] == renewal.der


async def test_without_its_renewal_the_old_checkpoint_fails_in_the_bundle(
    clock: Callable[[dt.datetime], None], engine: AsyncEngine
) -> None:
    w = CheckpointWorld()
    book = await _history(w, clock, engine)
    clock(NOW)
    message = await timeline.load(engine, MESSAGE_ID)
    report = bundle.verify(_build(w, message), *w.trust())
    check = _checkpoint_check(report)
    assert not check.ok and "time-stamp" in check.detail
    assert not report.ok
    # The audit judges every record at the time the ledger gives it, so the checkpoint itself
    # passes there; what renewal adds to the audit is the checkpoint's evidence record, checked too.
    assert (await audit(book, *w.trust())).ok


async def test_a_bundle_naming_an_older_or_no_checkpoint_record_fails(
    clock: Callable[[dt.datetime], None], engine: AsyncEngine
) -> None:
    w = CheckpointWorld()
    book = await _history(w, clock, engine)
    await _renew_checkpoint(w, clock, book)
    clock(NOW)
    message = await timeline.load(engine, MESSAGE_ID)
    # The renewal left out of the export: the checkpoint has no .ers, and its TSA has expired.
    bare = dataclasses.replace(
        message,
        records=tuple(
            r
            for r in message.records
            if not (r.kind is Kind.ARCHIVE and r.evidence_id.startswith("checkpoint."))
        ),
    )
    assert not _checkpoint_check(bundle.verify(_build(w, bare), *w.trust())).ok
    # A changed evidence record beside the checkpoint breaks its proof.
    target = next(
        r for r in message.records if r.kind is Kind.ARCHIVE and r.evidence_id.startswith("checkpoint.")
    )
    forged = tuple(
        dataclasses.replace(r, der=r.der[:-40] + bytes(40)) if r.seq == target.seq else r
        for r in message.records
    )
    report = bundle.verify(_build(w, dataclasses.replace(message, records=forged)), *w.trust())
    assert not _checkpoint_check(report).ok


async def test_rehash_moves_checkpoints_to_the_stronger_algorithm_too(
    clock: Callable[[dt.datetime], None], engine: AsyncEngine
) -> None:
    w = CheckpointWorld()
    book = await _history(w, clock, engine)
    clock(NOW - dt.timedelta(days=1))
    done = await archive.renew(
        book, w.tsa4, [w.tsa_ca.cert], [w.provider_ca.cert, w.tsa_ca.cert], deadline=None, algorithm="sha512"
    )
    # Both the evidence and the checkpoint move to SHA-512 (the checkpoint starts a record in it).
    assert (done.renewed, done.started, done.rehashed) == (2, 1, 1)
    clock(NOW)
    result = await audit(book, *w.trust())
    assert result.ok, result.problems
