"""The header block of a stored message: read only it (never the body, which may be 100 MB), and
the facts the rest of kepmta takes from it."""

from __future__ import annotations

import email.errors
import email.header
import email.parser
import email.policy
import re
from dataclasses import dataclass
from pathlib import Path

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
    """Header text fit for evidence: unfolded, control characters replaced by spaces."""
    return re.sub(r"[\x00-\x1f\x7f]+", " ", value).strip()


def read_headers(path: Path) -> Headers:
    with path.open("rb") as f:
        head = f.read(HEADER_LIMIT)
    if head.startswith(b"\r\n"):
        end = 2
    else:
        sep = head.find(b"\r\n\r\n")
        if sep < 0:
            # RFC 5322 §2.1: header fields, then an empty line, then the body
            raise HeaderError("the message has no header block ending in an empty line")
        end = sep + 4
    parsed = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(head[:end], headersonly=True)
    raw_subject = str(parsed.get("Subject", ""))
    try:
        # RFC 2047 encoded words, decoded for the evidence and the receipts
        subject = clean_text(str(email.header.make_header(email.header.decode_header(raw_subject))))
    except (email.errors.HeaderParseError, UnicodeError, LookupError):
        subject = clean_text(raw_subject)
    found = re.search(r"<([^<>\s]+)>", str(parsed.get("Message-ID", "")))
    addresses = AddressHeaders(
        from_=tuple(str(v) for v in parsed.get_all("From", [])),
        to=tuple(str(v) for v in parsed.get_all("To", [])),
        cc=tuple(str(v) for v in parsed.get_all("Cc", [])),
        bcc_present="Bcc" in parsed,
    )
    return Headers(subject, found.group(1) if found else None, end, addresses)
