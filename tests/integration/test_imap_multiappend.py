"""MULTIAPPEND (RFC 3502): several messages in one APPEND, stored all or none, each literal streamed to
a file as it arrives. Over TLS against `kepmta serve --dev`, and against the in-process server where
the test must set the account's quota."""

from __future__ import annotations

import os
import re

from imap_fixtures import (  # noqa: F401  (the fixtures are used by name)
    RawClient,
    Running,
    imap_fixture,
    tagged,
    tls_fixture,
    untagged,
)
from kepclient import DevServer

# RFC 3502 §6.3.11's example messages, shortened.
FIRST = (
    b"Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)\r\nFrom: Fred Foobar <foobar@Blurdybloop.example.COM>\r\n"
    b"Subject: afternoon meeting\r\nTo: mooch@owatagu.example.net\r\n\r\nHello Joe, do you think we can "
    b"meet at 3:30 tomorrow?\r\n"
)
SECOND = (
    b"Date: Mon, 7 Feb 1994 22:43:04 -0800 (PST)\r\nFrom: Joe Mooch <mooch@OWaTaGu.example.net>\r\n"
    b"Subject: Re: afternoon meeting\r\nTo: foobar@blurdybloop.example.com\r\n\r\n3:30 is fine with me.\r\n"
)


async def login(srv: DevServer, account: int) -> RawClient:
    c = await RawClient.connect(srv.ports["imaps"], srv.tls())
    a = srv.account(account)
    await c.ok(f'LOGIN "{a["address"]}" "{a["password"]}"')
    return c


async def test_the_rfc_example_appends_both_messages(srv: DevServer) -> None:
    c = await login(srv, 0)
    await c.ok("CREATE saved-messages")
    # Synchronising literals, each invited by a continuation, as RFC 3502 §6.3.11 shows.
    await c.send(b"A003 APPEND saved-messages (\\Seen) {%d}\r\n" % len(FIRST))
    assert (await c.response()).startswith(b"+ ")
    await c.send(FIRST + b' (\\Seen) " 7-Feb-1994 22:43:04 -0800" {%d}\r\n' % len(SECOND))
    assert (await c.response()).startswith(b"+ ")
    await c.send(SECOND + b"\r\n")
    done = tagged(await c.until_tagged("A003"))
    m = re.fullmatch(rb"OK \[APPENDUID (\d+) 1:2\] APPEND completed", done)
    assert m, done
    await c.ok("EXAMINE saved-messages")
    lines = untagged(await c.ok("FETCH 1:2 (FLAGS RFC822.SIZE)"))
    assert lines == [
        b"* 1 FETCH (FLAGS (\\Seen \\Recent) RFC822.SIZE %d)" % len(FIRST),
        b"* 2 FETCH (FLAGS (\\Seen \\Recent) RFC822.SIZE %d)" % len(SECOND),
    ]
    assert untagged(await c.ok("FETCH 2 (INTERNALDATE)")) == [
        b'* 2 FETCH (INTERNALDATE "08-Feb-1994 06:43:04 +0000")'
    ]
    # Non-synchronising literals (RFC 7888) in one write, the third with flags of its own.
    third = b"Subject: third\r\n\r\nx\r\n"
    r = await c.command(
        b"APPEND saved-messages {%d+}\r\n%s {%d+}\r\n%s (\\Flagged) {%d+}\r\n%s"
        % (len(FIRST), FIRST, len(SECOND), SECOND, len(third), third)
    )
    assert re.fullmatch(rb"OK \[APPENDUID \d+ 3:5\] APPEND completed", tagged(r)), r
    await c.close()


async def test_a_refused_message_leaves_the_mailbox_as_it_was(srv: DevServer) -> None:
    c = await login(srv, 1)
    await c.ok("CREATE Hepsi")
    # A bad date in the second message, an unknown flag in the third, and an empty message (which
    # RFC 3502 §6.3.11 makes a cancellation): none appends anything.
    for second in (b'"31-Feb-1994 22:43:04 -0800" ', b"(\\Unknown) ", b""):
        body = SECOND if second else b""
        r = await c.command(
            b"APPEND Hepsi {%d+}\r\n%s %s{%d+}\r\n%s" % (len(FIRST), FIRST, second, len(body), body)
        )
        assert tagged(r).startswith((b"BAD", b"NO")), (second, r)
    assert untagged(await c.ok("STATUS Hepsi (MESSAGES)")) == [b'* STATUS "Hepsi" (MESSAGES 0)']
    await c.close()


async def test_a_message_past_the_quota_refuses_all_before_its_octets(imap: Running) -> None:
    imap.backend.limit = 2 * len(FIRST)
    c = await imap.raw()
    await c.send(b"A1 APPEND INBOX {%d}\r\n" % len(FIRST))
    assert (await c.response()).startswith(b"+ ")
    await c.send(FIRST + b" {%d}\r\n" % len(FIRST))
    assert (await c.response()).startswith(b"+ ")
    # Two fit; the third is refused before it is sent, and with it the whole command.
    await c.send(FIRST + b" {%d}\r\n" % len(FIRST))
    assert (await c.response()).startswith(b"A1 NO [OVERQUOTA]")
    await c.ok("SELECT INBOX")
    assert untagged(await c.ok("SEARCH ALL")) == [b"* SEARCH"]
    # The literals already read are not left in the account's tmp/.
    assert os.listdir(imap.store().root / "tmp") == []
    await c.close()
