"""Connection-level behaviour: TLS and STARTTLS, authentication, states, malformed input, limits."""

from __future__ import annotations

import asyncio
import base64
import imaplib

from imap_fixtures import (  # noqa: F401  (the fixtures are used by name)
    PASSWORD,
    USER,
    RawClient,
    Running,
    imap_fixture,
    tagged,
    tls_fixture,
    untagged,
)


def _plain(user: str, password: str, authzid: str = "") -> str:
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode()


async def test_cleartext_port_requires_starttls_before_login(imap: Running) -> None:
    c = await RawClient.connect(imap.imap, None)
    assert c.greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 ")
    assert b"STARTTLS" in c.greeting and b"LOGINDISABLED" in c.greeting
    assert b"AUTH=PLAIN" not in c.greeting
    r = await c.command(f'LOGIN "{USER}" "{PASSWORD}"')
    assert tagged(r).startswith(b"NO [PRIVACYREQUIRED]")
    r = await c.command("AUTHENTICATE PLAIN " + _plain(USER, PASSWORD))
    assert tagged(r).startswith(b"NO [PRIVACYREQUIRED]")
    assert tagged(await c.command("SELECT INBOX")).startswith(b"BAD")
    r = await c.command("STARTTLS")
    assert tagged(r) == b"OK Begin TLS negotiation now"
    await c.starttls(imap.tls.strict_client)
    caps = untagged(await c.ok("CAPABILITY"))[0]
    assert b"AUTH=PLAIN" in caps and b"STARTTLS" not in caps and b"LOGINDISABLED" not in caps
    assert tagged(await c.command("STARTTLS")).startswith(b"BAD")
    r = await c.ok(f'LOGIN "{USER}" "{PASSWORD}"')
    assert b"[CAPABILITY IMAP4rev1" in tagged(r) and b"AUTH=PLAIN" not in tagged(r)
    await c.close()


async def test_commands_pipelined_after_starttls_are_discarded(imap: Running) -> None:
    c = await RawClient.connect(imap.imap, None)
    await c.send(b"s1 STARTTLS\r\ns2 LOGIN injected command\r\n")
    assert tagged(await c.until_tagged("s1")) == b"OK Begin TLS negotiation now"
    await c.starttls(imap.tls.strict_client)
    # Had s2 survived, its reply would arrive before this one.
    r = await c.command("NOOP")
    assert len(r) == 1 and tagged(r) == b"OK NOOP completed"
    await c.close()


async def test_imaplib_starttls_and_login(imap: Running) -> None:
    def run() -> list[bytes | None]:
        c = imaplib.IMAP4("127.0.0.1", imap.imap, timeout=20)
        try:
            c.starttls(ssl_context=imap.tls.client)
            c.login(USER, PASSWORD)
            typ, data = c.select("INBOX")
            assert typ == "OK"
            return data
        finally:
            c.logout()

    assert await asyncio.to_thread(run) == [b"0"]


async def test_login_failures(imap: Running) -> None:
    c = await imap.raw(login=False)
    assert b"AUTH=PLAIN" in c.greeting
    r = await c.command(f'LOGIN "{USER}" "wrong"')
    assert tagged(r) == b"NO [AUTHENTICATIONFAILED] invalid credentials"
    assert tagged(await c.command("LOGIN onlyuser")).startswith(b"BAD LOGIN: missing password")
    assert tagged(await c.command("SELECT INBOX")).startswith(b"BAD SELECT is not valid")
    # Literal user name and password, the second one non-synchronising.
    await c.send(f"a1 LOGIN {{{len(USER)}}}\r\n".encode())
    assert (await c.response()).startswith(b"+ ")
    await c.send(USER.encode() + f" {{{len(PASSWORD)}+}}\r\n{PASSWORD}\r\n".encode())
    r = await c.until_tagged("a1")
    assert tagged(r).startswith(b"OK [CAPABILITY")
    assert tagged(await c.command(f'LOGIN "{USER}" "{PASSWORD}"')).startswith(b"BAD LOGIN is not valid")
    await c.close()


async def test_too_many_failures_disconnect(imap: Running) -> None:
    c = await imap.raw(login=False)
    for _ in range(imap.server.max_auth_failures - 1):
        assert tagged(await c.command('LOGIN "x@y" "z"')).startswith(b"NO [AUTHENTICATIONFAILED]")
    r = await c.command('LOGIN "x@y" "z"')
    assert tagged(r).startswith(b"NO [AUTHENTICATIONFAILED]")
    assert (await c.response()).startswith(b"* BYE too many authentication failures")
    await c.close()


async def test_authenticate_plain(imap: Running) -> None:
    c = await imap.raw(login=False)
    assert tagged(await c.command("AUTHENTICATE CRAM-MD5")).startswith(b"NO unsupported")
    # Continuation form, cancelled by the client (RFC 3501 §6.2.2: BAD).
    await c.send(b"p1 AUTHENTICATE PLAIN\r\n")
    assert (await c.response()) == b"+ \r\n"
    await c.send(b"*\r\n")
    assert tagged(await c.until_tagged("p1")) == b"BAD AUTHENTICATE: authentication cancelled"
    r = await c.command("AUTHENTICATE PLAIN !!!")
    assert tagged(r) == b"BAD AUTHENTICATE: invalid base64 in SASL response"
    r = await c.command("AUTHENTICATE PLAIN " + base64.b64encode(b"no-nuls").decode())
    assert tagged(r).startswith(b"BAD AUTHENTICATE: malformed SASL PLAIN")
    # Acting as an identity one may not is answered exactly as a wrong password (RFC 4616 §2).
    r = await c.command("AUTHENTICATE PLAIN " + _plain(USER, PASSWORD, authzid="boss@kep.test"))
    refused = tagged(r)
    assert refused.startswith(b"NO [AUTHENTICATIONFAILED]")
    r = await c.command("AUTHENTICATE PLAIN " + _plain(USER, "nope"))
    assert tagged(r) == refused
    # Continuation form succeeding.
    await c.send(b"p2 AUTHENTICATE PLAIN\r\n")
    assert (await c.response()) == b"+ \r\n"
    await c.send(_plain(USER.upper(), PASSWORD).encode() + b"\r\n")
    assert tagged(await c.until_tagged("p2")).startswith(b"OK [CAPABILITY")
    await c.close()
    # SASL-IR (RFC 4959), with the authzid equal to the user.
    c = await imap.raw(login=False)
    r = await c.command("AUTHENTICATE PLAIN " + _plain(USER, PASSWORD, authzid=USER))
    assert tagged(r).startswith(b"OK")
    await c.close()


async def test_any_state_commands(imap: Running) -> None:
    c = await imap.raw(login=False)
    r = await c.ok('ID ("name" "test" "version" NIL)')
    assert untagged(r) == [b'* ID ("name" "kepmta" "version" "0.1.0")']
    assert tagged(await c.command('ID ("odd")')).startswith(b"BAD ID: ID list")
    assert tagged(await c.command("ID foo")).startswith(b"BAD ID: expected NIL")
    assert tagged(await c.command("NAMESPACE")).startswith(b"BAD NAMESPACE is not valid")
    await c.ok(f'LOGIN "{USER}" "{PASSWORD}"')
    assert untagged(await c.ok("NAMESPACE")) == [b'* NAMESPACE (("" ".")) NIL NIL']
    # RFC 5161 §3.1: only what was newly enabled is listed; unknown capabilities are ignored.
    assert untagged(await c.ok("ENABLE CONDSTORE X-UNKNOWN")) == [b"* ENABLED CONDSTORE"]
    assert untagged(await c.ok("ENABLE CONDSTORE")) == [b"* ENABLED"]
    assert untagged(await c.ok("ENABLE QRESYNC")) == [b"* ENABLED QRESYNC"]
    assert tagged(await c.command("ENABLE")).startswith(b"BAD ENABLE: missing capability")
    caps = untagged(await c.ok("CAPABILITY"))[0]
    for cap in (
        b"IDLE",
        b"UIDPLUS",
        b"MOVE",
        b"SPECIAL-USE",
        b"LITERAL+",
        b"UNSELECT",
        b"NAMESPACE",
        b"CONDSTORE",
        b"QRESYNC",
        b"SORT",
        b"BINARY",
        b"QUOTA",
        b"QUOTA=RES-STORAGE",
        b"STATUS=SIZE",
    ):
        assert cap in caps.split()
    assert b"AUTH=PLAIN" not in caps
    assert tagged(await c.command("CAPABILITY extra")).startswith(b"BAD CAPABILITY: unexpected extra")
    await c.ok("SELECT INBOX")
    assert tagged(await c.command("ENABLE X")).startswith(b"BAD ENABLE is not valid in the selected state")
    r = await c.command("LOGOUT")
    assert untagged(r) == [b"* BYE kepmta logging out"] and tagged(r) == b"OK LOGOUT completed"
    assert await c.reader.read() == b""
    await c.close()


async def test_malformed_input_gets_bad_and_session_survives(imap: Running) -> None:
    c = await imap.raw()
    assert tagged(await c.command("FROBNICATE")) == b"BAD unknown command FROBNICATE"
    assert tagged(await c.command("UID FROB 1")) == b"BAD unknown command UID FROB"
    assert tagged(await c.command("FETCH 1 FLAGS")) == b"BAD FETCH is not valid in the authenticated state"
    assert tagged(await c.command('SELECT "unterminated')) == b"BAD unterminated quoted string"
    await c.send(b"+bad NOOP\r\n")
    assert (await c.response()) == b"* BAD missing or invalid tag\r\n"
    await c.send(b"long NOOP " + b"x" * 70000 + b"\r\n")
    assert (await c.response()) == b"long BAD command line too long\r\n"
    await c.send(b"big APPEND INBOX {200000000}\r\n")
    assert (await c.response()) == b"big BAD [TOOBIG] literals are limited to 104857600 octets\r\n"
    await c.ok("SELECT INBOX")
    assert tagged(await c.command("FETCH 0 FLAGS")).startswith(b"BAD FETCH: invalid sequence set")
    assert tagged(await c.command("FETCH 1 FLAGS")).startswith(
        b"BAD FETCH: message sequence number out of range"
    )
    assert tagged(await c.command("FETCH 1:* (FLAGS")).startswith(b"BAD missing ')'")
    assert tagged(await c.command("FETCH 1:* (FLAGS)")) == b"OK FETCH completed"
    assert tagged(await c.command("FETCH 1:* NONSENSE")).startswith(b"BAD FETCH: unknown FETCH attribute")
    assert tagged(await c.command("STORE 1:* FLAGZ (\\Seen)")).startswith(b"BAD STORE: store action")
    assert tagged(await c.command("SEARCH FOO")).startswith(b"BAD SEARCH: unknown search key")
    r = await c.command("SEARCH CHARSET KOI8-R ALL")
    assert tagged(r).startswith(b"NO [BADCHARSET (UTF-8 US-ASCII)]")
    await c.ok("NOOP")
    await c.close()


async def test_non_synchronising_literal_too_big_closes(imap: Running) -> None:
    c = await imap.raw()
    await c.send(b"big APPEND INBOX {200000000+}\r\n")
    assert (await c.response()).startswith(b"* BYE literal too large")
    await c.close()


async def test_server_close_says_bye(imap: Running) -> None:
    c = await imap.raw()
    await imap.server.close()
    assert (await c.response()).startswith(b"* BYE server shutting down")
    await c.close()
