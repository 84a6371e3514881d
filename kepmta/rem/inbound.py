"""A REM message another provider sent us: a dispatch or a receipt (EN 319 532-3), read and checked.

Nothing about its layout is trusted beyond MIME and the shapes of EVIDENCE.md: parts are found by
their content types and REM-Section-Type, not by their order or our own boundaries. The checks
each fail with their own reason, because the RelayRejection evidence names the one that failed
(EN 319 522-2 §8.3.3: RB02 format, RB04 signature, RB05 certificate):

* format: multipart/signed with protocol application/pkcs7-signature (RFC 8551 §3.5.3), the REM
  header fields a dispatch or receipt needs, an original in a dispatch, a `.p7m` in a receipt;
* signature: the detached CMS signature verifies over the exact bytes of the first body part,
  its header fields included (RFC 1847 §2.1, RFC 5652 §5.4);
* certificate: the signer certificate chains to the peer's trust and is in force (RFC 5280 §6.1);
* digest: a dispatch's REM-DigestValue is the SHA-256 of its original (EVIDENCE.md, "Digest").

The file may be a hostile 25 MB: it is read through `FileBuffer`, MIME nesting and part counts are
bounded, and whatever the parsers raise on input they cannot read ends as RemError("format").
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from kepmta.headers import HEADER_LIMIT, HeaderError, clean_text, read_headers
from kepmta.message import transfer
from kepmta.message.addresses import addr_specs
from kepmta.message.buffer import Buffer, FileBuffer, hash_range
from kepmta.message.content import ContentType, parse_content_type
from kepmta.message.header import Header, read_header
from kepmta.message.multipart import MultipartError, strict_parts
from kepmta.rem.digest import original_range
from kepmta.rem.mime import DIGEST_ALGORITHM, MESSAGE_TYPE
from kepmta.smime import cms
from kepmta.smime.errors import MimeStructureError, NotSignedError, SmimeError

# The provider signature is an S/MIME signature like a sender's: one reader and verifier for both.
from kepmta.smime.sender import (
    _check_validity,
    _decode,
    _only_signer,
    _read_signature,
    _signer_certificate,
    _signing_time,
    _verify,
)

__all__ = ["REASONS", "RemError", "RemHeaders", "RemMessage", "read_rem", "read_rem_headers"]

REASONS = ("format", "signature", "certificate", "digest")

# EN 319 532-3 nests three deep (signed, mixed, alternative) with about six parts; these limits
# are far above that and only stop a hostile message from making us walk it for long.
_MAX_DEPTH = 8
_MAX_PARTS = 64
_KINDS = ("dispatch", "receipt")
_DISPATCH_PREFIX = "REM Dispatch: "
# RFC 8551 §3.2.2; the x- form is what older S/MIME libraries write.
_EVIDENCE_TYPES = ("application/pkcs7-mime", "application/x-pkcs7-mime")
_XML_TYPES = ("application/xml", "text/xml")
# Fields that say one thing about the message: two of them would leave it to us which to believe.
_SINGLE = (
    "Message-ID",
    "In-Reply-To",
    "To",
    "Cc",
    "Subject",
    "REM-MessageType",
    "REM-DigestAlgorithm",
    "REM-DigestValue",
    "REM-UAMessageIdentifier",
    "REM-EventIdentifier",
    "REM-Evidence-ID",
    "REM-ReasonIdentifier",
    "REM-MD08",
    "X-TR-REM-iletiID",
)
_ANGLE = re.compile(r"<([^<>\s]+)>")


class RemError(Exception):
    """The message is not a REM message we accept; `reason` is one of REASONS, `text` a sentence."""

    def __init__(self, reason: str, text: str) -> None:
        super().__init__(text)
        self.reason = reason
        self.text = text


@dataclass(frozen=True)
class RemHeaders:
    """What the top-level header block says, unverified: enough to name a refused message."""

    kind: str | None  # "dispatch" | "receipt", from REM-MessageType
    message_id: str | None  # without <>
    provider_message_id: str | None  # dispatch: X-TR-REM-iletiID or Message-ID; receipt: In-Reply-To
    sender: str | None  # dispatch: REM-MD08; receipt: To (the original sender)
    recipients: tuple[str, ...]  # dispatch: To + Cc; receipt: none
    subject: str  # decoded; a dispatch's without "REM Dispatch: "
    ua_message_id: str | None  # REM-UAMessageIdentifier without <>
    digest_b64: str | None  # REM-DigestValue as given
    evidence_id: str | None  # REM-Evidence-ID
    event_uri: str | None  # REM-EventIdentifier
    reason_uri: str | None  # REM-ReasonIdentifier


@dataclass(frozen=True)
class RemMessage:
    kind: str  # "dispatch" | "receipt"
    message_id: str
    provider_message_id: str
    sender: str
    recipients: tuple[str, ...]
    subject: str
    ua_message_id: str | None
    digest_b64: str | None
    evidence_id: str | None
    event_uri: str | None
    reason_uri: str | None
    signer: x509.Certificate  # the provider signature's signer certificate
    evidence_der: bytes | None  # the attached <EventName>.p7m
    evidence_xml: bytes | None  # the attached <EventName>.xml, if any
    original: tuple[int, int] | None  # byte range of a dispatch's original in the file


def read_rem_headers(path: Path) -> RemHeaders:
    """The REM facts of the top-level header block, without verifying anything; all absent when
    the file has no header block."""
    try:
        headers, _ = _top(path)
    except RemError:
        return RemHeaders(None, None, None, None, (), "", None, None, None, None, None)
    return headers


def read_rem(path: Path, trust: Sequence[x509.Certificate], at: datetime | None = None) -> RemMessage:
    """Read the REM message in `path` and run every check, the certificate ones at `at` (now)."""
    when = (at or datetime.now(UTC)).astimezone(UTC)
    with path.open("rb") as f:
        try:
            return _read(path, FileBuffer(f.fileno()), trust, when)
        except RemError:
            raise
        except (ValueError, LookupError, TypeError) as exc:
            # The email, asn1crypto and cryptography parsers raise these on bytes they cannot read.
            raise RemError("format", f"the message cannot be read as a REM message: {exc}") from exc


def _read(path: Path, buf: Buffer, trust: Sequence[x509.Certificate], at: datetime) -> RemMessage:
    headers, top = _top(path)
    ctype = _content_type(top)
    protocol = (ctype.param("protocol") or "").lower()
    if ctype.mime_type != "multipart/signed" or protocol != "application/pkcs7-signature":
        raise RemError(
            "format",
            f"the message is {ctype.mime_type}, not multipart/signed with protocol "
            "application/pkcs7-signature",
        )
    for name in _SINGLE:
        if len(top.get_all(name)) > 1:
            raise RemError("format", f"the message has more than one {name} field")
    kind, message_id, sender = headers.kind, headers.message_id, headers.sender
    if kind is None:
        raise RemError("format", "REM-MessageType is missing or names neither a dispatch nor a receipt")
    if message_id is None:
        raise RemError("format", "the message has no Message-ID")
    if headers.provider_message_id is None:
        raise RemError("format", "the receipt has no In-Reply-To naming the message it is about")
    if sender is None:
        where = "REM-MD08" if kind == "dispatch" else "To"
        raise RemError("format", f"the {kind} names no sender ({where})")

    signer, span = _provider_signature(buf, trust, at)
    parts = _Parts()
    _walk(buf, *span, 0, parts)
    evidence_der = _evidence(buf, parts)
    evidence_xml = _xml(buf, parts)
    original = None
    if kind == "dispatch":
        original = _check_original(buf, span, top, headers.digest_b64)
    elif evidence_der is None:
        raise RemError("format", "the receipt carries no .p7m evidence (application/pkcs7-mime part)")
    return RemMessage(
        kind=kind,
        message_id=message_id,
        provider_message_id=headers.provider_message_id,
        sender=sender,
        recipients=headers.recipients,
        subject=headers.subject,
        ua_message_id=headers.ua_message_id,
        digest_b64=headers.digest_b64,
        evidence_id=headers.evidence_id,
        event_uri=headers.event_uri,
        reason_uri=headers.reason_uri,
        signer=signer,
        evidence_der=evidence_der,
        evidence_xml=evidence_xml,
        original=original,
    )


# -- the header block ------------------------------------------------------------------------------


def _top(path: Path) -> tuple[RemHeaders, Header]:
    try:
        block = read_headers(path)
    except HeaderError as exc:
        raise RemError("format", str(exc)) from exc
    with path.open("rb") as f:
        raw = f.read(min(block.header_end, HEADER_LIMIT))
    top = read_header(raw, 0, len(raw))
    message_type = _field(top, "REM-MessageType") or ""
    kind = message_type.removeprefix(MESSAGE_TYPE) if message_type.startswith(MESSAGE_TYPE) else None
    kind = kind if kind in _KINDS else None
    if kind == "receipt":
        provider_id = _angled(_field(top, "In-Reply-To"))
        original_sender = _addresses(block.addresses.to)
        sender = original_sender[0] if original_sender else None
        recipients: tuple[str, ...] = ()
    else:
        provider_id = _field(top, "X-TR-REM-iletiID") or block.message_id
        sender = _field(top, "REM-MD08")
        recipients = _addresses((*block.addresses.to, *block.addresses.cc))
    subject = block.subject
    if kind == "dispatch":
        subject = subject.removeprefix(_DISPATCH_PREFIX)
    headers = RemHeaders(
        kind=kind,
        message_id=block.message_id,
        provider_message_id=provider_id,
        sender=sender,
        recipients=recipients,
        subject=subject,
        ua_message_id=_angled(_field(top, "REM-UAMessageIdentifier")),
        digest_b64=_field(top, "REM-DigestValue"),
        evidence_id=_field(top, "REM-Evidence-ID"),
        event_uri=_field(top, "REM-EventIdentifier"),
        reason_uri=_field(top, "REM-ReasonIdentifier"),
    )
    return headers, top


def _field(head: Header, name: str) -> str | None:
    """The first `name` field, unfolded and cleaned of control characters; None if absent or empty."""
    value = head.get(name)
    if value is None:
        return None
    return clean_text(value) or None


def _content_type(head: Header) -> ContentType:
    return parse_content_type(head.get("Content-Type"))


def _angled(value: str | None) -> str | None:
    """An id written as <id> (RFC 5322 §3.6.4), without the brackets; a bare id as it is."""
    if value is None:
        return None
    found = _ANGLE.search(value)
    return found.group(1) if found else value


def _addresses(values: Sequence[str]) -> tuple[str, ...]:
    return addr_specs(clean_text(v) for v in values)


# -- the provider signature ------------------------------------------------------------------------


def _provider_signature(
    buf: Buffer, trust: Sequence[x509.Certificate], at: datetime
) -> tuple[x509.Certificate, tuple[int, int]]:
    """The signer certificate and the signed part's byte range, once signature and certificate
    have been checked."""
    try:
        signature = _read_signature(buf)
    except (MimeStructureError, NotSignedError) as exc:
        raise RemError("format", str(exc)) from exc
    except SmimeError as exc:
        raise RemError("signature", f"the provider signature cannot be read: {exc}") from exc
    try:
        info = _only_signer(signature.info)
        signer = _signer_certificate(signature.info)
        _verify(signature, info, signer, buf)
        signing_time = _signing_time(signature.info)
        pool = cms.certificates(signature.info)
    except SmimeError as exc:
        raise RemError("signature", f"the provider signature does not verify: {exc}") from exc
    except ValueError as exc:  # CmsError, and what asn1crypto or cryptography raise on bad fields
        raise RemError("signature", f"the provider signature cannot be read: {exc}") from exc
    try:
        cms.validate_chain(signer, intermediates=pool, trust=trust, at=at)
    except cms.ChainError as exc:
        raise RemError("certificate", f"the provider certificate is not trusted: {exc}") from exc
    # RFC 8550 §4.4: in force at signing time, and fit for signing e-mail.
    validity = _check_validity(signer, signing_time, at)
    if not validity.ok:
        raise RemError("certificate", validity.detail)
    return signer, signature.span


# -- the signed part -------------------------------------------------------------------------------


@dataclass
class _Parts:
    """The leaf parts of the signed part that carry evidence, as (headers, body start, end)."""

    count: int = 0
    evidence: list[tuple[Header, int, int]] = field(default_factory=list)
    xml: list[tuple[Header, int, int]] = field(default_factory=list)


def _walk(buf: Buffer, start: int, end: int, depth: int, parts: _Parts) -> None:
    head = read_header(buf, start, end)
    ctype = _content_type(head)
    if ctype.maintype != "multipart":
        if depth == 0:
            raise RemError("format", f"the signed part is {ctype.mime_type}, not a multipart")
        _leaf(head, ctype, end, parts)
        return
    if depth >= _MAX_DEPTH:
        raise RemError("format", f"MIME parts are nested more than {_MAX_DEPTH} deep")
    boundary = ctype.boundary
    if not boundary:
        raise RemError("format", f"a {ctype.mime_type} part has no boundary parameter")
    try:
        found = strict_parts(buf, head.body_start, end, boundary)
    except MultipartError as exc:
        raise RemError("format", str(exc)) from exc
    parts.count += len(found)
    if parts.count > _MAX_PARTS:
        raise RemError("format", f"the message has more than {_MAX_PARTS} MIME parts")
    for part_start, part_end in found:
        _walk(buf, part_start, part_end, depth + 1, parts)


def _leaf(head: Header, ctype: ContentType, end: int, parts: _Parts) -> None:
    body = head.body_start
    if ctype.mime_type in _EVIDENCE_TYPES:
        # RFC 8551 §3.2.2: smime-type tells signed from enveloped data; it may be left out.
        smime_type = (ctype.param("smime-type") or "signed-data").lower()
        if smime_type == "signed-data":
            parts.evidence.append((head, body, end))
    elif (head.get("REM-Section-Type") or "").strip().lower() == "rem_message/xml_evidence":
        parts.xml.insert(0, (head, body, end))
    elif ctype.mime_type in _XML_TYPES:
        parts.xml.append((head, body, end))


def _evidence(buf: Buffer, parts: _Parts) -> bytes | None:
    if not parts.evidence:
        return None
    if len(parts.evidence) > 1:
        raise RemError("format", f"the message carries {len(parts.evidence)} .p7m evidence parts, not one")
    headers, start, end = parts.evidence[0]
    der = _decode(headers, buf[start:end], "the .p7m evidence part")
    try:
        cms.load(der)
    except cms.CmsError as exc:
        raise RemError("format", f"the .p7m evidence is not a CMS SignedData: {exc}") from exc
    return der


def _xml(buf: Buffer, parts: _Parts) -> bytes | None:
    if not parts.xml:
        return None
    headers, start, end = parts.xml[0]
    body = buf[start:end]
    if (headers.get("Content-Transfer-Encoding") or "").strip().lower() == "quoted-printable":
        return transfer.quoted_printable(body)
    return _decode(headers, body, "the evidence XML part")


def _check_original(buf: Buffer, span: tuple[int, int], top: Header, claimed: str | None) -> tuple[int, int]:
    found = original_range(buf)
    if found is None or not span[0] <= found[0] <= found[1] <= span[1]:
        raise RemError("format", "the dispatch carries no message/rfc822 original in its signed part")
    if claimed is None:
        raise RemError("digest", "the dispatch has no REM-DigestValue")
    algorithm = _field(top, "REM-DigestAlgorithm")
    if algorithm is not None and algorithm != DIGEST_ALGORITHM:
        raise RemError("digest", f"REM-DigestAlgorithm is {algorithm}, not {DIGEST_ALGORITHM}")
    try:
        want = base64.b64decode(claimed, validate=True)
    except binascii.Error as exc:
        raise RemError("digest", "REM-DigestValue is not base64") from exc
    digest = hashlib.sha256()
    hash_range(buf, *found, digest)
    if not hmac.compare_digest(digest.digest(), want):
        raise RemError("digest", "REM-DigestValue is not the SHA-256 of the attached original")
    return found
