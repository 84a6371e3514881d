"""MIME structure of a stored message as byte offsets into its raw octets (RFC 2045/2046).

FETCH sections must return exactly the stored octets (RFC 3501 §6.4.5), so parts are spans of the
original bytes, never re-serialised objects.
"""

from __future__ import annotations

import base64
import binascii
import quopri
from dataclasses import dataclass

from kepmta.imap.headers import (
    ContentType,
    HeaderField,
    decode_words,
    field_value,
    parse_content_type,
    scan_header,
)

MAX_DEPTH = 40
_TEXT_PLAIN = ContentType("text", "plain", (("charset", "us-ascii"),))
_MESSAGE_RFC822 = ContentType("message", "rfc822", ())
_ENCAPSULATING = frozenset({("message", "rfc822"), ("message", "global")})


@dataclass(frozen=True)
class Part:
    """A MIME entity: header octets [start, body_start), body octets [body_start, end).

    `children` holds a multipart's parts; `message` the entity a message/rfc822 body encapsulates.
    """

    start: int
    body_start: int
    end: int
    fields: tuple[HeaderField, ...]
    ctype: ContentType
    children: tuple[Part, ...] = ()
    message: Part | None = None

    @property
    def is_multipart(self) -> bool:
        return self.ctype.maintype == "multipart"

    def header(self, name: str) -> str | None:
        return field_value(self.fields, name)


def parse(data: bytes) -> Part:
    return _entity(data, 0, len(data), _TEXT_PLAIN, 0)


def parse_header_only(data: bytes) -> Part:
    """The top-level entity without descending into its body (enough for ENVELOPE and header sections)."""
    fields, body_start = scan_header(data, 0, len(data))
    ctype = parse_content_type(field_value(fields, "Content-Type"), _TEXT_PLAIN)
    return Part(0, body_start, len(data), fields, ctype)


def _entity(data: bytes, start: int, end: int, default: ContentType, depth: int) -> Part:
    fields, body_start = scan_header(data, start, end)
    ctype = parse_content_type(field_value(fields, "Content-Type"), default)
    if depth >= MAX_DEPTH:
        # Deeper nesting is treated as opaque data rather than risking unbounded recursion.
        return Part(start, body_start, end, fields, ctype)
    if ctype.maintype == "multipart":
        boundary = dict((k.lower(), v) for k, v in ctype.params).get("boundary")
        spans = _split_multipart(data, body_start, end, boundary) if boundary else []
        if not spans:
            # RFC 2046 §5.1.1 needs a boundary and at least one part; without them the body is text.
            return Part(start, body_start, end, fields, _TEXT_PLAIN)
        child_default = _MESSAGE_RFC822 if ctype.subtype == "digest" else _TEXT_PLAIN
        children = tuple(_entity(data, s, e, child_default, depth + 1) for s, e in spans)
        return Part(start, body_start, end, fields, ctype, children=children)
    if (ctype.maintype, ctype.subtype) in _ENCAPSULATING:
        inner = _entity(data, body_start, end, _TEXT_PLAIN, depth + 1)
        return Part(start, body_start, end, fields, ctype, message=inner)
    return Part(start, body_start, end, fields, ctype)


def _split_multipart(data: bytes, start: int, end: int, boundary: str) -> list[tuple[int, int]]:
    """Spans of the body parts between delimiter lines (RFC 2046 §5.1.1).

    The line break before a delimiter belongs to the delimiter, so it is not part of the preceding
    body part. A missing close-delimiter ends the last part at the end of the enclosing body.
    """
    delim = b"--" + boundary.encode("utf-8", "surrogateescape")
    spans: list[tuple[int, int]] = []
    part_start = -1
    pos = start
    while True:
        hit = data.find(delim, pos, end)
        if hit < 0:
            break
        pos = hit + len(delim)
        if hit != start and data[hit - 1 : hit] != b"\n":
            continue
        after = hit + len(delim)
        closing = data[after : after + 2] == b"--"
        if closing:
            after += 2
        while after < end and data[after] in b" \t":
            after += 1
        if after < end and data[after : after + 1] not in (b"\r", b"\n"):
            continue
        line_end = data.find(b"\n", after, end)
        line_end = end if line_end < 0 else line_end + 1
        if part_start >= 0:
            body_end = hit
            if body_end > part_start and data[body_end - 1 : body_end] == b"\n":
                body_end -= 1
                if body_end > part_start and data[body_end - 1 : body_end] == b"\r":
                    body_end -= 1
            spans.append((part_start, max(part_start, body_end)))
        if closing:
            return spans
        part_start = line_end
        pos = line_end
    if part_start >= 0:
        spans.append((part_start, end))
    return spans


@dataclass(frozen=True)
class Located:
    """What a section's part path names: `part`; `is_message` when it is a message (top level)."""

    part: Part
    is_message: bool


def locate(root: Part, path: tuple[int, ...]) -> Located | None:
    """RFC 3501 §6.4.5 part numbering; None when the message has no such part."""
    node = Located(root, True)
    for n in path:
        part = node.part
        if not node.is_message and part.message is not None:
            part = part.message
            node = Located(part, True)
        if part.children:
            if not 1 <= n <= len(part.children):
                return None
            node = Located(part.children[n - 1], False)
        elif node.is_message and n == 1:
            # A non-multipart message has a single part 1: its own body.
            node = Located(part, False)
        else:
            return None
    return node


def inner_message(node: Located) -> Part | None:
    """The message whose HEADER/TEXT a section means: the top level or an encapsulated message."""
    if node.is_message:
        return node.part
    return node.part.message


def body_lines(data: bytes, part: Part) -> int:
    body = data[part.body_start : part.end]
    if not body:
        return 0
    return body.count(b"\n") + (0 if body.endswith(b"\n") else 1)


def decoded_body(data: bytes, part: Part) -> bytes:
    """The body with its Content-Transfer-Encoding undone (for SEARCH BODY/TEXT)."""
    raw = data[part.body_start : part.end]
    cte = (part.header("Content-Transfer-Encoding") or "").strip().lower()
    try:
        if cte == "base64":
            return base64.b64decode(b"".join(raw.split()), validate=False)
        if cte == "quoted-printable":
            return quopri.decodestring(raw)
    except (binascii.Error, ValueError):
        return raw
    return raw


def searchable_text(data: bytes, part: Part, *, include_header: bool) -> list[str]:
    """Text of the textual leaves (and nested headers), decoded, for substring search."""
    out: list[str] = []
    if include_header:
        out.append(decode_words(data[part.start : part.body_start].decode("utf-8", "replace")))
    if part.children:
        for child in part.children:
            out.extend(searchable_text(data, child, include_header=False))
    elif part.message is not None:
        out.extend(searchable_text(data, part.message, include_header=True))
    elif part.ctype.maintype in ("text", "message"):
        charset = dict((k.lower(), v) for k, v in part.ctype.params).get("charset", "utf-8")
        body = decoded_body(data, part)
        try:
            out.append(body.decode(charset, "replace"))
        except (LookupError, ValueError):
            # As in headers.decode_words: no such charset, a NUL in its name, or a codec (idna,
            # punycode) that cannot decode with errors="replace".
            out.append(body.decode("utf-8", "replace"))
    return out
