"""Content-Type and Content-Disposition fields and their parameters (RFC 2045 §5.1, RFC 2183).

Parameters are kept as written, RFC 2231 forms (`name*`, `name*0*`) under their own names:
BODYSTRUCTURE reports them so (RFC 3501 §7.4.2). `parameter` reads one the way a reader of the
message means it, continuations joined and charsets applied (RFC 2231 §3, §4).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from kepmta.message.header import bytes_of

Params = tuple[tuple[str, str], ...]

_TOKEN = re.compile(r'[^\s()<>@,;:\\"/\[\]?=]+')
_BARE_VALUE = re.compile(r"[^\s;]*")
_TYPE = re.compile(r"\s*([^\s/;()]+)\s*/\s*([^\s/;()]+)")
# RFC 2231 §3: continuations are numbered from 0; more than a thousand is not a parameter value.
_SECTION = re.compile(r"\*(\d{1,3})(\*?)")


def _skip_cfws(text: str, pos: int) -> int:
    """Past white space and RFC 5322 §3.2.2 comments, which may nest."""
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


def parse_params(text: str, pos: int) -> Params:
    """`; name=value` pairs from `pos` on; what does not parse is passed over to the next `;`."""
    params: list[tuple[str, str]] = []
    while True:
        pos = _skip_cfws(text, pos)
        if pos >= len(text):
            break
        if text[pos] != ";":
            semi = text.find(";", pos)
            if semi < 0:
                break
            pos = semi
        pos = _skip_cfws(text, pos + 1)
        m = _TOKEN.match(text, pos)
        if not m:
            continue
        name = m.group()
        pos = _skip_cfws(text, m.end())
        if pos >= len(text) or text[pos] != "=":
            continue
        pos = _skip_cfws(text, pos + 1)
        if pos < len(text) and text[pos] == '"':
            value, pos = _quoted(text, pos)
        else:
            vm = _BARE_VALUE.match(text, pos)
            assert vm is not None  # the pattern matches the empty string
            value, pos = vm.group(), vm.end()
        params.append((name, value))
    return tuple(params)


def _charset_decode(raw: bytes, charset: str) -> str:
    try:
        return raw.decode(charset or "utf-8", "replace")
    except (LookupError, ValueError):
        # No such charset, a NUL in its name, or a codec that cannot decode with "replace".
        return raw.decode("utf-8", "replace")


def parameter(params: Params, name: str) -> str | None:
    """The value of parameter `name` (case-insensitively), RFC 2231 forms decoded and preferred
    over a plain one of the same name, which senders add for readers that do not know them."""
    lname = name.lower()
    plain: str | None = None
    extended: str | None = None
    sections: dict[int, tuple[str, bool]] = {}
    for key, value in params:
        k = key.lower()
        if k == lname:
            plain = value if plain is None else plain
        elif k == lname + "*":
            extended = value if extended is None else extended
        elif k.startswith(lname + "*"):
            m = _SECTION.fullmatch(k, len(lname))
            if m:
                sections.setdefault(int(m.group(1)), (value, bool(m.group(2))))
    if extended is not None:
        return _extended([(extended, True)])
    if 0 in sections:
        ordered = []
        n = 0
        while n in sections:  # RFC 2231 §3: the sections run 0, 1, 2… without a gap
            ordered.append(sections[n])
            n += 1
        return _extended(ordered)
    return plain


def _extended(sections: list[tuple[str, bool]]) -> str:
    """RFC 2231 §4: the first encoded section starts `charset'language'`; encoded sections are
    %-escaped octets, the others text as written."""
    charset = ""
    octets: list[bytes] = []
    for index, (value, encoded) in enumerate(sections):
        if not encoded:
            octets.append(bytes_of(value))
            continue
        if index == 0:
            parts = value.split("'", 2)
            if len(parts) == 3:
                charset, value = parts[0], parts[2]
        octets.append(unquote_to_bytes(value))
    return _charset_decode(b"".join(octets), charset)


@dataclass(frozen=True)
class ContentType:
    maintype: str
    subtype: str
    params: Params

    @property
    def mime_type(self) -> str:
        return f"{self.maintype}/{self.subtype}"

    def param(self, name: str) -> str | None:
        return parameter(self.params, name)

    @property
    def boundary(self) -> str | None:
        """RFC 2046 §5.1.1: the boundary ends in a character other than a space."""
        value = self.param("boundary")
        if value is None:
            return None
        return value.rstrip(" ") or None


TEXT_PLAIN = ContentType("text", "plain", (("charset", "us-ascii"),))
MESSAGE_RFC822 = ContentType("message", "rfc822", ())


def parse_content_type(value: str | None, default: ContentType = TEXT_PLAIN) -> ContentType:
    """RFC 2045 §5.2: a missing or unparsable Content-Type means the default."""
    if value is None:
        return default
    m = _TYPE.match(value)
    if not m:
        return default
    return ContentType(m.group(1).lower(), m.group(2).lower(), parse_params(value, m.end()))


def parse_disposition(value: str) -> tuple[str, Params] | None:
    """RFC 2183 §2: the disposition type as written, and its parameters."""
    stripped = value.strip()
    m = _TOKEN.match(stripped)
    if not m:
        return None
    return m.group(), parse_params(stripped, m.end())
