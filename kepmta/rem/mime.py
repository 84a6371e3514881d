"""MIME framing of the messages kepmta writes: header fields, multiparts, REM sections.

Signatures and the REM digest cover exact byte ranges (RFC 8551 §3.5, EN 319 532-3 "Digest of the
original"), so parts are written here octet by octet rather than serialised by the `email` package,
which does not promise to reproduce its input. Reading messages is `kepmta.message`'s.
"""

from __future__ import annotations

import base64
import binascii
import email.policy
import hashlib
import html
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from email.headerregistry import Address
from email.utils import format_datetime
from typing import BinaryIO

from cryptography import x509

from kepmta.pki import KeyPair
from kepmta.smime import cms

__all__ = [
    "CRLF",
    "DIGEST_ALGORITHM",
    "MESSAGE_TYPE",
    "METADATA_VERSION",
    "address_header",
    "base64_lines",
    "bilingual",
    "detached_signer",
    "evidence_parts",
    "header_block",
    "introduction",
    "leaf_part",
    "multipart",
    "new_boundary",
    "plain_header",
    "quoted_printable",
    "rem_fields",
    "rfc5322_date",
    "text_header",
    "write_multipart_signed",
]

CRLF = b"\r\n"
_SMTP = email.policy.SMTP


# -- writing ---------------------------------------------------------------------------------------


def new_boundary(kind: str, collides: Callable[[bytes], bool]) -> str:
    """A random boundary that `collides` says is absent from the content it will delimit.

    RFC 2046 §5.1.1 leaves uniqueness to the writer. "=_" cannot occur in base64 or
    quoted-printable output, so only the verbatim parts (the original message) need the check.
    """
    while True:
        candidate = f"=_kep_{kind}_{secrets.token_hex(16)}"
        if not collides(candidate.encode("ascii")):
            return candidate


def _one_line(value: str) -> str:
    # A line break in a value would end the header field early and let the value inject fields.
    return value.replace("\r", " ").replace("\n", " ")


def plain_header(name: str, value: str) -> bytes:
    """A header field holding protocol text (URIs, ids, MIME parameters), written unfolded.

    Folding could split an id or URI, so ASCII values are kept on one line (RFC 5322 §2.1.1 allows
    998 characters). A non-ASCII value, which only a user-supplied id could bring, is encoded.
    """
    value = _one_line(value)
    if not value.isascii():
        return text_header(name, value)
    return f"{name}: {value}\r\n".encode("ascii")


# RFC 5322 §2.1.1: lines of at most 78 characters before the CRLF, where the text allows it.
_LINE = 78
# RFC 2047 §2: a line with an encoded-word is at most 76 characters, the word at most 75.
_EW_LINE = 76
# Base64 keeps the word free of the characters RFC 2047 §5(3) forbids in a phrase, so one encoder
# serves both unstructured text and display names.
_EW_OPEN, _EW_CLOSE = "=?utf-8?b?", "?="
_EW_FRAME = len(_EW_OPEN) + len(_EW_CLOSE)
# 45 bytes are 60 base64 characters: 72 with the frame, 73 on a folded line.
_EW_BYTES = 45
# RFC 5322 §3.2.3: a phrase of atoms separated by single spaces needs no quotes.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ATOMS = re.compile(f"{_ATEXT}(?: {_ATEXT})*")
# RFC 5322 §3.4.1 dot-atom@dot-atom, the shape of KEP addresses. "=" is left out so that no address
# can begin an encoded-word; quoted local parts, domain literals and non-ASCII go to `email`.
_DOT_ATOM = r"[A-Za-z0-9!#$%&'*+/?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/?^_`{|}~-]+)*"
_PLAIN_ADDR = re.compile(f"{_DOT_ATOM}@{_DOT_ATOM}")
# (white space, word) pairs; the last match is always the empty one at the end of the text.
_UNITS = re.compile(r"([ \t]*)([^ \t]*)")


def _plain(text: str) -> bool:
    """Whether `text` may be written as it is: printable ASCII (spaces included), and nothing a
    reader could take for the start of an encoded-word (RFC 2047 §5(1))."""
    return text.isascii() and text.isprintable() and "=?" not in text


def _cut(data: bytes, start: int, size: int) -> int:
    """Where an encoded-word of at most `size` bytes from `start` ends.

    RFC 2047 §5: each encoded-word holds whole characters, so the cut backs off from a UTF-8
    continuation byte (10xxxxxx) to the start of its character.
    """
    end = start + size
    if end >= len(data):
        return len(data)
    while end > start and data[end] & 0xC0 == 0x80:
        end -= 1
    return end


class _Folder:
    """One header field, its lines broken before white space (RFC 5322 §2.2.3)."""

    def __init__(self, name: str, *, break_first: bool) -> None:
        self.parts = [name, ":"]
        self.width = len(name) + 1
        self.limit = _LINE
        # Readers keep white space that starts a line as part of unstructured text, so such a
        # field is not broken right after its colon.
        self.may_break = break_first

    def _put(self, separator: str, token: str) -> None:
        self.parts += (separator, token)
        self.width += len(separator) + len(token)
        self.may_break = True

    def _break(self) -> None:
        self.parts.append("\r\n")
        self.width = 0
        self.limit = _LINE

    def add(self, separator: str, token: str) -> None:
        """`token` after the white space `separator`, on a new line if it does not fit."""
        if self.may_break and self.width + len(separator) + len(token) > self.limit:
            self._break()
        self._put(separator, token)

    def encode(self, separator: str, text: str) -> None:
        """`text` as encoded-words, the first after `separator`.

        The space between two encoded-words is not part of the text (RFC 2047 §6.2), so the words
        may be cut wherever a character ends.
        """
        data = text.encode("utf-8")
        start = 0
        while start < len(data):
            room = min((_EW_LINE - self.width - len(separator) - _EW_FRAME) // 4 * 3, _EW_BYTES)
            # What one encoded-word holds goes whole to a new line rather than being cut: CPython
            # reads a display name with a space where two encoded-words meet.
            if self.may_break and (
                room < len(data) - start <= _EW_BYTES or _cut(data, start, max(room, 0)) == start
            ):
                self._break()
                room = _EW_BYTES
            # Where the line may not break yet, 4 bytes hold one character of any length.
            end = _cut(data, start, max(room, 4))
            self._put(separator, _EW_OPEN + base64.b64encode(data[start:end]).decode("ascii") + _EW_CLOSE)
            self.limit = _EW_LINE
            separator, start = " ", end

    def field(self) -> bytes:
        self.parts.append("\r\n")
        return "".join(self.parts).encode("ascii")


def text_header(name: str, value: str) -> bytes:
    """An unstructured header field of user text (RFC 5322 §3.2.5), folded, with RFC 2047
    encoded-words where it is not printable ASCII. It reads back as `value` with its line breaks
    made spaces."""
    value = _one_line(value)
    if _plain(value) and len(name) + 2 + len(value) <= _LINE and value[:1] != " " and value[-1:] != " ":
        return f"{name}: {value}\r\n".encode("ascii")
    units = _UNITS.findall(value)[:-1]
    raw = [bool(word) and _plain(word) and len(space) + len(word) <= _LINE for space, word in units]
    # Readers drop white space after the colon, and white space before a line break is often
    # stripped in transit, so white space at either end goes inside an encoded-word; so does a
    # first word too long for the first line, which may not be broken after the colon.
    if units[0][0] or len(name) + 2 + len(units[0][1]) > _LINE:
        raw[0] = False
    if not units[-1][1] and len(units) > 1:
        raw[-2] = False
    folder = _Folder(name, break_first=False)
    index = 0
    while index < len(units):
        if raw[index]:
            space, word = units[index]
            folder.add(space or " ", word)
            index += 1
            continue
        end = index + 1
        while end < len(units) and not raw[end]:
            end += 1
        text = "".join(space + word for space, word in units[index:end])
        # One white space character stays outside to part the encoded-word from the word before
        # it (RFC 2047 §5(1)); the rest is text, since between encoded-words it is dropped (§6.2).
        if index == 0:
            folder.encode(" ", text)
        else:
            folder.encode(text[0], text[1:])
        index = end
    return folder.field()


def address_header(name: str, mailboxes: Sequence[tuple[str, str]]) -> bytes:
    """An address-list header field (RFC 5322 §3.4) from (display name, addr-spec) pairs, with ""
    for no display name; folded between mailboxes."""
    if not all(_PLAIN_ADDR.fullmatch(addr) for _, addr in mailboxes):
        text = ", ".join(
            str(Address(display, addr_spec=addr)) if display else addr for display, addr in mailboxes
        )
        folded: str = _SMTP.header_factory(name, _one_line(text)).fold(policy=_SMTP)
        return folded.encode("ascii")
    folder = _Folder(name, break_first=True)
    last = len(mailboxes) - 1
    for index, (display, addr) in enumerate(mailboxes):
        comma = "," if index < last else ""
        display = _one_line(display)
        if not display:
            folder.add(" ", addr + comma)
            continue
        if not _plain(display):
            # RFC 2047 §5(3): an encoded-word may stand for a word of the phrase.
            folder.encode(" ", display)
        elif _ATOMS.fullmatch(display):
            folder.add(" ", display)
        else:
            # RFC 5322 §3.2.4: in a quoted-string only the quote and the backslash are escaped.
            folder.add(" ", '"' + display.replace("\\", "\\\\").replace('"', '\\"') + '"')
        folder.add(" ", f"<{addr}>{comma}")
    return folder.field()


def rfc5322_date(when: datetime) -> str:
    """RFC 5322 §3.3 date-time in UTC."""
    return format_datetime(when.astimezone(UTC))


def header_block(fields: Iterable[bytes]) -> bytes:
    """Header fields followed by the empty line that ends them."""
    return b"".join(fields) + CRLF


def base64_lines(data: bytes) -> bytes:
    """RFC 2045 §6.8: base64 in lines of 76 characters, CRLF separated, no final line break."""
    text = base64.b64encode(data)
    return CRLF.join(text[i : i + 76] for i in range(0, len(text), 76))


def quoted_printable(text: str) -> bytes:
    """UTF-8 text as RFC 2045 §6.7 quoted-printable with CRLF line breaks."""
    body = "\n".join(text.splitlines()).encode("utf-8")
    # b2a_qp breaks soft lines with the line ending it finds first, LF when there is none.
    return binascii.b2a_qp(body, istext=True).replace(b"\n", CRLF)


def write_multipart_signed(
    out: BinaryIO,
    fields: Sequence[bytes],
    boundary: str,
    signed_part: Iterable[bytes],
    sign: Callable[[bytes], bytes],
) -> None:
    """Write an RFC 1847 multipart/signed message with an S/MIME detached signature.

    `fields` are the top-level header fields without MIME-Version/Content-Type. `signed_part` yields
    the first body part (its headers and body, without a final line break) and is hashed as it is
    written; `sign` turns that SHA-256 digest into a DER CMS SignedData (RFC 8551 §3.5).
    """
    b = boundary.encode("ascii")
    head = [
        *fields,
        plain_header("MIME-Version", "1.0"),
        # RFC 8551 §3.5.3: protocol and micalg are required; micalg names the CMS digest algorithm.
        b'Content-Type: multipart/signed; protocol="application/pkcs7-signature";\r\n'
        b' micalg=sha-256; boundary="' + b + b'"\r\n',
    ]
    out.write(header_block(head))
    out.write(b"This is a cryptographically signed message in MIME format." + CRLF + CRLF)
    out.write(b"--" + b + CRLF)
    digest = hashlib.sha256()
    for chunk in signed_part:
        digest.update(chunk)
        out.write(chunk)
    out.write(CRLF + b"--" + b + CRLF)
    out.write(
        header_block(
            [
                plain_header("Content-Type", 'application/pkcs7-signature; name="smime.p7s"'),
                plain_header("Content-Transfer-Encoding", "base64"),
                plain_header("Content-Disposition", 'attachment; filename="smime.p7s"'),
            ]
        )
    )
    out.write(base64_lines(sign(digest.digest())))
    out.write(CRLF + b"--" + b + b"--" + CRLF)


def leaf_part(fields: Sequence[bytes], body: bytes) -> bytes:
    """A body part with no nested parts: its header fields, the empty line, its body."""
    return header_block(fields) + body


def multipart(
    content_type: str, boundary: str, parts: Iterable[Iterable[bytes]], fields: Sequence[bytes] = ()
) -> Iterator[bytes]:
    """A multipart entity (headers and body) as chunks, with no line break after the close delimiter.

    Each part is an iterable of chunks without a final line break: RFC 2046 §5.1.1 makes the line
    break before a delimiter part of the delimiter, so it is written here.
    """
    b = boundary.encode("ascii")
    yield header_block([plain_header("Content-Type", f'{content_type}; boundary="{boundary}"'), *fields])
    yield b"--" + b + CRLF
    for index, part in enumerate(parts):
        if index:
            yield CRLF + b"--" + b + CRLF
        yield from part
    yield CRLF + b"--" + b + b"--"


# -- REM message sections (EN 319 532-3) -----------------------------------------------------------

METADATA_VERSION = "EN31953203V010201"
DIGEST_ALGORITHM = "http://www.w3.org/2001/04/xmlenc#sha256"
MESSAGE_TYPE = "http://uri.etsi.org/19522/v1#/ERDMessageType/"


def rem_fields(
    message_type: str,
    *,
    policy_ids: Sequence[str],
    digest_b64: str | None,
    ua_message_id: str | None,
    event_uri: str,
    evidence_id: str,
    reason_uri: str,
    sender: str,
) -> list[bytes]:
    """The REM-* header fields of a dispatch or receipt (EN 319 532-3 REM message metadata)."""
    fields = [plain_header("REM-MetadataVersion", METADATA_VERSION)]
    fields += [plain_header("REM-ApplicablePolicy", policy) for policy in policy_ids]
    fields.append(plain_header("REM-MessageType", MESSAGE_TYPE + message_type))
    if digest_b64 is not None:
        fields.append(plain_header("REM-DigestAlgorithm", DIGEST_ALGORITHM))
        fields.append(plain_header("REM-DigestValue", digest_b64))
    if ua_message_id is not None:
        fields.append(plain_header("REM-UAMessageIdentifier", ua_message_id))
    fields += [
        plain_header("REM-EventIdentifier", event_uri),
        plain_header("REM-Evidence-ID", evidence_id),
        plain_header("REM-ReasonIdentifier", reason_uri),
        plain_header("REM-MD08", sender),
    ]
    return fields


def bilingual(turkish: Sequence[str], english: Sequence[str]) -> tuple[str, str]:
    """The introduction's lines, Turkish then English, as plain text and as HTML."""
    plain = "\n".join([*turkish, "", "----", "", *english]) + "\n"
    blocks = [
        f'<div lang="{lang}">\n' + "".join(f"<p>{html.escape(line)}</p>\n" for line in lines) + "</div>\n"
        for lang, lines in (("tr", turkish), ("en", english))
    ]
    page = (
        '<!DOCTYPE html>\n<html>\n<head><meta charset="utf-8"><title>KEP</title></head>\n<body>\n'
        + "<hr>\n".join(blocks)
        + "</body>\n</html>\n"
    )
    return plain, page


def introduction(boundary: str, plain: str, rich: str) -> Iterator[bytes]:
    """The human-readable section: one text in plain and HTML form (RFC 2046 §5.1.4)."""
    text_fields = [plain_header("Content-Transfer-Encoding", "quoted-printable")]
    return multipart(
        "multipart/alternative",
        boundary,
        [
            [
                leaf_part(
                    [plain_header("Content-Type", "text/plain; charset=utf-8"), *text_fields],
                    quoted_printable(plain),
                )
            ],
            [
                leaf_part(
                    [plain_header("Content-Type", "text/html; charset=utf-8"), *text_fields],
                    quoted_printable(rich),
                )
            ],
        ],
        fields=[plain_header("REM-Section-Type", "rem_message/introduction")],
    )


def evidence_parts(event_name: str, evidence_xml: bytes, evidence_der: bytes) -> list[list[bytes]]:
    """The evidence as readable XML and as the signed `<EventName>.p7m` a verifier takes."""
    xml_name, p7m_name = f"{event_name}.xml", f"{event_name}.p7m"
    xml = leaf_part(
        [
            plain_header("Content-Type", f'application/xml; charset=utf-8; name="{xml_name}"'),
            plain_header("Content-Transfer-Encoding", "base64"),
            plain_header("Content-Disposition", f'attachment; filename="{xml_name}"'),
            plain_header("REM-Section-Type", "rem_message/xml_evidence"),
        ],
        base64_lines(evidence_xml),
    )
    p7m = leaf_part(
        [
            # RFC 8551 §3.2.2: smime-type and a .p7m name mark CMS SignedData with attached content.
            plain_header(
                "Content-Type", f'application/pkcs7-mime; smime-type=signed-data; name="{p7m_name}"'
            ),
            plain_header("Content-Transfer-Encoding", "base64"),
            plain_header("Content-Disposition", f'attachment; filename="{p7m_name}"'),
        ],
        base64_lines(evidence_der),
    )
    return [[xml], [p7m]]


def detached_signer(signer: KeyPair, chain: Sequence[x509.Certificate]) -> Callable[[bytes], bytes]:
    """Turns the SHA-256 of a multipart/signed first part into the DER of its detached CMS."""

    def sign(digest: bytes) -> bytes:
        signed: bytes = cms.sign(signer, content_digest=digest, detached=True, chain=chain).dump()
        return signed

    return sign
