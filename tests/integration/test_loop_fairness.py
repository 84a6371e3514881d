"""One client keeps sending expensive input; another's NOOP is answered meanwhile (issue 9).

Against a real `kepmta serve --dev`, one hostile client sends one kind of expensive input after
another, batch after batch, for as long as the measurement lasts: LIST with 60 wildcard pairs over
300 folders, commands nested 5000 deep (before login too), 100 MB literals announced before login,
SEARCH with 999 nested ORs and SEARCH TEXT at the nesting bound over 100 messages, BODYSTRUCTURE of
a message nested 999 deep, lines far past the line limit on IMAP and SMTP, and RCPT floods of
unknown recipients. Each gets its proper answer (checked), never a SERVERBUG or a dropped session.

Meanwhile a second, already logged-in IMAP session (another account) and a second SMTP session
send NOOP after NOOP, one at a time, PROBES of each while the attack goes on. Asserted, per kind
of input: the median of all those NOOP round trips is under 100 ms (the issue's figure), and the
slowest under WORST (1 s), a generous bound for a shared, loaded test machine where the test
client itself and other processes compete for the CPU; a server that stalled on one client would
miss both by far (LIST alone once took 10 s).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import pytest
from imap_fixtures import RawClient, tagged
from kepclient import DevServer

MEDIAN = 0.100
WORST = 1.0
PROBES = 8
FOLDERS = 300
MESSAGES = 100
NESTED = 999


class Smtp:
    """A transcript SMTP client over STARTTLS: sends lines, returns whole replies."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, srv: DevServer, login: dict[str, str] | None = None) -> Smtp:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.ports["submission"], limit=1 << 20)
        c = cls(reader, writer)
        await c.reply()
        await c.ok("EHLO client.test")
        await c.ok("STARTTLS")
        await writer.start_tls(srv.tls(), server_hostname="localhost")
        await c.ok("EHLO client.test")
        if login:
            blob = base64.b64encode(f"\0{login['address']}\0{login['password']}".encode()).decode()
            assert (await c.command(f"AUTH PLAIN {blob}")).startswith(b"235"), "login refused"
        return c

    async def reply(self) -> bytes:
        lines = b""
        while True:
            line = await asyncio.wait_for(self.reader.readline(), 60)
            if not line:
                raise ConnectionError(f"connection closed after {lines!r}")
            lines += line
            if line[3:4] != b"-":
                return lines

    async def command(self, line: str | bytes) -> bytes:
        self.writer.write((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return await self.reply()

    async def ok(self, line: str) -> bytes:
        reply = await self.command(line)
        assert reply[:1] == b"2", reply
        return reply

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, TimeoutError, OSError):
            await asyncio.wait_for(self.writer.wait_closed(), 10)


async def imap_client(srv: DevServer, account: int | None) -> RawClient:
    c = await RawClient.connect(srv.ports["imaps"], srv.tls())
    if account is not None:
        a = srv.account(account)
        await c.ok(f'LOGIN "{a["address"]}" "{a["password"]}"')
    return c


async def pipeline(c: RawClient, commands: list[bytes]) -> list[bytes]:
    """Send the commands at once (tags p0, p1, …) and return their tagged answers, tags cut off."""
    await c.send(b"".join(b"p%d " % i + cmd + b"\r\n" for i, cmd in enumerate(commands)))
    return [tagged(await c.until_tagged(f"p{i}")) for i in range(len(commands))]


def nested_message(depth: int) -> bytes:
    data = b"Content-Type: text/plain\r\n\r\ninnermost\r\n"
    for level in range(depth):
        boundary = b"n%04d" % level
        data = (
            (b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n\r\n--' + boundary + b"\r\n")
            + data
            + b"\r\n--"
            + boundary
            + b"--\r\n"
        )
    return b"From: a@kep.test\r\nSubject: deep\r\n" + data


@pytest.fixture(scope="module")
def prepared(srv: DevServer) -> Iterator[DevServer]:
    """Account 0 with FOLDERS folders, MESSAGES messages in "Yuk" and one nested NESTED deep."""

    async def fill() -> None:
        c = await imap_client(srv, 0)
        answers = await pipeline(c, [b"CREATE Yigin%03d" % i for i in range(FOLDERS)] + [b"CREATE Yuk"])
        assert all(a.startswith(b"OK") for a in answers), answers
        messages = [b"Subject: m%d\r\n\r\nbody %d text\r\n" % (i, i) for i in range(MESSAGES)]
        messages.append(nested_message(NESTED))
        answers = await pipeline(c, [b"APPEND Yuk {%d+}\r\n" % len(m) + m for m in messages])
        assert all(a.startswith(b"OK") for a in answers), answers[:3]
        await c.close()

    asyncio.run(fill())
    yield srv


async def list_wildcards(srv: DevServer) -> None:
    c = await imap_client(srv, 0)
    answers = await pipeline(c, [b'LIST "" "' + b"*%" * 60 + b'x"'] * 20)
    assert all(a == b"OK LIST completed" for a in answers), answers[:2]
    await c.close()


async def deep_nesting(srv: DevServer) -> None:
    hostile, stranger = await imap_client(srv, 0), await imap_client(srv, None)
    await hostile.ok("SELECT Yuk")
    bad = b"BAD nesting too deep: at most 64 levels of parentheses"
    nest = b"(" * 5000 + b"FLAGS" + b")" * 5000
    answers = await pipeline(hostile, [b"FETCH 1:* " + nest] * 30)
    answers += await pipeline(stranger, [b"NOOP " + nest] * 30)
    assert answers == [bad] * 60
    await hostile.close()
    await stranger.close()


async def literals_before_login(srv: DevServer) -> None:
    stranger = await imap_client(srv, None)
    # Refused before the continuation: the 100 MB are never invited.
    answers = await pipeline(stranger, [b"LOGIN {104857600}"] * 50)
    assert all(a.startswith(b"BAD [TOOBIG] ") for a in answers), answers[:2]
    # A non-synchronising one is on its way already: the session ends with BYE.
    await stranger.send(b"q LOGIN {104857600+}\r\n" + b"u" * 65536)
    assert (await stranger.response()).startswith(b"* BYE ")
    await stranger.close()


async def search_nesting(srv: DevServer) -> None:
    c = await imap_client(srv, 0)
    await c.ok("SELECT Yuk")
    too_deep = b"SEARCH " + b"OR 1 " * 999 + b"ALL"
    at_bound = b"SEARCH " + b"OR 1 " * 63 + b"TEXT zzz"
    answers = await pipeline(c, [too_deep, at_bound] * 10)
    assert (
        answers[0::2]
        == [b"BAD SEARCH: search criteria nested too deep: at most 64 levels of OR, NOT and parentheses"] * 10
    )
    assert answers[1::2] == [b"OK SEARCH completed"] * 10
    await c.close()


async def deep_bodystructure(srv: DevServer) -> None:
    c = await imap_client(srv, 0)
    await c.ok("EXAMINE Yuk")
    last = MESSAGES + 1
    deep = b"BODY.PEEK[" + b".".join([b"1"] * 60) + b"]"
    answers = await pipeline(c, [b"FETCH %d (BODYSTRUCTURE " % last + deep + b")"] * 20)
    assert all(a == b"OK FETCH completed" for a in answers), answers[:2]
    await c.close()


async def long_lines(srv: DevServer) -> None:
    c = await imap_client(srv, 0)
    await c.send(b"l1 NOOP " + b"x" * (8 << 20) + b"\r\n")
    assert tagged(await c.until_tagged("l1")) == b"BAD command line too long"
    await c.ok("NOOP")
    await c.close()
    s = await Smtp.connect(srv)
    reply = await s.command(b"NOOP " + b"y" * (1 << 20))
    assert reply.startswith(b"500 "), reply[:100]
    await s.ok("NOOP")
    await s.close()


async def rcpt_flood(srv: DevServer) -> None:
    s = await Smtp.connect(srv, srv.account(0))
    await s.ok(f"MAIL FROM:<{srv.account(0)['address']}>")
    s.writer.write(b"".join(b"RCPT TO:<nobody.%d@kep.test>\r\n" % i for i in range(1000)))
    replies = []
    try:
        while True:
            replies.append(await s.reply())
    except ConnectionError:
        pass
    # Refused one by one up to the policy's cap, which ends the session (421).
    assert replies and all(r[:1] in (b"4", b"5") for r in replies), replies[:3]
    assert replies[-1].startswith(b"421"), replies[-1]
    await s.close()


ATTACKS: dict[str, Callable[[DevServer], Awaitable[None]]] = {
    "LIST with 60 wildcard pairs over 300 folders": list_wildcards,
    "nesting 5000 deep, logged in and not": deep_nesting,
    "100 MB literals before login": literals_before_login,
    "SEARCH 999 ORs deep, and TEXT at the bound": search_nesting,
    "BODYSTRUCTURE of a message nested 999 deep": deep_bodystructure,
    "8 MB IMAP line, 1 MB SMTP line": long_lines,
    "RCPT flood of unknown recipients": rcpt_flood,
}


@dataclass
class Probes:
    imap: list[float]
    smtp: list[float]

    @property
    def all(self) -> list[float]:
        return self.imap + self.smtp


async def _under_attack(srv: DevServer, attack: Callable[[DevServer], Awaitable[None]]) -> Probes:
    other = await imap_client(srv, 1)
    smtp = await Smtp.connect(srv)
    done = asyncio.Event()
    rounds = 0

    async def keep_attacking() -> None:
        nonlocal rounds
        while not done.is_set():
            await attack(srv)
            rounds += 1

    attacker = asyncio.create_task(keep_attacking())
    probes = Probes([], [])
    try:
        await asyncio.sleep(0.2)  # the first batch is on its way and being worked on
        for _ in range(PROBES):
            assert not attacker.done(), attacker
            started = time.monotonic()
            assert tagged(await other.command("NOOP")) == b"OK NOOP completed"
            probes.imap.append(time.monotonic() - started)
            started = time.monotonic()
            assert (await smtp.command("NOOP")).startswith(b"250")
            probes.smtp.append(time.monotonic() - started)
            await asyncio.sleep(0.05)
    finally:
        done.set()
        await attacker  # re-raises a wrong answer to the hostile client
    assert rounds >= 1
    await other.close()
    await smtp.close()
    return probes


@pytest.mark.parametrize("kind", list(ATTACKS))
def test_noop_is_answered_while_another_client_sends_expensive_input(prepared: DevServer, kind: str) -> None:
    probes = asyncio.run(_under_attack(prepared, ATTACKS[kind]))
    shown = ", ".join(f"{t * 1000:.0f}" for t in probes.all)
    assert statistics.median(probes.all) < MEDIAN, f"NOOP round trips in ms under {kind!r}: {shown}"
    assert max(probes.all) < WORST, f"NOOP round trips in ms under {kind!r}: {shown}"
