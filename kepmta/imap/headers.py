"""RFC 5322 / MIME header fields over raw message bytes: locating fields, parameters, addresses.

Field values are kept as the octets the message holds (decoded as UTF-8 with surrogate escapes so
they round-trip exactly): ENVELOPE and BODYSTRUCTURE report them undecoded (RFC 3501 §7.4.2).
"""

from __future__ import annotations

import email.errors
import email.header
import re
from dataclasses import dataclass


def text_of(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def bytes_of(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class HeaderField:
    """One field; `start`/`end` span its octets including continuation lines and the final line break."""

    name: str
    start: int
    end: int
    value: str


_FOLD = re.compile(r"\r?\n(?=[ \t])")


def scan_header(data: bytes, start: int, end: int) -> tuple[tuple[HeaderField, ...], int]:
    """Fields of the header beginning at `start`, and the offset where the body begins.

    The body begins after the empty line ending the header; a header without one runs to `end`.
    """
    fields: list[HeaderField] = []
    pos = start
    field_start = -1
    while pos < end:
        nl = data.find(b"\n", pos, end)
        line_end = end if nl < 0 else nl + 1
        line = data[pos:line_end]
        if line in (b"\r\n", b"\n"):
            if field_start >= 0:
                fields.append(_field(data, field_start, pos))
            return tuple(fields), line_end
        if line[:1] in (b" ", b"\t") and field_start >= 0:
            pos = line_end
            continue
        if field_start >= 0:
            fields.append(_field(data, field_start, pos))
        field_start = pos
        pos = line_end
    if field_start >= 0:
        fields.append(_field(data, field_start, end))
    return tuple(fields), end


def _field(data: bytes, start: int, end: int) -> HeaderField:
    raw = text_of(data[start:end])
    name, sep, value = raw.partition(":")
    if not sep:
        return HeaderField("", start, end, "")
    return HeaderField(name.strip(), start, end, _FOLD.sub("", value).strip(" \t\r\n"))


def field_value(fields: tuple[HeaderField, ...], name: str) -> str | None:
    """The first field called `name` (case-insensitively), unfolded."""
    lname = name.lower()
    for f in fields:
        if f.name.lower() == lname:
            return f.value
    return None


def decode_words(value: str) -> str:
    """RFC 2047 encoded-words decoded, for matching a client's search text against a header."""
    if "=?" not in value:
        # Every encoded-word starts so (RFC 2047 §2); most values have none, and the parser is slow.
        return value
    try:
        parts = email.header.decode_header(value)
    except (ValueError, LookupError, AssertionError, email.errors.HeaderParseError):
        # HeaderParseError: an encoded-word whose base64 does not decode ("=?utf-8?b?x?=").
        return value
    out: list[str] = []
    for chunk, charset in parts:
        if isinstance(chunk, str):
            out.append(chunk)
            continue
        try:
            out.append(chunk.decode(charset or "utf-8", "replace"))
        except (LookupError, ValueError):
            # LookupError: no such charset. ValueError: a charset name with a NUL in it, or a
            # codec (idna, punycode) that cannot decode with errors="replace" (UnicodeError).
            out.append(chunk.decode("utf-8", "replace"))
    return "".join(out)


# --- MIME parameters (RFC 2045 §5.1) ------------------------------------------------------------------

_TOKEN = re.compile(r'[^\s()<>@,;:\\"/\[\]?=]+')
_BARE_VALUE = re.compile(r"[^\s;]*")
_ATOM_TEXT = re.compile(r'[^\s()<>@,;:."\[\]]+')


def _skip_comments(text: str, pos: int) -> int:
    """Past whitespace and RFC 5322 §3.2.2 comments, which may nest."""
    while pos < len(text):
        if text[pos] in " \t\r\n":
            pos += 1
        elif text[pos] == "(":
            depth = 0
            while pos < len(text):
                ch = text[pos]
                if ch == "\\":
                    pos += 1
                elif ch == "(":
                    depth += 1
                elif ch == ")":
                    depth -= 1
                    if depth == 0:
                        pos += 1
                        break
                pos += 1
        else:
            break
    return pos


def _quoted(text: str, pos: int) -> tuple[str, int]:
    """A quoted-string starting at `pos` (the opening quote): its content unescaped and the end."""
    out: list[str] = []
    pos += 1
    while pos < len(text):
        ch = text[pos]
        if ch == '"':
            return "".join(out), pos + 1
        if ch == "\\" and pos + 1 < len(text):
            pos += 1
            ch = text[pos]
        out.append(ch)
        pos += 1
    return "".join(out), pos


@dataclass(frozen=True)
class ContentType:
    maintype: str
    subtype: str
    params: tuple[tuple[str, str], ...]


def parse_params(text: str, pos: int) -> tuple[tuple[str, str], ...]:
    """`; name=value` pairs from `pos` on; RFC 2231 forms are passed through under their own names."""
    params: list[tuple[str, str]] = []
    while True:
        pos = _skip_comments(text, pos)
        if pos >= len(text):
            break
        if text[pos] != ";":
            semi = text.find(";", pos)
            if semi < 0:
                break
            pos = semi
        pos = _skip_comments(text, pos + 1)
        m = _TOKEN.match(text, pos)
        if not m:
            continue
        name = m.group()
        pos = _skip_comments(text, m.end())
        if pos >= len(text) or text[pos] != "=":
            continue
        pos = _skip_comments(text, pos + 1)
        if pos < len(text) and text[pos] == '"':
            value, pos = _quoted(text, pos)
        else:
            vm = _BARE_VALUE.match(text, pos)
            assert vm is not None  # the pattern matches the empty string
            value, pos = vm.group(), vm.end()
        params.append((name, value))
    return tuple(params)


def parse_content_type(value: str | None, default: ContentType) -> ContentType:
    """RFC 2045 §5.2: a missing or unparsable Content-Type means the default."""
    if value is None:
        return default
    m = re.match(r"\s*([^\s/;()]+)\s*/\s*([^\s/;()]+)", value)
    if not m:
        return default
    return ContentType(m.group(1).lower(), m.group(2).lower(), parse_params(value, m.end()))


def parse_disposition(value: str) -> tuple[str, tuple[tuple[str, str], ...]] | None:
    m = _TOKEN.match(value.strip())
    if not m:
        return None
    stripped = value.strip()
    return m.group(), parse_params(stripped, m.end())


# --- addresses (RFC 5322 §3.4) for ENVELOPE ---------------------------------------------------------


@dataclass(frozen=True)
class Address:
    """An ENVELOPE address; a group start has only `mailbox` (the group name), a group end nothing."""

    name: str | None
    route: str | None
    mailbox: str | None
    host: str | None


def _phrase_and_specials(text: str) -> list[tuple[str, str]]:
    """Tokens as (kind, text): kinds 'word', 'quoted', 'special', 'literal' (domain literal)."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    while True:
        pos = _skip_comments(text, pos)
        if pos >= len(text):
            return tokens
        ch = text[pos]
        if ch == '"':
            value, pos = _quoted(text, pos)
            tokens.append(("quoted", value))
        elif ch == "[":
            close = text.find("]", pos)
            close = len(text) - 1 if close < 0 else close
            tokens.append(("literal", text[pos : close + 1]))
            pos = close + 1
        elif ch in "<>@,;:.":
            tokens.append(("special", ch))
            pos += 1
        else:
            m = _ATOM_TEXT.match(text, pos)
            if not m:
                pos += 1
                continue
            tokens.append(("word", m.group()))
            pos = m.end()


def _join_words(tokens: list[tuple[str, str]]) -> str:
    out = ""
    for _, value in tokens:
        out += ("" if not out or value == "." else " ") + value
    return out


def _addr_spec(tokens: list[tuple[str, str]]) -> tuple[str | None, str | None]:
    if ("special", "@") in tokens:
        at = len(tokens) - 1 - tokens[::-1].index(("special", "@"))
        local = "".join(v for _, v in tokens[:at])
        domain = "".join(v for _, v in tokens[at + 1 :])
        return local or None, domain or None
    local = "".join(v for _, v in tokens)
    return local or None, None


def _mailbox(tokens: list[tuple[str, str]]) -> Address | None:
    if not tokens:
        return None
    if ("special", "<") in tokens:
        lt = tokens.index(("special", "<"))
        gt = tokens.index(("special", ">")) if ("special", ">") in tokens else len(tokens)
        phrase = _join_words(tokens[:lt]) or None
        inner = tokens[lt + 1 : gt]
        route = None
        if ("special", ":") in inner:
            colon = inner.index(("special", ":"))
            route = "".join(v for _, v in inner[:colon]) or None
            inner = inner[colon + 1 :]
        local, domain = _addr_spec(inner)
        return Address(phrase, route, local, domain)
    local, domain = _addr_spec(tokens)
    return Address(None, None, local, domain)


def parse_addresses(value: str) -> list[Address]:
    """An address-list, groups spelled as RFC 3501 §7.4.2 wants them (start and end markers)."""
    tokens = _phrase_and_specials(value)
    out: list[Address] = []
    current: list[tuple[str, str]] = []
    in_group = False
    angle = 0
    for tok in tokens:
        if tok == ("special", "<"):
            angle += 1
        elif tok == ("special", ">"):
            angle = max(0, angle - 1)
        if angle == 0 and tok == ("special", ":") and not in_group and ("special", "<") not in current:
            out.append(Address(None, None, _join_words(current) or "", None))
            current = []
            in_group = True
            continue
        if angle == 0 and tok in (("special", ","), ("special", ";")):
            mbox = _mailbox(current)
            if mbox is not None:
                out.append(mbox)
            current = []
            if tok == ("special", ";") and in_group:
                out.append(Address(None, None, None, None))
                in_group = False
            continue
        current.append(tok)
    mbox = _mailbox(current)
    if mbox is not None:
        out.append(mbox)
    if in_group:
        out.append(Address(None, None, None, None))
    return out
