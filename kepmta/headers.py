"""The header block of a stored message: read only it (never the body, which may be 100 MB), and
the facts the rest of kepmta takes from it."""

from __future__ import annotations

import base64
import binascii
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
            # RFC 5322 §2.1: header fields, then an empty line, then the body
            raise HeaderError("the message has no header block ending in an empty line")
        end = sep + 4
    fields = _fields(head[:end].decode("utf-8", errors="surrogateescape"))
    raw_subject = " ".join(fields.get("subject", []))
    found = re.search(r"<([^<>\s]+)>", " ".join(fields.get("message-id", [])))
    addresses = AddressHeaders(
        from_=tuple(fields.get("from", [])),
        to=tuple(fields.get("to", [])),
        cc=tuple(fields.get("cc", [])),
        bcc_present="bcc" in fields,
    )
    subject = clean_text(_decode_words(raw_subject))
    return Headers(subject, found.group(1) if found else None, end, addresses)


def _fields(block: str) -> dict[str, list[str]]:
    """Header fields by lower-case name, unfolded (RFC 5322 §2.2.3). The text is the raw block
    decoded as UTF-8 (RFC 6532 §3.2 allows raw UTF-8 besides RFC 2047 encoded words)."""
    fields: dict[str, list[str]] = {}
    name: str | None = None
    for line in block.split("\r\n"):
        if line[:1] in (" ", "\t") and name is not None:
            fields[name][-1] += " " + line.strip()
        elif ":" in line:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            fields.setdefault(name, []).append(value.strip())
        else:
            name = None
    return fields


_ENCODED_WORD = re.compile(r"=\?([^?*\s]+)(?:\*[^?\s]*)?\?([bBqQ])\?([^?\s]*)\?=")


def _decode_word(word: re.Match[str]) -> str:
    charset, encoding, text = word.groups()
    try:
        if encoding in "qQ":
            raw = binascii.a2b_qp(text.encode("ascii"), header=True)  # RFC 2047 §4.2: "_" is a space
        else:
            raw = base64.b64decode(text + "=" * (-len(text) % 4))
        return raw.decode(charset, errors="replace")
    except (ValueError, LookupError, binascii.Error):
        return word.group(0)


def _decode_words(value: str) -> str:
    """RFC 2047 encoded words decoded; the text around them kept as it is."""
    out: list[str] = []
    pos = 0
    for word in _ENCODED_WORD.finditer(value):
        between = value[pos : word.start()]
        # RFC 2047 §6.2: white space between two adjacent encoded words is not displayed
        if not (out and not between.strip() and pos > 0):
            out.append(between)
        out.append(_decode_word(word))
        pos = word.end()
    out.append(value[pos:])
    return "".join(out)
