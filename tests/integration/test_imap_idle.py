"""Mail that other code delivers, and changes made by other sessions, reach a client: NOOP, CHECK, IDLE."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aioimaplib  # type: ignore[import-untyped]
import pytest
from imap_fixtures import (  # noqa: F401  (the fixtures are used by name)
    PASSWORD,
    TIMEOUT,
    USER,
    Backend,
    Running,
    Tls,
    imap_fixture,
    simple_message,
    tagged,
    tls_fixture,
    untagged,
)

from kepmta.imap.notify import Inotify
from kepmta.imap.server import ImapServer


async def test_noop_and_check_pick_up_deliveries(imap: Running) -> None:
    imap.deliver(simple_message("first"))
    c = await imap.raw()
    await c.ok("SELECT INBOX")
    imap.deliver(simple_message("second"))
    assert untagged(await c.ok("NOOP")) == [b"* 2 EXISTS", b"* 2 RECENT"]
    imap.deliver(simple_message("third"))
    assert untagged(await c.ok("CHECK")) == [b"* 3 EXISTS", b"* 3 RECENT"]
    r = await c.ok("UID FETCH 3 (UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert b"Subject: third" in r[0]
    assert untagged(await c.ok("NOOP")) == []
    await c.close()


async def test_other_sessions_changes_arrive_at_permitted_points(imap: Running) -> None:
    imap.deliver(simple_message("a"))
    imap.deliver(simple_message("b"))
    one = await imap.raw()
    two = await imap.raw()
    await one.ok("SELECT INBOX")
    await two.ok("SELECT INBOX")
    await two.ok("STORE 1 +FLAGS.SILENT (\\Deleted \\Flagged)")
    await two.ok("EXPUNGE")
    # RFC 3501 §7.4.1: no EXPUNGE while answering FETCH; the flag change may come, for a live message.
    r = await one.ok("FETCH 2 FLAGS")
    assert untagged(r) == [b"* 2 FETCH (FLAGS (\\Recent))"]
    r = await one.ok("NOOP")
    assert untagged(r) == [b"* 1 EXPUNGE"]
    await two.ok("STORE 1 +FLAGS.SILENT (\\Answered)")
    assert untagged(await one.ok("NOOP")) == [b"* 1 FETCH (UID 2 FLAGS (\\Answered \\Recent))"]
    r = await one.command("FETCH 1 FLAGS")
    assert tagged(r) == b"OK FETCH completed"
    await one.close()
    await two.close()


async def test_raw_idle_pushes_delivery_flag_change_and_expunge(imap: Running) -> None:
    imap.deliver(simple_message("a"))
    idler = await imap.raw()
    other = await imap.raw()
    await idler.ok("SELECT INBOX")
    await other.ok("SELECT INBOX")
    await idler.send(b"i1 IDLE\r\n")
    assert await idler.response() == b"+ idling\r\n"
    imap.deliver(simple_message("b"))
    assert await idler.response() == b"* 2 EXISTS\r\n"
    assert await idler.response() == b"* 2 RECENT\r\n"
    await other.ok("NOOP")
    await other.ok("STORE 1 +FLAGS.SILENT (\\Flagged)")
    assert await idler.response() == b"* 1 FETCH (UID 1 FLAGS (\\Flagged \\Recent))\r\n"
    await other.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
    assert await idler.response() == b"* 2 FETCH (UID 2 FLAGS (\\Deleted \\Recent))\r\n"
    await other.ok("EXPUNGE")
    assert await idler.response() == b"* 2 EXPUNGE\r\n"
    await idler.send(b"DONE\r\n")
    assert await idler.response() == b"i1 OK IDLE terminated\r\n"
    await idler.send(b"i2 IDLE\r\n")
    assert await idler.response() == b"+ idling\r\n"
    await idler.send(b"NOPE\r\n")
    assert await idler.response() == b"i2 BAD IDLE: expected DONE\r\n"
    await idler.ok("NOOP")
    await idler.close()
    await other.close()


async def test_idle_in_authenticated_state(imap: Running) -> None:
    c = await imap.raw()
    await c.send(b"i1 IDLE\r\n")
    assert await c.response() == b"+ idling\r\n"
    await c.send(b"done\r\n")
    assert await c.response() == b"i1 OK IDLE terminated\r\n"
    await c.close()


async def test_aioimaplib_idle_sees_new_mail(imap: Running) -> None:
    client = aioimaplib.IMAP4_SSL(
        host="127.0.0.1", port=imap.imaps, ssl_context=imap.tls.client, timeout=TIMEOUT
    )
    await client.wait_hello_from_server()
    assert (await client.login(USER, PASSWORD)).result == "OK"
    assert (await client.select("INBOX")).result == "OK"
    idle = await client.idle_start(timeout=TIMEOUT)
    imap.deliver(simple_message("pushed"))
    pushed: list[bytes] = []
    while not any(b"EXISTS" in line for line in pushed):
        pushed.extend(await client.wait_server_push(timeout=TIMEOUT))
    assert b"1 EXISTS" in pushed
    client.idle_done()
    result = await asyncio.wait_for(idle, TIMEOUT)
    assert result.result == "OK"
    fetched = await client.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert any(b"Subject: pushed" in line for line in fetched.lines if isinstance(line, (bytes, bytearray)))
    await client.logout()


async def test_idle_is_pushed_by_inotify_without_polling(imap: Running) -> None:
    # A poll interval longer than any test: only the inotify push can deliver the EXISTS.
    imap.server.idle_poll_seconds = 3600
    imap.store().create("INBOX")
    client = aioimaplib.IMAP4_SSL(
        host="127.0.0.1", port=imap.imaps, ssl_context=imap.tls.client, timeout=TIMEOUT
    )
    await client.wait_hello_from_server()
    assert (await client.login(USER, PASSWORD)).result == "OK"
    assert (await client.select("INBOX")).result == "OK"
    store = imap.server.stores.get(imap.store().folder_dir("INBOX"))
    assert store is not None and store.sync is not None, "inotify is not watching the folder"
    idle = await client.idle_start(timeout=TIMEOUT)
    # Maildir.deliver, as the delivery worker does it: tmp → fsync → rename into new/.
    imap.deliver(simple_message("pushed"))
    pushed: list[bytes] = []
    while not any(b"EXISTS" in line for line in pushed):
        pushed.extend(await client.wait_server_push(timeout=TIMEOUT))
    assert b"1 EXISTS" in pushed
    client.idle_done()
    assert (await asyncio.wait_for(idle, TIMEOUT)).result == "OK"
    await client.logout()


async def test_idle_without_inotify_is_woken_by_notify(
    tmp_path: Path, tls: Tls, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Inotify, "create", classmethod(lambda cls, sink: None))
    backend = Backend(tmp_path / "mail")
    server = ImapServer(backend, tls.server)
    server.idle_poll_seconds = 3600
    await server.start("127.0.0.1", None, 0)
    running = Running(server, backend, tls)
    try:
        c = await running.raw()
        await c.ok("SELECT INBOX")
        await c.send(b"i1 IDLE\r\n")
        assert await c.response() == b"+ idling\r\n"
        running.deliver(simple_message("late"))
        server.notify(USER, "INBOX")
        assert await c.response() == b"* 1 EXISTS\r\n"
        assert await c.response() == b"* 1 RECENT\r\n"
        await c.send(b"DONE\r\n")
        assert await c.response() == b"i1 OK IDLE terminated\r\n"
        # Folders nobody has open, or that do not exist, are no concern of notify.
        server.notify(USER, "Drafts")
        server.notify(USER, "a..b")
        await c.close()
    finally:
        await server.close()
