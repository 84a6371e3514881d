"""Limits as data (issue 9): connections per client address, sessions per account, command and
literal sizes and parallel APPENDs against the quota, each at its boundary over real sockets
against `kepmta serve --dev` with small limits from its own policy file: at the limit works, one
past is refused with the specified reply, and once one ends a new one works again."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import pytest
from imap_fixtures import RawClient, tagged, untagged
from kepclient import DevServer, free_port_base

from kepmta import devinit
from kepmta.config import DEFAULT_POLICY, Ports

T = TypeVar("T")
TIMEOUT = 30.0

# The limits of this module's server, by table of the policy file: small, so each is reached in a
# few connections and octets.
LIMITS = {
    "size": {"local_max": 200_000, "peer_max": 100_000},
    "quota": {"default": 512 * 1024},
    "imap": {
        "connections_per_address": 4,
        "sessions_per_account": 4,
        "max_line": 8192,
        "max_literal_before_login": 1024,
        "max_command_before_login": 2048,
        "max_literal": 4096,
        "max_command": 8192,
    },
    "submission": {"connections_per_address": 3, "sessions_per_account": 2},
    "relay": {"connections_per_address": 2},
}
IMAP_BYE = b"* BYE [UNAVAILABLE] Too many connections from your address\r\n"
SMTP_421 = "421 4.7.0 Too many connections from your address"


def with_limits(text: str) -> str:
    """The policy text with LIMITS set, each key replaced within its own table."""
    for table, values in LIMITS.items():
        head = f"\n[{table}]\n"
        start = text.index(head) + len(head)
        following = text.find("\n[", start)
        end = len(text) if following < 0 else following
        body = text[start:end]
        for key, value in values.items():
            body, n = re.subn(rf"(?m)^{key} = \d+", f"{key} = {value}", body)
            assert n == 1, (table, key)
        text = text[:start] + body + text[end:]
    return text


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    folder = tmp_path_factory.mktemp("limits") / "data"
    base = free_port_base()
    devinit.create_identity(folder, Ports(base, base + 1, base + 2, base + 3, base + 4))
    (folder / "policy.toml").write_text(with_limits(DEFAULT_POLICY.read_text()))
    with (folder / devinit.CONFIG_NAME).open("a") as config:
        config.write('\n[policy]\nfile = "policy.toml"\n')
    server = DevServer(folder).start()
    yield server
    server.stop()


async def eventually(attempt: Callable[[], Awaitable[T | None]]) -> T:
    """The first result of `attempt` that is not None: a place given back is seen by the server a
    moment after the client's side of the connection ends."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            result = await attempt()
            if result is not None:
                return result
            await asyncio.sleep(0.05)


async def ended(reader: asyncio.StreamReader) -> bool:
    """Whether the server closed the connection (after anything still unread)."""
    try:
        async with asyncio.timeout(TIMEOUT):
            while await reader.read(65536):
                pass
    except (ConnectionError, ssl.SSLError):
        pass
    return True


def drop(writer: asyncio.StreamWriter) -> None:
    """End a connection without a word: a TCP reset."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


# --- IMAP -------------------------------------------------------------------------------------------


async def imap(srv: DevServer, source: str, *, tls: bool = True) -> RawClient:
    """A connection from `source` to imaps (or imap), its greeting read."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(
            "127.0.0.1",
            srv.ports["imaps" if tls else "imap"],
            ssl=srv.tls() if tls else None,
            server_hostname="localhost" if tls else None,
            local_addr=(source, 0),
            limit=1 << 24,
        ),
        TIMEOUT,
    )
    client = RawClient(reader, writer)
    client.greeting = await client.response()
    return client


async def imap_greeted(srv: DevServer, source: str, *, tls: bool = True) -> RawClient | None:
    client = await imap(srv, source, tls=tls)
    if client.greeting.startswith(b"* OK "):
        return client
    await client.close()
    return None


def login(srv: DevServer, account: int) -> str:
    a = srv.account(account)
    return f'LOGIN "{a["address"]}" "{a["password"]}"'


async def test_imap_connections_per_client_address(srv: DevServer) -> None:
    source = "127.0.0.2"
    # imap and imaps count together.
    held = [await imap(srv, source, tls=i % 2 == 0) for i in range(4)]
    assert all(c.greeting.startswith(b"* OK ") for c in held)
    for tls in (True, False):
        refused = await imap(srv, source, tls=tls)
        assert refused.greeting == IMAP_BYE
        assert await ended(refused.reader)
        await refused.close()
    # Another address has its own count.
    other = await imap(srv, "127.0.0.3")
    assert other.greeting.startswith(b"* OK ")
    await other.close()

    # However a connection ends, its place is given back: LOGOUT,
    assert untagged(await held[0].ok("LOGOUT")) == [b"* BYE kepmta logging out"]
    await held[0].close()
    held[0] = await eventually(lambda: imap_greeted(srv, source))
    # a reset,
    drop(held[1].writer)
    held[1] = await eventually(lambda: imap_greeted(srv, source))
    # a TLS handshake that fails after STARTTLS,
    await held[3].send(b"s STARTTLS\r\n")
    assert await held[3].response() == b"s OK Begin TLS negotiation now\r\n"
    await held[3].send(b"\x16\x03\x01\x00\x04junk" + b"\r\n" * 8)
    assert await ended(held[3].reader)
    await held[3].close()
    held[3] = await eventually(lambda: imap_greeted(srv, source, tls=False))
    # or a session the server ends (a non-synchronising literal larger than it takes).
    await held[2].send(b"x ID ({99999+}\r\n")
    assert await ended(held[2].reader)
    await held[2].close()
    held[2] = await eventually(lambda: imap_greeted(srv, source))
    assert (await imap(srv, source)).greeting == IMAP_BYE
    for c in held:
        await c.close()


async def test_imap_sessions_per_account(srv: DevServer) -> None:
    # Four sessions of one account from two addresses: the limit is the account's.
    sessions = [await imap(srv, f"127.0.0.{6 + i % 2}") for i in range(4)]
    for c in sessions:
        assert tagged(await c.command(login(srv, 0))).startswith(b"OK ")
    fifth = await imap(srv, "127.0.0.8")
    expected = b"NO [LIMIT] this account has 4 sessions already; log out of one first"
    assert tagged(await fifth.command(login(srv, 0))) == expected
    a = srv.account(0)
    plain = base64.b64encode(f"\0{a['address']}\0{a['password']}".encode()).decode()
    assert tagged(await fifth.command(f"AUTHENTICATE PLAIN {plain}")) == expected
    # Refused, it was not logged in.
    assert (
        tagged(await fifth.command("SELECT INBOX"))
        == b"BAD SELECT is not valid in the not authenticated state"
    )
    # Another account is not affected.
    assert tagged(await fifth.command(login(srv, 1))).startswith(b"OK ")
    await fifth.ok("LOGOUT")
    await fifth.close()

    async def logged_in() -> RawClient | None:
        c = await imap(srv, "127.0.0.8")
        if tagged(await c.command(login(srv, 0))).startswith(b"OK "):
            return c
        await c.close()
        return None

    # A LOGOUT gives the place back, and so does a connection dropped while logged in.
    await sessions[0].ok("LOGOUT")
    await sessions[0].close()
    sessions[0] = await eventually(logged_in)
    drop(sessions[1].writer)
    sessions[1] = await eventually(logged_in)
    refused = await imap(srv, "127.0.0.8")
    assert tagged(await refused.command(login(srv, 0))) == expected
    for c in [*sessions, refused]:
        await c.close()


async def test_imap_command_and_literal_sizes(srv: DevServer) -> None:
    c = await imap(srv, "127.0.0.12")
    # A command line of max_line octets, CRLF included, and one more.
    head = b'ID ("n" "'
    pad = 8192 - len(b"t1 ") - len(head) - len(b'")\r\n')
    assert tagged(await c.command(head + b"x" * pad + b'")')) == b"OK ID completed"
    assert tagged(await c.command(head + b"x" * (pad + 1) + b'")')) == b"BAD command line too long"

    async def literals(tag: str, first: int, second: int | None = None) -> bytes:
        """ID with one or two synchronising literals: the tagged reply, or the one that refused a
        literal before it was invited."""
        await c.send(f'{tag} ID ("n" {{{first}}}\r\n'.encode())
        reply = await c.response()
        if not reply.startswith(b"+ "):
            return reply
        if second is None:
            await c.send(b"x" * first + b")\r\n")
        else:
            await c.send(b"x" * first + f' "m" {{{second}}}\r\n'.encode())
            reply = await c.response()
            if not reply.startswith(b"+ "):
                return reply
            await c.send(b"y" * second + b")\r\n")
        return (await c.until_tagged(tag))[-1]

    # Before login: a literal of max_literal_before_login octets, and one more.
    assert await literals("a1", 1024) == b"a1 OK ID completed\r\n"
    assert await literals("a2", 1025) == b"a2 BAD [TOOBIG] literals are limited to 1024 octets\r\n"
    # Literals and the lines after the first together: max_command_before_login, and one more,
    # found at the end of the command or, when a literal would pass it, before that is invited.
    # 1024 + len(' "m" {1008}\r\n') + 1008 + len(")\r\n") == 2048
    assert await literals("a3", 1024, 1008) == b"a3 OK ID completed\r\n"
    assert await literals("a4", 1024, 1009) == b"a4 BAD [TOOBIG] command longer than 2048 octets\r\n"
    assert await literals("a5", 1024, 1012) == (
        b"a5 BAD [TOOBIG] literals are limited to 1024 octets each, 2048 octets per command\r\n"
    )
    # After login: max_literal and max_command.
    assert tagged(await c.command(login(srv, 1))).startswith(b"OK ")
    assert await literals("b1", 4096) == b"b1 OK ID completed\r\n"
    assert await literals("b2", 4097) == (
        b"b2 BAD [TOOBIG] literals are limited to 4096 octets each, 8192 octets per command\r\n"
    )
    assert await literals("b3", 4096, 4080) == b"b3 OK ID completed\r\n"
    assert await literals("b4", 4096, 4081) == b"b4 BAD [TOOBIG] command longer than 8192 octets\r\n"
    # The largest APPEND message is [size] local_max; one octet more is refused before it is sent.
    message = b"Subject: big\r\n\r\n" + b"z" * (200_000 - 16)
    await c.send(b"c1 APPEND INBOX {%d}\r\n" % len(message))
    assert (await c.response()).startswith(b"+ ")
    await c.send(message + b"\r\n")
    assert (await c.until_tagged("c1"))[-1].startswith(b"c1 OK [APPENDUID ")
    await c.send(b"c2 APPEND INBOX {200001}\r\n")
    assert await c.response() == b"c2 BAD [TOOBIG] literals are limited to 200000 octets\r\n"
    assert tagged(await c.command("NOOP")) == b"OK NOOP completed"
    await c.close()


async def quota_kib(c: RawClient) -> tuple[int, int]:
    """(used, limit) in KiB from GETQUOTAROOT (RFC 9208 §5.2)."""
    responses = await c.ok("GETQUOTAROOT INBOX")
    line = next(r for r in responses if r.startswith(b"* QUOTA "))
    m = re.search(rb"\(STORAGE (\d+) (\d+)\)", line)
    assert m, line
    return int(m.group(1)), int(m.group(2))


async def test_parallel_appends_together_stay_within_the_quota(srv: DevServer) -> None:
    clients = [await imap(srv, f"127.0.1.{i + 1}") for i in range(4)]
    for c in clients:
        assert tagged(await c.command(login(srv, 2))).startswith(b"OK ")
    used, limit = await quota_kib(clients[0])
    assert limit == 512
    # Any one of the messages fits, three together fit, four do not.
    size = (limit - used) * 1024 // 3
    message = b"Subject: part\r\n\r\n" + b"p" * (size - 17)

    async def announce(i: int, tag: str) -> bytes:
        await clients[i].send(b"%s APPEND INBOX {%d}\r\n" % (tag.encode(), size))
        return await clients[i].response()

    # Every APPEND is announced, and answered, before any of the messages is sent: each admitted
    # one holds its size against the quota while its octets are awaited.
    replies = [await announce(i, f"p{i}") for i in range(4)]
    assert [r.startswith(b"+ ") for r in replies] == [True, True, True, False]
    assert replies[3].startswith(b"p3 NO [OVERQUOTA] mailbox quota exceeded")

    # One client goes away halfway through its message: its reservation ends with it.
    await clients[0].send(message[: size // 2])
    drop(clients[0].writer)
    for i in (1, 2):
        await clients[i].send(message + b"\r\n")
        assert (await clients[i].until_tagged(f"p{i}"))[-1].startswith(f"p{i} OK [APPENDUID ".encode())

    async def admitted() -> bytes | None:
        reply = await announce(3, "q3")
        return reply if reply.startswith(b"+ ") else None

    await eventually(admitted)
    await clients[3].send(message + b"\r\n")
    assert (await clients[3].until_tagged("q3"))[-1].startswith(b"q3 OK [APPENDUID ")
    # Three stored: no room for a fourth, and the account is within its quota.
    assert (await announce(1, "r1")).startswith(b"r1 NO [OVERQUOTA] ")
    stored, _ = await quota_kib(clients[1])
    assert stored <= limit and stored - used >= 3 * size // 1024
    for c in clients[1:]:
        await c.close()


# --- SMTP -------------------------------------------------------------------------------------------


class Smtp:
    """A raw SMTP client: exact command lines, replies as their last line."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.greeting = ""

    async def reply(self) -> str:
        while True:
            line = (await asyncio.wait_for(self.reader.readline(), TIMEOUT)).decode().rstrip("\r\n")
            if len(line) < 4 or line[3] != "-":
                return line

    async def command(self, line: str) -> str:
        self.writer.write(line.encode() + b"\r\n")
        await self.writer.drain()
        return await self.reply()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), TIMEOUT)


async def smtp(srv: DevServer, port: str, source: str) -> Smtp:
    """A connection from `source` to `port` (submissions with TLS), its greeting read."""
    tls = port == "submissions"
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(
            "127.0.0.1",
            srv.ports[port],
            ssl=srv.tls() if tls else None,
            server_hostname="localhost" if tls else None,
            local_addr=(source, 0),
        ),
        TIMEOUT,
    )
    client = Smtp(reader, writer)
    client.greeting = await client.reply()
    return client


async def smtp_greeted(srv: DevServer, port: str, source: str) -> Smtp | None:
    client = await smtp(srv, port, source)
    if client.greeting.startswith("220 "):
        return client
    await client.close()
    return None


async def test_submission_connections_per_client_address(srv: DevServer) -> None:
    source = "127.0.0.4"
    # submission and submissions count together.
    held = [await smtp(srv, port, source) for port in ("submission", "submissions", "submission")]
    assert all(c.greeting.startswith("220 ") for c in held)
    for port in ("submission", "submissions"):
        refused = await smtp(srv, port, source)
        assert refused.greeting == SMTP_421
        assert await ended(refused.reader)
        await refused.close()
    other = await smtp(srv, "submission", "127.0.0.5")
    assert other.greeting.startswith("220 ")
    await other.close()

    # QUIT, a reset, and a TLS handshake that fails after STARTTLS each give the place back.
    assert (await held[0].command("QUIT")).startswith("221 ")
    await held[0].close()
    held[0] = await eventually(lambda: smtp_greeted(srv, "submission", source))
    drop(held[1].writer)
    held[1] = await eventually(lambda: smtp_greeted(srv, "submissions", source))
    assert (await held[2].command("EHLO client.test")).startswith("250 ")
    assert (await held[2].command("STARTTLS")).startswith("220 ")
    held[2].writer.write(b"\x16\x03\x01\x00\x04junk" + b"\r\n" * 8)
    assert await ended(held[2].reader)
    await held[2].close()
    held[2] = await eventually(lambda: smtp_greeted(srv, "submission", source))
    assert (await smtp(srv, "submissions", source)).greeting == SMTP_421
    for c in held:
        await c.close()


async def test_submission_sessions_per_account(srv: DevServer) -> None:
    a = srv.account(0)
    auth = "AUTH PLAIN " + base64.b64encode(f"\0{a['address']}\0{a['password']}".encode()).decode()

    async def session(source: str) -> Smtp:
        c = await smtp(srv, "submissions", source)
        assert (await c.command("EHLO client.test")).startswith("250 ")
        return c

    sessions = [await session(f"127.0.0.{9 + i}") for i in range(3)]
    for c in sessions[:2]:
        assert (await c.command(auth)).startswith("235 ")
    third = sessions[2]
    assert await third.command(auth) == "454 4.7.0 This account has 2 sessions already; try again later"
    # Not authenticated: it may not send.
    assert (await third.command(f"MAIL FROM:<{a['address']}>")).startswith("530 ")
    assert (await sessions[0].command("QUIT")).startswith("221 ")
    await sessions[0].close()

    async def authenticated() -> str | None:
        reply = await third.command(auth)
        return reply if reply.startswith("235 ") else None

    await eventually(authenticated)
    assert (await third.command(f"MAIL FROM:<{a['address']}>")).startswith("250 ")
    # A dropped session gives its place back too.
    drop(sessions[1].writer)
    fourth = await session("127.0.0.9")
    assert await eventually(lambda: _authenticates(fourth, auth))
    for c in (third, fourth):
        await c.close()


async def _authenticates(c: Smtp, auth: str) -> bool | None:
    return True if (await c.command(auth)).startswith("235 ") else None


async def test_relay_connections_per_peer_address(srv: DevServer) -> None:
    source = "127.0.0.13"
    held = [await smtp(srv, "relay", source) for _ in range(2)]
    assert all(c.greeting.startswith("220 ") for c in held)
    refused = await smtp(srv, "relay", source)
    assert refused.greeting == SMTP_421
    assert await ended(refused.reader)
    await refused.close()
    assert (await held[0].command("QUIT")).startswith("221 ")
    await held[0].close()
    held[0] = await eventually(lambda: smtp_greeted(srv, "relay", source))
    for c in held:
        await c.close()
