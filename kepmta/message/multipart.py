"""The body parts of a multipart body, as offsets into the message (RFC 2046 §5.1.1).

A part runs from after its delimiter line up to, not including, the line break that begins the next
delimiter: RFC 2046 §5.1.1 makes that line break part of the delimiter, and a signature or digest
over a part covers exactly those octets. The line break that ends one delimiter line cannot also
begin the next one.
"""

from __future__ import annotations

from dataclasses import dataclass

from kepmta.message.buffer import Buffer
from kepmta.message.header import bytes_of

# RFC 5322 §2.1.1: a line is at most 998 octets; past that, white space after a boundary is not
# transport padding but content, and reading it stops there.
_LINE = 1000


class MultipartError(ValueError):
    """A multipart body whose framing a strict reader (a signature, a digest) cannot rely on."""


@dataclass(frozen=True)
class Multipart:
    """`parts` as [start, end) offsets; `closed` when the close delimiter was found. No parts and
    `closed` means the first delimiter was the close delimiter."""

    parts: tuple[tuple[int, int], ...]
    closed: bool


def _delimiter(buf: Buffer, pos: int, end: int, dash: bytes) -> tuple[bool, int] | None:
    """If a delimiter line starts at `pos`: (is it the close delimiter, offset after its line).

    "--boundary", "--" more for the close delimiter, optional white space (transport padding) and a
    line break or the end of the body. Anything else after the boundary makes it content.
    """
    after = pos + len(dash)
    if after > end or buf[pos:after] != dash:
        return None
    rest = buf[after : min(after + _LINE, end)]
    closing = rest[:2] == b"--"
    line = rest[2:] if closing else rest
    padding = len(line) - len(line.lstrip(b" \t"))
    line = line[padding:]
    taken = (2 if closing else 0) + padding
    if not line:
        return (closing, after + taken) if after + taken == end else None
    for eol in (b"\r\n", b"\n"):
        if line.startswith(eol):
            return closing, after + taken + len(eol)
    return None


def _next_delimiter(buf: Buffer, start: int, end: int, dash: bytes) -> tuple[int, bool, int] | None:
    """The first delimiter line after a line break at or after `start`: (offset of that line break,
    is it the close delimiter, offset after its line)."""
    search = start
    while True:
        at = buf.find(b"\n" + dash, search, end)
        if at == -1:
            return None
        found = _delimiter(buf, at + 1, end, dash)
        if found is not None:
            return at, found[0], found[1]
        search = at + 1


def split_multipart(buf: Buffer, start: int, end: int, boundary: str) -> Multipart:
    """The body parts of the multipart body in [start, end) delimited by `boundary`.

    A body without its close delimiter ends its last part at `end`; one without any delimiter line
    has no parts.
    """
    dash = b"--" + bytes_of(boundary)
    first = _delimiter(buf, start, end, dash)
    if first is None:
        later = _next_delimiter(buf, start, end, dash)
        if later is None:
            return Multipart((), False)
        first = later[1], later[2]
    closed, part_start = first
    if closed:
        return Multipart((), True)
    parts: list[tuple[int, int]] = []
    while True:
        found = _next_delimiter(buf, part_start, end, dash)
        if found is None:
            parts.append((part_start, end))
            return Multipart(tuple(parts), False)
        at, closed, after = found
        part_end = at - 1 if at - 1 >= part_start and buf[at - 1 : at] == b"\r" else at
        parts.append((part_start, max(part_end, part_start)))
        if closed:
            return Multipart(tuple(parts), True)
        part_start = after


def strict_parts(buf: Buffer, start: int, end: int, boundary: str) -> tuple[tuple[int, int], ...]:
    """The body parts, for a reader that must not guess: a boundary outside ASCII (RFC 2046 §5.1.1
    bchars), no delimiter line, no body part or no close delimiter raise MultipartError."""
    if not boundary.isascii():
        raise MultipartError("multipart boundary is not ASCII")
    found = split_multipart(buf, start, end, boundary)
    if not found.parts:
        if found.closed:
            raise MultipartError("multipart body has no body parts")
        raise MultipartError(f'multipart body has no "{boundary}" boundary line')
    if not found.closed:
        raise MultipartError(f'multipart body ends without its closing "--{boundary}--" line')
    return found.parts
