"""BINARY (RFC 3516): decoded sections, BINARY.SIZE, literal8, \\Seen and the read hook, APPEND ~{n}."""

from __future__ import annotations

import base64

from imap_fixtures import (  # noqa: F401  (the fixtures are used by name)
    NESTED,
    Running,
    imap_fixture,
    tagged,
    tls_fixture,
    untagged,
)

PAYLOAD = b"%PDF-1.4\n\x00\x01\x02 binary \xff\xfe tail\r\n"
QP_TEXT = "Merhaba dünya, ğüşiöç".encode()


def _message() -> bytes:
    encoded = base64.encodebytes(PAYLOAD).replace(b"\n", b"\r\n")
    return (
        b"From: a@example.com\r\n"
        b"Subject: attachment\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n'
        b"\r\n"
        b"--b\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n"
        b"\r\n"
        b"Merhaba d=C3=BCnya, =C4=9F=C3=BC=C5=9Fi=C3=B6=C3=A7\r\n"
        b"--b\r\n"
        b"Content-Type: application/pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\n"
        b"\r\n" + encoded + b"--b\r\n"
        b"Content-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: x-uuencode\r\n"
        b"\r\n"
        b"begin 644 x\r\n"
        b"--b--\r\n"
    )


async def test_binary_sections_are_decoded(imap: Running) -> None:
    msg = _message()
    imap.deliver(msg)
    c = await imap.raw()
    await c.ok("SELECT INBOX")
    r = await c.ok("FETCH 1 (BINARY.PEEK[2] BINARY.SIZE[2])")
    # RFC 3516 §4.3: octets with NUL in them travel as literal8.
    assert r[0] == (
        b"* 1 FETCH (BINARY[2] ~{%d}\r\n" % len(PAYLOAD) + PAYLOAD + b" BINARY.SIZE[2] %d)\r\n" % len(PAYLOAD)
    )
    r = await c.ok("FETCH 1 (BINARY.PEEK[1] BINARY.PEEK[2]<9.3>)")
    assert (
        r[0]
        == b"* 1 FETCH (BINARY[1] {%d}\r\n" % len(QP_TEXT)
        + QP_TEXT
        + b" BINARY[2]<9> ~{3}\r\n\x00\x01\x02)\r\n"
    )
    r = await c.ok("FETCH 1 (BINARY.PEEK[] BINARY.PEEK[9] BINARY.SIZE[9])")
    assert r[0] == b"* 1 FETCH (BINARY[] {%d}\r\n" % len(msg) + msg + b" BINARY[9] NIL BINARY.SIZE[9] 0)\r\n"
    assert imap.backend.seen == []
    assert tagged(await c.command("FETCH 1 BINARY.PEEK[3]")) == (
        b"NO [UNKNOWN-CTE] cannot decode Content-Transfer-Encoding 'x-uuencode'"
    )
    assert (
        tagged(await c.command("FETCH 1 BINARY[1.TEXT]"))
        == b"BAD FETCH: BINARY takes a part number such as [1.2]"
    )
    assert (
        tagged(await c.command("FETCH 1 BINARY.SIZE[1]<0.1>"))
        == b"BAD FETCH: BINARY.SIZE takes no partial range"
    )
    # Non-PEEK BINARY is a read: \Seen is set and the read hook runs, once.
    r = await c.ok("FETCH 1 (BINARY[2])")
    assert r[0].endswith(b" FLAGS (\\Seen \\Recent))\r\n")
    await c.ok("FETCH 1 (BINARY[2])")
    assert len(imap.backend.seen) == 1
    await c.close()


async def test_binary_of_nested_message_part(imap: Running) -> None:
    imap.deliver(NESTED)
    c = await imap.raw()
    await c.ok("EXAMINE INBOX")
    r = await c.ok("FETCH 1 (BINARY[3.2] BINARY[2.2])")
    assert r[0] == (
        b"* 1 FETCH (BINARY[3.2] {21}\r\n%PDF-1.4\nsearchable?\n"
        b" BINARY[2.2] {25}\r\n<p>html = alternative</p>)\r\n"
    )
    assert imap.backend.seen == []
    await c.close()


async def test_append_literal8(imap: Running) -> None:
    data = b"Subject: nul\r\n\r\nbinary\x00body\r\n"
    c = await imap.raw()
    r = await c.ok(b"APPEND INBOX ~{%d+}\r\n" % len(data) + data)
    assert tagged(r).startswith(b"OK [APPENDUID ")
    await c.ok("SELECT INBOX")
    r = await c.ok("FETCH 1 BODY.PEEK[]")
    assert r[0] == b"* 1 FETCH (BODY[] {%d}\r\n" % len(data) + data + b")\r\n"
    await c.close()
