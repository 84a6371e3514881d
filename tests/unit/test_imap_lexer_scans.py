"""The IMAP lexer reads atoms and plain quoted strings with regular expressions. This checks that
it reads every command exactly as it did an octet at a time (the atom loop it had, and its
quoted-string loop, which still reads the strings with escapes): the same tokens, or the same BAD
with the same words."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from kepmta.imap import protocol
from kepmta.imap.protocol import Atom, BadCommand, Command, parse_command


class _OctetLexer(protocol._Lexer):
    """The lexer's atom as it was read before, one octet at a time."""

    def atom(self, closer: int | None) -> Atom:
        data = self.data
        start = self.pos
        i = start
        while i < len(data):
            c = data[i]
            if c <= 0x20 or c in b'(){"\x7f' or c == closer:
                break
            if c == ord("[") and data[start:i].decode("ascii", "replace").upper() in protocol._SECTION_ATOMS:
                self.pos = i
                return self.section_atom(data[start:i].decode("ascii").upper())
            i += 1
        self.pos = i
        try:
            return Atom(data[start:i].decode("ascii"))
        except UnicodeDecodeError:
            raise BadCommand("8-bit characters are not allowed in an atom") from None


# Matches nothing: every quoted string is then read by the lexer's own loop over its octets.
_NEVER = re.compile(rb"(?!)")


def _outcome(data: bytes, *, octets: bool) -> Command | str:
    """parse_command's answer, with the regular expressions, or (`octets`) as before them."""
    saved = protocol._Lexer, protocol._PLAIN_QUOTED
    if octets:
        protocol._Lexer, protocol._PLAIN_QUOTED = _OctetLexer, _NEVER  # type: ignore[misc]
    try:
        return parse_command(data)
    except BadCommand as e:
        return f"BAD {e}"
    finally:
        protocol._Lexer, protocol._PLAIN_QUOTED = saved  # type: ignore[misc]


_PIECES = st.sampled_from(
    [
        b" ",
        b"(",
        b")",
        b"[",
        b"]",
        b'"',
        b"\\",
        b"\r\n",
        b"\n",
        b"\x00",
        b"\x7f",
        b"\xc3\xa7",
        b"<",
        b">",
        b".",
        b"*",
        b"%",
        b"+",
        b"~",
        b"{",
        b"}",
        b"{3}\r\nabc",
        b"a",
        b"Z",
        b"1",
        b"0.5",
        b"BODY",
        b"body.peek",
        b"BINARY",
        b"BINARY.SIZE",
        b"HEADER.FIELDS",
        b"\\Seen",
        b"$Label",
        b"<0.10>",
        b"INBOX",
        b"ali@kep.test",
    ]
)


@settings(max_examples=1000, deadline=None)
@given(st.lists(_PIECES, max_size=24))
def test_commands_read_as_they_were_read_an_octet_at_a_time(pieces: list[bytes]) -> None:
    data = b"a1 " + b"".join(pieces)
    assert _outcome(data, octets=False) == _outcome(data, octets=True)


def test_the_common_shapes_read_the_same() -> None:
    for data in (
        b"a UID FETCH 1:* (UID FLAGS BODY.PEEK[HEADER.FIELDS (From Subject)]<0.100>)\r\n",
        b"a STORE 1 +FLAGS (\\Seen $Work)\r\n",
        b'a SELECT "K&AOc-t \\"x\\""\r\n',
        b'a LOGIN "ali@kep.test" "p\\\\w"\r\n',
        b'a SEARCH OR (FROM "x" SUBJECT y) BODY[TEXT]\r\n',
        b"a FETCH 1 BODY[1.2.MIME]\r\n",
        b"a FETCH 1 ab[c]d[BODY[\r\n",
    ):
        assert _outcome(data, octets=False) == _outcome(data, octets=True)
