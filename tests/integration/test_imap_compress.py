"""COMPRESS=DEFLATE (RFC 4978), over TLS against `kepmta serve --dev`: after the uncompressed OK every
octet both ways is raw deflate, each response flushed so it can be read at once; a deflate bomb
costs no more than its inflated size allows."""

from __future__ import annotations

import asyncio
import zlib

from imap_fixtures import RawClient, tagged, untagged
from kepclient import DevServer


async def login(srv: DevServer, account: int) -> RawClient:
    c = await RawClient.connect(srv.ports["imaps"], srv.tls())
    a = srv.account(account)
    await c.ok(f'LOGIN "{a["address"]}" "{a["password"]}"')
    return c


class Deflated:
    """Turns a RawClient's stream into a deflated one, as a client does after COMPRESS's OK."""

    def __init__(self, c: RawClient) -> None:
        self.wire = c.reader
        self.plain = asyncio.StreamReader(limit=1 << 24)
        self.out = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.inflate = zlib.decompressobj(-15)
        self.received = 0
        self.pump = asyncio.create_task(self._pump())
        c.reader = self.plain
        writer = c.writer

        async def send(data: bytes) -> None:
            writer.write(self.out.compress(data) + self.out.flush(zlib.Z_SYNC_FLUSH))
            await writer.drain()

        c.send = send  # type: ignore[method-assign]

    async def _pump(self) -> None:
        while chunk := await self.wire.read(65536):
            self.received += len(chunk)
            self.plain.feed_data(self.inflate.decompress(chunk))
        self.plain.feed_eof()


async def test_compress_deflate(srv: DevServer) -> None:
    c = await login(srv, 0)
    assert b" COMPRESS=DEFLATE" in untagged(await c.ok("CAPABILITY"))[0]
    await c.ok("CREATE Sikistir")
    body = b"Merhaba, bu satir defalarca tekrar eder.\r\n" * 4000
    m = b"From: a@example.com\r\nSubject: uzun\r\n\r\n" + body
    await c.ok(b"APPEND Sikistir {%d+}\r\n%s" % (len(m), m))
    assert tagged(await c.command("COMPRESS LZ4")).startswith(b"BAD")
    # RFC 4978 §3's example: the OK is the last uncompressed octets.
    assert tagged(await c.command("COMPRESS DEFLATE")) == b"OK DEFLATE active"
    d = Deflated(c)
    await c.ok("SELECT Sikistir")
    fetched = await c.ok("FETCH 1 (BODY.PEEK[TEXT])")
    assert fetched[0] == b"* 1 FETCH (BODY[TEXT] {%d}\r\n" % len(body) + body + b")\r\n"
    # Deflated on the wire: far fewer octets than the text.
    assert d.received < len(body) // 10
    # A literal sent compressed, and a second COMPRESS refused.
    m2 = b"Subject: iki\r\n\r\n" + b"x" * 100_000 + b"\r\n"
    await c.send(b"A1 APPEND Sikistir {%d}\r\n" % len(m2))
    assert (await c.response()).startswith(b"+ ")
    await c.send(m2 + b"\r\n")
    assert tagged(await c.until_tagged("A1")).startswith(b"OK [APPENDUID ")
    assert tagged(await c.command("COMPRESS DEFLATE")) == b"NO [COMPRESSIONACTIVE] compression is already on"
    # A deflate bomb: 100 MB of one byte without a line end inflates no further than the line limit.
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    payload = bomb.compress(b"A1 NOOP " + b"a" * 100_000_000 + b"\r\n") + bomb.flush(zlib.Z_SYNC_FLUSH)
    assert len(payload) < 200_000
    c.writer.write(payload)
    assert tagged(await c.until_tagged("A1")).startswith(b"BAD")
    await c.ok("NOOP")
    await c.ok("LOGOUT")
    d.pump.cancel()
    await c.close()
