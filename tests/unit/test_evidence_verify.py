"""The offline verifier: each check separately, on good, tampered, untrusted and garbage input."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from evidence_fixtures import Pki, make_pki, sample_evidence

from kepmta import pki
from kepmta.evidence.signer import EvidenceSigner, SignedEvidence
from kepmta.evidence.tsa import BuiltinTsa
from kepmta.evidence.verify import CHECK_NAMES, Report, describe, verify_evidence
from kepmta.evidence.xml import to_xml
from kepmta.smime import cms


@pytest.fixture
def p(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


async def _signed(
    p: Pki, signer: pki.KeyPair | None = None, *, chains: bool = False, **changes: object
) -> SignedEvidence:
    """Evidence signed by `signer` (the provider's by default); `chains` embeds the CA certificates."""
    tsa = BuiltinTsa(p.tsa, [p.tsa_ca.cert] if chains else [])
    chain = [p.provider_ca.cert] if chains else []
    return await EvidenceSigner(signer or p.evidence, chain, tsa).sign(sample_evidence(**changes))


def _verify(p: Pki, der: bytes) -> Report:
    return verify_evidence(der, [p.provider_ca.cert], [p.tsa_ca.cert])


def _failed(report: Report) -> set[str]:
    return {c.name for c in report.checks if not c.ok}


@pytest.mark.parametrize("chains", [False, True])
async def test_good_evidence_passes_every_check(p: Pki, chains: bool) -> None:
    signed = await _signed(p, chains=chains)
    report = _verify(p, signed.der)
    assert [c.name for c in report.checks] == list(CHECK_NAMES)
    assert _failed(report) == set(), describe(report)
    assert report.ok
    assert report.evidence == signed.evidence
    assert report.signer_subject == p.evidence.cert.subject.rfc4514_string()
    assert report.timestamp_time is not None


async def test_describe_tells_a_person_who_what_when(p: Pki) -> None:
    report = _verify(p, (await _signed(p)).der)
    text = describe(report)
    for fragment in (
        "ContentConsignment",
        "RD01",
        "ayse.yilmaz@hs01.kep.tr",
        "mehmet.ozturk@hs01.kep.tr",
        "20240502101530.abc123@hs01.kep.tr",
        bytes(range(32)).hex(),
        "Test KEP İşlem Sertifikası",
        "Result: VALID",
        "✓ time-stamp",
    ):
        assert fragment in text
    assert "✗" not in text


def _positions(der: bytes) -> dict[str, int]:
    """Offsets of named parts of a signed evidence, for tampering with one byte there."""
    ci = cms.load(der)
    content = cms.encapsulated_content(ci)
    token = cms.signature_timestamp_token(ci)
    assert content is not None and token is not None
    sig = cms.signature_value(ci)
    token_sig = cms.signature_value(cms.load(token))
    cert = cms.signer_certificate(ci).public_bytes(serialization.Encoding.DER)
    return {
        "content start": der.index(content),
        "content middle": der.index(content) + len(content) // 2,
        "content end": der.index(content) + len(content) - 1,
        "signature": der.index(sig) + len(sig) // 2,
        "token start": der.index(token),
        "token imprint": der.index(hashlib.sha256(sig).digest()) + 3,
        "token signature": der.index(token_sig) + 5,
        "token end": der.index(token) + len(token) - 1,
        "signer certificate": der.index(cert) + 40,
    }


async def test_flipping_any_sampled_byte_fails_a_check(p: Pki) -> None:
    # With the CA certificates embedded, so that the unsigned certificate fields are covered too.
    der = (await _signed(p, chains=True)).der
    named = _positions(der)
    # The named places plus an even sample over the whole file: framing, certificates, attributes.
    positions = {**named, **{f"offset {i}": i for i in range(0, len(der), 37)}}
    for label, i in positions.items():
        flipped = bytearray(der)
        flipped[i] ^= 0x01
        report = _verify(p, bytes(flipped))
        assert not report.ok, f"flip at {label} ({i}) went unnoticed"
        assert _failed(report), label


async def test_content_flip_fails_the_signature_check(p: Pki) -> None:
    der = (await _signed(p)).der
    flipped = bytearray(der)
    flipped[_positions(der)["content middle"]] ^= 0x20
    report = _verify(p, bytes(flipped))
    assert "signature" in _failed(report)
    assert "does not match" in report.check("signature").detail


async def test_token_flip_fails_the_timestamp_check(p: Pki) -> None:
    der = (await _signed(p)).der
    flipped = bytearray(der)
    flipped[_positions(der)["token signature"]] ^= 0x01
    report = _verify(p, bytes(flipped))
    assert "time-stamp" in _failed(report)
    assert {"signature", "content"}.isdisjoint(_failed(report))


async def test_untrusted_signer_fails_only_the_chain(p: Pki) -> None:
    rogue_ca = pki.issue("Rogue CA", pki.Role.CA)
    rogue = pki.issue("Rogue evidence", pki.Role.EVIDENCE, rogue_ca)
    report = _verify(p, (await _signed(p, rogue)).der)
    assert _failed(report) == {"chain"}
    assert "no trusted issuer" in report.check("chain").detail


async def test_a_foreign_certificate_in_the_evidence_fails_the_chain(p: Pki) -> None:
    stranger = pki.issue("Stranger", pki.Role.CA)
    ci = cms.sign(p.evidence, content=to_xml(sample_evidence()), detached=False, chain=[stranger.cert])
    token = await BuiltinTsa(p.tsa).timestamp(hashlib.sha256(cms.signature_value(ci)).digest())
    report = _verify(p, cms.add_signature_timestamp(ci, token).dump())
    assert _failed(report) == {"chain"}
    assert "outside the signer's chain" in report.check("chain").detail


async def test_signer_expired_at_timestamp_time_fails_the_chain(p: Pki) -> None:
    now = pki.utcnow()
    expired = pki.issue(
        "Expired evidence",
        pki.Role.EVIDENCE,
        p.provider_ca,
        not_before=now - dt.timedelta(days=30),
        not_after=now - dt.timedelta(days=1),
    )
    report = _verify(p, (await _signed(p, expired)).der)
    assert _failed(report) == {"chain"}
    assert "not valid at" in report.check("chain").detail


async def test_token_over_a_different_imprint_fails_the_timestamp(p: Pki) -> None:
    ci = cms.sign(p.evidence, content=to_xml(sample_evidence()), detached=False)
    token = await BuiltinTsa(p.tsa).timestamp(hashlib.sha256(b"another signature").digest())
    report = _verify(p, cms.add_signature_timestamp(ci, token).dump())
    assert "time-stamp" in _failed(report)
    assert "messageImprint" in report.check("time-stamp").detail
    assert {"structure", "signature", "signing-certificate-v2", "content"}.isdisjoint(_failed(report))


async def test_missing_timestamp_fails_the_timestamp_check(p: Pki) -> None:
    ci = cms.sign(p.evidence, content=to_xml(sample_evidence()), detached=False)
    report = _verify(p, ci.dump())
    assert _failed(report) == {"time-stamp"}
    assert "CAdES-B-T" in report.check("time-stamp").detail
    assert report.timestamp_time is None


async def test_untrusted_tsa_fails_the_timestamp(p: Pki) -> None:
    report = verify_evidence((await _signed(p)).der, [p.provider_ca.cert], [p.provider_ca.cert])
    assert _failed(report) == {"time-stamp"}


async def test_event_after_the_timestamp_fails_the_content_check(p: Pki) -> None:
    later = dt.datetime(2099, 1, 1, tzinfo=dt.UTC)
    report = _verify(p, (await _signed(p, event_time=later)).der)
    assert _failed(report) == {"content"}
    assert "after the time-stamp" in report.check("content").detail


async def test_non_evidence_xml_fails_the_content_check(p: Pki) -> None:
    ci = cms.sign(p.evidence, content=b"<x>not an evidence</x>", detached=False)
    token = await BuiltinTsa(p.tsa).timestamp(hashlib.sha256(cms.signature_value(ci)).digest())
    report = _verify(p, cms.add_signature_timestamp(ci, token).dump())
    assert _failed(report) == {"content"}
    assert report.evidence is None


@pytest.mark.parametrize("garbage", [b"", b"garbage", b"\x30\x80\x00\x00", bytes(range(256)) * 4])
def test_garbage_gives_a_failed_structure_check(p: Pki, garbage: bytes) -> None:
    report = _verify(p, garbage)
    assert not report.ok
    assert report.check("structure").ok is False
    assert report.evidence is None
    assert "Result: NOT VALID" in describe(report)
    assert "✗ structure" in describe(report)


async def test_detached_signature_fails_the_structure_check(p: Pki) -> None:
    ci = cms.sign(p.evidence, content=to_xml(sample_evidence()), detached=True)
    report = _verify(p, ci.dump())
    assert not report.check("structure").ok
    assert "not attached" in report.check("structure").detail
