"""FETCH data items (RFC 3501 §6.4.5, §7.4.2): parsing the request and building the response.

Section data is cut from the stored octets; a whole message or its text is streamed from the file
rather than read into memory, and no file is opened at all for FLAGS, UID, MODSEQ (RFC 7162),
RFC822.SIZE and INTERNALDATE, which the folder index holds, nor for ENVELOPE, BODY and
BODYSTRUCTURE, which the message's summary holds (`imap/summary.py`). BINARY (RFC 3516) sections
are decoded by `imap/binary.py`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from collections.abc import Sequence
from dataclasses import dataclass

from kepmta.imap import binary
from kepmta.imap.mailbox import format_flags
from kepmta.imap.protocol import (
    Atom,
    BadCommand,
    FileSlice,
    ParenList,
    Segment,
    String,
    Token,
    format_date_time,
    literal_header,
    nstring,
    paren,
    string,
)
from kepmta.imap.summary import Summary
from kepmta.message.addresses import Address, parse_addresses
from kepmta.message.content import parse_disposition
from kepmta.message.entity import Part, parse, parse_header_only
from kepmta.message.header import bytes_of, find_body

_SIMPLE = frozenset(
    {"FLAGS", "UID", "RFC822.SIZE", "INTERNALDATE", "ENVELOPE", "BODYSTRUCTURE", "BODY", "MODSEQ"}
)
_RFC822 = frozenset({"RFC822", "RFC822.HEADER", "RFC822.TEXT"})
_MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
_TEXT_SPECS = frozenset({"HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"})
_HEAD_READ = 256 * 1024
# Linux 4.14 (preadv2): a read that fails with EAGAIN instead of waiting for the disk.
_RWF_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)
# Larger reads go to a thread as before: their buffer is made before the cache is asked, and the
# copy would hold the loop longer than a hand-off costs.
_INLINE_READ = 1 << 20


def pread_all(fd: int, offset: int, length: int) -> bytes:
    """Up to `length` octets at `offset`: fewer only at the end of the file."""
    chunks: list[bytes] = []
    while length > 0:
        chunk = os.pread(fd, min(length, 1 << 20), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
        length -= len(chunk)
    return b"".join(chunks)


def _cached(fd: int, offset: int, length: int) -> bytes | None:
    """The `length` octets at `offset` if the page cache holds every one of them, else None."""
    if _RWF_NOWAIT is None:
        return None
    buf = bytearray(length)
    try:
        got = os.preadv(fd, [buf], offset, _RWF_NOWAIT)
    except OSError:  # EAGAIN: not all in memory; EOPNOTSUPP: a file system that cannot say
        return None
    return bytes(buf) if got == length else None


async def read_at(fd: int, offset: int, length: int) -> bytes:
    """Up to `length` octets of `fd` at `offset`: on the event loop when they are in memory, as a
    message just written or read is, else in a thread so that no session waits on the disk. A
    thread for every read cost more than the read on a busy loop: in bench/imap.py's writing mix a
    FETCH of new mail took 12.4 ms on average with one, 6.2 ms without."""
    data = _cached(fd, offset, length) if length <= _INLINE_READ else None
    return data if data is not None else await asyncio.to_thread(pread_all, fd, offset, length)


@dataclass(frozen=True)
class Section:
    """`path` numbers the part (RFC 3501 §6.4.5); `spec` is HEADER, HEADER.FIELDS(.NOT), TEXT, MIME or ''."""

    path: tuple[int, ...]
    spec: str
    fields: tuple[str, ...] = ()

    def label(self) -> bytes:
        text = ".".join(str(n) for n in self.path)
        if self.spec:
            text = f"{text}.{self.spec}" if text else self.spec
        if self.fields:
            text += " (" + " ".join(self.fields) + ")"
        return text.encode("utf-8")


@dataclass(frozen=True)
class FetchItem:
    """One requested data item; `section` is set for BODY[...]/BODY.PEEK[...] and the RFC822 forms."""

    name: str
    section: Section | None = None
    peek: bool = True
    partial: tuple[int, int] | None = None

    @property
    def sets_seen(self) -> bool:
        # RFC 3501 §6.4.5: BODY[...] (not .PEEK), RFC822 and RFC822.TEXT set \Seen; so does
        # BINARY[...] (RFC 3516 §4.2), but not BINARY.SIZE.
        return not self.peek

    def response_name(self) -> bytes:
        if self.name in _RFC822:
            return self.name.encode("ascii")
        assert self.section is not None
        label = self.name.encode("ascii") + b"[" + self.section.label() + b"]"
        if self.partial is not None:
            label += b"<%d>" % self.partial[0]
        return label


def parse_items(tok: Token) -> tuple[FetchItem, ...]:
    """The FETCH attribute argument: a macro, a single item or a parenthesised list of items."""
    if isinstance(tok, Atom) and tok.section is None and tok.value.upper() in _MACROS:
        return tuple(FetchItem(n) for n in _MACROS[tok.value.upper()])
    tokens: Sequence[Token] = tok.items if isinstance(tok, ParenList) else (tok,)
    if not tokens:
        raise BadCommand("empty FETCH attribute list")
    return tuple(_item(t) for t in tokens)


def _item(tok: Token) -> FetchItem:
    if not isinstance(tok, Atom):
        raise BadCommand("expected a FETCH attribute")
    name = tok.value.upper()
    if tok.section is not None and name.startswith("BINARY"):
        section = _binary_section(tok.section)
        if name == "BINARY.SIZE":
            if tok.partial is not None:
                raise BadCommand("BINARY.SIZE takes no partial range")
            return FetchItem(name, section)
        return FetchItem("BINARY", section, peek=name == "BINARY.PEEK", partial=tok.partial)
    if tok.section is not None:
        return FetchItem("BODY", _section(tok.section), peek=name == "BODY.PEEK", partial=tok.partial)
    if name in _SIMPLE:
        return FetchItem(name)
    if name == "RFC822":
        return FetchItem(name, Section((), ""), peek=False)
    if name == "RFC822.HEADER":
        return FetchItem(name, Section((), "HEADER"), peek=True)
    if name == "RFC822.TEXT":
        return FetchItem(name, Section((), "TEXT"), peek=False)
    raise BadCommand(f"unknown FETCH attribute {tok.value!r}")


def _part_number(text: str) -> int | None:
    """RFC 9051 §9 section-part: nz-number, at most 4294967295 (ten digits, so int() stays cheap)."""
    if not text.isdigit() or len(text) > 10 or not 0 < int(text) <= 0xFFFFFFFF:
        return None
    return int(text)


def _binary_section(tokens: tuple[Token, ...]) -> Section:
    """RFC 3516 §6 section-binary: part numbers only, no HEADER/TEXT/MIME."""
    if not tokens:
        return Section((), "")
    first = tokens[0]
    if len(tokens) != 1 or not isinstance(first, Atom) or first.section is not None:
        raise BadCommand("BINARY takes a part number such as [1.2]")
    pieces = first.value.split(".")
    if not all(_part_number(p) for p in pieces):
        raise BadCommand("BINARY takes a part number such as [1.2]")
    return Section(tuple(int(p) for p in pieces), "")


def _section(tokens: tuple[Token, ...]) -> Section:
    if not tokens:
        return Section((), "")
    first = tokens[0]
    if not isinstance(first, Atom) or first.section is not None:
        raise BadCommand("invalid section specification")
    pieces = first.value.upper().split(".")
    path: list[int] = []
    while pieces and pieces[0].isdigit():
        n = _part_number(pieces.pop(0))
        if n is None:
            raise BadCommand("section part numbers run from 1 to 4294967295")
        path.append(n)
    spec = ".".join(pieces)
    if spec and spec not in _TEXT_SPECS:
        raise BadCommand(f"unknown section specifier {first.value!r}")
    if spec == "MIME" and not path:
        raise BadCommand("MIME needs a part number (RFC 3501 §6.4.5)")
    if spec.startswith("HEADER.FIELDS"):
        if len(tokens) != 2 or not isinstance(tokens[1], ParenList) or not tokens[1].items:
            raise BadCommand(f"{spec} needs a parenthesised list of header field names")
        fields: list[str] = []
        for f in tokens[1].items:
            if isinstance(f, String):
                fields.append(f.value.decode("ascii", "replace"))
            elif isinstance(f, Atom) and f.section is None:
                fields.append(f.value)
            else:
                raise BadCommand("invalid header field name")
        if any(not f or not f.isascii() or any(c in f for c in ' :()"\\') for f in fields):
            raise BadCommand("invalid header field name")
        return Section(tuple(path), spec, tuple(fields))
    if len(tokens) != 1:
        raise BadCommand("unexpected arguments in section specification")
    return Section(tuple(path), spec)


# --- reading the message ----------------------------------------------------------------------------


class MessageReader:
    """One message file opened once, so later renames (flag changes) and expunges do not matter.

    `header_end`, when the message's summary gives it, is where its body begins: the header is then
    read exactly, and nothing past it.
    """

    def __init__(self, fd: int, header_end: int | None = None) -> None:
        self.fd = fd
        self.size = os.fstat(fd).st_size
        self._header_end = header_end if header_end is not None and header_end <= self.size else None
        self._data: bytes | None = None
        self._head: bytes | None = None
        self._tree: Part | None = None

    @classmethod
    def open(cls, path: os.PathLike[str] | str, header_end: int | None = None) -> MessageReader:
        return cls(os.open(path, os.O_RDONLY), header_end)

    def close(self) -> None:
        os.close(self.fd)

    async def data(self) -> bytes:
        if self._data is None:
            self._data = await read_at(self.fd, 0, self.size)
        return self._data

    async def header(self) -> tuple[bytes, Part]:
        """The top-level header and a buffer holding it, without reading far past it when possible."""
        if self._data is not None:
            data = self._data
        elif self._header_end is not None:
            if self._head is None:
                self._head = await read_at(self.fd, 0, self._header_end)
            data = self._head
        elif self.size <= _HEAD_READ:
            data = await self.data()
        else:
            if self._head is None:
                start = await read_at(self.fd, 0, _HEAD_READ)
                self._head = start if _has_blank_line(start) else await self.data()
            data = self._head
        return data, parse_header_only(data, self.size)

    def slice(self, start: int, end: int) -> Segment:
        if self._data is not None:
            return self._data[start:end]
        return FileSlice(self.fd, start, end - start)

    async def tree(self) -> Part:
        if self._tree is None:
            data = await self.data()
            self._tree = await asyncio.to_thread(parse, data)
        return self._tree


# --- part numbers (RFC 3501 §6.4.5) ------------------------------------------------------------------


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
    """RFC 3501 §7.4.2 body-fld-lines: the size of the body in text lines."""
    body = data[part.body_start : part.end]
    if not body:
        return 0
    return body.count(b"\n") + (0 if body.endswith(b"\n") else 1)


def _has_blank_line(head: bytes) -> bool:
    """Whether `head` holds the empty line that ends the header (RFC 5322 §2.1)."""
    header_end, body_start = find_body(head, 0, len(head))
    return body_start > header_end


# --- rendering ------------------------------------------------------------------------------------


def internal_date(mtime: float) -> bytes:
    return format_date_time(dt.datetime.fromtimestamp(mtime).astimezone())


async def body_section(reader: MessageReader, item: FetchItem) -> Segment | None:
    """The octets a BODY[section] item names, or None when the part does not exist."""
    section = item.section
    assert section is not None
    span: tuple[int, int] | None
    if not section.path and section.spec == "":
        span = (0, reader.size)
    elif not section.path and section.spec == "TEXT":
        _, top = await reader.header()
        span = (top.body_start, reader.size)
    elif not section.path and section.spec.startswith("HEADER"):
        head, top = await reader.header()
        return _clip(_header_octets(head, top, section), item.partial)
    else:
        tree = await reader.tree()
        data = await reader.data()
        node = locate(tree, section.path)
        if node is None:
            return None
        if section.spec == "":
            span = (node.part.body_start, node.part.end)
        elif section.spec == "MIME":
            span = (node.part.start, node.part.body_start)
        else:
            message = inner_message(node)
            if message is None:
                return None
            if section.spec == "TEXT":
                span = (message.body_start, message.end)
            else:
                return _clip(_header_octets(data, message, section), item.partial)
    start, end = span
    if item.partial is not None:
        offset, length = item.partial
        start, end = min(start + offset, end), min(start + offset + length, end)
    return reader.slice(start, end)


async def binary_section(reader: MessageReader, item: FetchItem) -> bytes | None:
    """The decoded content a BINARY[section] item names, or None when the part does not exist."""
    assert item.section is not None
    path = item.section.path
    data = await reader.data()
    if not path:
        return data
    tree = await reader.tree()
    node = locate(tree, path)
    if node is None:
        return None
    return await asyncio.to_thread(binary.decoded, data, node.part)


def _clip(data: bytes, partial: tuple[int, int] | None) -> bytes:
    if partial is None:
        return data
    offset, length = partial
    return data[offset : offset + length]


def _header_octets(data: bytes, message: Part, section: Section) -> bytes:
    if section.spec == "HEADER":
        return data[message.start : message.body_start]
    wanted = {f.lower() for f in section.fields}
    keep = section.spec == "HEADER.FIELDS"
    chosen = [data[f.start : f.end] for f in message.fields if f.name and (f.name.lower() in wanted) == keep]
    # RFC 3501 §6.4.5: the subset keeps the blank line that ends a header.
    return b"".join(chosen) + b"\r\n"


def envelope(part: Part) -> bytes:
    """RFC 3501 §7.4.2 ENVELOPE; values are the raw (unfolded) header text, not decoded."""

    def raw(name: str) -> bytes | None:
        value = part.header(name)
        return None if value is None else bytes_of(value)

    rendered: dict[str, bytes] = {}

    def addresses(name: str, fallback: str | None = None) -> bytes:
        value = part.header(name)
        if value is None and fallback is not None:
            value = part.header(fallback)
        if value is None:
            return b"NIL"
        if value not in rendered:
            parsed = parse_addresses(value)
            # RFC 3501 §9 env-from etc.: "(" 1*address ")", the addresses not separated by spaces.
            rendered[value] = b"(" + b"".join(_address(a) for a in parsed) + b")" if parsed else b"NIL"
        return rendered[value]

    return paren(
        (
            nstring(raw("Date")),
            nstring(raw("Subject")),
            addresses("From"),
            # RFC 3501 §7.4.2: a missing Sender or Reply-To is taken from From.
            addresses("Sender", "From"),
            addresses("Reply-To", "From"),
            addresses("To"),
            addresses("Cc"),
            addresses("Bcc"),
            nstring(raw("In-Reply-To")),
            nstring(raw("Message-ID")),
        )
    )


def _address(a: Address) -> bytes:
    def ns(v: str | None) -> bytes:
        return nstring(None if v is None else bytes_of(v))

    return paren((ns(a.name), ns(a.route), ns(a.mailbox), ns(a.host)))


def _params(params: tuple[tuple[str, str], ...]) -> bytes:
    if not params:
        return b"NIL"
    return paren(string(bytes_of(x)) for kv in params for x in kv)


def _extension(part: Part) -> list[bytes]:
    disposition = part.header("Content-Disposition")
    dsp = parse_disposition(disposition) if disposition else None
    dsp_bytes = b"NIL" if dsp is None else paren((string(bytes_of(dsp[0].upper())), _params(dsp[1])))
    language = part.header("Content-Language")
    if language is None:
        lang = b"NIL"
    else:
        tags = [t.strip() for t in language.split(",") if t.strip()]
        lang = (
            b"NIL"
            if not tags
            else string(bytes_of(tags[0]))
            if len(tags) == 1
            else paren(string(bytes_of(t)) for t in tags)
        )
    location = part.header("Content-Location")
    return [dsp_bytes, lang, nstring(None if location is None else bytes_of(location))]


def body_structure(data: bytes, part: Part, *, extended: bool) -> bytes:
    """BODY (extended=False) or BODYSTRUCTURE of an entity (RFC 3501 §7.4.2)."""
    ctype = part.ctype
    if part.children:
        out = b"(" + b"".join(body_structure(data, c, extended=extended) for c in part.children)
        out += b" " + string(bytes_of(ctype.subtype.upper()))
        if extended:
            out += b" " + b" ".join([_params(ctype.params), *_extension(part)])
        return out + b")"
    fields = [
        string(bytes_of(ctype.maintype.upper())),
        string(bytes_of(ctype.subtype.upper())),
        _params(ctype.params),
        nstring(_opt(part.header("Content-ID"))),
        nstring(_opt(part.header("Content-Description"))),
        string(bytes_of((part.header("Content-Transfer-Encoding") or "7BIT").strip().upper())),
        b"%d" % (part.end - part.body_start),
    ]
    if part.message is not None:
        fields += [
            envelope(part.message),
            body_structure(data, part.message, extended=extended),
            b"%d" % body_lines(data, part),
        ]
    elif ctype.maintype == "text":
        fields.append(b"%d" % body_lines(data, part))
    if extended:
        fields += [nstring(_opt(part.header("Content-MD5"))), *_extension(part)]
    return paren(fields)


def _opt(value: str | None) -> bytes | None:
    return None if value is None else bytes_of(value)


def needs_file(items: Sequence[FetchItem]) -> bool:
    """Whether the items name message octets (a section), which only the file has."""
    return any(i.section is not None for i in items)


def needs_summary(items: Sequence[FetchItem]) -> bool:
    return any(i.section is None and i.name in ("ENVELOPE", "BODYSTRUCTURE", "BODY") for i in items)


def needs_structure(items: Sequence[FetchItem]) -> bool:
    return any(i.section is None and i.name in ("BODYSTRUCTURE", "BODY") for i in items)


def uses_header(items: Sequence[FetchItem]) -> bool:
    """Whether a section needs to know where the top-level header ends (HEADER..., TEXT)."""
    return any(
        i.name != "BINARY" and i.section is not None and not i.section.path and i.section.spec != ""
        for i in items
    )


def need_summary(summary: Summary | None) -> Summary:
    if summary is None:
        raise ValueError("the FETCH items need the message's summary but none was given")
    return summary


def need(reader: MessageReader | None) -> MessageReader:
    if reader is None:
        raise ValueError("the FETCH items need the message file but none was opened")
    return reader


async def render(
    reader: MessageReader | None,
    items: Sequence[FetchItem],
    *,
    summary: Summary | None = None,
    uid: int,
    flags: frozenset[str],
    size: int,
    mtime: float,
    add_uid: bool,
    add_flags: bool,
    modseq: int | None = None,
) -> list[Segment]:
    """The parenthesised data list of one FETCH response.

    `summary` is needed for ENVELOPE, BODY and BODYSTRUCTURE, `reader` for sections. `modseq` is
    given once CONDSTORE is on: then every response carrying FLAGS carries MODSEQ (RFC 7162 §3.1.4.1).
    """
    parts: list[Segment] = []
    pieces: list[list[Segment]] = []
    names_done: set[str] = set()

    def simple(value: bytes) -> None:
        pieces.append([value])

    if add_uid and not any(i.name == "UID" for i in items):
        simple(b"UID %d" % uid)
    for item in items:
        if item.section is None and item.name in names_done:
            continue
        names_done.add(item.name)
        if item.name == "FLAGS":
            simple(b"FLAGS " + format_flags(flags))
        elif item.name == "UID":
            simple(b"UID %d" % uid)
        elif item.name == "RFC822.SIZE":
            simple(b"RFC822.SIZE %d" % size)
        elif item.name == "INTERNALDATE":
            simple(b"INTERNALDATE " + internal_date(mtime))
        elif item.name == "MODSEQ":
            simple(b"MODSEQ (%d)" % (modseq or 0))
        elif item.name == "BINARY.SIZE":
            decoded = await binary_section(need(reader), item)
            simple(item.response_name() + b" %d" % (0 if decoded is None else len(decoded)))
        elif item.name == "BINARY":
            decoded = await binary_section(need(reader), item)
            name = item.response_name()
            if decoded is None:
                pieces.append([name + b" NIL"])
            else:
                decoded = _clip(decoded, item.partial)
                # RFC 3516 §4.3: content holding NUL octets goes as literal8.
                marker = literal_header(len(decoded))
                if b"\0" in decoded:
                    marker = b"~" + marker
                pieces.append([name + b" " + marker + decoded])
        elif item.name == "ENVELOPE":
            simple(b"ENVELOPE " + need_summary(summary).envelope)
        elif item.name in ("BODYSTRUCTURE", "BODY") and item.section is None:
            known = need_summary(summary)
            structure = known.bodystructure if item.name == "BODYSTRUCTURE" else known.body
            if structure is None:
                raise ValueError("the summary was made without the message's structure")
            simple(item.name.encode("ascii") + b" " + structure)
        else:
            value = await body_section(need(reader), item)
            name = item.response_name()
            if value is None:
                pieces.append([name + b' ""'])
            elif isinstance(value, FileSlice):
                pieces.append([name + b" " + literal_header(value.length), value])
            else:
                pieces.append([name + b" " + literal_header(len(value)) + value])
    if add_flags and "FLAGS" not in names_done:
        # RFC 3501 §6.4.5: a \Seen set as a side effect is reported with the data.
        simple(b"FLAGS " + format_flags(flags))
        names_done.add("FLAGS")
    if modseq is not None and "FLAGS" in names_done and "MODSEQ" not in names_done:
        simple(b"MODSEQ (%d)" % modseq)
    for i, piece in enumerate(pieces):
        if i:
            parts.append(b" ")
        parts.extend(piece)
    return parts
