"""Body parts of a multipart body by offsets (kepmta.message.multipart, RFC 2046 §5.1.1)."""

from __future__ import annotations

import pytest

from kepmta.message.multipart import Multipart, MultipartError, split_multipart, strict_parts


def parts(body: bytes, boundary: str = "b") -> list[bytes]:
    return [body[s:e] for s, e in strict_parts(body, 0, len(body), boundary)]


def test_parts_exclude_the_line_break_before_each_delimiter() -> None:
    assert parts(b"--b\r\nA\r\n\r\n--b\r\nB\r\n--b--") == [b"A\r\n", b"B"]


def test_preamble_epilogue_padding_and_empty_parts() -> None:
    body = b"preamble\r\n--b \t\r\n\r\n--b\r\nx\r\n--b--  \r\nepilogue\r\n--b\r\n"
    assert parts(body) == [b"", b"x"]


def test_boundary_prefix_inside_content_is_not_a_delimiter() -> None:
    assert parts(b"--b\r\n--bx\r\n--b-\r\n--b--x\r\n--b--") == [b"--bx\r\n--b-\r\n--b--x"]


def test_the_line_break_ending_a_delimiter_cannot_begin_the_next() -> None:
    # RFC 2046 §5.1.1: delimiter := CRLF dash-boundary, after the CRLF that ends the one before.
    assert parts(b"--b\r\n--b\r\nA\r\n--b--") == [b"--b\r\nA"]


def test_lf_only_messages_are_split_too() -> None:
    assert parts(b"--b\nA\n--b\nB\n--b--\n") == [b"A", b"B"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"no boundary here\r\n", 'multipart body has no "b" boundary line'),
        (b"--b--\r\n", "multipart body has no body parts"),
        (b"--b\r\nA\r\n--b\r\nB\r\n", 'multipart body ends without its closing "--b--" line'),
    ],
)
def test_broken_framing_is_refused_by_a_strict_reader(body: bytes, message: str) -> None:
    with pytest.raises(MultipartError, match=message):
        parts(body)


def test_non_ascii_boundary_is_refused_by_a_strict_reader() -> None:
    with pytest.raises(MultipartError, match="not ASCII"):
        parts(b"--\xc3\xa7\r\n", "ç")


def test_a_lenient_reader_takes_what_there_is() -> None:
    body = b"--b\r\nA\r\n--b\r\nB\r\n"
    assert split_multipart(body, 0, len(body), "b") == Multipart(((5, 6), (13, len(body))), False)
    assert split_multipart(b"text", 0, 4, "b") == Multipart((), False)
    assert split_multipart(b"--b--", 0, 5, "b") == Multipart((), True)


def test_a_range_is_respected() -> None:
    outer = b"xx--b\r\nA\r\n--b--\r\nyy"
    assert split_multipart(outer, 2, len(outer) - 2, "b").parts == ((7, 8),)


@pytest.mark.parametrize(
    "body",
    [b"\n--b" * 200_000, b"\n--b" + b" " * 2_000_000, (b"\n--b" + b" " * 999 + b"x") * 2000],
)
def test_hostile_bodies_take_linear_work(body: bytes) -> None:
    assert split_multipart(body, 0, len(body), "b").closed is False
