"""Shared pieces of the IMAP tests: a TLS PKI, an application double, a running server, raw clients.

The server runs in the test's event loop on 127.0.0.1 with port 0; blocking `imaplib` clients run
in a worker thread via `asyncio.to_thread`, raw transcript clients and aioimaplib in the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import re
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import pytest

from kepmta import pki
from kepmta.imap.server import ImapServer
from kepmta.maildir import Maildir

T = TypeVar("T")
TIMEOUT = 20.0
USER = "ali@kep.test"
PASSWORD = "parola-1"
OTHER_USER = "veli@kep.test"
EVIDENCE = "Kanıt"
SPECIAL = {"Sent": "\\Sent", EVIDENCE: "\\Archive"}


@dataclass(frozen=True)
class Tls:
    server: ssl.SSLContext
    client: ssl.SSLContext  # verifies the chain; host name not checked (we connect by IP)
    strict_client: ssl.SSLContext  # verifies the chain and the name "localhost"


def make_tls(directory: Path) -> Tls:
    ca = pki.issue("IMAP Test CA", pki.Role.CA)
    leaf = pki.issue("localhost", pki.Role.TLS_SERVER, ca, dns_names=("localhost",))
    pki.save(leaf, directory / "server.pem", directory / "server.key", chain=(ca.cert,))
    pki.save(ca, directory / "ca.pem", directory / "ca.key")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(directory / "server.pem", directory / "server.key")
    client = ssl.create_default_context(cafile=str(directory / "ca.pem"))
    client.check_hostname = False
    strict = ssl.create_default_context(cafile=str(directory / "ca.pem"))
    return Tls(server, client, strict)


@pytest.fixture(name="tls", scope="module")
def tls_fixture(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    return make_tls(tmp_path_factory.mktemp("pki"))


@dataclass
class Backend:
    """The application as the server sees it: accounts, their Maildirs, and the read hook."""

    root: Path
    accounts: dict[str, str] = field(default_factory=lambda: {USER: PASSWORD, OTHER_USER: "baska"})
    seen: list[tuple[str, str, Path]] = field(default_factory=list)
    fail_seen: bool = False
    seen_event: asyncio.Event = field(default_factory=asyncio.Event)
    usage: dict[str, int] = field(default_factory=dict)
    limit: int = 100 * 1024 * 1024

    async def authenticate(self, username: str, password: str, peer_ip: str, authzid: str = "") -> str | None:
        canonical = username.strip().lower()
        if authzid and authzid.strip().lower() != canonical:
            return None  # these accounts operate for nobody
        if self.accounts.get(canonical) == password and peer_ip == "127.0.0.1":
            return canonical
        return None

    def maildir(self, user: str) -> Maildir:
        return Maildir(self.root / user)

    async def on_seen(self, user: str, mailbox: str, path: Path, operator: str | None = None) -> None:
        if self.fail_seen:
            raise RuntimeError("evidence store unavailable")
        self.seen.append((user, mailbox, path))
        self.seen_event.set()

    async def quota(self, user: str) -> tuple[int, int]:
        return self.usage.get(user, 0), self.limit

    def read_only_folders(self, user: str) -> frozenset[str]:
        return frozenset({EVIDENCE})


@dataclass
class Running:
    server: ImapServer
    backend: Backend
    tls: Tls

    @property
    def imaps(self) -> int:
        return self.server.ports["imaps"]

    @property
    def imap(self) -> int:
        return self.server.ports["imap"]

    def store(self, user: str = USER) -> Maildir:
        return self.backend.maildir(user)

    def deliver(self, data: bytes, folder: str = "INBOX", user: str = USER) -> Path:
        """What the rest of the application does: tmp → fsync → rename into new/."""
        return deliver(self.store(user), data, folder)

    async def client(self, fn: Callable[[imaplib.IMAP4_SSL], T], *, login: bool = True) -> T:
        """Run `fn` with a fresh imaplib IMAPS client in a worker thread."""
        return await asyncio.to_thread(self._with_client, fn, login)

    def _with_client(self, fn: Callable[[imaplib.IMAP4_SSL], T], login: bool) -> T:
        c = imaplib.IMAP4_SSL("127.0.0.1", self.imaps, ssl_context=self.tls.client, timeout=TIMEOUT)
        try:
            if login:
                c.login(USER, PASSWORD)
            return fn(c)
        finally:
            try:
                c.logout()
            except (imaplib.IMAP4.error, OSError):
                c.shutdown()

    async def raw(self, *, login: bool = True) -> RawClient:
        c = await RawClient.connect(self.imaps, self.tls.strict_client)
        if login:
            await c.ok(f'LOGIN "{USER}" "{PASSWORD}"')
        return c


_delivery_counter = iter(range(1, 1 << 30))


def deliver(store: Maildir, data: bytes, folder: str = "INBOX") -> Path:
    base = Maildir.unique_name(f"test{next(_delivery_counter)}")

    def write(f: BinaryIO) -> None:
        f.write(data)

    return store.deliver(folder, base, write)


@pytest.fixture(name="imap")
async def imap_fixture(tmp_path: Path, tls: Tls) -> AsyncIterator[Running]:
    backend = Backend(tmp_path / "mail")
    server = ImapServer(backend, tls.server, special_folders=dict(SPECIAL))
    await server.start("127.0.0.1", 0, 0)
    try:
        yield Running(server, backend, tls)
    finally:
        await server.close()


_LITERAL_END = re.compile(rb"\{(\d+)\+?\}\r\n\Z")


class RawClient:
    """A transcript client: sends exact lines, returns exact responses (literals inlined)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.greeting = b""
        self._tags = (f"t{i}" for i in range(1, 1 << 30))

    @classmethod
    async def connect(cls, port: int, ctx: ssl.SSLContext | None) -> RawClient:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                "127.0.0.1", port, ssl=ctx, server_hostname="localhost" if ctx else None, limit=1 << 24
            ),
            TIMEOUT,
        )
        c = cls(reader, writer)
        c.greeting = await c.response()
        return c

    async def starttls(self, ctx: ssl.SSLContext) -> None:
        await self.writer.start_tls(ctx, server_hostname="localhost")

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self) -> bytes:
        """One response: a line, plus any literal it announces and the line that continues it."""
        out = b""
        while True:
            line = await asyncio.wait_for(self.reader.readline(), TIMEOUT)
            if not line:
                raise ConnectionError(f"connection closed; read so far: {out!r}")
            out += line
            m = _LITERAL_END.search(line)
            if not m:
                return out
            out += await asyncio.wait_for(self.reader.readexactly(int(m.group(1))), TIMEOUT)

    async def until_tagged(self, tag: str) -> list[bytes]:
        responses = []
        while True:
            r = await self.response()
            responses.append(r)
            if r.startswith(tag.encode() + b" "):
                return responses

    async def command(self, text: str | bytes) -> list[bytes]:
        tag = next(self._tags)
        data = text.encode() if isinstance(text, str) else text
        await self.send(tag.encode() + b" " + data + b"\r\n")
        return await self.until_tagged(tag)

    async def ok(self, text: str | bytes) -> list[bytes]:
        responses = await self.command(text)
        status = responses[-1].split(b" ", 2)[1]
        assert status == b"OK", responses
        return responses

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), TIMEOUT)


def tagged(responses: list[bytes]) -> bytes:
    """The tagged completion without its tag."""
    return responses[-1].split(b" ", 1)[1].rstrip(b"\r\n")


def untagged(responses: list[bytes]) -> list[bytes]:
    return [r.rstrip(b"\r\n") for r in responses[:-1]]


def ok_data(result: tuple[str, Any]) -> Any:
    typ, data = result
    assert typ == "OK", result
    return data


# A multipart/mixed message holding a text part, an alternative and a forwarded message/rfc822
# that is itself multipart. Every line ends in CRLF, as stored messages do.
NESTED = (
    b"Return-Path: <ali@kep.test>\r\n"
    b"From: =?UTF-8?B?w4dpw6dlaw==?= <cicek@kep.test>\r\n"
    b"To: Ali Veli <ali@kep.test>, undisclosed-recipients:;\r\n"
    b'Cc: "Doe, John" <john@example.com>\r\n'
    b"Subject: =?UTF-8?Q?Toplant=C4=B1_notlar=C4=B1?=\r\n"
    b"Date: Tue, 14 May 2024 10:20:30 +0300\r\n"
    b"Message-ID: <outer@kep.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed;\r\n"
    b' boundary="outer-b"\r\n'
    b"\r\n"
    b"This is the preamble.\r\n"
    b"--outer-b\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Merhaba d\xc3\xbcnya\r\n"
    b"ikinci sat\xc4\xb1r\r\n"
    b"--outer-b\r\n"
    b"Content-Type: multipart/alternative; boundary=alt-b\r\n"
    b"\r\n"
    b"--alt-b\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"plain alternative\r\n"
    b"--alt-b\r\n"
    b"Content-Type: text/html; charset=us-ascii\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"<p>html =3D alternative</p>\r\n"
    b"--alt-b--\r\n"
    b"--outer-b\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"Content-Description: forwarded\r\n"
    b"\r\n"
    b"From: Inner Sender <inner@example.org>\r\n"
    b"Subject: inner subject\r\n"
    b"Message-ID: <inner@example.org>\r\n"
    b'Content-Type: multipart/mixed; boundary="inner-b"\r\n'
    b"\r\n"
    b"--inner-b\r\n"
    b"Content-Type: text/plain; charset=us-ascii\r\n"
    b"\r\n"
    b"inner text body\r\n"
    b"--inner-b\r\n"
    b'Content-Type: application/pdf; name="belge.pdf"\r\n'
    b'Content-Disposition: attachment; filename="belge.pdf"\r\n'
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"JVBERi0xLjQKc2VhcmNoYWJsZT8K\r\n"
    b"--inner-b--\r\n"
    b"--outer-b--\r\n"
    b"epilogue\r\n"
)


def simple_message(subject: str = "Selam", body: str = "hello world", sender: str = "a@example.com") -> bytes:
    return (
        f"From: {sender}\r\nTo: {USER}\r\nSubject: {subject}\r\n"
        f"Date: Mon, 13 May 2024 09:00:00 +0000\r\nMessage-ID: <{subject}@x>\r\n\r\n{body}\r\n"
    ).encode()


def span(data: bytes, start: bytes, end: bytes) -> bytes:
    """The octets from the first `start` up to (excluding) the next `end` after it."""
    i = data.index(start)
    j = data.index(end, i + len(start))
    return data[i:j]


def iter_fetch_literals(responses: list[bytes]) -> Iterator[bytes]:
    for r in responses:
        for m in re.finditer(rb"\{(\d+)\}\r\n", r):
            yield r[m.end() : m.end() + int(m.group(1))]
