"""REM dispatches and receipts built by hand from EVIDENCE.md, the way another provider might.

Nothing here comes from kepmta's own rem/ or smime/ writers: the message is assembled as byte
strings, the subject encoded by the `email` package, and the provider signature and evidence made
by `cryptography`'s PKCS#7 builder. A test that kepmta accepts these shows it reads the standard's
format, not only its own. The layout differs from ours on purpose where MIME allows it: other
boundaries, a preamble and epilogue, folded Content-Type parameters, the original with a file name.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from email.header import Header
from email.utils import format_datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7

CRLF = b"\r\n"
POLICY = "urn:oid:2.16.792.1.2.1.1.5.7.50.1"
DISPATCH_TYPE = "http://uri.etsi.org/19522/v1#/ERDMessageType/dispatch"
RECEIPT_TYPE = "http://uri.etsi.org/19522/v1#/ERDMessageType/receipt"
SHA256_URI = "http://www.w3.org/2001/04/xmlenc#sha256"
EVENT = "http://uri.etsi.org/19522/Event/"
REASON = "http://uri.etsi.org/19522/EventReason/"


def _lines(*fields: str) -> bytes:
    return b"".join(f.encode("utf-8") + CRLF for f in fields)


def _b64(data: bytes) -> bytes:
    text = base64.b64encode(data)
    return CRLF.join(text[i : i + 64] for i in range(0, len(text), 64))


def _subject(text: str) -> str:
    return "Subject: " + Header(text, "utf-8", header_name="Subject").encode(linesep="\r\n")


def _sign_with(
    data: bytes,
    cert: x509.Certificate,
    key: pkcs7.PKCS7PrivateKeyTypes,
    chain: Sequence[x509.Certificate],
    detached: bool,
) -> bytes:
    builder = pkcs7.PKCS7SignatureBuilder().set_data(data).add_signer(cert, key, hashes.SHA256())
    for extra in chain:
        builder = builder.add_certificate(extra)
    # Binary: the bytes are signed as they are; they already have the CRLF line ends of RFC 5322.
    options = [pkcs7.PKCS7Options.Binary]
    if detached:
        options.append(pkcs7.PKCS7Options.DetachedSignature)
    return builder.sign(serialization.Encoding.DER, options)


def handmade_evidence(
    xml: bytes, signer_cert: x509.Certificate, signer_key: pkcs7.PKCS7PrivateKeyTypes
) -> bytes:
    """An evidence as `<EventName>.p7m`: the XML inside an attached CMS SignedData (DER)."""
    return _sign_with(xml, signer_cert, signer_key, (), detached=False)


def evidence_xml(event: str, message_id: str, evidence_id: str) -> bytes:
    """A small EN 319 522-3 evidence: identifier, event and message id."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<tns:Evidence xmlns:tns="http://uri.etsi.org/19522/v1#" version="EN319522v1.1.1">'
        f"<tns:EvidenceIdentifier>{evidence_id}</tns:EvidenceIdentifier>"
        f"<tns:ERDSEventId>{EVENT}{event}</tns:ERDSEventId>"
        f"<tns:MessageIdentifier>{message_id}</tns:MessageIdentifier>"
        "</tns:Evidence>\n"
    ).encode()


def _signed_message(
    top: bytes,
    signed_part: bytes,
    signer_cert: x509.Certificate,
    signer_key: pkcs7.PKCS7PrivateKeyTypes,
    chain: Sequence[x509.Certificate],
) -> bytes:
    """RFC 1847 multipart/signed around `signed_part`, which the detached signature covers."""
    outer = f"----=_Part_{secrets.token_hex(8)}"
    signature = _sign_with(signed_part, signer_cert, signer_key, chain, detached=True)
    return (
        top
        + _lines(
            "MIME-Version: 1.0",
            "Content-Type: multipart/signed;",
            '\tprotocol="application/pkcs7-signature";',
            f'\tmicalg=sha-256; boundary="{outer}"',
            "",
            "This is an S/MIME signed message",
            "",
            f"--{outer}",
        )
        + signed_part
        + CRLF
        + _lines(
            f"--{outer}",
            'Content-Type: application/pkcs7-signature; name="smime.p7s"',
            "Content-Transfer-Encoding: base64",
            'Content-Disposition: attachment; filename="smime.p7s"',
            "",
        )
        + _b64(signature)
        + CRLF
        + _lines(f"--{outer}--", "", "epilogue, ignored")
    )


def _introduction(boundary: str, text: str) -> bytes:
    return (
        _lines(
            f'Content-Type: multipart/alternative; boundary="{boundary}"',
            "REM-Section-Type: rem_message/introduction",
            "",
            f"--{boundary}",
            "Content-Type: text/plain; charset=UTF-8",
            "Content-Transfer-Encoding: base64",
            "",
        )
        + _b64(text.encode())
        + CRLF
        + _lines(
            f"--{boundary}",
            "Content-Type: text/html; charset=UTF-8",
            "Content-Transfer-Encoding: base64",
            "",
        )
        + _b64(f"<html><body><p>{text}</p></body></html>".encode())
        + CRLF
        + _lines(f"--{boundary}--")
    )


def _evidence_parts(boundary: str, event: str, xml: bytes | None, der: bytes | None) -> bytes:
    out = b""
    if xml is not None:
        out += (
            _lines(
                f"--{boundary}",
                f'Content-Type: application/xml; name="{event}.xml"',
                "Content-Transfer-Encoding: base64",
                f'Content-Disposition: attachment; filename="{event}.xml"',
                "REM-Section-Type: rem_message/xml_evidence",
                "",
            )
            + _b64(xml)
            + CRLF
        )
    if der is None:
        return out
    return (
        out
        + _lines(
            f"--{boundary}",
            f'Content-Type: application/pkcs7-mime; smime-type=signed-data; name="{event}.p7m"',
            "Content-Transfer-Encoding: base64",
            f'Content-Disposition: attachment; filename="{event}.p7m"',
            "",
        )
        + _b64(der)
        + CRLF
    )


def handmade_dispatch(
    original: bytes,
    *,
    sender: str,
    to: Sequence[str],
    subject: str,
    provider_message_id: str,
    signer_cert: x509.Certificate,
    signer_key: pkcs7.PKCS7PrivateKeyTypes,
    chain: Sequence[x509.Certificate] = (),
    cc: Sequence[str] = (),
    ua_message_id: str = "<ua.1@client.example>",
    evidence_der: bytes | None = None,
    evidence: bytes | None = None,
    policy_id: str = POLICY,
    domain: str = "peer.test",
    digest_b64: str | None = None,
) -> bytes:
    """A signed REM dispatch of `original` (CRLF bytes); `digest_b64` overrides REM-DigestValue.

    `evidence` is the SubmissionAcceptance XML (a small one when None) and `evidence_der` its
    `.p7m` (signed by the signer when None).
    """
    if not original.endswith(CRLF):
        original += CRLF  # EVIDENCE.md: the digest includes the original's final CRLF
    evidence_id = f"ev.{secrets.token_hex(6)}@{domain}"
    xml = evidence or evidence_xml("SubmissionAcceptance", provider_message_id, evidence_id)
    der = evidence_der or handmade_evidence(xml, signer_cert, signer_key)
    digest = digest_b64 or base64.b64encode(hashlib.sha256(original).digest()).decode()
    mixed, alternative = f"mixed-{secrets.token_hex(6)}", f"alt-{secrets.token_hex(6)}"
    signed_part = (
        _lines(
            "Content-Type: multipart/mixed;",
            f' boundary="{mixed}"',
            "",
            "preamble of the mixed part",
            f"--{mixed}",
        )
        + _introduction(alternative, f"REM dispatch from {sender}: {subject}")
        + CRLF
        + _lines(
            f"--{mixed}",
            "Content-Type: message/rfc822; name=AttachedMimeMessage.eml",
            'Content-Disposition: attachment; filename="AttachedMimeMessage.eml"',
            "REM-Section-Type: rem_message/original",
            "",
        )
        + original
        + CRLF
        + _evidence_parts(mixed, "SubmissionAcceptance", xml, der)
        + f"--{mixed}--".encode()
    )
    fields = [
        f'From: "On behalf of: {sender}" <rem-service@{domain}>',
        f"Reply-To: <{sender}>",
        "To: " + ", ".join(to),
        *(["Cc: " + ", ".join(cc)] if cc else []),
        _subject(f"REM Dispatch: {subject}"),
        f"Date: {format_datetime(datetime.now(UTC))}",
        f"Message-ID: <{provider_message_id}>",
        "REM-MetadataVersion: EN31953203V010201",
        f"REM-ApplicablePolicy: {policy_id}",
        f"REM-MessageType: {DISPATCH_TYPE}",
        f"REM-DigestAlgorithm: {SHA256_URI}",
        f"REM-DigestValue: {digest}",
        f"REM-UAMessageIdentifier: {ua_message_id}",
        f"REM-EventIdentifier: {EVENT}SubmissionAcceptance",
        f"REM-Evidence-ID: {evidence_id}",
        f"REM-ReasonIdentifier: {REASON}MessageAccepted",
        f"REM-MD08: {sender}",
        "X-TR-REM-iletiTip: standart",
        f"X-TR-REM-iletiID: {provider_message_id}",
    ]
    return _signed_message(_lines(*fields), signed_part, signer_cert, signer_key, chain)


def handmade_receipt(
    *,
    event: str,
    reason: str,
    sender: str,
    subject: str,
    provider_message_id: str,
    signer_cert: x509.Certificate,
    signer_key: pkcs7.PKCS7PrivateKeyTypes,
    chain: Sequence[x509.Certificate] = (),
    evidence_der: bytes | None = None,
    evidence: bytes | None = None,
    with_xml: bool = True,
    with_p7m: bool = True,
    policy_id: str = POLICY,
    domain: str = "peer.test",
) -> bytes:
    """A signed REM receipt to `sender` carrying `<event>.p7m` (and `<event>.xml`) about
    `provider_message_id`; `with_p7m=False` leaves the signed evidence out, as no receipt may."""
    evidence_id = f"ev.{secrets.token_hex(6)}@{domain}"
    xml = evidence or evidence_xml(event, provider_message_id, evidence_id)
    der = evidence_der or handmade_evidence(xml, signer_cert, signer_key)
    mixed, alternative = f"mixed-{secrets.token_hex(6)}", f"alt-{secrets.token_hex(6)}"
    signed_part = (
        _lines(f'Content-Type: multipart/mixed; boundary="{mixed}"', "", f"--{mixed}")
        + _introduction(alternative, f"REM {event} for your message {subject}")
        + CRLF
        + _evidence_parts(mixed, event, xml if with_xml else None, der if with_p7m else None)
        + f"--{mixed}--".encode()
    )
    fields = [
        f"From: rem-service@{domain}",
        f"To: {sender}",
        _subject(f"REM {event}: {subject}"),
        f"Date: {format_datetime(datetime.now(UTC))}",
        f"Message-ID: <receipt.{secrets.token_hex(6)}@{domain}>",
        f"In-Reply-To: <{provider_message_id}>",
        "REM-MetadataVersion: EN31953203V010201",
        f"REM-ApplicablePolicy: {policy_id}",
        f"REM-MessageType: {RECEIPT_TYPE}",
        f"REM-EventIdentifier: {EVENT}{event}",
        f"REM-Evidence-ID: {evidence_id}",
        f"REM-ReasonIdentifier: {REASON}{reason}",
        f"REM-MD08: {sender}",
    ]
    return _signed_message(_lines(*fields), signed_part, signer_cert, signer_key, chain)
