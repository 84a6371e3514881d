"""Address lists (RFC 5322 §3.4) as written in From, To, Cc and the like.

Comments (RFC 5322 §3.2.2 CFWS) may stand anywhere between the tokens, `<user (c)@ (c) domain>`
included; they are not part of the address. A comment after a bare addr-spec is its display name
in the obsolete but common `user@domain (Real Name)` form. Groups (`team: a@b, c@d;`) are given
as RFC 3501 §7.4.2 wants them in ENVELOPE: a start marker holding the group's name, its members,
an end marker. Names and parts are as written (quoted-strings unquoted, encoded-words kept).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from kepmta.message.words import decode_words


@dataclass(frozen=True)
class Address:
    """A mailbox (`mailbox` is the local part, `host` the domain), or a group marker: a group start
    has only `mailbox` (the group's name), a group end nothing at all."""

    name: str | None
    route: str | None
    mailbox: str | None
    host: str | None

    @property
    def is_mailbox(self) -> bool:
        return self.mailbox is not None and self.host is not None

    @property
    def addr_spec(self) -> str:
        """`local@domain`, the local part quoted again when it is not a dot-atom (RFC 5322 §3.4.1)."""
        local = self.mailbox or ""
        if not _DOT_ATOM.fullmatch(local):
            local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return f"{local}@{self.host or ''}"


# RFC 5322 §3.2.3 atext, with RFC 6532 §3.2 UTF-8 (and undecodable octets, kept as surrogates).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\x80-\U0010ffff-]+"
_DOT_ATOM = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")

# One token at a time; comments are read apart because they nest.
_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r\n]+)
    | "(?P<quoted>(?:[^"\\]|\\.)*)"?
    | (?P<literal>\[[^\]]*\]?)
    | (?P<special>[<>@,;:.])
    | (?P<atom>[^ \t\r\n()<>@,;:."\[\]\\]+)
    """,
    re.VERBOSE | re.DOTALL,
)
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)

# Token kinds: "atom", "quoted", "literal", "comment", or the special character itself.
_Token = tuple[str, str]


def _comment(text: str, pos: int) -> tuple[str, int]:
    """The comment opening at `pos`, without its outer parentheses, and the offset after it."""
    depth = 0
    start = pos + 1
    while pos < len(text):
        ch = text[pos]
        if ch == "\\":
            pos += 1
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return _QUOTED_PAIR.sub(r"\1", text[start:pos]).strip(), pos + 1
        pos += 1
    return _QUOTED_PAIR.sub(r"\1", text[start:]).strip(), pos


def _tokens(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    end = len(text)
    while pos < end:
        if text[pos] == "(":
            value, pos = _comment(text, pos)
            tokens.append(("comment", value))
            continue
        m = _TOKEN.match(text, pos)
        if m is None:
            pos += 1  # a stray ")" or "\": not part of any token
            continue
        pos = m.end()
        kind = m.lastgroup
        if kind == "space":
            continue
        if kind == "quoted":
            tokens.append(("quoted", _QUOTED_PAIR.sub(r"\1", m.group("quoted"))))
        elif kind == "special":
            tokens.append((m.group(), m.group()))
        else:
            assert kind is not None
            tokens.append((kind, m.group()))
    return tokens


def _phrase(tokens: list[_Token]) -> str:
    out = ""
    for _, value in tokens:
        out += ("" if not out or value == "." else " ") + value
    return out


def _addr_spec(tokens: list[_Token]) -> tuple[str | None, str | None]:
    ats = [i for i, (kind, _) in enumerate(tokens) if kind == "@"]
    if not ats:
        return "".join(v for _, v in tokens) or None, None
    at = ats[-1]
    local = "".join(v for _, v in tokens[:at])
    domain = "".join(v for _, v in tokens[at + 1 :])
    return local or None, domain or None


def _mailbox(tokens: list[_Token]) -> Address | None:
    words = [t for t in tokens if t[0] != "comment"]
    if not words:
        return None
    kinds = [kind for kind, _ in words]
    if "<" in kinds:
        lt = kinds.index("<")
        gt = kinds.index(">", lt) if ">" in kinds[lt:] else len(words)
        name: str | None = _phrase(words[:lt]) or None
        inner = words[lt + 1 : gt]
        route = None
        colons = [i for i, (kind, _) in enumerate(inner) if kind == ":"]
        if colons:
            # RFC 5322 §4.4 obs-route: "@relay,@relay:" before the addr-spec.
            route = "".join(v for _, v in inner[: colons[0]]) or None
            inner = inner[colons[0] + 1 :]
        local, domain = _addr_spec(inner)
    else:
        name, route = None, None
        local, domain = _addr_spec(words)
    if name is None:
        # A comment after the address names it (`user@domain (Real Name)`); comments inside it
        # (`<user (c)@domain>`) do not.
        last_word = max(i for i, t in enumerate(tokens) if t[0] != "comment")
        after = [v for kind, v in tokens[last_word + 1 :] if kind == "comment" and v]
        name = after[0] if after else None
    return Address(name, route, local, domain)


def parse_addresses(value: str) -> tuple[Address, ...]:
    """An address-list: mailboxes, and groups as start marker, members, end marker."""
    if len(value) <= _CACHED_LENGTH:
        return _parse_cached(value)
    return _parse(value)


# A message's summary reads each address field three times over (ENVELOPE, SORT, SEARCH); the
# values are kept only while short, so the cache stays small whatever the messages hold.
_CACHED_LENGTH = 2048


@lru_cache(maxsize=64)
def _parse_cached(value: str) -> tuple[Address, ...]:
    return _parse(value)


def _parse(value: str) -> tuple[Address, ...]:
    out: list[Address] = []
    current: list[_Token] = []
    in_group = False
    angle = False
    for token in _tokens(value):
        kind = token[0]
        if kind == "<":
            angle = True
        elif kind == ">":
            angle = False
        if not angle and kind == ":" and not in_group and all(k != "<" for k, _ in current):
            out.append(Address(None, None, _phrase([t for t in current if t[0] != "comment"]), None))
            current = []
            in_group = True
            continue
        if not angle and kind in (",", ";"):
            mailbox = _mailbox(current)
            if mailbox is not None:
                out.append(mailbox)
            current = []
            if kind == ";" and in_group:
                out.append(Address(None, None, None, None))
                in_group = False
            continue
        current.append(token)
    mailbox = _mailbox(current)
    if mailbox is not None:
        out.append(mailbox)
    if in_group:
        out.append(Address(None, None, None, None))
    return tuple(out)


def mailboxes(value: str) -> list[Address]:
    """The mailboxes of an address-list, group members included, group markers left out."""
    return [a for a in parse_addresses(value) if a.is_mailbox]


def addr_specs(values: Iterable[str]) -> tuple[str, ...]:
    """Every `local@domain` the address fields `values` name, in order."""
    return tuple(a.addr_spec for value in values for a in mailboxes(value))


def searchable(value: str) -> str:
    """The mailboxes of an address-list as `name <local@domain>`, comments and folding taken out
    and encoded-words decoded: what SEARCH FROM and friends match besides the field as written."""
    shown = []
    for a in mailboxes(value):
        spec = f"{a.mailbox}@{a.host}"
        shown.append(f"{decode_words(a.name)} <{spec}>" if a.name else spec)
    return ", ".join(shown)
