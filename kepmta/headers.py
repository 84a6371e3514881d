"""The header block of a stored message: read only it (never the body, which may be 100 MB), and
the facts the rest of kepmta takes from it. The reading itself is `kepmta.message`'s."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from kepmta.message.header import scan_fields
from kepmta.message.words import decode_words

HEADER_LIMIT = 1024 * 1024  # a header block larger than this is not a message we accept


class HeaderError(ValueError):
    """The file has no header block ending in an empty line within HEADER_LIMIT."""


@dataclass(frozen=True)
class AddressHeaders:
    """The address fields of the header block, as they were written."""

    from_: tuple[str, ...]
    to: tuple[str, ...]
    cc: tuple[str, ...]
    bcc_present: bool


@dataclass(frozen=True)
class Headers:
    subject: str  # decoded, unfolded, control characters replaced
    message_id: str | None  # the Message-ID without <>
    header_end: int  # offset of the first body byte
    addresses: AddressHeaders


def clean_text(value: str) -> str:
    """Header text fit for evidence: unfolded, control characters replaced by spaces, bytes that
    were not UTF-8 replaced by U+FFFD."""
    value = re.sub(r"[\ud800-\udfff]", "\ufffd", value)
    return re.sub(r"[\x00-\x1f\x7f]+", " ", value).strip()


def read_headers(path: Path) -> Headers:
    with path.open("rb") as f:
        head = f.read(HEADER_LIMIT)
    if head.startswith(b"\r\n"):
        end = 2
    else:
        sep = head.find(b"\r\n\r\n")
        if sep < 0:
            # RFC 5322 §2.1: header fields, then an empty line, then the body; the spool holds
            # CRLF lines (RFC 5321 §2.3.8), and the original is rewritten by them (inspection).
            raise HeaderError("the message has no header block ending in an empty line")
        end = sep + 4
    fields: dict[str, list[str]] = {}
    for field in scan_fields(head[: end - 2]):
        if field.name:
            fields.setdefault(field.name.lower(), []).append(field.value)
    found = re.search(r"<([^<>\s]+)>", " ".join(fields.get("message-id", [])))
    addresses = AddressHeaders(
        from_=tuple(fields.get("from", [])),
        to=tuple(fields.get("to", [])),
        cc=tuple(fields.get("cc", [])),
        bcc_present="bcc" in fields,
    )
    subject = clean_text(decode_words(" ".join(fields.get("subject", []))))
    return Headers(subject, found.group(1) if found else None, end, addresses)
