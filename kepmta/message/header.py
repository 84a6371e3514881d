"""Header blocks and header fields (RFC 5322 §2.2), located by offsets into the message's octets.

Field values are the octets the message holds, unfolded (RFC 5322 §2.2.3), as text decoded as UTF-8
with surrogate escapes: raw UTF-8 is allowed in header fields (RFC 6532 §3.2), and any other octet
survives the round trip, which ENVELOPE and BODYSTRUCTURE need (RFC 3501 §7.4.2 reports them as
written). Lines may end in CRLF or in a bare LF: stored messages are CRLF, but a client's APPEND
need not be.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from kepmta.message.buffer import Buffer


def text_of(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def bytes_of(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class HeaderField:
    """One field: its octets [start, end) with continuation lines and the final line break. A line
    that is not a field (no colon) has the name ""."""

    name: str
    start: int
    end: int
    value: str


@dataclass(frozen=True)
class Header:
    """The header of an entity: its fields, where their octets end, and where the body begins.

    `body_start` is past the empty line that ends the header; a header without one runs to the
    end of the entity, and then `end == body_start`.
    """

    fields: tuple[HeaderField, ...]
    start: int
    end: int
    body_start: int
    _first: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        first: dict[str, str] = {}
        for f in self.fields:
            if f.name:
                first.setdefault(f.name.lower(), f.value)
        object.__setattr__(self, "_first", first)

    @property
    def has_blank_line(self) -> bool:
        """Whether an empty line ends the header (RFC 5322 §2.1), rather than the entity's end."""
        return self.body_start > self.end

    def get(self, name: str) -> str | None:
        """The first field called `name` (case-insensitively), unfolded."""
        return self._first.get(name.lower())

    def get_all(self, name: str) -> tuple[str, ...]:
        lname = name.lower()
        return tuple(f.value for f in self.fields if f.name.lower() == lname)


def find_body(buf: Buffer, start: int, end: int) -> tuple[int, int]:
    """Where the header of the entity in [start, end) ends, and where its body begins.

    RFC 5322 §2.1 / RFC 2046 §5.1.1: the header ends at the first empty line; an entity with no
    header fields starts with that empty line, and one with no body may omit it. An empty line is a
    line break right after another, so only two patterns need looking for.
    """
    for eol in (b"\r\n", b"\n"):
        # The line break must be the entity's own: an empty entity is followed by its delimiter's.
        if start + len(eol) <= end and buf[start : start + len(eol)] == eol:
            return start, start + len(eol)
    best: tuple[int, int] | None = None
    for blank in (b"\n\r\n", b"\n\n"):
        # Only an empty line before the one found counts: without this bound a CRLF message would
        # be searched to its end for an LF-only one.
        at = buf.find(blank, start, end if best is None else best[0] + len(blank) - 1)
        if at != -1:
            best = (at, len(blank))
    if best is None:
        return end, end
    at, size = best
    return at + 1, at + size


_FOLD = re.compile(r"\r?\n(?=[ \t])")


def scan_fields(block: bytes, base: int = 0) -> tuple[HeaderField, ...]:
    """The fields of a header block (every line of it), with offsets plus `base`."""
    fields: list[HeaderField] = []
    pos = 0
    end = len(block)
    field_start = -1
    while pos < end:
        nl = block.find(b"\n", pos)
        line_end = end if nl < 0 else nl + 1
        if block[pos : pos + 1] in (b" ", b"\t") and field_start >= 0:
            # RFC 5322 §2.2.3: a line beginning with white space continues the field before it.
            pos = line_end
            continue
        if field_start >= 0:
            fields.append(_field(block, field_start, pos, base))
        field_start = pos
        pos = line_end
    if field_start >= 0:
        fields.append(_field(block, field_start, end, base))
    return tuple(fields)


def _field(block: bytes, start: int, end: int, base: int) -> HeaderField:
    raw = text_of(block[start:end])
    name, sep, value = raw.partition(":")
    if not sep:
        return HeaderField("", base + start, base + end, "")
    return HeaderField(name.strip(), base + start, base + end, _FOLD.sub("", value).strip(" \t\r\n"))


def read_header(buf: Buffer, start: int, end: int) -> Header:
    """The header of the entity in [start, end)."""
    header_end, body_start = find_body(buf, start, end)
    return Header(scan_fields(buf[start:header_end], start), start, header_end, body_start)
