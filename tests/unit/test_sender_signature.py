"""verify_sender against messages signed by outside tools (cryptography, the OpenSSL CLI)."""

from __future__ import annotations

import base64
import datetime as dt
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from rem_fixtures import (
    BODY,
    OPENSSL,
    OTHER,
    SENDER,
    envelope_headers,
    pki,
    plain_message,
    sign_cryptography,
    sign_openssl,
    to_crlf,
)

from kepmta.pki import save, utcnow
from kepmta.rem.mime import base64_lines
from kepmta.smime import cms
from kepmta.smime.sender import CHECKS, SenderVerdict, verify_sender

needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl command not installed")


def verify(tmp_path: Path, message: bytes, sender: str = SENDER) -> SenderVerdict:
    path = tmp_path / "submitted.eml"
    path.write_bytes(message)
    return verify_sender(path, sender, [pki().root.cert], utcnow())


def assert_only_failure(verdict: SenderVerdict, name: str, detail: str) -> None:
    assert [c.name for c in verdict.checks] == list(CHECKS)
    assert verdict.failed is not None
    assert (verdict.failed.name, verdict.failed.detail) == (name, detail)
    assert [c.name for c in verdict.checks if not c.ok] == [name]
    assert not verdict.ok


def assert_valid(verdict: SenderVerdict) -> None:
    assert [(c.name, c.ok) for c in verdict.checks] == [(n, True) for n in CHECKS], verdict.checks
    assert verdict.ok and verdict.failed is None
    assert verdict.signer == pki().ali.cert or verdict.signer == pki().rsa_ali.cert


# -- valid signatures from several signers ---------------------------------------------------------


@pytest.mark.parametrize("digest", [hashes.SHA256(), hashes.SHA384(), hashes.SHA512()], ids=lambda d: d.name)
def test_cryptography_detached_signature_passes_all_four(
    tmp_path: Path, digest: hashes.HashAlgorithm
) -> None:
    verdict = verify(tmp_path, sign_cryptography(pki().ali, digest=digest))
    assert_valid(verdict)
    assert verdict.checks[0].detail == "signature by CN=Ali Yılmaz is intact"
    assert verdict.checks[1].detail == "chains to trusted CA CN=KEP Test Kök SM"
    assert verdict.checks[3].detail == f"certificate is for {SENDER}"
    assert verdict.signing_time is not None
    assert abs(verdict.signing_time - utcnow()) < dt.timedelta(minutes=5)


@pytest.mark.parametrize("pss", [False, True], ids=["pkcs1v15", "pss"])
def test_rsa_signatures_pass(tmp_path: Path, pss: bool) -> None:
    assert_valid(verify(tmp_path, sign_cryptography(pki().rsa_ali, pss=pss)))


@needs_openssl
@pytest.mark.parametrize("command", ["cms", "smime"])
@pytest.mark.parametrize("detached", [True, False], ids=["detached", "opaque"])
def test_openssl_signatures_pass(tmp_path: Path, command: str, detached: bool) -> None:
    message = sign_openssl(tmp_path, pki().ali, command=command, detached=detached)
    expected = "multipart/signed" if detached else "pkcs7-mime"
    assert expected in message.decode("latin-1")
    assert_valid(verify(tmp_path, message))


@needs_openssl
@pytest.mark.parametrize("signer", ["ali", "rsa_ali"])
def test_signature_without_signed_attributes_covers_the_content(tmp_path: Path, signer: str) -> None:
    message = sign_openssl(tmp_path, getattr(pki(), signer), options=("-noattr",))
    verdict = verify(tmp_path, message)
    assert_valid(verdict)
    assert verdict.signing_time is None


@needs_openssl
def test_openssl_rsa_pss_passes(tmp_path: Path) -> None:
    message = sign_openssl(tmp_path, pki().rsa_ali, options=("-keyopt", "rsa_padding_mode:pss"))
    assert_valid(verify(tmp_path, message))


def test_large_signed_part_is_hashed_across_slices(tmp_path: Path) -> None:
    attachment = base64_lines(bytes(range(256)) * 12_000)  # about 4 MB of base64, several slices
    body = (
        b'Content-Type: application/octet-stream; name="ek.bin"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + attachment + b"\r\n"
    )
    message = sign_cryptography(pki().ali, body)
    assert len(message) > 3 * (1 << 20)
    assert_valid(verify(tmp_path, message))


@needs_openssl
def test_header_folding_case_and_unquoted_boundary(tmp_path: Path) -> None:
    message = sign_openssl(tmp_path, pki().ali, command="smime")
    boundary = re.search(rb'boundary="([^"]+)"', message)
    assert boundary is not None and re.fullmatch(rb"[-0-9A-F]+", boundary.group(1))
    folded = (
        b'CONTENT-TYPE: Multipart/Signed;\r\n\tprotocol="Application/X-PKCS7-Signature";\r\n'
        b" micalg=sha-256;\r\n BOUNDARY=" + boundary.group(1) + b"\r\n"
    )
    message = re.sub(rb"Content-Type: multipart/signed;[^\r]*\r\n", folded.replace(b"\\", b"\\\\"), message)
    assert b"BOUNDARY=" in message
    assert_valid(verify(tmp_path, message))


def test_sender_comparison_ignores_case(tmp_path: Path) -> None:
    assert_valid(verify(tmp_path, sign_cryptography(pki().ali), sender=SENDER.upper()))


# -- each check failing ----------------------------------------------------------------------------


def test_tampered_body_fails_integrity(tmp_path: Path) -> None:
    message = sign_cryptography(pki().ali)
    tampered = message.replace(b"ektedir", b"eklidir", 1)
    assert tampered != message
    verdict = verify(tmp_path, tampered)
    assert_only_failure(
        verdict, "integrity", "message digest does not match the signed content: the message was altered"
    )
    assert verdict.signer == pki().ali.cert


def test_changed_line_ending_in_signed_part_fails_integrity(tmp_path: Path) -> None:
    message = sign_cryptography(pki().ali)
    tampered = message.replace("Hanım,\r\n".encode(), "Hanım,\n".encode(), 1)
    assert verify(tmp_path, tampered).failed.name == "integrity"  # type: ignore[union-attr]


def test_untrusted_ca_fails_chain(tmp_path: Path) -> None:
    verdict = verify(tmp_path, sign_cryptography(pki().rogue_ali, extra=()))
    assert_only_failure(verdict, "chain", "issuer CN=Rogue CA is not a trusted qualified CA")


def test_untrusted_root_included_in_signature_fails_chain(tmp_path: Path) -> None:
    verdict = verify(tmp_path, sign_cryptography(pki().rogue_ali, extra=(pki().rogue_root.cert,)))
    assert_only_failure(verdict, "chain", "issuer CN=Rogue CA is not a trusted qualified CA")


def test_self_signed_certificate_fails_chain(tmp_path: Path) -> None:
    verdict = verify(tmp_path, sign_cryptography(pki().self_signed_ali, extra=()))
    assert_only_failure(
        verdict, "chain", "signer certificate is self-signed, not issued by a trusted qualified CA"
    )


def test_missing_intermediate_fails_chain(tmp_path: Path) -> None:
    verdict = verify(tmp_path, sign_cryptography(pki().ali, extra=()))
    assert_only_failure(verdict, "chain", "issuer CN=KEP Test Nitelikli SM is not a trusted qualified CA")


def test_expired_certificate_fails_validity(tmp_path: Path) -> None:
    expired = pki().expired_ali.cert
    verdict = verify(tmp_path, sign_cryptography(pki().expired_ali))
    when = expired.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert_only_failure(verdict, "validity", f"signer certificate expired on {when}")


def test_signing_time_outside_validity_fails_validity(tmp_path: Path) -> None:
    ali = pki().ali
    before = ali.cert.not_valid_before_utc - dt.timedelta(days=2)
    signature = cms.sign(ali, content=BODY, detached=True, chain=[pki().sub.cert], signing_time=before)
    message = (
        envelope_headers()
        + b'MIME-Version: 1.0\r\nContent-Type: multipart/signed; protocol="application/pkcs7-signature";'
        b" micalg=sha-256; boundary=XyZ\r\n\r\n--XyZ\r\n"
        + BODY
        + b"\r\n--XyZ\r\nContent-Type: application/pkcs7-signature\r\n"
        + b"Content-Transfer-Encoding: base64\r\n\r\n"
        + base64_lines(signature.dump())
        + b"\r\n--XyZ--\r\n"
    )
    verdict = verify(tmp_path, message)
    assert verdict.failed is not None and verdict.failed.name == "validity"
    assert verdict.failed.detail.startswith("signing time ")
    assert "is outside the signer certificate's validity" in verdict.failed.detail


def test_certificate_for_another_purpose_fails_validity(tmp_path: Path) -> None:
    verdict = verify(tmp_path, sign_cryptography(pki().tls_ali))
    assert_only_failure(
        verdict, "validity", "signer certificate's extended key usage does not include emailProtection"
    )


def test_another_persons_certificate_fails_identity(tmp_path: Path) -> None:
    verdict = verify(tmp_path, sign_cryptography(pki().ayse))
    assert_only_failure(verdict, "identity", f"certificate is for {OTHER}, not {SENDER}")


# -- not signed, or broken -------------------------------------------------------------------------


def assert_integrity_fails_first(verdict: SenderVerdict, detail: str) -> None:
    assert [c.ok for c in verdict.checks] == [False] * 4
    assert verdict.checks[0].detail == detail
    assert verdict.signer is None
    for check in verdict.checks[1:]:
        assert check.detail.startswith("not checked: there is no signer certificate"), check.detail


def test_plain_message_is_not_signed(tmp_path: Path) -> None:
    assert_integrity_fails_first(verify(tmp_path, plain_message()), "message is not S/MIME signed")


def test_empty_file_is_not_signed(tmp_path: Path) -> None:
    assert_integrity_fails_first(verify(tmp_path, b""), "message is not S/MIME signed")


def test_encrypted_message_is_not_signed(tmp_path: Path) -> None:
    message = envelope_headers() + (
        b"MIME-Version: 1.0\r\nContent-Type: application/pkcs7-mime; smime-type=enveloped-data;"
        b" name=smime.p7m\r\nContent-Transfer-Encoding: base64\r\n\r\nMIAGCSqGSIb3DQEHA6CAMIACAQA=\r\n"
    )
    assert_integrity_fails_first(verify(tmp_path, message), "message is not S/MIME signed")


def test_multipart_signed_with_other_protocol_is_not_smime(tmp_path: Path) -> None:
    message = sign_cryptography(pki().ali).replace(
        b"application/x-pkcs7-signature", b"application/pgp-signature"
    )
    assert_integrity_fails_first(verify(tmp_path, message), "message is not S/MIME signed")


def signature_body(message: bytes) -> bytes:
    match = re.search(rb"filename=\"smime.p7s\"\r\n\r\n([A-Za-z0-9+/=\r\n]+?)\r\n--", message)
    assert match is not None
    return match.group(1)


def test_garbage_signature_part_fails_integrity(tmp_path: Path) -> None:
    message = sign_cryptography(pki().ali)
    garbage = base64_lines(b"\x30\x82\x01\x00 not a CMS structure at all " * 10)
    message = message.replace(signature_body(message), garbage)
    assert_integrity_fails_first(verify(tmp_path, message), "signature is not a CMS SignedData structure")


def test_signature_part_with_broken_base64_fails_integrity(tmp_path: Path) -> None:
    message = sign_cryptography(pki().ali)
    message = message.replace(signature_body(message), b"MIIF*#!notbase64")
    assert_integrity_fails_first(verify(tmp_path, message), "signature part is not valid base64")


def test_missing_closing_boundary_fails_integrity(tmp_path: Path) -> None:
    message = sign_cryptography(pki().ali)
    boundary = re.search(rb'boundary="([^"]+)"', message)
    assert boundary is not None
    truncated = message[: message.rindex(b"--" + boundary.group(1) + b"--")]
    verdict = verify(tmp_path, truncated)
    expected = f'multipart body ends without its closing "--{boundary.group(1).decode()}--" line'
    assert_integrity_fails_first(verdict, expected)


def test_multipart_signed_without_signature_part_fails_integrity(tmp_path: Path) -> None:
    message = envelope_headers() + (
        b'MIME-Version: 1.0\r\nContent-Type: multipart/signed; protocol="application/pkcs7-signature";'
        b" boundary=b1\r\n\r\n--b1\r\n" + BODY + b"\r\n--b1--\r\n"
    )
    assert_integrity_fails_first(verify(tmp_path, message), "multipart/signed has 1 body parts instead of 2")


@needs_openssl
def test_two_signers_fail_integrity(tmp_path: Path) -> None:
    ayse = pki().ayse
    save(ayse, tmp_path / "second.pem", tmp_path / "second.key")
    second = ("-signer", str(tmp_path / "second.pem"), "-inkey", str(tmp_path / "second.key"))
    message = sign_openssl(tmp_path, pki().ali, options=second)
    assert_integrity_fails_first(
        verify(tmp_path, message), "signature has 2 signers; exactly one is required"
    )


def test_signer_certificate_left_out_fails_integrity(tmp_path: Path) -> None:
    builder = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(BODY)
        .add_signer(pki().ali.cert, pki().ali.key, hashes.SHA256())
    )
    options = [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.NoCerts]
    message = envelope_headers() + to_crlf(builder.sign(serialization.Encoding.SMIME, options))
    verdict = verify(tmp_path, message)
    assert_integrity_fails_first(verdict, "signature does not include the signer's certificate")


def test_signature_by_another_key_fails_integrity(tmp_path: Path) -> None:
    """The CMS names ali's certificate but the signature value was made by ayse's key."""
    genuine = sign_cryptography(pki().ali)
    forged = sign_cryptography(pki().ayse)
    genuine_der = base64.b64decode(b"".join(signature_body(genuine).split()))
    forged_der = base64.b64decode(b"".join(signature_body(forged).split()))
    ci = cms.load(genuine_der)
    ci["content"]["signer_infos"][0]["signature"] = cms.signature_value(cms.load(forged_der))
    message = genuine.replace(signature_body(genuine), base64_lines(ci.dump(force=True)))
    verdict = verify(tmp_path, message)
    assert verdict.failed is not None and verdict.failed.name == "integrity"
    assert verdict.failed.detail == "signature value does not verify with the signer certificate's key"
    assert verdict.signer == pki().ali.cert


def test_naive_now_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.eml"
    path.write_bytes(plain_message())
    with pytest.raises(ValueError, match="timezone-aware"):
        verify_sender(path, SENDER, [pki().root.cert], dt.datetime(2026, 1, 1))
