"""UTF8=ACCEPT (RFC 6855), over TLS against `kepmta serve --dev`: after ENABLE UTF8=ACCEPT mailbox
names travel as UTF-8 both ways (the folders stay those every other client sees in modified UTF-7),
and APPEND takes a message with UTF-8 in its header as UTF8 (literal8)."""

from __future__ import annotations

from imap_fixtures import RawClient, tagged, untagged
from kepclient import DevServer


async def login(srv: DevServer, account: int) -> RawClient:
    c = await RawClient.connect(srv.ports["imaps"], srv.tls())
    a = srv.account(account)
    await c.ok(f'LOGIN "{a["address"]}" "{a["password"]}"')
    return c


ARSIV = "Arşiv Ödeme".encode()


async def test_utf8_mailbox_names_after_enable(srv: DevServer) -> None:
    c, other = await login(srv, 0), await login(srv, 0)
    assert b" UTF8=ACCEPT" in untagged(await c.ok("CAPABILITY"))[0]
    # Before ENABLE a raw UTF-8 name is no modified UTF-7.
    assert tagged(await c.command(b'CREATE "' + ARSIV + b'"')).startswith(b"NO [CANNOT]")
    assert untagged(await c.ok("ENABLE UTF8=ACCEPT")) == [b"* ENABLED UTF8=ACCEPT"]
    await c.ok(b'CREATE "' + ARSIV + b'.Ocak"')
    listed = untagged(await c.ok(b'LIST "" "Ar' + "ş".encode() + b'*"'))
    assert listed == [
        b'* LIST (\\HasChildren) "." {%d}\r\n' % len(ARSIV) + ARSIV,
        b'* LIST (\\HasNoChildren) "." {%d}\r\n' % (len(ARSIV) + 5) + ARSIV + b".Ocak",
    ]
    await c.ok(b'SELECT "' + ARSIV + b'.Ocak"')
    status = untagged(await c.ok(b'STATUS "' + ARSIV + b'" (MESSAGES)'))
    assert status == [b"* STATUS {%d}\r\n" % len(ARSIV) + ARSIV + b" (MESSAGES 0)"]
    # The same folder, in modified UTF-7, for a session that did not enable UTF-8.
    assert untagged(await other.ok('LIST "" "Ar*"')) == [
        b'* LIST (\\HasChildren) "." "Ar&AV8-iv &ANY-deme"',
        b'* LIST (\\HasNoChildren) "." "Ar&AV8-iv &ANY-deme.Ocak"',
    ]
    # "&" is an ordinary character in a UTF-8 name.
    await c.ok('CREATE "Tom & Jerry"')
    assert untagged(await other.ok('LIST "" "Tom*"')) == [b'* LIST (\\HasNoChildren) "." "Tom &- Jerry"']
    # Not in normalization form C ("s" and a combining cedilla): a second spelling, refused; so
    # are control characters and octets that are not UTF-8.
    for bad in ("Ars\u0327iv".encode(), b"a\x7fb", "a\u2028b".encode(), b"\xff\xfe"):
        assert tagged(await c.command(b'CREATE "' + bad + b'"')).startswith(b"NO [CANNOT]"), bad
    for session in (c, other):
        await session.close()


async def test_append_utf8_literal8(srv: DevServer) -> None:
    c = await login(srv, 1)
    await c.ok("ENABLE UTF8=ACCEPT")
    await c.ok(b'CREATE "Gelen Kutusu \xc3\x96zel"')
    message = "From: Çiçek <çiçek@örnek.test>\r\nSubject: Müdürlük\r\n\r\nMerhaba\r\n".encode()
    r = await c.command(
        b'APPEND "Gelen Kutusu \xc3\x96zel" (\\Seen) UTF8 (~{%d+}\r\n%s)' % (len(message), message)
    )
    assert tagged(r).startswith(b"OK [APPENDUID "), r
    # Synchronising, so the literal is invited like any APPEND's.
    await c.send(b'A9 APPEND "Gelen Kutusu \xc3\x96zel" UTF8 (~{%d}\r\n' % len(message))
    assert (await c.response()).startswith(b"+ ")
    await c.send(message + b")\r\n")
    assert tagged(await c.until_tagged("A9")).startswith(b"OK [APPENDUID ")
    # Streamed to a file like any APPEND's message, not held within the in-memory literal limit.
    big = message + "ğ".encode() * 100_000 + b"\r\n"
    r = await c.command(b'APPEND "Gelen Kutusu \xc3\x96zel" UTF8 (~{%d+}\r\n%s)' % (len(big), big))
    assert tagged(r).startswith(b"OK [APPENDUID "), r
    await c.ok(b'EXAMINE "Gelen Kutusu \xc3\x96zel"')
    bodies = untagged(await c.ok("FETCH 1:2 (BODY.PEEK[])"))
    assert bodies == [b"* %d FETCH (BODY[] {%d}\r\n" % (n, len(message)) + message + b")" for n in (1, 2)]
    await c.close()
