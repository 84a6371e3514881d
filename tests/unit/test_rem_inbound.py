"""read_rem: REM dispatches and receipts from a peer provider, ours and hand-built, checked."""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rem_fixtures import OTHER, SENDER, pki, sign_cryptography
from rem_handmade import handmade_dispatch, handmade_evidence, handmade_receipt

from kepmta.pki import Role, issue, utcnow
from kepmta.rem.dispatch import DispatchInfo, write_dispatch
from kepmta.rem.inbound import RemError, RemMessage, read_rem, read_rem_headers
from kepmta.rem.receipt import ReceiptInfo, build_receipt
from kepmta.smime import cms

PROVIDER_ID = "20261128T103000Z.abc123@kep.test"
UA_ID = "<client.1@mail.example>"
SUBJECT = "Sözleşme – ağır işçi güvenliği ÇŞİĞÜÖ"
EVIDENCE_XML = '<tns:Evidence xmlns:tns="http://uri.etsi.org/19522/v1#"><s>Söz</s></tns:Evidence>'.encode()
INFO = DispatchInfo(
    provider_message_id=PROVIDER_ID,
    sender=SENDER,
    to=(OTHER,),
    cc=("mehmet.oz@peer.test",),
    subject=SUBJECT,
    ua_message_id=UA_ID,
    evidence_id="ev.20261128T103000Z.1@kep.test",
    event_uri="http://uri.etsi.org/19522/Event/SubmissionAcceptance",
    reason_uri="http://uri.etsi.org/19522/EventReason/MessageAccepted",
    policy_ids=("urn:oid:2.16.792.1.2.1.1.5.7.50.1",),
    service_address="rem-service@kep.test",
)
RECEIPT = ReceiptInfo(
    event_name="RelayAcceptance",
    evidence_id="ev.20261128T103500Z.7@peer.test",
    event_uri="http://uri.etsi.org/19522/Event/RelayAcceptance",
    reason_uri="http://uri.etsi.org/19522/EventReason/RelayAcceptance",
    reason_code="RB01",
    details="Message accepted by the recipient's provider",
    provider_message_id=PROVIDER_ID,
    ua_message_id=UA_ID,
    sender=SENDER,
    recipients=(OTHER,),
    subject=SUBJECT,
    event_time=dt.datetime(2026, 11, 28, 10, 35, 12, tzinfo=dt.UTC),
    service_address="rem-service@peer.test",
    policy_ids=("urn:oid:2.16.792.1.2.1.1.5.7.50.1",),
    digest_b64="ePggZQ9/Uwbe6ui/mqn+moZJcfkdFVIluG1B4a3ov9k=",
)
HAND_ORIGINAL = (
    "From: Ayşe Kaya <ayse.kaya@peer.test>\r\n"
    "To: ali.yilmaz@kep.test\r\n"
    "Subject: =?utf-8?q?Kira_s=C3=B6zle=C5=9Fmesi?=\r\n"
    "Message-ID: <hand.1@peer.test>\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: 8bit\r\n"
    "\r\n"
    "Kira sözleşmesi ektedir.\r\n"
).encode()


def trust() -> list[x509.Certificate]:
    return [pki().root.cert]


@functools.cache
def evidence_der() -> bytes:
    der: bytes = cms.sign(pki().provider, content=EVIDENCE_XML, detached=False).dump()
    return der


@functools.cache
def own_dispatch() -> tuple[bytes, str, bytes]:
    """Our dispatch of a signed original: (message, its REM-DigestValue, the original)."""
    original = sign_cryptography(pki().ali)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "original.eml"
        source.write_bytes(original)
        with (Path(tmp) / "dispatch.eml").open("wb") as out:
            digest = write_dispatch(
                out,
                source,
                INFO,
                EVIDENCE_XML,
                evidence_der(),
                "SubmissionAcceptance",
                pki().provider,
                [pki().root.cert],
            )
        return (Path(tmp) / "dispatch.eml").read_bytes(), digest, original


@functools.cache
def hand_dispatch() -> bytes:
    return handmade_dispatch(
        HAND_ORIGINAL,
        sender="ayse.kaya@peer.test",
        to=["ali.yilmaz@kep.test", "veli.can@kep.test"],
        cc=["mehmet.oz@kep.test"],
        subject="Kira sözleşmesi",
        provider_message_id="pm.77@peer.test",
        signer_cert=pki().provider.cert,
        signer_key=pki().provider.key,
        chain=[pki().root.cert],
    )


def hand_receipt(**changes: Any) -> bytes:
    """A hand-made ContentHandover receipt signed by the peer, with `changes` to its arguments."""
    args: dict[str, Any] = {
        "event": "ContentHandover",
        "reason": "ContentHandover",
        "sender": SENDER,
        "subject": "Kira",
        "provider_message_id": PROVIDER_ID,
        "signer_cert": pki().provider.cert,
        "signer_key": pki().provider.key,
    }
    return handmade_receipt(**{**args, **changes})


def write(tmp_path: Path, raw: bytes, name: str = "rem.eml") -> Path:
    path = tmp_path / name
    path.write_bytes(raw)
    return path


def refused(tmp_path: Path, raw: bytes, reason: str, at: dt.datetime | None = None) -> RemError:
    with pytest.raises(RemError) as caught:
        read_rem(write(tmp_path, raw), trust(), at)
    assert caught.value.reason == reason, caught.value.text
    return caught.value


def test_own_dispatch(tmp_path: Path) -> None:
    raw, digest, original = own_dispatch()
    path = write(tmp_path, raw)
    rem = read_rem(path, trust())
    assert rem.kind == "dispatch"
    assert rem.message_id == rem.provider_message_id == PROVIDER_ID
    assert rem.sender == SENDER
    assert rem.recipients == (OTHER, "mehmet.oz@peer.test")
    assert rem.subject == SUBJECT
    assert rem.ua_message_id == "client.1@mail.example"
    assert rem.digest_b64 == digest
    assert rem.evidence_id == INFO.evidence_id
    assert rem.event_uri == INFO.event_uri
    assert rem.reason_uri == INFO.reason_uri
    assert rem.signer == pki().provider.cert
    assert rem.evidence_der == evidence_der()
    assert rem.evidence_xml == EVIDENCE_XML
    assert rem.original is not None
    attached = raw[rem.original[0] : rem.original[1]]
    assert base64.b64encode(hashlib.sha256(attached).digest()).decode() == digest
    # the original as submitted, but for the provider message id in place of the user's
    assert attached == original.replace(UA_ID.encode(), f"<{PROVIDER_ID}>".encode(), 1)


def test_own_receipt(tmp_path: Path) -> None:
    raw = build_receipt(RECEIPT, EVIDENCE_XML, evidence_der(), pki().provider, [pki().root.cert])
    rem = read_rem(write(tmp_path, raw), trust())
    assert rem.kind == "receipt"
    assert rem.provider_message_id == PROVIDER_ID
    assert rem.message_id.startswith("receipt.")
    assert rem.sender == SENDER
    assert rem.recipients == ()
    assert rem.subject == f"REM RelayAcceptance: {SUBJECT}"
    assert rem.evidence_id == RECEIPT.evidence_id
    assert rem.event_uri == RECEIPT.event_uri
    assert rem.evidence_der == evidence_der()
    assert rem.evidence_xml == EVIDENCE_XML
    assert rem.original is None


def test_handmade_dispatch(tmp_path: Path) -> None:
    raw = hand_dispatch()
    rem = read_rem(write(tmp_path, raw), trust())
    assert rem.kind == "dispatch"
    assert rem.provider_message_id == "pm.77@peer.test"
    assert rem.sender == "ayse.kaya@peer.test"
    assert rem.recipients == ("ali.yilmaz@kep.test", "veli.can@kep.test", "mehmet.oz@kep.test")
    assert rem.subject == "Kira sözleşmesi"
    assert rem.ua_message_id == "ua.1@client.example"
    assert rem.event_uri == "http://uri.etsi.org/19522/Event/SubmissionAcceptance"
    assert rem.original is not None
    assert raw[rem.original[0] : rem.original[1]] == HAND_ORIGINAL
    assert rem.digest_b64 == base64.b64encode(hashlib.sha256(HAND_ORIGINAL).digest()).decode()
    assert rem.evidence_xml is not None and b"<tns:Evidence" in rem.evidence_xml
    assert rem.evidence_der is not None
    assert cms.encapsulated_content(cms.load(rem.evidence_der)) == rem.evidence_xml
    assert rem.evidence_id is not None and rem.evidence_id.encode() in rem.evidence_xml


def test_handmade_dispatch_with_signer_certificate_only(tmp_path: Path) -> None:
    raw = handmade_dispatch(
        HAND_ORIGINAL,
        sender="ayse.kaya@peer.test",
        to=["ali.yilmaz@kep.test"],
        subject="Kira",
        provider_message_id="pm.78@peer.test",
        signer_cert=pki().provider.cert,
        signer_key=pki().provider.key,
    )
    assert read_rem(write(tmp_path, raw), trust()).signer == pki().provider.cert


def test_handmade_receipt(tmp_path: Path) -> None:
    xml = b'<tns:Evidence xmlns:tns="http://uri.etsi.org/19522/v1#"/>'
    der = handmade_evidence(xml, pki().provider.cert, pki().provider.key)
    raw = hand_receipt(
        event="ContentConsignment",
        reason="MessageConsignedToRecipient",
        subject="Kira sözleşmesi",
        evidence=xml,
        evidence_der=der,
    )
    rem = read_rem(write(tmp_path, raw), trust())
    assert rem.kind == "receipt"
    assert rem.provider_message_id == PROVIDER_ID
    assert rem.sender == SENDER
    assert rem.subject == "REM ContentConsignment: Kira sözleşmesi"
    assert rem.reason_uri == "http://uri.etsi.org/19522/EventReason/MessageConsignedToRecipient"
    assert rem.evidence_der == der
    assert rem.evidence_xml == xml


def test_handmade_receipt_without_xml(tmp_path: Path) -> None:
    raw = hand_receipt(with_xml=False)
    rem = read_rem(write(tmp_path, raw), trust())
    assert rem.evidence_xml is None
    assert rem.evidence_der is not None


def test_receipt_without_p7m(tmp_path: Path) -> None:
    raw = hand_receipt(with_p7m=False)
    error = refused(tmp_path, raw, "format")
    assert "no .p7m evidence" in error.text


def test_untrusted_signer(tmp_path: Path) -> None:
    rogue = issue("Rogue provider", Role.EVIDENCE, pki().rogue_root, email="rem-service@peer.test")
    raw = handmade_dispatch(
        HAND_ORIGINAL,
        sender="ayse.kaya@peer.test",
        to=["ali.yilmaz@kep.test"],
        subject="Kira",
        provider_message_id="pm.79@peer.test",
        signer_cert=rogue.cert,
        signer_key=rogue.key,
        chain=[pki().rogue_root.cert],
    )
    error = refused(tmp_path, raw, "certificate")
    assert "not trusted" in error.text


def test_trust_of_another_peer(tmp_path: Path) -> None:
    with pytest.raises(RemError) as caught:
        read_rem(write(tmp_path, hand_dispatch()), [pki().rogue_root.cert])
    assert caught.value.reason == "certificate"


def test_expired_provider_certificate(tmp_path: Path) -> None:
    later = utcnow() + dt.timedelta(days=4000)
    error = refused(tmp_path, hand_dispatch(), "certificate", at=later)
    assert "not valid at" in error.text


def test_provider_certificate_not_for_email(tmp_path: Path) -> None:
    tls = issue("peer.test", Role.TLS_SERVER, pki().root, dns_names=("peer.test",))
    raw = hand_receipt(signer_cert=tls.cert, signer_key=tls.key)
    error = refused(tmp_path, raw, "certificate")
    assert "emailProtection" in error.text


@pytest.mark.parametrize("which", ["own", "hand"])
def test_flipped_byte_in_the_original(tmp_path: Path, which: str) -> None:
    raw = own_dispatch()[0] if which == "own" else hand_dispatch()
    path = write(tmp_path, raw)
    start, _ = read_rem(path, trust()).original or (0, 0)
    at = start + 40
    damaged = raw[:at] + bytes([raw[at] ^ 0x01]) + raw[at + 1 :]
    error = refused(tmp_path, damaged, "signature")
    assert "altered" in error.text


@pytest.mark.parametrize("which", ["own", "hand"])
def test_changed_digest_header(tmp_path: Path, which: str) -> None:
    raw = own_dispatch()[0] if which == "own" else hand_dispatch()
    other = base64.b64encode(hashlib.sha256(b"another original").digest())
    changed = re.sub(rb"REM-DigestValue: [^\r]+", b"REM-DigestValue: " + other, raw, count=1)
    assert changed != raw
    error = refused(tmp_path, changed, "digest")
    assert "not the SHA-256 of the attached original" in error.text


def test_handmade_dispatch_with_a_wrong_digest(tmp_path: Path) -> None:
    # signed as it is: the provider itself computed the digest wrongly
    raw = handmade_dispatch(
        HAND_ORIGINAL,
        sender="ayse.kaya@peer.test",
        to=["ali.yilmaz@kep.test"],
        subject="Kira",
        provider_message_id="pm.80@peer.test",
        signer_cert=pki().provider.cert,
        signer_key=pki().provider.key,
        digest_b64=base64.b64encode(hashlib.sha256(HAND_ORIGINAL + b"x").digest()).decode(),
    )
    refused(tmp_path, raw, "digest")


def test_dispatch_without_digest(tmp_path: Path) -> None:
    raw = re.sub(rb"REM-DigestValue: [^\r]+\r\n", b"", hand_dispatch(), count=1)
    error = refused(tmp_path, raw, "digest")
    assert "no REM-DigestValue" in error.text


def test_two_digest_values(tmp_path: Path) -> None:
    raw = hand_dispatch().replace(b"REM-MD08:", b"REM-DigestValue: AAAA\r\nREM-MD08:", 1)
    error = refused(tmp_path, raw, "format")
    assert "more than one REM-DigestValue" in error.text


def test_not_multipart_signed(tmp_path: Path) -> None:
    raw = (
        b"From: rem-service@peer.test\r\nTo: ali.yilmaz@kep.test\r\nSubject: hi\r\n"
        b"Message-ID: <x.1@peer.test>\r\n"
        b"REM-MessageType: http://uri.etsi.org/19522/v1#/ERDMessageType/dispatch\r\n"
        b"Content-Type: text/plain\r\n\r\nhello\r\n"
    )
    error = refused(tmp_path, raw, "format")
    assert "text/plain, not multipart/signed" in error.text


def test_other_signature_protocol(tmp_path: Path) -> None:
    raw = hand_dispatch().replace(
        b'protocol="application/pkcs7-signature"', b'protocol="application/pgp-signature"'
    )
    refused(tmp_path, raw, "format")


def test_not_a_rem_message_type(tmp_path: Path) -> None:
    raw = hand_dispatch().replace(b"ERDMessageType/dispatch", b"ERDMessageType/other", 1)
    error = refused(tmp_path, raw, "format")
    assert "REM-MessageType" in error.text


def test_user_p7m_inside_the_original_is_not_the_evidence(tmp_path: Path) -> None:
    user = handmade_evidence(b"the user's own signed content", pki().ali.cert, pki().ali.key)
    original = (
        b"From: ayse.kaya@peer.test\r\nTo: ali.yilmaz@kep.test\r\nSubject: signed\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: application/pkcs7-mime; smime-type=signed-data; name="smime.p7m"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(user).replace(b"\n", b"\r\n")
    )
    raw = handmade_dispatch(
        original,
        sender="ayse.kaya@peer.test",
        to=["ali.yilmaz@kep.test"],
        subject="signed",
        provider_message_id="pm.81@peer.test",
        signer_cert=pki().provider.cert,
        signer_key=pki().provider.key,
    )
    rem = read_rem(write(tmp_path, raw), trust())
    assert rem.evidence_der is not None and rem.evidence_der != user


def test_headers_of_a_message_that_cannot_be_verified(tmp_path: Path) -> None:
    raw = hand_dispatch()
    truncated = raw[: len(raw) // 2]
    path = write(tmp_path, truncated)
    refused(tmp_path, truncated, "format")
    headers = read_rem_headers(path)
    assert headers.kind == "dispatch"
    assert headers.message_id == headers.provider_message_id == "pm.77@peer.test"
    assert headers.sender == "ayse.kaya@peer.test"
    assert headers.recipients == ("ali.yilmaz@kep.test", "veli.can@kep.test", "mehmet.oz@kep.test")
    assert headers.subject == "Kira sözleşmesi"
    assert headers.digest_b64 == base64.b64encode(hashlib.sha256(HAND_ORIGINAL).digest()).decode()


def test_headers_of_a_receipt(tmp_path: Path) -> None:
    raw = build_receipt(RECEIPT, EVIDENCE_XML, evidence_der(), pki().provider, [pki().root.cert])
    headers = read_rem_headers(write(tmp_path, raw))
    assert headers.kind == "receipt"
    assert headers.provider_message_id == PROVIDER_ID
    assert headers.sender == SENDER
    assert headers.evidence_id == RECEIPT.evidence_id


def test_no_header_block(tmp_path: Path) -> None:
    raw = b"From: x@peer.test\r\nno blank line follows"
    error = refused(tmp_path, raw, "format")
    assert "no header block" in error.text
    headers = read_rem_headers(write(tmp_path, raw))
    assert headers.kind is headers.message_id is headers.sender is None
    assert headers.recipients == ()


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.data(),
    which=st.sampled_from(["own", "hand"]),
    how=st.sampled_from(["flip", "cut", "insert", "delete", "boundary"]),
)
def test_damaged_dispatch_ends_in_a_verdict(
    fuzz_dir: Path, data: st.DataObject, which: str, how: str
) -> None:
    raw = own_dispatch()[0] if which == "own" else hand_dispatch()
    at = data.draw(st.integers(0, len(raw) - 1))
    if how == "flip":
        raw = raw[:at] + bytes([raw[at] ^ data.draw(st.integers(1, 255))]) + raw[at + 1 :]
    elif how == "cut":
        raw = raw[:at]
    elif how == "insert":
        raw = raw[:at] + data.draw(st.binary(min_size=1, max_size=16)) + raw[at:]
    elif how == "delete":
        raw = raw[:at] + raw[at + data.draw(st.integers(1, 200)) :]
    else:
        # a boundary line or header break where there was none, or one gone
        piece = data.draw(st.sampled_from([b"\r\n--", b"\r\n\r\n", b"--\r\n", b'"', b"\r\n "]))
        raw = raw[:at] + piece + raw[at:]
    path = fuzz_dir / "damaged.eml"
    path.write_bytes(raw)
    try:
        result = read_rem(path, trust())
    except RemError as exc:
        assert exc.reason in ("format", "signature", "certificate", "digest")
        assert exc.text
    else:
        assert isinstance(result, RemMessage)
