"""The REM dispatch: the provider-signed message that carries a sender's original to a recipient.

EN 319 532-3 (condensed in EVIDENCE.md): a multipart/signed message whose signed part is a
multipart/mixed of an introduction, the original as message/rfc822, and the evidence as XML and
as signed `<EventName>.p7m`. The original may be 100 MB, so it is streamed twice in chunks: once
to compute REM-DigestValue (a header, so needed before the body is written) and to choose
boundaries, once to write it while the provider signature's digest runs over it.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from cryptography import x509

from kepmta.message.header import find_body
from kepmta.pki import KeyPair
from kepmta.rem.mime import (
    CRLF,
    address_header,
    bilingual,
    detached_signer,
    evidence_parts,
    introduction,
    leaf_part,
    multipart,
    new_boundary,
    plain_header,
    rem_fields,
    rfc5322_date,
    text_header,
    write_multipart_signed,
)

__all__ = ["DispatchInfo", "write_dispatch"]

# Small enough that the few copies a chunk goes through stay far below the message size.
_CHUNK = 1 << 18
# A header block this large is no mail message; reading further would hold it all in memory.
_HEADER_LIMIT = 1 << 20
# RFC 5322 §2.1.1: 998 characters per line, before the CRLF.
_MAX_LINE = 998
# Every boundary we make contains this, so an original without it cannot collide with any.
_BOUNDARY_MARK = b"=_kep_"
# The REM working group's sample dispatches name the original "AttachedMimeMessage", as name= on
# its Content-Type and filename= on an attachment Content-Disposition (their notes on the original
# part, EN 319 532-3 baseline). We add .eml so that a saved copy opens as a mail message; without
# a name, user agents make one up (Thunderbird: "ForwardedMessage.eml").
_ORIGINAL_NAME = "AttachedMimeMessage.eml"


@dataclass(frozen=True)
class DispatchInfo:
    provider_message_id: str  # without <>, e.g. "20261128T103000Z.abc123@kep.test"
    sender: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    subject: str  # the original's subject, decoded
    ua_message_id: str | None  # the user agent's Message-ID, with <>
    evidence_id: str
    event_uri: str
    reason_uri: str
    policy_ids: tuple[str, ...]
    service_address: str  # rem-service@<domain>
    message_type: str = "standart"  # X-TR-REM-iletiTip: standart | eYazisma | eTebligat
    submission_time: datetime | None = None  # for Date and the introduction; now when None


def write_dispatch(
    out: BinaryIO,
    original: Path,
    info: DispatchInfo,
    evidence_xml: bytes,
    evidence_der: bytes,
    evidence_name: str,
    signer: KeyPair,
    chain: Sequence[x509.Certificate],
) -> str:
    """Write the signed dispatch of `original` to `out`; return its REM-DigestValue (base64).

    `evidence_name` is the event name ("SubmissionAcceptance"); the evidence parts are named
    `<evidence_name>.xml` and `<evidence_name>.p7m`.
    """
    source = _Original.open(original, info.provider_message_id)
    scan = source.scan()
    collides = source.contains if scan.marked else _never
    outer, mixed, alternative = (new_boundary(kind, collides) for kind in ("s", "m", "a"))
    when = (info.submission_time or datetime.now(UTC)).astimezone(UTC)

    fields = [
        # EN 319 532-3: the provider sends on the sender's behalf; replies go to the sender.
        address_header("From", [(f"{info.sender} adına", info.service_address)]),
        address_header("Reply-To", [("", info.sender)]),
    ]
    if info.to:
        fields.append(address_header("To", [("", addr) for addr in info.to]))
    if info.cc:
        fields.append(address_header("Cc", [("", addr) for addr in info.cc]))
    fields += [
        text_header("Subject", f"REM Dispatch: {info.subject}".rstrip()),
        plain_header("Date", rfc5322_date(when)),
        plain_header("Message-ID", f"<{info.provider_message_id}>"),
        *rem_fields(
            "dispatch",
            policy_ids=info.policy_ids,
            digest_b64=scan.digest_b64,
            ua_message_id=info.ua_message_id,
            event_uri=info.event_uri,
            evidence_id=info.evidence_id,
            reason_uri=info.reason_uri,
            sender=info.sender,
        ),
        plain_header("X-TR-REM-iletiTip", info.message_type),
        plain_header("X-TR-REM-iletiID", info.provider_message_id),
    ]
    plain, rich = _introduction_text(info, when, evidence_name)
    original_part = _original_part(source, scan)
    body = multipart(
        "multipart/mixed",
        mixed,
        [
            introduction(alternative, plain, rich),
            original_part,
            *evidence_parts(evidence_name, evidence_xml, evidence_der),
        ],
    )
    write_multipart_signed(out, fields, outer, body, detached_signer(signer, chain))
    return scan.digest_b64


def _never(_: bytes) -> bool:
    return False


@dataclass(frozen=True)
class _Scan:
    digest_b64: str  # EVIDENCE.md "Digest of the original"
    encoding: str  # the Content-Transfer-Encoding the original needs
    final_crlf: bool  # whether a CRLF must be added so the part ends with a line break
    marked: bool  # whether the original contains the text every boundary of ours contains


@dataclass(frozen=True)
class _Original:
    """The original as it is attached: its Message-ID replaced, every other byte as submitted."""

    path: Path
    head: bytes  # the header block as attached, with the empty line that ends it
    rest: int  # file offset where the unchanged remainder begins

    @classmethod
    def open(cls, path: Path, provider_message_id: str) -> _Original:
        with path.open("rb") as f:
            start = f.read(_HEADER_LIMIT)
            more = f.read(1) != b""
        header_end, body = find_body(start, 0, len(start))
        raw = start[:header_end]
        if body == len(start) and more:
            raise ValueError(f"{path}: header block does not end within {_HEADER_LIMIT} bytes")
        head = _replace_message_id(raw, f"<{provider_message_id}>") + start[len(raw) : body]
        return cls(path, head, body)

    def chunks(self) -> Iterator[bytes]:
        yield self.head
        with self.path.open("rb") as f:
            f.seek(self.rest)
            while chunk := f.read(_CHUNK):
                yield chunk

    def scan(self) -> _Scan:
        digest = hashlib.sha256()
        probe = _EncodingProbe()
        tail = b""
        marked = False
        keep = len(_BOUNDARY_MARK)
        for chunk in self.chunks():
            digest.update(chunk)
            probe.feed(chunk)
            # Only the seam needs joining: copying whole chunks would double the memory used.
            seam = tail + chunk[: keep - 1]
            marked = marked or _BOUNDARY_MARK in seam or _BOUNDARY_MARK in chunk
            tail = (tail + chunk[-keep:])[-keep:]
        # EVIDENCE.md: the digest includes the original's final CRLF, supplied here when missing.
        final_crlf = not tail.endswith(CRLF)
        if final_crlf:
            digest.update(CRLF)
            probe.feed(CRLF)
        return _Scan(base64.b64encode(digest.digest()).decode("ascii"), probe.result(), final_crlf, marked)

    def contains(self, needle: bytes) -> bool:
        tail = b""
        keep = len(needle)
        for chunk in self.chunks():
            if needle in tail + chunk[: keep - 1] or needle in chunk:
                return True
            tail = (tail + chunk[-keep:])[-keep:]
        return False


def _replace_message_id(header: bytes, message_id: str) -> bytes:
    """`header` with its Message-ID field (folded lines included) replaced by `message_id`.

    EVIDENCE.md: the provider message id replaces the user's, which travels on in
    REM-UAMessageIdentifier. A header without one gets it added at the end.
    """
    new = f"Message-ID: {message_id}".encode("ascii") + CRLF
    out: list[bytes] = []
    replaced = skipping = False
    for line in header.splitlines(keepends=True):
        # RFC 5322 §2.2.3: a line starting with white space continues the field before it.
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                out.append(line)
            continue
        skipping = line.split(b":", 1)[0].strip().lower() == b"message-id"
        if not skipping:
            out.append(line)
        elif not replaced:
            out.append(new)
            replaced = True
    if not replaced:
        out.append(new)
    return b"".join(out)


class _EncodingProbe:
    """Which transfer encoding labels the original truthfully (RFC 2045 §2.7-§2.9).

    message/rfc822 may only be 7bit, 8bit or binary (RFC 2046 §5.2.1): never re-encoded, the
    original stays byte for byte what the sender signed.
    """

    def __init__(self) -> None:
        self._partial = b""
        self._eight = False
        self._binary = False

    def feed(self, chunk: bytes) -> None:
        if self._binary:
            return
        data = self._partial + chunk
        cut = data.rfind(b"\n") + 1
        lines, self._partial = data[:cut], data[cut:]
        crlf = lines.count(b"\r\n")
        self._binary = (
            b"\0" in data
            or len(self._partial) > _MAX_LINE + 1
            or lines.count(b"\n") != crlf
            or lines.count(b"\r") != crlf
            or _has_long_line(lines)
        )
        self._eight = self._eight or not data.isascii()

    def result(self) -> str:
        if self._binary or self._partial:
            return "binary"
        return "8bit" if self._eight else "7bit"


def _has_long_line(lines: bytes) -> bool:
    """Whether a line of `lines`, whole CRLF-ended lines, is longer than _MAX_LINE.

    Jumps from a line start to the last line feed within _MAX_LINE + 2 bytes of it, so a chunk of
    short lines costs one search per kilobyte instead of one Python step per line.
    """
    start, end = 0, len(lines)
    while start < end:
        feed = lines.rfind(b"\n", start, start + _MAX_LINE + 2)
        if feed < 0:
            return True
        start = feed + 1
    return False


def _original_part(source: _Original, scan: _Scan) -> Iterable[bytes]:
    yield leaf_part(
        [
            plain_header("Content-Type", f'message/rfc822; name="{_ORIGINAL_NAME}"'),
            plain_header("Content-Transfer-Encoding", scan.encoding),
            # RFC 2183 §2.3: the name a saved copy gets; its headers are not part of the REM digest,
            # which covers the part's body only (EVIDENCE.md "Digest of the original").
            plain_header("Content-Disposition", f'attachment; filename="{_ORIGINAL_NAME}"'),
            plain_header("REM-Section-Type", "rem_message/original"),
        ],
        b"",
    )
    yield from source.chunks()
    if scan.final_crlf:
        yield CRLF


def _introduction_text(info: DispatchInfo, when: datetime, evidence_name: str) -> tuple[str, str]:
    tr_time = when.strftime("%d.%m.%Y %H:%M:%S UTC")
    en_time = when.strftime("%Y-%m-%d %H:%M:%S UTC")
    turkish = [
        "Bu ileti bir Kayıtlı Elektronik Posta (KEP) iletisidir.",
        f"Gönderen: {info.sender}",
        f"Konu: {info.subject}",
        f"Gönderim zamanı: {tr_time}",
        "Özgün ileti ekteki message/rfc822 bölümündedir. Gönderimin imzalı ve zaman damgalı kanıtı "
        f"ekteki {evidence_name}.p7m dosyasındadır ({evidence_name}.xml okunabilir kopyasıdır).",
    ]
    english = [
        "This is a registered electronic mail (KEP / REM) message.",
        f"Sender: {info.sender}",
        f"Subject: {info.subject}",
        f"Submitted: {en_time}",
        "The original message is attached as a message/rfc822 part. The signed, time-stamped "
        f"evidence of its submission is attached as {evidence_name}.p7m "
        f"({evidence_name}.xml is a readable copy).",
    ]
    return bilingual(turkish, english)
