"""What a session reports rests on disk: a change's journal line is synced (with the other
folders' lines of the moment, on a thread) before the tagged OK and before any other session hears
of the change."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest
from imap_fixtures import (  # noqa: F401  (the fixtures are used by name)
    Running,
    imap_fixture,
    simple_message,
    tls_fixture,
    untagged,
)

from kepmta.imap.index import JOURNAL


async def test_a_change_is_reported_only_once_its_journal_line_is_on_disk(
    imap: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    imap.deliver(simple_message("bir"))
    a, b = await imap.raw(), await imap.raw()
    await a.ok("SELECT INBOX")
    await b.ok("SELECT INBOX")
    synced: list[bytes] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(JOURNAL):
            synced.append(os.pread(fd, 1 << 20, 0))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    await a.ok("UID STORE 1 +FLAGS.SILENT (\\Flagged)")
    # The line naming the renamed file (":2,F") was in the journal when it was synced.
    assert any(b":2,F\t" in content for content in synced)
    synced.clear()
    seen = untagged(await b.ok("NOOP"))
    assert any(b"\\Flagged" in line for line in seen)
    await a.ok("UID STORE 1 -FLAGS.SILENT (\\Flagged)")
    assert any(b":2,\t" in content.rsplit(b"\n", 2)[-2] for content in synced)
    await a.close()
    await b.close()


async def test_a_session_waits_only_for_the_folders_it_reports_on(
    imap: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    imap.deliver(simple_message("bir"))
    imap.deliver(simple_message("iki"), folder="Arşiv")
    a, b = await imap.raw(), await imap.raw()
    await a.ok("SELECT INBOX")
    await b.ok('SELECT "Ar&AV8-iv"')
    entered, gate = threading.Event(), threading.Event()
    inbox = str(imap.store().folder_dir("INBOX") / JOURNAL)
    real = os.fsync

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}") == inbox:
            entered.set()
            gate.wait()
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    store = asyncio.ensure_future(a.ok("UID STORE 1 +FLAGS.SILENT (\\Flagged)"))
    try:
        await asyncio.to_thread(entered.wait)  # INBOX's line is being synced, and held there
        # The other folder's session is answered meanwhile: nothing it reports waits on INBOX.
        # (Had it written, its line would wait for the next round, behind the one held here.)
        await b.ok("UID FETCH 1 (FLAGS)")
        await b.ok("NOOP")
        assert not store.done()
    finally:
        gate.set()
    await store
    await a.close()
    await b.close()
