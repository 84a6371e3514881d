"""What IMAP clients see of the RFC 5322/MIME reading (kepmta/message) over a real socket: addresses
with comments and groups in ENVELOPE, SEARCH and SORT; BINARY and BODY[1] of encoded parts."""

from __future__ import annotations

from imap_fixtures import (  # noqa: F401  (the fixtures are used by name)
    Running,
    imap_fixture,
    tagged,
    tls_fixture,
    untagged,
)


def _message(headers: str, body: bytes = b"body\r\n") -> bytes:
    return headers.encode() + b"Subject: s\r\nDate: Mon, 13 May 2024 09:00:00 +0000\r\n\r\n" + body


async def test_display_name_given_as_a_comment_reaches_the_envelope(imap: Running) -> None:
    # RFC 5322 §3.4 (the obsolete but common `addr-spec (name)` form) and RFC 3501 §7.4.2.
    imap.deliver(_message("From: user@domain.org (Real Name)\r\nTo: Ali <ali@kep.test> (not a name)\r\n"))
    c = await imap.raw()
    await c.ok("EXAMINE INBOX")
    (line,) = untagged(await c.ok("FETCH 1 (ENVELOPE)"))
    assert b'(("Real Name" NIL "user" "domain.org"))' in line
    # A display name given as a phrase wins over a comment.
    assert b'(("Ali" NIL "ali" "kep.test"))' in line
    await c.close()


async def test_search_from_matches_an_address_written_with_comments(imap: Running) -> None:
    imap.deliver(_message("From: <user (c)@ (c) domain.org>\r\nTo: ali@kep.test\r\n"))
    imap.deliver(_message("From: other@domain.org\r\nTo: ali@kep.test\r\n"))
    c = await imap.raw()
    await c.ok("EXAMINE INBOX")
    assert untagged(await c.ok("SEARCH FROM user@domain.org")) == [b"* SEARCH 1"]
    assert untagged(await c.ok('SEARCH FROM "USER@DOMAIN"')) == [b"* SEARCH 1"]
    # What the field says is still searched as it is written.
    assert untagged(await c.ok('SEARCH FROM "(c)"')) == [b"* SEARCH 1"]
    await c.close()


async def test_search_header_with_an_empty_string_finds_every_message_with_the_field(imap: Running) -> None:
    imap.deliver(_message("From: a@x.org\r\nX-Etiket: var\r\n"))
    imap.deliver(_message("From: b@x.org\r\n"))
    imap.deliver(_message("From: c@x.org\r\nX-Etiket:\r\n"))
    c = await imap.raw()
    await c.ok("EXAMINE INBOX")
    # RFC 3501 §6.4.4 HEADER: "If the string to search is zero-length, this matches all messages
    # that have a header line with the specified field-name regardless of the contents."
    assert untagged(await c.ok('SEARCH HEADER X-Etiket ""')) == [b"* SEARCH 1 3"]
    assert untagged(await c.ok("SEARCH HEADER X-Etiket var")) == [b"* SEARCH 1"]
    assert untagged(await c.ok('SEARCH HEADER X-Yok ""')) == [b"* SEARCH"]
    assert untagged(await c.ok('SEARCH FROM ""')) == [b"* SEARCH 1 2 3"]
    await c.close()


async def test_groups_in_sort_and_envelope(imap: Running) -> None:
    imap.deliver(_message("From: a@x.org\r\nCc: zed@x.org\r\n"))
    imap.deliver(_message("From: b@x.org\r\nCc: team: bob@x.org, zoe@x.org;\r\n"))
    imap.deliver(_message("From: c@x.org\r\nCc: empty:;, carl@x.org\r\n"))
    c = await imap.raw()
    await c.ok("EXAMINE INBOX")
    # RFC 5256 §3: the first mailbox of a group is its first member, not the group's name.
    assert untagged(await c.ok("SORT (CC) UTF-8 ALL")) == [b"* SORT 2 3 1"]
    (line,) = untagged(await c.ok("FETCH 2 (ENVELOPE)"))
    # RFC 3501 §7.4.2: NIL host marks a group; its name in the mailbox field starts it, NIL ends it.
    assert b'((NIL NIL "team" NIL)(NIL NIL "bob" "x.org")(NIL NIL "zoe" "x.org")(NIL NIL NIL NIL))' in line
    (line,) = untagged(await c.ok("FETCH 3 (ENVELOPE)"))
    assert b'((NIL NIL "empty" NIL)(NIL NIL NIL NIL)(NIL NIL "carl" "x.org"))' in line
    await c.close()


async def test_binary_quoted_printable_white_space(imap: Running) -> None:
    # RFC 2045 §6.7 rule 3: white space at the end of an encoded line is padding, dropped on
    # decoding; a soft line break "=" may itself be followed by white space before the CRLF.
    body = b"one two  \r\nthree=  \r\nfour=\t\r\n five\r\nsix =3D\r\n"
    imap.deliver(
        b"Subject: qp\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        + body
    )
    c = await imap.raw()
    await c.ok("EXAMINE INBOX")
    decoded = b"one two\r\nthreefour five\r\nsix =\r\n"
    assert untagged(await c.ok("FETCH 1 (BINARY.PEEK[1] BINARY.SIZE[1])")) == [
        b"* 1 FETCH (BINARY[1] {%d}\r\n" % len(decoded) + decoded + b" BINARY.SIZE[1] %d)" % len(decoded)
    ]
    await c.close()


async def test_body_one_of_a_single_part_binary_message_with_nul(imap: Running) -> None:
    body = b"\x00\x01binary\x00\r\nmore\xff\x00"
    msg = (
        b"Subject: nul\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n"
    )
    imap.deliver(msg + body)
    c = await imap.raw()
    await c.ok("EXAMINE INBOX")
    # RFC 3501 §6.4.5: part 1 of a message that is not multipart is its body.
    r = await c.ok("FETCH 1 (BODY.PEEK[1])")
    assert r[0] == b"* 1 FETCH (BODY[1] {%d}\r\n" % len(body) + body + b")\r\n"
    # RFC 3516 §4.3: BINARY sends octets with NUL in them as literal8.
    r = await c.ok("FETCH 1 (BINARY.PEEK[1] BINARY.SIZE[1])")
    assert r[0] == b"* 1 FETCH (BINARY[1] ~{%d}\r\n" % len(body) + body + b" BINARY.SIZE[1] %d)\r\n" % len(
        body
    )
    assert tagged(await c.command("NOOP")).startswith(b"OK")
    await c.close()
