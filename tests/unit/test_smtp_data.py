"""The DATA stream reader: what a client sends after 354 becomes exactly the message it meant."""

from __future__ import annotations

import io

from hypothesis import given, settings
from hypothesis import strategies as st

from kepmta.smtp.data import DataReader


def stuff(message: bytes) -> bytes:
    """What an RFC 5321 §4.5.2 client sends for `message` (CRLF lines), end marker included."""
    lines = message.split(b"\r\n")
    body = b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    return body + b".\r\n"


def run(wire: bytes, chunks: list[int], limit: int = 10**9) -> tuple[bytes, DataReader, bytes | None]:
    out = io.BytesIO()
    reader = DataReader(out, limit)
    rest = None
    pos = 0
    sizes = iter(chunks)
    while pos < len(wire) and rest is None:
        n = next(sizes, 7) or 1
        rest = reader.feed(wire[pos : pos + n])
        pos += n
    return out.getvalue(), reader, rest if rest is None else rest + wire[pos:]


line = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
lines = st.lists(st.one_of(line, st.just(b"."), st.just(b".."), st.just(b".x")), min_size=1, max_size=30)


@settings(max_examples=300)
@given(lines, st.lists(st.integers(min_value=1, max_value=50), max_size=60))
def test_any_chunking_gives_back_the_message(parts: list[bytes], chunks: list[int]) -> None:
    message = b"\r\n".join(parts) + b"\r\n"
    got, reader, rest = run(stuff(message) + b"QUIT\r\n", chunks)
    assert got == message
    assert rest == b"QUIT\r\n"
    assert reader.outcome.size == len(message)
    assert not reader.outcome.bare_line_end and not reader.outcome.too_big


def test_empty_message_ends_at_once() -> None:
    got, reader, rest = run(b".\r\n", [3])
    assert got == b"" and rest == b"" and reader.outcome.size == 0


@given(st.sampled_from([b"a\nb\r\n", b"a\rb\r\n", b"a\r\r\n", b"\n\r\n", b"x\r\ny\n\r\n"]), st.integers(1, 5))
def test_bare_cr_or_lf_is_reported(bad: bytes, chunk: int) -> None:
    _got, reader, rest = run(b"Subject: x\r\n\r\n" + bad + b".\r\n", [chunk] * 100)
    assert reader.outcome.bare_line_end
    assert rest == b""


def test_limit_stops_storing_but_reads_to_the_end() -> None:
    message = b"x" * 998 + b"\r\n"
    got, reader, rest = run(stuff(message * 10), [4096] * 10, limit=5000)
    assert reader.outcome.too_big and reader.outcome.size == 10000
    assert len(got) <= 5000
    assert rest == b""


def test_exactly_the_limit_is_accepted() -> None:
    message = b"y" * 98 + b"\r\n"
    _, reader, _ = run(stuff(message * 10), [333] * 10, limit=1000)
    assert reader.outcome.size == 1000 and not reader.outcome.too_big


def test_a_very_long_line_is_streamed_not_held() -> None:
    message = b"." + b"z" * 300_000 + b"\r\n.after\r\n"
    got, _reader, rest = run(stuff(message), [65536] * 10)
    assert got == message
    assert rest == b""
