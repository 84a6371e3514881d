"""A message as a tree of entities (kepmta.message.entity): exact spans, defaults, bounded nesting."""

from __future__ import annotations

from kepmta.message import entity

MSG = (
    b"From: a@example.com\r\n"
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


def test_parts_are_exact_spans() -> None:
    root = entity.parse(MSG)
    assert root.is_multipart and len(root.children) == 2
    first, second = root.children
    assert MSG[first.body_start : first.end] == b"first part, default type"
    assert first.ctype.maintype == "text" and first.header("Content-Type") is None
    assert second.message is not None
    assert MSG[second.message.start : second.message.end] == b"Subject: inner\r\n\r\ninner body"
    assert second.message.header("subject") == "inner"


def test_digest_parts_are_messages_by_default() -> None:
    msg = b"Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\nSubject: x\r\n\r\nbody\r\n--d--\r\n"
    (part,) = entity.parse(msg).children
    assert part.ctype.mime_type == "message/rfc822" and part.message is not None


def test_multipart_without_boundary_or_parts_is_text() -> None:
    for msg in (
        b"Content-Type: multipart/mixed\r\n\r\nno parts\r\n",
        b"Content-Type: multipart/x; boundary=b\r\n\r\nnone",
    ):
        root = entity.parse(msg)
        assert not root.children and root.ctype.mime_type == "text/plain"


def test_header_only_keeps_the_message_size() -> None:
    head = MSG[: MSG.index(b"\r\n\r\n") + 4]
    top = entity.parse_header_only(head, len(MSG))
    assert (top.body_start, top.end, top.ctype.boundary) == (len(head), len(MSG), "XX")


def test_deep_nesting_is_bounded() -> None:
    msg = b"Content-Type: message/rfc822\r\n\r\n" * 200 + b"end"
    node: entity.Part | None = entity.parse(msg)
    depth = 0
    while node is not None:
        depth += 1
        node = node.message
    assert depth == entity.MAX_DEPTH + 1


def test_an_empty_encapsulated_message_stays_inside_its_part() -> None:
    # Found by the fuzzer: an empty message/rfc822 part took its delimiter's line break for its
    # own empty header line, and its body began past its end.
    msg = (
        b"Content-Type: multipart/mixed; boundary=o\r\n\r\n"
        b"--o\r\nContent-Type: message/rfc822\r\n\r\n"
        b"\r\n--o--\r\n"
    )
    part = entity.parse(msg).children[0]
    assert part.message is not None
    inner = part.message
    assert inner.start == inner.body_start == inner.end == part.end
