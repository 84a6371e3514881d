"""A large folder selected for the first time is read on a thread: while it is read, other
sessions are answered (the event loop is not held for the read), and the SELECT then reports
every message. The read is held by the test, so the order is asserted, not a time."""

from __future__ import annotations

import asyncio
import threading

import pytest
from imap_fixtures import (  # noqa: F401  (the fixtures are used by name)
    Running,
    imap_fixture,
    simple_message,
    tls_fixture,
    untagged,
)

from kepmta.imap.mailbox import FolderStore

MESSAGES = 300  # new/ grows past its first block: a folder too large to read on the loop


async def test_other_sessions_are_answered_while_a_large_folder_is_read(
    imap: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(MESSAGES):
        imap.deliver(simple_message(f"ileti {i}"), folder="Arşiv")
    a, b = await imap.raw(), await imap.raw()
    await b.ok("SELECT INBOX")
    entered, gate = threading.Event(), threading.Event()
    real = FolderStore.read

    def read(self: FolderStore) -> None:
        if self.name == "Arşiv":
            entered.set()
            gate.wait(60)  # a guard against a hang only: a read on the loop fails the order below
        real(self)

    monkeypatch.setattr(FolderStore, "read", read)
    selecting = asyncio.ensure_future(a.ok('SELECT "Ar&AV8-iv"'))
    try:
        await asyncio.to_thread(entered.wait)
        await b.ok("NOOP")
        await b.ok("UID FETCH 1:* (FLAGS)")
        assert not selecting.done()
    finally:
        gate.set()
    assert b"* %d EXISTS" % MESSAGES in untagged(await selecting)
    await a.close()
    await b.close()
