"""build_receipt: what the sender's mail client gets, and how it finds the evidence."""

from __future__ import annotations

import email
import email.policy
import functools
import re
from datetime import UTC, datetime
from email.header import decode_header, make_header
from email.message import EmailMessage
from pathlib import Path

import pytest
from rem_fixtures import OPENSSL, OTHER, SENDER, openssl_smime_verify, pki

from kepmta.rem.receipt import ReceiptInfo, build_receipt
from kepmta.smime import cms

needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl command not installed")

SUBJECT = "Kira sözleşmesi – Şubat ödemesi (İzmir)"
EVIDENCE_XML = b'<tns:Evidence xmlns:tns="http://uri.etsi.org/19522/v1#"/>'
INFO = ReceiptInfo(
    event_name="ContentConsignment",
    evidence_id="ev.20261128T103500Z.7@kep.test",
    event_uri="http://uri.etsi.org/19522/Event/ContentConsignment",
    reason_uri="http://uri.etsi.org/19522/EventReason/MessageConsignedToRecipient",
    reason_code="RD01",
    details="Message consigned to the recipient's mailbox",
    provider_message_id="20261128T103000Z.abc123@kep.test",
    ua_message_id="<client.1@mail.example>",
    sender=SENDER,
    recipients=(OTHER,),
    subject=SUBJECT,
    event_time=datetime(2026, 11, 28, 10, 35, 12, tzinfo=UTC),
    service_address="rem-service@kep.test",
    policy_ids=("urn:oid:2.16.792.1.2.1.1.5.7.50.1",),
    digest_b64="ePggZQ9/Uwbe6ui/mqn+moZJcfkdFVIluG1B4a3ov9k=",
)


@functools.cache
def evidence_der() -> bytes:
    der: bytes = cms.sign(pki().provider, content=EVIDENCE_XML, detached=False).dump()
    return der


def receipt(info: ReceiptInfo = INFO) -> bytes:
    return build_receipt(info, EVIDENCE_XML, evidence_der(), pki().provider, [pki().root.cert])


def parsed(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def test_client_finds_the_p7m_and_decodes_the_exact_der() -> None:
    message = parsed(receipt())
    found = [p for p in message.walk() if (p.get_filename() or "").endswith(".p7m")]
    assert len(found) == 1
    part = found[0]
    assert part.get_filename() == "ContentConsignment.p7m"
    assert part.get_content_type() == "application/pkcs7-mime"
    assert part.get_param("smime-type") == "signed-data"
    assert part.get_param("name") == "ContentConsignment.p7m"
    assert part.get_content_disposition() == "attachment"
    assert part.get_payload(decode=True) == evidence_der()


@needs_openssl
def test_receipt_verifies_with_openssl(tmp_path: Path) -> None:
    content = openssl_smime_verify(tmp_path, receipt(), pki().root.cert)
    assert content.startswith(b"Content-Type: multipart/mixed;")


def test_headers() -> None:
    message = parsed(receipt())
    assert str(message["From"]) == "rem-service@kep.test"
    assert str(message["To"]) == SENDER
    assert str(message["Subject"]) == f"REM ContentConsignment: {SUBJECT}"
    assert message["Message-ID"] == "<receipt.ev.20261128T103500Z.7.kep.test@kep.test>"
    assert message["In-Reply-To"] == f"<{INFO.provider_message_id}>"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["Date"].datetime == INFO.event_time
    assert message["REM-MessageType"] == "http://uri.etsi.org/19522/v1#/ERDMessageType/receipt"
    assert message["REM-MetadataVersion"] == "EN31953203V010201"
    assert message["REM-ApplicablePolicy"] == INFO.policy_ids[0]
    assert message["REM-DigestAlgorithm"] == "http://www.w3.org/2001/04/xmlenc#sha256"
    assert message["REM-DigestValue"] == INFO.digest_b64
    assert message["REM-UAMessageIdentifier"] == INFO.ua_message_id
    assert message["REM-EventIdentifier"] == INFO.event_uri
    assert message["REM-Evidence-ID"] == INFO.evidence_id
    assert message["REM-ReasonIdentifier"] == INFO.reason_uri
    assert message["REM-MD08"] == SENDER
    assert message.get_content_type() == "multipart/signed"
    assert message.get_param("protocol") == "application/pkcs7-signature"


def test_tree_has_no_original() -> None:
    message = parsed(receipt())
    assert [p.get_content_type() for p in message.walk()] == [
        "multipart/signed",
        "multipart/mixed",
        "multipart/alternative",
        "text/plain",
        "text/html",
        "application/xml",
        "application/pkcs7-mime",
        "application/pkcs7-signature",
    ]
    xml = [p for p in message.walk() if p.get_filename() == "ContentConsignment.xml"]
    assert xml[0]["REM-Section-Type"] == "rem_message/xml_evidence"
    assert xml[0].get_payload(decode=True) == EVIDENCE_XML


def test_introduction_says_what_when_for_whom_and_why() -> None:
    message = parsed(receipt())
    plain = message.get_body(preferencelist=("plain",))
    rich = message.get_body(preferencelist=("html",))
    assert plain is not None and rich is not None
    text, page = plain.get_content(), rich.get_content()
    for expected in (
        "iletiniz alıcının posta kutusuna teslim edildi",
        "your message was delivered to the recipient's mailbox",
        "28.11.2026 10:35:12 UTC",
        "2026-11-28 10:35:12 UTC",
        OTHER,
        "Message consigned to the recipient's mailbox (RD01)",
        SUBJECT,
        "ContentConsignment.p7m",
    ):
        assert expected in text
    assert "recipient&#x27;s mailbox" in page and "İzmir" in page


def test_subject_round_trips_through_rfc2047() -> None:
    raw = receipt()
    head = raw[: raw.index(b"\r\n\r\n")].decode("ascii")
    folded = re.search(r"\r\nSubject: (.*?)\r\n(?! )", head, re.S)
    assert folded is not None and "=?utf-8?" in folded.group(1)
    decoded = str(make_header(decode_header(folded.group(1).replace("\r\n", ""))))
    assert decoded == f"REM ContentConsignment: {SUBJECT}"


def test_without_digest_the_digest_fields_are_left_out() -> None:
    raw = receipt(ReceiptInfo(**{**INFO.__dict__, "digest_b64": None, "ua_message_id": None}))
    assert b"REM-DigestValue" not in raw and b"REM-DigestAlgorithm" not in raw
    assert b"REM-UAMessageIdentifier" not in raw


def test_every_line_ends_in_crlf() -> None:
    raw = receipt()
    assert raw.count(b"\n") == raw.count(b"\r\n") and raw.count(b"\r") == raw.count(b"\r\n")


def test_header_injection_through_subject_is_neutralised() -> None:
    raw = receipt(ReceiptInfo(**{**INFO.__dict__, "subject": "x\r\nBcc: attacker@example"}))
    assert b"\r\nBcc:" not in raw[: raw.index(b"\r\n\r\n")]
    assert "Bcc" in str(parsed(raw)["Subject"])
