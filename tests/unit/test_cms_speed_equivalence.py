"""The hand-written DER of cms.sign, the splice of add_unsigned_attribute and the built-in TSA's
tokens, each against the same structure encoded by asn1crypto and against OpenSSL.

ECDSA signatures are randomised, so each reference takes the signature octets (and the times the
code chose) from the object under test and builds everything else from the inputs.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asn1crypto.cms
import asn1crypto.core
import asn1crypto.tsp
import asn1crypto.x509
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from evidence_fixtures import Pki, make_pki, openssl

from kepmta import pki
from kepmta.evidence.tsa import DEFAULT_POLICY, BuiltinTsa, check_token
from kepmta.smime import cms, der

CONTENT = "Kayıtlı elektronik posta: şğüöçıİ\r\n".encode() * 60  # about 2 KB


@dataclass(frozen=True)
class Chains:
    base: Pki
    leaf: pki.KeyPair  # issued by `sub`, which the provider CA issued
    sub: pki.KeyPair

    def signer_and_chain(self, length: int) -> tuple[pki.KeyPair, list[x509.Certificate]]:
        if length == 2:
            return self.leaf, [self.sub.cert, self.base.provider_ca.cert]
        return self.base.evidence, [self.base.provider_ca.cert][:length]


@pytest.fixture(scope="module")
def chains(tmp_path_factory: pytest.TempPathFactory) -> Chains:
    p = make_pki(tmp_path_factory.mktemp("pki"))
    sub = pki.issue("Test Sub CA", pki.Role.CA, p.provider_ca, organization="Test KEP A.Ş.")
    leaf = pki.issue("Test İşlem Alt", pki.Role.EVIDENCE, sub, organization="Test KEP A.Ş.")
    return Chains(base=p, leaf=leaf, sub=sub)


def _asn1(cert: x509.Certificate) -> asn1crypto.x509.Certificate:
    return asn1crypto.x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))


def reference_sign(
    signer: pki.KeyPair,
    *,
    digest: bytes,
    content: bytes | None,
    chain: Sequence[x509.Certificate],
    content_type: str,
    when: datetime,
    signature: bytes,
) -> bytes:
    """The CAdES-B-B SignedData cms.sign is meant to write, built by asn1crypto from Python values."""
    cert = _asn1(signer.cert)
    time_choice = "utc_time" if 1950 <= when.year < 2050 else "generalized_time"
    ess_cert_id = {
        "cert_hash": hashlib.sha256(signer.cert.public_bytes(serialization.Encoding.DER)).digest(),
        "issuer_serial": {
            "issuer": [asn1crypto.x509.GeneralName(name="directory_name", value=cert.issuer)],
            "serial_number": cert.serial_number,
        },
    }
    attrs = asn1crypto.cms.CMSAttributes(
        [
            {"type": "content_type", "values": [content_type]},
            {"type": "message_digest", "values": [digest]},
            {"type": "signing_time", "values": [asn1crypto.cms.Time({time_choice: when})]},
            {"type": "signing_certificate_v2", "values": [{"certs": [ess_cert_id]}]},
        ]
    )
    info = asn1crypto.cms.SignerInfo(
        {
            "version": "v1",
            "sid": asn1crypto.cms.SignerIdentifier(
                name="issuer_and_serial_number",
                value={"issuer": cert.issuer, "serial_number": cert.serial_number},
            ),
            "digest_algorithm": {"algorithm": "sha256"},
            "signed_attrs": attrs,
            "signature_algorithm": {"algorithm": "sha256_ecdsa"},
            "signature": signature,
        }
    )
    kind = asn1crypto.cms.ContentType(content_type).native
    encap: dict[str, object] = {"content_type": content_type}
    if content is not None:
        # asn1crypto wants its own parsed type inside a known content type such as id-ct-TSTInfo.
        encap["content"] = asn1crypto.tsp.TSTInfo.load(content) if kind == "tst_info" else content
    signed = asn1crypto.cms.SignedData(
        {
            "version": "v1" if kind == "data" else "v3",
            "digest_algorithms": [{"algorithm": "sha256"}],
            "encap_content_info": encap,
            "certificates": [cert, *(_asn1(c) for c in chain)],
            "signer_infos": [info],
        }
    )
    return bytes(asn1crypto.cms.ContentInfo({"content_type": "signed_data", "content": signed}).dump())


def _openssl_verify(p: Pki, der_bytes: bytes, content: bytes | None) -> None:
    signed = p.dir / "equivalence.p7"
    signed.write_bytes(der_bytes)
    args: list[str | Path] = ["cms", "-verify", "-binary", "-inform", "DER", "-in", signed]
    if content is not None:
        data = p.dir / "equivalence.bin"
        data.write_bytes(content)
        args += ["-content", data]
    r = openssl(*args, "-CAfile", p.pem("provider_ca"), "-out", p.dir / "equivalence.out")
    assert r.returncode == 0, r.stderr
    assert "Verification successful" in r.stderr
    assert (p.dir / "equivalence.out").read_bytes() == (content or CONTENT)


@pytest.mark.parametrize("chain_length", [0, 1, 2])
@pytest.mark.parametrize("with_time", [True, False], ids=["signing-time", "now"])
@pytest.mark.parametrize("mode", ["attached", "detached-content", "detached-digest"])
def test_sign_writes_what_asn1crypto_writes(
    chains: Chains, mode: str, with_time: bool, chain_length: int
) -> None:
    signer, chain = chains.signer_and_chain(chain_length)
    given_time = datetime(2024, 5, 2, 10, 15, 30, 250000, tzinfo=UTC) if with_time else None
    digest = hashlib.sha256(CONTENT).digest()
    if mode == "detached-digest":
        ci = cms.sign(signer, content_digest=digest, detached=True, chain=chain, signing_time=given_time)
    else:
        detached = mode != "attached"
        ci = cms.sign(signer, content=CONTENT, detached=detached, chain=chain, signing_time=given_time)
    when = cms.signed_attribute(ci, "signing_time").native
    if given_time is not None:
        assert when == given_time.replace(microsecond=0)
    expected = reference_sign(
        signer,
        digest=digest,
        content=CONTENT if mode == "attached" else None,
        chain=chain,
        content_type="data",
        when=when,
        signature=cms.signature_value(ci),
    )
    assert ci.dump() == expected
    assert cms.load(expected).dump() == expected
    cms.check_structure(ci)
    cms.check_signature(ci, signer.cert)
    cms.check_signing_certificate_v2(ci, signer.cert)
    assert cms.signer_certificate(ci) == signer.cert
    _openssl_verify(chains.base, ci.dump(), None if mode == "attached" else CONTENT)


@pytest.mark.parametrize("size", [0, 1, 110, 127, 128, 255, 256, 65535, 65536])
def test_content_lengths_at_the_length_form_boundaries(chains: Chains, size: int) -> None:
    # Lengths of the eContent OCTET STRING and every frame around it cross short/long forms here.
    content = bytes(i % 256 for i in range(size))
    ci = cms.sign(chains.base.evidence, content=content, detached=False)
    expected = reference_sign(
        chains.base.evidence,
        digest=hashlib.sha256(content).digest(),
        content=content,
        chain=(),
        content_type="data",
        when=cms.signed_attribute(ci, "signing_time").native,
        signature=cms.signature_value(ci),
    )
    assert ci.dump() == expected
    assert cms.encapsulated_content(ci) == content


@pytest.mark.parametrize(
    ("content_type", "year"), [("1.2.3.4", 2024), ("data", 2050), ("1.2.840.113549.1.7.1", 1999)]
)
def test_other_content_types_and_generalized_signing_time(
    chains: Chains, content_type: str, year: int
) -> None:
    when = datetime(year, 3, 4, 5, 6, 7, tzinfo=UTC)
    ci = cms.sign(
        chains.base.evidence, content=CONTENT, detached=False, content_type=content_type, signing_time=when
    )
    expected = reference_sign(
        chains.base.evidence,
        digest=hashlib.sha256(CONTENT).digest(),
        content=CONTENT,
        chain=(),
        content_type=content_type,
        when=when,
        signature=cms.signature_value(ci),
    )
    assert ci.dump() == expected
    cms.check_message_digest(ci)


def test_unsigned_attribute_splice_writes_what_asn1crypto_writes(chains: Chains) -> None:
    ci = cms.sign(chains.base.evidence, content=CONTENT, detached=False, chain=[chains.base.provider_ca.cert])
    first = cms.add_unsigned_attribute(ci, "1.2.3.4.5", der.octet_string(b"later value"))
    both = cms.add_unsigned_attribute(first, "1.2.3.4", der.utf8_string("earlier"))
    reference = asn1crypto.cms.ContentInfo.load(ci.dump())
    reference["content"]["signer_infos"][0]["unsigned_attrs"] = [
        {"type": "1.2.3.4.5", "values": [asn1crypto.core.OctetString(b"later value")]},
        {"type": "1.2.3.4", "values": [asn1crypto.core.UTF8String("earlier")]},
    ]
    # Forced re-encoding is slow only with a time-stamp token inside; there is none here.
    assert both.dump() == reference.dump(force=True)
    assert cms.signature_value(both) == cms.signature_value(ci)
    cms.check_signature(cms.load(both.dump()), chains.base.evidence.cert)


async def test_signature_timestamp_splice_is_verified_by_openssl(chains: Chains) -> None:
    p = chains.base
    ci = cms.sign(p.evidence, content=CONTENT, detached=False, chain=[p.provider_ca.cert])
    tsa = BuiltinTsa(p.tsa, [p.tsa_ca.cert])
    imprint = hashlib.sha256(cms.signature_value(ci)).digest()
    token = await tsa.timestamp(imprint)
    stamped = cms.add_signature_timestamp(ci, token)
    assert cms.signature_timestamp_token(stamped) == token
    # Everything but the SignerInfo and the lengths around it is carried over octet for octet.
    parsed = asn1crypto.cms.ContentInfo.load(stamped.dump())
    original = asn1crypto.cms.ContentInfo.load(ci.dump())
    for name in ("version", "digest_algorithms", "encap_content_info", "certificates"):
        assert parsed["content"][name].contents == original["content"][name].contents
    info, was = parsed["content"]["signer_infos"][0], original["content"]["signer_infos"][0]
    for name in ("version", "sid", "digest_algorithm", "signed_attrs", "signature_algorithm", "signature"):
        assert info[name].contents == was[name].contents
    (attr,) = info["unsigned_attrs"]
    assert attr["type"].dotted == "1.2.840.113549.1.9.16.2.14"  # RFC 3161 Appendix A
    assert check_token(token, imprint, [p.tsa_ca.cert]).policy == DEFAULT_POLICY
    _openssl_verify(p, stamped.dump(), None)
    printed = p.dir / "stamped.p7m"
    printed.write_bytes(stamped.dump())
    assert (
        "id-smime-aa-timeStampToken"
        in openssl("cms", "-cmsout", "-print", "-inform", "DER", "-in", printed).stdout
    )


def test_splice_reads_indefinite_length_frames(chains: Chains) -> None:
    # A BER encoder elsewhere may frame ContentInfo and [0] with indefinite lengths.
    ci = cms.sign(chains.base.evidence, content=CONTENT, detached=False)
    outer = der.elements(der.contents(ci.dump()))
    ber = b"\x30\x80" + outer[0] + b"\xa0\x80" + der.contents(outer[1]) + b"\x00\x00\x00\x00"
    token = cms.sign(chains.base.tsa, content=b"stand-in token", detached=False).dump()
    from_ber = cms.add_signature_timestamp(cms.load(ber), token)
    assert from_ber.dump() == cms.add_signature_timestamp(ci, token).dump()
    cms.check_signature(cms.load(from_ber.dump()), chains.base.evidence.cert)


@pytest.mark.parametrize(
    "token",
    [
        b"garbage",
        b"\x30\x03\x02\x01\x01",
        asn1crypto.cms.ContentInfo({"content_type": "data", "content": b"x"}).dump(),
    ],
    ids=["garbage", "not-content-info", "data"],
)
def test_add_signature_timestamp_refuses_what_is_not_signed_data(chains: Chains, token: bytes) -> None:
    ci = cms.sign(chains.base.evidence, content=CONTENT, detached=False)
    with pytest.raises(cms.CmsError):
        cms.add_signature_timestamp(ci, token)


def test_without_certificates_writes_what_asn1crypto_writes(chains: Chains) -> None:
    ci = cms.sign(chains.base.evidence, content=CONTENT, detached=False, chain=[chains.base.provider_ca.cert])
    bare = cms.without_certificates(ci)
    signed = asn1crypto.cms.ContentInfo.load(ci.dump())["content"]
    kept = {
        name: signed[name] for name in ("version", "digest_algorithms", "encap_content_info", "signer_infos")
    }
    reference = asn1crypto.cms.ContentInfo(
        {"content_type": "signed_data", "content": asn1crypto.cms.SignedData(kept)}
    )
    assert bare.dump() == reference.dump(force=True)
    cms.check_signature(bare, chains.base.evidence.cert)


def _tst_info(token: asn1crypto.cms.ContentInfo) -> asn1crypto.tsp.TSTInfo:
    content = cms.encapsulated_content(token)
    assert content is not None
    return asn1crypto.tsp.TSTInfo.load(content)


def _reference_token(tsa_pair: pki.KeyPair, token: asn1crypto.cms.ContentInfo, **fields: object) -> bytes:
    """The token BuiltinTsa is meant to issue, built by asn1crypto with the serial and time it chose."""
    got = _tst_info(token)
    info = {
        "version": "v1",
        "policy": DEFAULT_POLICY,
        "serial_number": got["serial_number"].native,
        "gen_time": got["gen_time"].native,
        "accuracy": {"seconds": 1},
        "tsa": asn1crypto.x509.GeneralName(name="directory_name", value=_asn1(tsa_pair.cert).subject),
        **fields,
    }
    tst_info = asn1crypto.tsp.TSTInfo(info).dump()
    assert cms.encapsulated_content(token) == tst_info
    return reference_sign(
        tsa_pair,
        digest=hashlib.sha256(tst_info).digest(),
        content=tst_info,
        chain=(),
        content_type="tst_info",
        when=got["gen_time"].native,
        signature=cms.signature_value(token),
    )


def test_timestamp_token_is_what_asn1crypto_writes_and_openssl_verifies(chains: Chains) -> None:
    p = chains.base
    imprint = hashlib.sha256(b"signature octets").digest()
    token = asyncio.run(BuiltinTsa(p.tsa).timestamp(imprint))
    message_imprint = {"hash_algorithm": {"algorithm": "sha256"}, "hashed_message": imprint}
    assert token == _reference_token(p.tsa, cms.load(token), message_imprint=message_imprint)
    f = p.dir / "token.der"
    f.write_bytes(token)
    args = ("ts", "-verify", "-token_in", "-in", f, "-digest", imprint.hex())
    r = openssl(*args, "-CAfile", p.pem("tsa_ca"), "-untrusted", p.pem("tsa"))
    assert r.returncode == 0 and "Verification: OK" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("nonce", [None, 0, 1, 128, 2**64 + 3], ids=["none", "0", "1", "128", "wide"])
@pytest.mark.parametrize("cert_req", [True, False])
def test_responses_are_what_asn1crypto_writes(chains: Chains, nonce: int | None, cert_req: bool) -> None:
    p = chains.base
    imprint = hashlib.sha384(b"data").digest()
    request: dict[str, object] = {
        "version": "v1",
        "message_imprint": {
            "hash_algorithm": {"algorithm": "sha384", "parameters": None},
            "hashed_message": imprint,
        },
        "cert_req": cert_req,
    }
    if nonce is not None:
        request["nonce"] = nonce
    request_der = asn1crypto.tsp.TimeStampReq(request).dump()
    response = BuiltinTsa(p.tsa, [p.tsa_ca.cert]).respond(request_der)
    token = asn1crypto.tsp.TimeStampResp.load(response)["time_stamp_token"]
    # RFC 3161 §2.4.2: the messageImprint goes back exactly as requested, NULL parameters included.
    echoed = asn1crypto.tsp.TimeStampReq.load(request_der)["message_imprint"]
    fields: dict[str, object] = {"message_imprint": echoed}
    if nonce is not None:
        fields["nonce"] = nonce
    got = _tst_info(token)
    info = {
        "version": "v1",
        "policy": DEFAULT_POLICY,
        "message_imprint": echoed,
        "serial_number": got["serial_number"].native,
        "gen_time": got["gen_time"].native,
        "accuracy": {"seconds": 1},
        **({} if nonce is None else {"nonce": nonce}),
        "tsa": asn1crypto.x509.GeneralName(name="directory_name", value=_asn1(p.tsa.cert).subject),
    }
    tst_info = asn1crypto.tsp.TSTInfo(info).dump()
    assert cms.encapsulated_content(token) == tst_info
    expected_token = reference_sign(
        p.tsa,
        digest=hashlib.sha256(tst_info).digest(),
        content=tst_info,
        chain=[p.tsa_ca.cert],
        content_type="tst_info",
        when=got["gen_time"].native,
        signature=cms.signature_value(token),
    )
    if not cert_req:
        expected_token = cms.without_certificates(cms.load(expected_token)).dump()
        assert cms.certificates(token) == []
    expected = asn1crypto.tsp.TimeStampResp(
        {"status": {"status": "granted"}, "time_stamp_token": asn1crypto.cms.ContentInfo.load(expected_token)}
    ).dump()
    assert response == expected


@pytest.mark.parametrize(
    ("request_fields", "fail"),
    [
        (
            {"message_imprint": {"hash_algorithm": {"algorithm": "sha1"}, "hashed_message": b"a" * 20}},
            "bad_alg",
        ),
        ({"version": "v2"}, "bad_request"),
        ({"req_policy": "1.2.3.4"}, "unaccepted_policy"),
        (
            {"extensions": [{"extn_id": "1.2.3.5", "critical": False, "extn_value": b"\x05\x00"}]},
            "unaccepted_extensions",
        ),
    ],
)
def test_rejections_are_what_asn1crypto_writes(
    chains: Chains, request_fields: dict[str, object], fail: str
) -> None:
    request: dict[str, object] = {
        "version": "v1",
        "message_imprint": {"hash_algorithm": {"algorithm": "sha256"}, "hashed_message": bytes(32)},
    }
    request.update(request_fields)
    response = BuiltinTsa(chains.base.tsa).respond(asn1crypto.tsp.TimeStampReq(request).dump())
    status = asn1crypto.tsp.PKIStatusInfo.load(der.elements(der.contents(response))[0])
    text = status["status_string"][0].native
    expected = asn1crypto.tsp.PKIStatusInfo(
        {"status": "rejection", "status_string": [text], "fail_info": asn1crypto.tsp.PKIFailureInfo({fail})}
    ).dump()
    assert response == der.sequence(expected)
    assert status["fail_info"].native == {fail}


def test_garbage_request_gets_bad_data_format(chains: Chains) -> None:
    response = BuiltinTsa(chains.base.tsa).respond(b"\x30\x03\x02\x01")
    status = asn1crypto.tsp.PKIStatusInfo.load(der.elements(der.contents(response))[0])
    assert (status["status"].native, status["fail_info"].native) == ("rejection", {"bad_data_format"})


def test_signer_pieces_are_cached_per_certificate(chains: Chains) -> None:
    signer = chains.base.evidence
    cms.sign(signer, content=b"warm", detached=False)
    before = cms._signer_parts.cache_info().hits
    second = cms.sign(signer, content=b"again", detached=False)
    assert cms._signer_parts.cache_info().hits == before + 1
    # The cached sid and ESSCertIDv2 still name this certificate, octet for octet.
    cms.check_signing_certificate_v2(second, signer.cert)
    assert cms.signer_certificate(second) == signer.cert
    assert cms.subject_der(signer.cert) == _asn1(signer.cert).subject.dump()
