"""CMS SignedData: structure, OpenSSL interoperability, unsigned attributes, chain validation."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asn1crypto.cms
import pytest
from cryptography.hazmat.primitives import serialization
from evidence_fixtures import Pki, make_pki, openssl

from kepmta import pki
from kepmta.smime import cms

CONTENT = "Merhaba dünya: şğüöçıİ\r\nsecond line\r\n".encode()


@pytest.fixture
def p(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


def _write(path: Path, ci: asn1crypto.cms.ContentInfo) -> Path:
    path.write_bytes(ci.dump())
    return path


def test_attached_signature_verifies_with_openssl(p: Pki) -> None:
    ci = cms.sign(p.evidence, content=CONTENT, detached=False)
    f = _write(p.dir / "a.p7m", ci)
    out = p.dir / "out.bin"
    r = openssl(
        "cms", "-verify", "-binary", "-inform", "DER", "-in", f, "-CAfile", p.pem("provider_ca"), "-out", out
    )
    assert r.returncode == 0, r.stderr
    assert "Verification successful" in r.stderr
    assert out.read_bytes() == CONTENT


def test_detached_signature_from_digest_only_verifies_with_openssl(p: Pki) -> None:
    data = p.dir / "big.eml"
    data.write_bytes(CONTENT * 1000)
    ci = cms.sign(p.evidence, content_digest=hashlib.sha256(data.read_bytes()).digest(), detached=True)
    assert cms.encapsulated_content(ci) is None
    f = _write(p.dir / "d.p7s", ci)
    args = ("cms", "-verify", "-binary", "-inform", "DER", "-in", f, "-CAfile", p.pem("provider_ca"))
    r = openssl(*args, "-content", data, "-out", p.dir / "o")
    assert r.returncode == 0, r.stderr
    data.write_bytes(CONTENT * 1000 + b"x")
    assert openssl(*args, "-content", data, "-out", p.dir / "o").returncode != 0


def test_signed_attributes_are_cades_baseline_b(p: Pki) -> None:
    when = datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    ci = cms.load(cms.sign(p.evidence, content=CONTENT, detached=False, signing_time=when).dump())
    info = cms.signer_info(ci)
    types = {a["type"].native for a in info["signed_attrs"]}
    assert types == {"content_type", "message_digest", "signing_time", "signing_certificate_v2"}
    assert info["signature_algorithm"]["algorithm"].native == "sha256_ecdsa"
    assert info["digest_algorithm"]["algorithm"].native == "sha256"
    assert cms.signed_attribute(ci, "message_digest").native == hashlib.sha256(CONTENT).digest()
    assert cms.signed_attribute(ci, "signing_time").native == when.replace(microsecond=0)
    ess = cms.signed_attribute(ci, "signing_certificate_v2")["certs"][0]
    der = p.evidence.cert.public_bytes(serialization.Encoding.DER)
    assert ess["cert_hash"].native == hashlib.sha256(der).digest()
    assert ess["issuer_serial"]["serial_number"].native == p.evidence.cert.serial_number
    cms.check_message_digest(ci)
    cms.check_signature(ci, p.evidence.cert)
    cms.check_signing_certificate_v2(ci, p.evidence.cert)


def test_certificates_are_signer_and_chain(p: Pki) -> None:
    ci = cms.sign(p.evidence, content=CONTENT, detached=False, chain=[p.provider_ca.cert])
    # CertificateSet is a SET OF, so DER fixes the order, not the caller.
    assert set(cms.certificates(ci)) == {p.evidence.cert, p.provider_ca.cert}
    assert len(cms.certificates(ci)) == 2
    assert cms.signer_certificate(ci) == p.evidence.cert


def test_signed_data_version_follows_content_type(p: Pki) -> None:
    data = cms.sign(p.evidence, content=CONTENT, detached=False)
    other = cms.sign(p.evidence, content=CONTENT, detached=True, content_type="1.2.3.4")
    assert data["content"]["version"].native == "v1"
    assert other["content"]["version"].native == "v3"  # RFC 5652 §5.1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"detached": False, "content_digest": bytes(32)}, "attached signature needs the content"),
        ({"detached": True}, "give content or content_digest"),
        ({"detached": True, "content_digest": b"short"}, "32-byte"),
        ({"detached": True, "content": b"a", "content_digest": bytes(32)}, "not the SHA-256"),
        ({"detached": False, "content": b"a", "signing_time": datetime(2024, 1, 1)}, "timezone-aware"),
    ],
)
def test_sign_rejects_bad_arguments(p: Pki, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cms.sign(p.evidence, **kwargs)  # type: ignore[arg-type]


def test_signature_checks_detect_wrong_content_and_wrong_key(p: Pki) -> None:
    ci = cms.sign(p.evidence, content=CONTENT, detached=True)
    with pytest.raises(cms.CmsError, match="does not match"):
        cms.check_message_digest(ci, content=CONTENT + b"!")
    cms.check_message_digest(ci, content=CONTENT)
    other = pki.issue("other", pki.Role.EVIDENCE, p.provider_ca)
    with pytest.raises(cms.CmsError, match="does not verify"):
        cms.check_signature(ci, other.cert)
    with pytest.raises(cms.CmsError, match="hash does not match"):
        cms.check_signing_certificate_v2(ci, other.cert)


def test_signature_timestamp_is_an_unsigned_attribute_openssl_accepts(p: Pki) -> None:
    ci = cms.sign(p.evidence, content=CONTENT, detached=False)
    token = cms.sign(p.tsa, content=b"stand-in token content", detached=False)
    stamped = cms.add_signature_timestamp(ci, token.dump())
    # Adding an unsigned attribute must not touch what was signed.
    assert cms.signature_value(stamped) == cms.signature_value(ci)
    assert cms.signature_timestamp_token(stamped) == token.dump()
    assert cms.signature_timestamp_token(ci) is None
    cms.check_signature(cms.load(stamped.dump()), p.evidence.cert)
    f = _write(p.dir / "t.p7m", stamped)
    r = openssl("cms", "-verify", "-binary", "-inform", "DER", "-in", f, "-CAfile", p.pem("provider_ca"))
    assert r.returncode == 0, r.stderr
    printed = openssl("cms", "-cmsout", "-print", "-inform", "DER", "-in", f).stdout
    assert "id-smime-aa-timeStampToken" in printed


def test_load_rejects_garbage_and_other_content_types() -> None:
    with pytest.raises(cms.CmsError, match="not a DER CMS"):
        cms.load(b"\x30\x03\x02\x01")
    data = asn1crypto.cms.ContentInfo({"content_type": "data", "content": b"x"})
    with pytest.raises(cms.CmsError, match="not signed-data"):
        cms.load(data.dump())


def test_without_certificates_keeps_signature_valid(p: Pki) -> None:
    ci = cms.without_certificates(cms.sign(p.evidence, content=CONTENT, detached=False))
    assert cms.certificates(ci) == []
    with pytest.raises(cms.CmsError, match="not in the SignedData"):
        cms.signer_certificate(ci)
    assert cms.signer_certificate(ci, extra=[p.provider_ca.cert, p.evidence.cert]) == p.evidence.cert
    cms.check_signature(ci, p.evidence.cert)


def test_validate_chain_accepts_trusted_path(p: Pki) -> None:
    path = cms.validate_chain(
        p.evidence.cert, intermediates=[], trust=[p.provider_ca.cert], at=datetime.now(UTC)
    )
    assert path == [p.evidence.cert, p.provider_ca.cert]


def test_validate_chain_with_intermediate(p: Pki) -> None:
    sub = pki.issue("Sub CA", pki.Role.CA, p.provider_ca)
    leaf = pki.issue("leaf", pki.Role.EVIDENCE, sub)
    now = datetime.now(UTC)
    with pytest.raises(cms.ChainError, match="no trusted issuer"):
        cms.validate_chain(leaf.cert, intermediates=[], trust=[p.provider_ca.cert], at=now)
    path = cms.validate_chain(leaf.cert, intermediates=[sub.cert], trust=[p.provider_ca.cert], at=now)
    assert path == [leaf.cert, sub.cert, p.provider_ca.cert]


def test_validate_chain_rejects_untrusted_issuer_and_wrong_time(p: Pki) -> None:
    now = datetime.now(UTC)
    with pytest.raises(cms.ChainError, match="no trusted issuer"):
        cms.validate_chain(p.evidence.cert, intermediates=[], trust=[p.tsa_ca.cert], at=now)
    with pytest.raises(cms.ChainError, match="not valid at"):
        cms.validate_chain(
            p.evidence.cert, intermediates=[], trust=[p.provider_ca.cert], at=now + timedelta(days=4000)
        )


def test_validate_chain_refuses_a_non_ca_issuer(p: Pki) -> None:
    # An end-entity key that signs a certificate must not make it trusted (RFC 5280 §4.2.1.9).
    fake = pki.issue("fake leaf", pki.Role.EVIDENCE, p.evidence)
    with pytest.raises(cms.ChainError, match="no trusted issuer"):
        cms.validate_chain(
            fake.cert, intermediates=[p.evidence.cert], trust=[p.provider_ca.cert], at=datetime.now(UTC)
        )


def test_validate_chain_can_require_every_embedded_certificate_on_the_path(p: Pki) -> None:
    now = datetime.now(UTC)
    bag = [p.evidence.cert, p.provider_ca.cert, p.tsa.cert]
    path = cms.validate_chain(p.evidence.cert, intermediates=bag, trust=[p.provider_ca.cert], at=now)
    assert path == [p.evidence.cert, p.provider_ca.cert]
    with pytest.raises(cms.ChainError, match="outside the signer's chain"):
        cms.validate_chain(
            p.evidence.cert,
            intermediates=bag,
            trust=[p.provider_ca.cert],
            at=now,
            all_intermediates_used=True,
        )


def test_loaded_content_info_dumps_its_bytes_and_any_change(p: Pki) -> None:
    original = cms.sign(p.evidence, content=CONTENT, detached=False)
    der = original.dump()
    ci = cms.load(der)
    assert ci.dump() == der
    other = cms.sign(p.evidence, content=b"other", detached=False)
    ci["content"]["signer_infos"][0]["signature"] = cms.signature_value(other)
    changed = ci.dump()
    assert changed != der
    assert cms.signature_value(cms.load(changed)) == cms.signature_value(other)
    with pytest.raises(cms.CmsError, match="does not verify"):
        cms.check_signature(cms.load(changed), p.evidence.cert)
