"""Hostile SMTP input, property by property: the DATA reader against RFC 5321 read literally, and the
MAIL/RCPT address path (aiosmtpd's reader, then kepmta.addresses) on any text a client can send.

Work is bounded by input size, never by a clock (deadline=None): these run on shared machines."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kepmta import addresses
from kepmta.smtp import data
from kepmta.smtp.data import DataReader, SpoolingSMTP

END = b"\r\n.\r\n"


def by_the_rfc(stream: bytes) -> tuple[bytes, bytes, bool] | None:
    """RFC 5321 §4.1.1.4 and §4.5.2 read literally: the message is everything before the first line
    holding only "." (the CRLF before it belongs to the message), less the first "." of each line;
    None when the stream has no such line. Also what came after it, and whether the message has a
    CR or LF outside a CRLF (§2.3.8)."""
    if stream.startswith(b".\r\n"):
        end, after = 0, 3
    else:
        found = stream.find(END)
        if found < 0:
            return None
        end, after = found + 2, found + len(END)
    raw = stream[:end]
    message = b"\r\n".join(line[1:] if line.startswith(b".") else line for line in raw.split(b"\r\n"))
    pairs = raw.count(b"\r\n")
    bare = raw.count(b"\r") != pairs or raw.count(b"\n") != pairs
    return message, stream[after:], bare


def unstuffed(stream: bytes) -> bytes:
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in stream.split(b"\r\n"))


def chunks(stream: bytes, sizes: list[int]) -> Iterator[bytes]:
    pos, turn = 0, 0
    while pos < len(stream):
        n = sizes[turn % len(sizes)] if sizes else len(stream)
        yield stream[pos : pos + n]
        pos += n
        turn += 1


# Bytes a hostile client would pick: the ones the reader looks for, and some others.
wire = st.lists(
    st.sampled_from([b"\r", b"\n", b".", b"\r\n", b"\r\n.", b"\r\n.\r\n", b"x", b"\x00", b"\xff", b".."]),
    max_size=60,
).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(wire, st.lists(st.integers(1, 9), min_size=1, max_size=5), st.integers(0, 40))
@example(b".\r\n", [1], 0)
@example(b"\r\r\n.\r\n", [2], 10)
@example(b"a\r\n..\r\n.\r\nb", [3, 1], 100)
def test_data_reader_agrees_with_the_rfc(stream: bytes, sizes: list[int], limit: int) -> None:
    out = io.BytesIO()
    reader = DataReader(out, limit)
    fed = b""
    rest = None
    for chunk in chunks(stream, sizes):
        fed += chunk
        rest = reader.feed(chunk)
        if rest is not None:
            break
    expected = by_the_rfc(stream)
    written, outcome = out.getvalue(), reader.outcome
    assert len(written) <= limit
    if expected is None:
        assert rest is None
        # Still reading: what is held back is at most one long line's worth, never the message.
        assert unstuffed(fed).startswith(written)
        return
    message, after, bare = expected
    assert rest is not None and rest + stream[len(fed) :] == after
    assert outcome.size == len(message)
    assert outcome.too_big == (len(message) > limit)
    assert outcome.bare_line_end == bare
    assert written == message if not outcome.too_big else message.startswith(written)


def test_a_line_without_end_is_not_held_in_memory() -> None:
    """A client that sends one endless line: the reader keeps at most _MAX_CARRY octets of it."""
    out = io.BytesIO()
    reader = DataReader(out, 10**9)
    sent = 0
    for _ in range(40):
        assert reader.feed(b"z" * 65_536) is None
        sent += 65_536
        assert sent - len(out.getvalue()) <= data._MAX_CARRY
    assert reader.outcome.size == len(out.getvalue())


# What clients put after MAIL FROM: and RCPT TO:, hostile ones included: angle brackets, quotes,
# routes, address literals, parameters, controls and 8-bit text (aiosmtpd decodes it with
# surrogateescape when SMTPUTF8 is on).
address_text = st.lists(
    st.sampled_from(
        [
            "<",
            ">",
            "@",
            ".",
            '"',
            "\\",
            "[",
            "]",
            ":",
            ",",
            " ",
            "(",
            ")",
            "ali",
            "kep",
            "test",
            "=",
            "\x00",
            "\r",
            "\n",
            "\t",
            "ç",
            "�",
            "SIZE=10",
            "postmaster",
            "127.0.0.1",
            "-",
            "+",
            "\x7f",
        ]
    ),
    max_size=20,
).map("".join)


@pytest.fixture(scope="module")
def listener() -> Iterator[SpoolingSMTP]:
    loop = asyncio.new_event_loop()
    yield SpoolingSMTP(object(), loop=loop)
    loop.close()


@settings(max_examples=600, deadline=None)
@given(text=address_text)
@example(text="<a@[127.0.0.1")
@example(text="kep@[ \n")
@example(text='<"a b"@kep.test>')
@example(text="<@relay.test:ali@kep.test>")
def test_any_address_argument_is_read_or_refused(listener: SpoolingSMTP, text: str) -> None:
    """aiosmtpd's reader gives an address or None (553 5.1.3), and kepmta.addresses a KEP address
    or AddressError: nothing else, and never an address that could name a path or a header."""
    address, _params = listener._getaddr(text)
    for candidate in (text, address):
        if candidate is None:
            continue
        try:
            parsed = addresses.parse(candidate)
        except addresses.AddressError:
            continue
        shown = str(parsed)
        assert shown.isascii() and shown == shown.lower()
        assert not any(c in shown for c in '/\\"<> \r\n\x00') and ".." not in shown
        assert addresses.parse(shown) == parsed
