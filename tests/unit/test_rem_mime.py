"""Byte-level MIME framing helpers."""

from __future__ import annotations

import binascii

import pytest

from kepmta.rem.mime import base64_lines, quoted_printable, split_entity, split_multipart
from kepmta.smime.errors import MimeStructureError


def parts(body: bytes, boundary: str = "b") -> list[bytes]:
    return [body[s:e] for s, e in split_multipart(body, 0, len(body), boundary)]


def test_parts_exclude_the_line_break_before_each_delimiter() -> None:
    assert parts(b"--b\r\nA\r\n\r\n--b\r\nB\r\n--b--") == [b"A\r\n", b"B"]


def test_preamble_epilogue_padding_and_empty_parts() -> None:
    body = b"preamble\r\n--b \t\r\n\r\n--b\r\nx\r\n--b--  \r\nepilogue\r\n--b\r\n"
    assert parts(body) == [b"", b"x"]


def test_boundary_prefix_inside_content_is_not_a_delimiter() -> None:
    assert parts(b"--b\r\n--bx\r\n--b-\r\n--b--") == [b"--bx\r\n--b-"]


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
def test_broken_framing_is_refused(body: bytes, message: str) -> None:
    with pytest.raises(MimeStructureError, match=message):
        parts(body)


def test_non_ascii_boundary_is_refused() -> None:
    with pytest.raises(MimeStructureError, match="not ASCII"):
        parts(b"--\xc3\xa7\r\n", "ç")


@pytest.mark.parametrize(
    ("entity", "header", "body"),
    [
        (b"A: 1\r\nB: 2\r\n\r\nbody", b"A: 1\r\nB: 2\r\n", b"body"),
        (b"\r\nbody", b"", b"body"),
        (b"A: 1\r\n", b"A: 1\r\n", b""),
        (b"A: 1\n\nbody", b"A: 1\n", b"body"),
    ],
)
def test_split_entity(entity: bytes, header: bytes, body: bytes) -> None:
    raw, start = split_entity(entity, 0, len(entity))
    assert (raw, entity[start:]) == (header, body)


def test_base64_lines_are_76_wide_without_final_break() -> None:
    lines = base64_lines(bytes(200)).split(b"\r\n")
    assert [len(line) for line in lines] == [76, 76, 76, 40]


@pytest.mark.parametrize("text", ["Şu satır\nve bu " + "ğ" * 40, "tek satır " * 30])
def test_quoted_printable_uses_crlf(text: str) -> None:
    encoded = quoted_printable(text)
    assert b"\n" not in encoded.replace(b"\r\n", b"") and b"\r" not in encoded.replace(b"\r\n", b"")
    assert all(len(line) <= 76 for line in encoded.split(b"\r\n"))
    assert binascii.a2b_qp(encoded).decode().replace("\r\n", "\n") == text
