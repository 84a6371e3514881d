"""Section addressing over the MIME structure (RFC 3501 §6.4.5), FETCH items, ENVELOPE and BODYSTRUCTURE.

The reading itself is tested in tests/unit/test_message_*.py."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from kepmta.imap import fetch
from kepmta.imap.protocol import Atom, BadCommand, FileSlice, ParenList
from kepmta.message import entity

MSG = (
    b"From: a@example.com\r\n"
    b"Subject: multi\r\n"
    b" line\r\n"
    b"Content-Type: multipart/mixed; boundary=XX\r\n"
    b"\r\n"
    b"preamble\r\n"
    b"--XX\r\n"
    b"\r\n"
    b"first part, default type\r\n"
    b"--XX \r\n"
    b"Content-Type: message/rfc822\r\n"
    b"\r\n"
    b"Subject: inner\r\n"
    b"\r\n"
    b"inner body\r\n"
    b"--XX--\r\n"
    b"epilogue\r\n"
)


def _section(tmp_path: Path, data: bytes, item: Atom) -> bytes | None:
    path = tmp_path / "message"
    path.write_bytes(data)
    reader = fetch.MessageReader.open(path)
    try:
        value = asyncio.run(fetch.body_section(reader, fetch.parse_items(item)[0]))
        if isinstance(value, FileSlice):
            return os.pread(value.fd, value.length, value.offset)
        return value
    finally:
        reader.close()


def _octets(tmp_path: Path, data: bytes, section: str) -> bytes:
    value = _section(tmp_path, data, Atom("BODY.PEEK", (Atom(section),) if section else ()))
    return b"<none>" if value is None else value


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("", MSG),
        ("HEADER", MSG[: MSG.index(b"\r\n\r\n") + 4]),
        ("TEXT", MSG[MSG.index(b"\r\n\r\n") + 4 :]),
        ("1", b"first part, default type"),
        ("1.MIME", b"\r\n"),
        ("2", b"Subject: inner\r\n\r\ninner body"),
        ("2.HEADER", b"Subject: inner\r\n\r\n"),
        ("2.TEXT", b"inner body"),
        ("2.1", b"inner body"),
        ("2.MIME", b"Content-Type: message/rfc822\r\n\r\n"),
        ("3", b"<none>"),
        ("1.HEADER", b"<none>"),
        ("2.2", b"<none>"),
    ],
)
def test_sections(tmp_path: Path, section: str, expected: bytes) -> None:
    assert _octets(tmp_path, MSG, section) == expected


def test_non_multipart_message_has_part_one(tmp_path: Path) -> None:
    msg = b"Subject: x\r\n\r\nbody\r\n"
    assert _octets(tmp_path, msg, "1") == b"body\r\n"
    assert _octets(tmp_path, msg, "TEXT") == b"body\r\n"
    assert _octets(tmp_path, msg, "2") == b"<none>"


def test_message_without_body_separator(tmp_path: Path) -> None:
    msg = b"Subject: only a header\r\n"
    assert _octets(tmp_path, msg, "HEADER") == msg
    assert _octets(tmp_path, msg, "TEXT") == b""


def test_bare_lf_messages_still_split(tmp_path: Path) -> None:
    msg = b"Subject: x\nContent-Type: multipart/mixed; boundary=b\n\n--b\n\none\n--b\n\ntwo\n--b--\n"
    assert _octets(tmp_path, msg, "1") == b"one"
    assert _octets(tmp_path, msg, "2") == b"two"


def test_header_fields_subset_keeps_raw_lines(tmp_path: Path) -> None:
    wanted = Atom("BODY.PEEK", (Atom("HEADER.FIELDS"), ParenList((Atom("subject"), Atom("X-None")))))
    assert _section(tmp_path, MSG, wanted) == b"Subject: multi\r\n line\r\n\r\n"
    unwanted = Atom("BODY", (Atom("HEADER.FIELDS.NOT"), ParenList((Atom("Subject"),))))
    assert _section(tmp_path, MSG, unwanted) == (
        b"From: a@example.com\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
    )
    inner = Atom("BODY", (Atom("2.HEADER.FIELDS"), ParenList((Atom("SUBJECT"),))))
    assert _section(tmp_path, MSG, inner) == b"Subject: inner\r\n\r\n"


def test_envelope_and_bodystructure() -> None:
    root = entity.parse(MSG)
    env = fetch.envelope(root)
    assert env.startswith(b'(NIL "multi line" ((NIL NIL "a" "example.com"))')
    assert fetch.body_structure(MSG, root, extended=False) == (
        b'(("TEXT" "PLAIN" ("charset" "us-ascii") NIL NIL "7BIT" 24 1)'
        b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 28 (NIL "inner" NIL NIL NIL NIL NIL NIL NIL NIL)'
        b' ("TEXT" "PLAIN" ("charset" "us-ascii") NIL NIL "7BIT" 10 1) 3) "MIXED")'
    )


@pytest.mark.parametrize(
    "bad",
    [
        Atom("BODY", (Atom("0"),)),
        Atom("BODY", (Atom("MIME"),)),
        Atom("BODY", (Atom("HEADER.FIELDS"),)),
        Atom("BODY", (Atom("FOO"),)),
        Atom("BODY", (Atom("TEXT"), Atom("x"))),
        Atom("RFC822.FOO"),
        ParenList(()),
    ],
)
def test_bad_fetch_items(bad: Atom | ParenList) -> None:
    with pytest.raises(BadCommand):
        fetch.parse_items(bad)


def test_fetch_macros() -> None:
    assert [i.name for i in fetch.parse_items(Atom("fast"))] == ["FLAGS", "INTERNALDATE", "RFC822.SIZE"]
    assert [i.name for i in fetch.parse_items(Atom("FULL"))][-1] == "BODY"
