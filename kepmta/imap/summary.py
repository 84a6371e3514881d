"""What SEARCH, SORT and FETCH need of a message's content, worked out once per message.

A Maildir file's content never changes once delivered (only its name does, for flags), so what is
derived from it holds for as long as the message exists: `imap/cache.py` keeps it under the base
name, in memory and in the folder's `kepmta-cache`. This module is the value and its line format.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# RFC 5322 §3.6.2, §3.6.3: the fields that hold address lists.
ADDRESS_FIELDS = frozenset({"FROM", "SENDER", "REPLY-TO", "TO", "CC", "BCC"})


@dataclass(frozen=True)
class Summary:
    """One message, as far as the header (and, once parsed, the MIME structure) tells.

    `fields` holds every header field as (name in upper case, value with RFC 2047 encoded-words
    decoded, case-folded): SEARCH compares case-insensitively (RFC 3501 §6.4.4) and nothing else
    reads them. Each field of ADDRESS_FIELDS comes a second time with its mailboxes as
    `name <local@domain>`, comments and folding taken out (`addresses.searchable`), so that
    SEARCH FROM finds `<user (c)@ (c) domain.org>` as user@domain.org. `sent_day` is the Date
    field's own calendar day as a proleptic ordinal (RFC 3501 §6.4.4 SENTON and friends ignore
    time and zone), `sent` the same instant as POSIX time (RFC 5256 §3 SORT DATE). The sort_
    strings are RFC 5256 sort keys. `body` and `bodystructure` are the rendered FETCH items
    (RFC 3501 §7.4.2), None until the whole message has been parsed.
    """

    size: int
    header_end: int
    fields: tuple[tuple[str, str], ...]
    envelope: bytes
    sent: float | None
    sent_day: int | None
    sort_subject: str
    sort_from: str
    sort_to: str
    sort_cc: str
    body: bytes | None = None
    bodystructure: bytes | None = None

    @property
    def has_structure(self) -> bool:
        return self.body is not None and self.bodystructure is not None


# Octets travel as Latin-1 text (one code point per octet) and strings with lone surrogates (the
# undecodable octets of a header, RFC 3501 §7.4.2 wants them back verbatim) as JSON escapes, so a
# record is one line of ASCII whatever the message holds.


def _octets(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def _from_octets(value: Any) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("expected octets as text")
    return value.encode("latin-1")


def encode(base: str, s: Summary) -> bytes:
    """One record line: the base name as a JSON string, a tab, the summary as a JSON array."""
    record = [
        s.size,
        s.header_end,
        [[name, value] for name, value in s.fields],
        _octets(s.envelope),
        s.sent,
        s.sent_day,
        s.sort_subject,
        s.sort_from,
        s.sort_to,
        s.sort_cc,
        _octets(s.body),
        _octets(s.bodystructure),
    ]
    head = json.dumps(base, ensure_ascii=True)
    return (head + "\t" + json.dumps(record, ensure_ascii=True, separators=(",", ":")) + "\n").encode("ascii")


def record_base(line: bytes) -> str:
    """The base name a record line is about, without decoding the rest; raises ValueError."""
    head, sep, _ = line.partition(b"\t")
    base = json.loads(head) if sep else None
    if not isinstance(base, str) or not base:
        raise ValueError("record without a base name")
    return base


def decode(line: bytes) -> Summary:
    """The summary of a record line; raises ValueError for anything but a well-formed record."""
    _, sep, body = line.partition(b"\t")
    if not sep:
        raise ValueError("record without a tab")
    r = json.loads(body)
    if not isinstance(r, list) or len(r) != 12:
        raise ValueError("record of the wrong shape")
    size, header_end, fields, envelope = r[0], r[1], r[2], _from_octets(r[3])
    if not isinstance(size, int) or not isinstance(header_end, int) or envelope is None:
        raise ValueError("record of the wrong shape")
    if not isinstance(fields, list) or not all(
        isinstance(f, list) and len(f) == 2 and all(isinstance(x, str) for x in f) for f in fields
    ):
        raise ValueError("record fields of the wrong shape")
    sent, sent_day = r[4], r[5]
    if sent is not None and not isinstance(sent, int | float):
        raise ValueError("record date of the wrong shape")
    if sent_day is not None and not isinstance(sent_day, int):
        raise ValueError("record day of the wrong shape")
    keys = r[6:10]
    if not all(isinstance(k, str) for k in keys):
        raise ValueError("record sort keys of the wrong shape")
    return Summary(
        size,
        header_end,
        tuple((name, value) for name, value in fields),
        envelope,
        None if sent is None else float(sent),
        sent_day,
        keys[0],
        keys[1],
        keys[2],
        keys[3],
        _from_octets(r[10]),
        _from_octets(r[11]),
    )
