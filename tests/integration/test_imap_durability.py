"""What a session reports rests on disk: a change's journal line is synced (with the other
folders' lines of the moment, on a thread) before the tagged OK and before any other session hears
of the change. At shutdown each journal is folded into its folder's snapshot."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest
from imap_fixtures import (  # noqa: F401  (the fixtures are used by name)
    SPECIAL,
    Running,
    imap_fixture,
    simple_message,
    tls_fixture,
    untagged,
)

from kepmta.imap.index import INDEX, JOURNAL
from kepmta.imap.mailbox import heavy
from kepmta.imap.server import ImapServer


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


async def _state_of(imap: Running) -> list[bytes]:
    c = await imap.raw()
    lines = untagged(await c.ok("SELECT INBOX"))
    lines += untagged(await c.ok("UID FETCH 1:* (FLAGS MODSEQ)"))
    await c.close()
    kept = (b"UIDVALIDITY", b"UIDNEXT", b"HIGHESTMODSEQ", b"FETCH")
    return [line for line in lines if any(word in line for word in kept)]


async def _started(imap: Running) -> Running:
    """A new server on the same mail, as after a restart (the fixture's own is closed)."""
    server = ImapServer(imap.backend, imap.tls.server, special_folders=dict(SPECIAL))
    await server.start("127.0.0.1", None, 0)
    return Running(server, imap.backend, imap.tls)


async def _restarted(imap: Running) -> Running:
    await imap.server.close()
    return await _started(imap)


async def _changed_inbox(imap: Running, *, churn: int) -> list[bytes]:
    """Three messages, `churn` rounds of setting and clearing \\Answered on all three (six journal
    lines a round), then a flag and a keyword on one, and one expunged."""
    for subject in ("bir", "iki", "üç"):
        imap.deliver(simple_message(subject))
    c = await imap.raw()
    await c.ok("SELECT INBOX")
    for _ in range(churn):
        await c.ok("UID STORE 1:3 +FLAGS.SILENT (\\Answered)")
        await c.ok("UID STORE 1:3 -FLAGS.SILENT (\\Answered)")
    await c.ok("UID STORE 1 +FLAGS.SILENT (\\Flagged $Etiket)")
    await c.ok("UID STORE 2 +FLAGS.SILENT (\\Deleted)")
    await c.ok("EXPUNGE")
    await c.close()
    return await _state_of(imap)


async def test_a_long_journal_is_folded_into_the_snapshot_at_shutdown(imap: Running) -> None:
    before = await _changed_inbox(imap, churn=45)
    folder = imap.store().folder_dir("INBOX")
    assert (folder / JOURNAL).read_bytes().count(b"\n") > 256
    again = await _restarted(imap)
    try:
        # One file to read, so the folder is read on the event loop, not on a thread.
        assert not (folder / JOURNAL).exists()
        assert (folder / INDEX).exists() and not heavy(folder)
        after = await _state_of(again)
        assert after == before
        assert any(b"$Etiket" in line and b"\\Flagged" in line for line in after)
        # Modification sequences go on from where they were.
        (highest,) = (int(line.split()[3].rstrip(b"]")) for line in before if b"HIGHESTMODSEQ" in line)
        c = await again.raw()
        await c.ok("SELECT INBOX")
        await c.ok("UID STORE 3 +FLAGS.SILENT (\\Seen)")
        (fetched,) = untagged(await c.ok("UID FETCH 3 (MODSEQ)"))
        assert int(fetched.split(b"MODSEQ (")[1].split(b")")[0]) == highest + 1
        await c.close()
    finally:
        await again.server.close()


async def test_a_journal_that_cannot_be_folded_stays_whole(
    imap: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = await _changed_inbox(imap, churn=45)
    folder = imap.store().folder_dir("INBOX")
    journal = (folder / JOURNAL).read_bytes()
    real = os.replace

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if str(dst).endswith(INDEX):
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    await imap.server.close()
    monkeypatch.setattr(os, "replace", real)
    assert (folder / JOURNAL).read_bytes() == journal
    again = await _started(imap)
    try:
        assert await _state_of(again) == before
    finally:
        await again.server.close()


async def test_a_short_journal_is_left_at_shutdown(imap: Running) -> None:
    # Replayed in well under a millisecond, where a fold would add two fsyncs to the shutdown.
    before = await _changed_inbox(imap, churn=0)
    folder = imap.store().folder_dir("INBOX")
    journal = (folder / JOURNAL).read_bytes()
    again = await _restarted(imap)
    try:
        assert (folder / JOURNAL).read_bytes() == journal
        assert await _state_of(again) == before
    finally:
        await again.server.close()
