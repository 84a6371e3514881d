"""Bundles of renewed evidence, on the clock-shifted PKI of test_archive: evidence made in 2019,
archived and renewed in the SHA-256 era, re-hashed to SHA-512 in 2024, exported now when every
certificate that signed it has expired. The bundle verifies offline through the `.ers` it carries
beside each `.p7m`, and nothing else does."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from evidence_fixtures import sample_evidence
from sqlalchemy.ext.asyncio import AsyncEngine
from test_archive import NOW, REHASHED_AT, SIGNED_AT, World, shift_clock, utc
from test_archive import issued_at_now as issued_at_now  # autouse: certificates start at NOW
from test_bundle import DIGEST, RECIPIENTS, SENDER, SUBJECT, _members, _zip

from kepmta import pki
from kepmta.db.engine import open_engine
from kepmta.events import MessageFacts, save_facts
from kepmta.evidence import archive, bundle, timeline
from kepmta.evidence.ledger import Kind, Ledger, NewRecord, Writes, evidence_record
from kepmta.evidence.model import Reason
from kepmta.evidence.revocation import crl_der
from kepmta.evidence.signer import EvidenceSigner
from kepmta.evidence.timeline import MessageEvidence
from kepmta.evidence.verify import ARCHIVE, TIMESTAMP, verify_evidence

MESSAGE_ID = "20190601120000.0ld@hs01.kep.tr"


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[dt.datetime], None]:
    return lambda when: shift_clock(monkeypatch, when)


async def _renewed_message(
    w: World, move: Callable[[dt.datetime], None], engine: AsyncEngine
) -> MessageEvidence:
    """Two evidence of a 2019 message, renewed through 2020 and re-hashed to SHA-512 in 2024."""
    book = Ledger(engine)
    facts = MessageFacts(MESSAGE_ID, SENDER, RECIPIENTS, SUBJECT, "ua@laptop", SIGNED_AT, SIGNED_AT, DIGEST)
    crl = NewRecord(Kind.REVOCATION, "crl-2019", utc(2019, 5, 1), crl_der(w.crl))

    def first(tx: Writes) -> None:
        save_facts(tx, facts)
        tx.append(crl)

    await book.transact(first)
    move(SIGNED_AT)
    signer = EvidenceSigner(w.signer, [w.provider_ca.cert], w.tsa1)
    for i, (reason, rcpt) in enumerate([(Reason.RA01, None), (Reason.RD01, 1)]):
        ev = sample_evidence(
            evidence_id=f"ev-{i}-{MESSAGE_ID}",
            event=reason.event,
            reason=reason,
            details=reason.label,
            refers_to_recipient=rcpt,
            message_id=MESSAGE_ID,
            event_time=SIGNED_AT,
        )
        signed = await signer.sign(ev)
        await book.transact(lambda tx, signed=signed: tx.append(evidence_record(signed)))
    trust, validation = [w.tsa_ca.cert], [w.provider_ca.cert, w.tsa_ca.cert]
    for when, tsa, algorithm in (
        (utc(2020, 3, 1), w.tsa2, None),
        (utc(2020, 12, 1), w.tsa3, None),
        (REHASHED_AT, w.tsa4, "sha512"),
    ):
        move(when)
        await archive.renew(book, tsa, trust, validation, deadline=None, algorithm=algorithm)
    move(NOW)
    return await timeline.load(engine, MESSAGE_ID)


async def _export(
    w: World, move: Callable[[dt.datetime], None], tmp_path: Path
) -> tuple[MessageEvidence, bytes]:
    engine = await open_engine(f"sqlite+aiosqlite:///{tmp_path / 'kep.db'}")
    try:
        message = await _renewed_message(w, move, engine)
    finally:
        await engine.dispose()
    return message, _build(w, message)


def _build(w: World, message: MessageEvidence) -> bytes:
    # Exported now: the manifest is signed by today's transaction certificate.
    today = pki.issue("Transaction Certificate now", pki.Role.EVIDENCE, w.provider_ca)
    return bundle.build(
        message,
        provider_name="Test KEP",
        provider_ca=[w.provider_ca.cert],
        tsa_ca=[w.tsa_ca.cert],
        signer=today,
        chain=[w.provider_ca.cert],
    )


def _verify(w: World, data: bytes) -> bundle.BundleReport:
    return bundle.verify(data, [w.provider_ca.cert], [w.tsa_ca.cert])


async def test_a_bundle_of_renewed_evidence_verifies_after_its_certificates_expired(
    clock: Callable[[dt.datetime], None], tmp_path: Path
) -> None:
    w = World()
    message, data = await _export(w, clock, tmp_path)
    report = _verify(w, data)
    assert report.ok, bundle.describe(report)
    members = _members(data)
    records = json.loads(members["ledger.json"])["records"]
    for entry, (path, evidence_report) in zip(message.entries, report.evidence, strict=True):
        ers = f"evidence/{entry.name}.ers"
        assert path == f"evidence/{entry.name}.p7m"
        assert "chain 2 SHA-512 (hash-tree renewal)" in evidence_report.check(ARCHIVE).detail
        newest = [
            r for r in message.records if r.kind is Kind.ARCHIVE and r.evidence_id == entry.record.evidence_id
        ]
        assert members[ers] == newest[-1].der
        assert next(r for r in records if r["der"] == path)["evidence_record"] == ers
        # The pair taken out of the bundle verifies on its own, as `verify X.p7m --ers X.ers` does.
        alone = verify_evidence(
            members[path], [w.provider_ca.cert], [w.tsa_ca.cert], evidence_record=members[ers]
        )
        assert alone.ok
        assert f"kepmta evidence verify {path} --ers {ers}" in members["README.txt"].decode()
    # The older versions of each record stay in the bundle as ledger records, for the chain.
    assert sum(p.startswith("ledger/") and p.endswith("-archive.der") for p in members) == 4


async def test_without_its_evidence_records_the_old_bundle_does_not_verify(
    clock: Callable[[dt.datetime], None], tmp_path: Path
) -> None:
    w = World()
    message, _ = await _export(w, clock, tmp_path)
    bare = dataclasses.replace(
        message, records=tuple(r for r in message.records if r.kind is not Kind.ARCHIVE), chain=()
    )
    report = _verify(w, _build(w, bare))
    assert not report.ok
    assert all(TIMESTAMP in {c.name for c in r.checks if not c.ok} for _, r in report.evidence)


async def test_a_changed_evidence_record_in_the_bundle_fails(
    clock: Callable[[dt.datetime], None], tmp_path: Path
) -> None:
    w = World()
    message, data = await _export(w, clock, tmp_path)
    members = _members(data)
    ers = next(p for p in members if p.endswith(".ers"))
    changed = bytearray(members[ers])
    changed[len(changed) // 2] ^= 0x01
    report = _verify(w, _zip({**members, ers: bytes(changed)}))
    assert not report.ok and f"{ers} was changed" in bundle.describe(report)
    # Rebuilt and re-signed around the changed record, its ledger hash and its proof still fail.
    target = next(r for r in reversed(message.records) if r.kind is Kind.ARCHIVE)
    forged = tuple(
        dataclasses.replace(r, der=r.der[:-40] + bytes(40)) if r.seq == target.seq else r
        for r in message.records
    )
    report = _verify(w, _build(w, dataclasses.replace(message, records=forged)))
    checks = {c.name: c for c in report.checks}
    assert not checks["ledger"].ok
    assert any(not r.check(ARCHIVE).ok for _, r in report.evidence)
    assert not report.ok
