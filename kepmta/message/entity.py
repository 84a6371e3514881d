"""A message as a tree of MIME entities, each a span of the original octets (RFC 2045, RFC 2046).

FETCH sections must return exactly the stored octets (RFC 3501 §6.4.5), so parts are spans, never
re-serialised objects. Nesting is bounded: a part deeper than MAX_DEPTH is opaque data.
"""

from __future__ import annotations

from dataclasses import dataclass

from kepmta.message.content import MESSAGE_RFC822, TEXT_PLAIN, ContentType, parse_content_type
from kepmta.message.header import Header, HeaderField, read_header
from kepmta.message.multipart import split_multipart

MAX_DEPTH = 40
# RFC 2046 §5.2.1 message/rfc822 and RFC 6532 §3.7 message/global encapsulate a whole message.
_ENCAPSULATING = frozenset({("message", "rfc822"), ("message", "global")})


@dataclass(frozen=True)
class Part:
    """A MIME entity: header octets [start, body_start), body octets [body_start, end).

    `children` holds a multipart's parts; `message` the entity a message/rfc822 body encapsulates.
    """

    start: int
    body_start: int
    end: int
    head: Header
    ctype: ContentType
    children: tuple[Part, ...] = ()
    message: Part | None = None

    @property
    def fields(self) -> tuple[HeaderField, ...]:
        return self.head.fields

    @property
    def is_multipart(self) -> bool:
        return self.ctype.maintype == "multipart"

    def header(self, name: str) -> str | None:
        return self.head.get(name)


def parse(data: bytes) -> Part:
    """The whole tree of the message in `data`."""
    return _entity(data, 0, len(data), TEXT_PLAIN, 0)


def parse_header_only(data: bytes, size: int | None = None) -> Part:
    """The top-level entity without descending into its body (enough for ENVELOPE and header
    sections); `data` need only hold the header, `size` is the whole message's."""
    head = read_header(data, 0, len(data))
    ctype = parse_content_type(head.get("Content-Type"))
    return Part(0, head.body_start, len(data) if size is None else size, head, ctype)


def _entity(data: bytes, start: int, end: int, default: ContentType, depth: int) -> Part:
    head = read_header(data, start, end)
    body_start = head.body_start
    ctype = parse_content_type(head.get("Content-Type"), default)
    if depth >= MAX_DEPTH:
        # Deeper nesting is opaque data rather than unbounded recursion.
        return Part(start, body_start, end, head, ctype)
    if ctype.maintype == "multipart":
        boundary = ctype.boundary
        spans = split_multipart(data, body_start, end, boundary).parts if boundary else ()
        if not spans:
            # RFC 2046 §5.1.1 needs a boundary and at least one part; without them the body is text.
            return Part(start, body_start, end, head, TEXT_PLAIN)
        # RFC 2046 §5.1.5: the parts of a digest are messages unless they say otherwise.
        child_default = MESSAGE_RFC822 if ctype.subtype == "digest" else TEXT_PLAIN
        children = tuple(_entity(data, s, e, child_default, depth + 1) for s, e in spans)
        return Part(start, body_start, end, head, ctype, children=children)
    if (ctype.maintype, ctype.subtype) in _ENCAPSULATING:
        inner = _entity(data, body_start, end, TEXT_PLAIN, depth + 1)
        return Part(start, body_start, end, head, ctype, message=inner)
    return Part(start, body_start, end, head, ctype)
