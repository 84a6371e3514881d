"""DKIM between providers: RFC 8463 double signatures, verified with registered keys only."""

from __future__ import annotations

import base64
import functools
import re

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kepmta.dkim import DkimError, PublicKey, SigningKey, public_value, sign, txt_record, verify

DOMAIN = "kep.test"
MESSAGE = (
    b'From: "ali.yilmaz@kep.test ad\xc4\xb1na" <rem-service@kep.test>\r\n'
    b"Reply-To: ali.yilmaz@kep.test\r\n"
    b"To: ayse.kaya@peer.test,\r\n mehmet.oz@peer.test\r\n"
    b"Subject: REM Dispatch: =?utf-8?b?U8O2emxlxZ9tZQ==?=\r\n"
    b"Date: Sat, 28 Nov 2026 10:30:00 +0000\r\n"
    b"Message-ID: <20261128T103000Z.abc123@kep.test>\r\n"
    b"REM-MessageType: http://uri.etsi.org/19522/v1#/ERDMessageType/dispatch\r\n"
    b"REM-ApplicablePolicy: urn:oid:2.16.792.1.2.1.1.5.7.50.1\r\n"
    b"REM-ApplicablePolicy: http://kep.test/policy/2\r\n"
    b"REM-DigestValue: ePggZQ9/Uwbe6ui/mqn+moZJcfkdFVIluG1B4a3ov9k=\r\n"
    b"X-TR-REM-iletiID: 20261128T103000Z.abc123@kep.test\r\n"
    b"Received: from somewhere\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/signed; protocol="application/pkcs7-signature";\r\n'
    b' micalg=sha-256; boundary="b1"\r\n'
    b"\r\n"
    b"--b1\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n" + "Merhaba, sözleşme ektedir.\r\n".encode() + b"--b1--\r\n"
)


def _pem(key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@functools.cache
def ed_key() -> SigningKey:
    return SigningKey("kep-ed25519", "ed25519", _pem(ed25519.Ed25519PrivateKey.generate()))


@functools.cache
def rsa_key() -> SigningKey:
    return SigningKey("kep-rsa", "rsa", _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)))


def public(key: SigningKey, selector: str | None = None) -> PublicKey:
    return PublicKey(selector or key.selector, key.algorithm, public_value(key.private_pem))


@functools.cache
def double_signed() -> bytes:
    return sign(MESSAGE, DOMAIN, [ed_key(), rsa_key()]) + MESSAGE


def both_public() -> list[PublicKey]:
    return [public(ed_key()), public(rsa_key())]


def signature_fields(headers: bytes) -> list[dict[str, str]]:
    """The tag=value lists of each DKIM-Signature in `headers`, unfolded."""
    found = re.findall(rb"DKIM-Signature:(.*?\r\n)(?=\S|$)", headers, re.S)
    out = []
    for value in found:
        text = re.sub(r"\s+", "", value.decode())
        out.append(dict(tag.split("=", 1) for tag in text.split(";") if tag))
    return out


@pytest.mark.parametrize("key", [ed_key, rsa_key], ids=["ed25519", "rsa"])
def test_one_key_round_trip(key: functools._lru_cache_wrapper[SigningKey]) -> None:
    signing = key()
    header = sign(MESSAGE, DOMAIN, [signing])
    assert header.startswith(b"DKIM-Signature: ") and header.endswith(b"\r\n")
    assert verify(header + MESSAGE, DOMAIN, [public(signing)]) == (
        f"d={DOMAIN} s={signing.selector} a={signing.algorithm}-sha256"
    )


def test_double_signature_fields() -> None:
    header = sign(MESSAGE, DOMAIN, [ed_key(), rsa_key()])
    assert header.count(b"DKIM-Signature:") == 2
    # Every line ends in CRLF, none in a bare LF: the fields go in front of an SMTP message.
    assert header.count(b"\n") == header.count(b"\r\n")
    fields = signature_fields(header)
    assert [f["a"] for f in fields] == ["ed25519-sha256", "rsa-sha256"]
    assert [f["s"] for f in fields] == ["kep-ed25519", "kep-rsa"]
    for f in fields:
        assert f["c"] == "relaxed/relaxed"
        assert f["d"] == DOMAIN
        signed = f["h"].split(":")
        # Each field once more than it occurs (RFC 6376 §8.15), absent ones once.
        assert signed.count("rem-applicablepolicy") == 3
        assert signed.count("from") == 2
        assert signed.count("in-reply-to") == 1
        for name in ("to", "subject", "message-id", "rem-messagetype", "rem-digestvalue", "x-tr-rem-iletiid"):
            assert signed.count(name) == 2, name
        assert "received" not in signed


def test_double_signed_verifies_with_either_key_alone() -> None:
    message = double_signed()
    assert verify(message, DOMAIN, both_public()) == f"d={DOMAIN} s=kep-ed25519 a=ed25519-sha256"
    assert verify(message, DOMAIN, [public(ed_key())]) == f"d={DOMAIN} s=kep-ed25519 a=ed25519-sha256"
    assert verify(message, DOMAIN, [public(rsa_key())]) == f"d={DOMAIN} s=kep-rsa a=rsa-sha256"


def test_domain_and_selector_compare_without_case() -> None:
    assert verify(double_signed(), "KEP.Test", [public(ed_key(), "KEP-ED25519")])


def test_verifies_after_line_ends_became_lf() -> None:
    # Some stores keep mail with LF; relaxed canonicalisation reads both (RFC 6376 §3.4.4).
    assert verify(double_signed().replace(b"\r\n", b"\n"), DOMAIN, both_public())


def test_changed_body_byte() -> None:
    message = double_signed().replace("sözleşme".encode(), "sözlesme".encode())
    with pytest.raises(DkimError, match="s=kep-ed25519: body hash mismatch") as caught:
        verify(message, DOMAIN, both_public())
    assert "s=kep-rsa: body hash mismatch" in caught.value.text


def test_changed_signed_header() -> None:
    message = double_signed().replace(b"REM-DigestValue: eP", b"REM-DigestValue: xP")
    with pytest.raises(DkimError, match="bad signature: a signed header field was changed"):
        verify(message, DOMAIN, both_public())


def test_added_rem_field_breaks_the_signature() -> None:
    message = double_signed().replace(b"MIME-Version", b"REM-ApplicablePolicy: urn:evil\r\nMIME-Version")
    with pytest.raises(DkimError, match="bad signature"):
        verify(message, DOMAIN, both_public())


def test_unsigned_field_may_change() -> None:
    message = double_signed().replace(b"Received: from somewhere", b"Received: from elsewhere")
    assert verify(message, DOMAIN, both_public())


def test_key_for_another_selector() -> None:
    with pytest.raises(
        DkimError, match=re.escape("no key with selector kep-ed25519 is registered for kep.test")
    ):
        verify(double_signed(), DOMAIN, [public(ed_key(), "other")])


def test_wrong_key_under_the_right_selector() -> None:
    impostor = SigningKey("kep-ed25519", "ed25519", _pem(ed25519.Ed25519PrivateKey.generate()))
    with pytest.raises(DkimError, match="s=kep-ed25519: bad signature"):
        verify(double_signed(), DOMAIN, [public(impostor)])


def test_registered_algorithm_differs_from_the_signature() -> None:
    with pytest.raises(DkimError, match="signs with a=ed25519-sha256, but the registered key is rsa"):
        verify(
            double_signed(), DOMAIN, [PublicKey("kep-ed25519", "rsa", public_value(rsa_key().private_pem))]
        )


def test_another_domain() -> None:
    with pytest.raises(
        DkimError, match=re.escape("s=kep-ed25519 is a signature of d=kep.test, not of peer.test")
    ):
        verify(double_signed(), "peer.test", both_public())


def test_no_signature() -> None:
    with pytest.raises(DkimError, match="the message has no DKIM-Signature"):
        verify(MESSAGE, DOMAIN, both_public())


def test_unusable_registered_key() -> None:
    with pytest.raises(DkimError, match="the registered key cannot be used"):
        verify(double_signed(), DOMAIN, [PublicKey("kep-rsa", "rsa", "AAAA")])


def test_signing_refuses_a_key_of_another_kind() -> None:
    with pytest.raises(DkimError, match="said to be rsa but its PEM holds another kind"):
        sign(MESSAGE, DOMAIN, [SigningKey("x", "rsa", ed_key().private_pem)])
    with pytest.raises(DkimError, match="not an unencrypted PEM private key"):
        sign(MESSAGE, DOMAIN, [SigningKey("x", "ed25519", b"not a key")])
    with pytest.raises(DkimError, match="no DKIM key"):
        sign(MESSAGE, DOMAIN, [])


def test_public_value_ed25519_is_the_raw_key() -> None:
    key = serialization.load_pem_private_key(ed_key().private_pem, None)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert base64.b64decode(public_value(ed_key().private_pem)) == raw
    assert len(raw) == 32


def test_public_value_rsa_is_subject_public_key_info() -> None:
    key = serialization.load_pem_private_key(rsa_key().private_pem, None)
    assert isinstance(key, rsa.RSAPrivateKey)
    loaded = serialization.load_der_public_key(base64.b64decode(public_value(rsa_key().private_pem)))
    assert isinstance(loaded, rsa.RSAPublicKey)
    assert loaded.public_numbers() == key.public_key().public_numbers()


def test_txt_record_ed25519() -> None:
    p = public_value(ed_key().private_pem)
    assert txt_record("kep-ed25519", "kep.test", "ed25519", p) == (
        f'kep-ed25519._domainkey.kep.test. IN TXT "v=DKIM1; k=ed25519; p={p}"'
    )


def test_txt_record_rsa_is_cut_into_dns_strings() -> None:
    p = public_value(rsa_key().private_pem)
    record = txt_record("kep-rsa", "kep.test.", "rsa", p)
    assert record.startswith("kep-rsa._domainkey.kep.test. IN TXT ")
    strings = re.findall(r'"([^"]*)"', record)
    assert len(strings) > 1
    assert all(len(s) <= 255 for s in strings)
    assert "".join(strings) == f"v=DKIM1; k=rsa; p={p}"


def test_txt_record_refuses_unknown_algorithm() -> None:
    with pytest.raises(DkimError):
        txt_record("s", "kep.test", "dsa", "AAAA")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.data(),
    st.sampled_from(["flip", "cut", "insert"]),
)
def test_damaged_message_ends_in_a_verdict(data: st.DataObject, how: str) -> None:
    message = double_signed()
    at = data.draw(st.integers(0, len(message) - 1))
    if how == "flip":
        message = message[:at] + bytes([message[at] ^ data.draw(st.integers(1, 255))]) + message[at + 1 :]
    elif how == "cut":
        message = message[:at]
    else:
        message = message[:at] + data.draw(st.binary(min_size=1, max_size=8)) + message[at:]
    try:
        result = verify(message, DOMAIN, both_public())
    except DkimError as exc:
        assert exc.text
    else:
        assert result.startswith(f"d={DOMAIN} s=")


def test_rsa_signature_is_the_one_dkimpys_own_code_makes() -> None:
    """kepmta.dkim signs RSA through OpenSSL; RSASSA-PKCS1-v1_5 is deterministic (RFC 8017 §8.2),
    so for the same hash and key it must give dkimpy's pure-Python signature, byte for byte."""
    import hashlib

    import dkim
    import dkim.crypto

    key = serialization.load_pem_private_key(rsa_key().private_pem, None)
    pkcs1 = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    parsed = dkim.crypto.parse_pem_private_key(pkcs1)
    for data in (b"", b"relaxed header block\r\n", MESSAGE):
        ours = dkim.RSASSA_PKCS1_v1_5_sign(hashlib.sha256(data), parsed)
        theirs = dkim.crypto.RSASSA_PKCS1_v1_5_sign(hashlib.sha256(data), parsed)
        assert bytes(ours) == bytes(theirs)
    assert dkim.RSASSA_PKCS1_v1_5_sign is not dkim.crypto.RSASSA_PKCS1_v1_5_sign
    assert verify(sign(MESSAGE, DOMAIN, [rsa_key()]) + MESSAGE, DOMAIN, [public(rsa_key())])
