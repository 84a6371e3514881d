"""Reading a stored message's header block: only the block, any encoding a client may use."""

from __future__ import annotations

from pathlib import Path

import pytest

from kepmta.headers import HeaderError, read_headers


def write(tmp_path: Path, raw: bytes) -> Path:
    path = tmp_path / "m.eml"
    path.write_bytes(raw)
    return path


def test_raw_utf8_and_encoded_words(tmp_path: Path) -> None:
    raw = (
        "From: Ali <ali@kep.test>\r\nTo: a@kep.test,\r\n b@kep.test\r\nCc: c@kep.test\r\n"
        "Subject: Şubat =?utf-8?q?=C3=B6demesi?=\r\n =?ISO-8859-9?B?/Ho=?= son\r\n"
        "Message-ID: <id-1@client.test>\r\n\r\nbody\r\n"
    ).encode()
    h = read_headers(write(tmp_path, raw))
    assert h.subject == "Şubat ödemesiüz son"
    assert h.message_id == "id-1@client.test"
    assert h.addresses.to == ("a@kep.test, b@kep.test",) and h.addresses.cc == ("c@kep.test",)
    assert not h.addresses.bcc_present
    assert raw[h.header_end :] == b"body\r\n"


def test_bytes_that_are_not_utf8_never_break_evidence(tmp_path: Path) -> None:
    h = read_headers(write(tmp_path, b"Subject: a\xff\x01b =?nonsense?q?x?=\r\nBcc: x@y.test\r\n\r\n"))
    assert h.subject == "a\ufffd b =?nonsense?q?x?="
    assert h.addresses.bcc_present


def test_no_header_block(tmp_path: Path) -> None:
    with pytest.raises(HeaderError, match="no header block"):
        read_headers(write(tmp_path, b"Subject: never ends\r\n"))


def test_a_header_block_past_the_limit_is_refused(tmp_path: Path) -> None:
    huge = b"X-Filler: " + b"y" * 998 + b"\r\n"
    with pytest.raises(HeaderError):
        read_headers(write(tmp_path, huge * 1100 + b"\r\nbody\r\n"))
