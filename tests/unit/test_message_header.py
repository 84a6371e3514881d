"""Header blocks and fields (kepmta.message.header): where a header ends, unfolding, offsets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kepmta.message.buffer import FileBuffer
from kepmta.message.header import bytes_of, find_body, read_header, scan_fields, text_of

MSG = b"From: a@example.com\r\nSubject: multi\r\n line\r\nX-Empty:\r\nnot a field\r\n\r\nbody\r\n"


def test_fields_are_unfolded_and_located() -> None:
    head = read_header(MSG, 0, len(MSG))
    assert [f.name for f in head.fields] == ["From", "Subject", "X-Empty", ""]
    # RFC 5322 §2.2.3: unfolding removes the line break only, the white space stays.
    assert head.get("subject") == "multi line" and head.get("X-EMPTY") == ""
    subject = head.fields[1]
    assert MSG[subject.start : subject.end] == b"Subject: multi\r\n line\r\n"
    assert MSG[head.body_start :] == b"body\r\n" and MSG[head.end : head.body_start] == b"\r\n"
    assert head.has_blank_line and head.get("To") is None


def test_every_field_of_a_name_and_offsets_inside_a_larger_buffer() -> None:
    data = b"preamble\r\nReceived: one\r\nreceived: two\r\n\r\n"
    head = read_header(data, 10, len(data))
    assert head.get_all("RECEIVED") == ("one", "two") and head.get("Received") == "one"
    assert data[head.fields[1].start : head.fields[1].end] == b"received: two\r\n"


@pytest.mark.parametrize(
    ("entity", "header", "body"),
    [
        (b"A: 1\r\nB: 2\r\n\r\nbody", b"A: 1\r\nB: 2\r\n", b"body"),
        (b"\r\nbody", b"", b"body"),
        (b"\nbody", b"", b"body"),
        (b"A: 1\r\n", b"A: 1\r\n", b""),
        (b"A: 1", b"A: 1", b""),
        (b"A: 1\n\nbody", b"A: 1\n", b"body"),
        (b"A: 1\n\r\nbody", b"A: 1\n", b"body"),
        (b"A: 1\r\n\r\nbody\n\nmore", b"A: 1\r\n", b"body\n\nmore"),
        (b"A: 1\n\nbody\r\n\r\nmore", b"A: 1\n", b"body\r\n\r\nmore"),
    ],
)
def test_the_header_ends_at_the_first_empty_line(entity: bytes, header: bytes, body: bytes) -> None:
    end, start = find_body(entity, 0, len(entity))
    assert (entity[:end], entity[start:]) == (header, body)


def test_no_empty_line_means_the_header_runs_to_the_end() -> None:
    head = read_header(b"Subject: only\r\n", 0, 15)
    assert not head.has_blank_line and head.body_start == head.end == 15


def test_a_file_is_read_the_same_way(tmp_path: Path) -> None:
    path = tmp_path / "m"
    path.write_bytes(b"X: " + b"y" * 3_000_000 + MSG)
    fd = os.open(path, os.O_RDONLY)
    try:
        buf = FileBuffer(fd)
        head = read_header(buf, 0, len(buf))
    finally:
        os.close(fd)
    assert head.get("Subject") == "multi line" and head.body_start == path.stat().st_size - 6


def test_octets_that_are_not_utf8_round_trip() -> None:
    fields = scan_fields(b"Subject: \xff\xfe \xc3\xa7\r\n")
    assert fields[0].value == "\udcff\udcfe ç"
    assert bytes_of(fields[0].value) == b"\xff\xfe \xc3\xa7" and text_of(b"\xc3\xa7") == "ç"
