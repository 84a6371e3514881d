"""What a session reports rests on disk: a change's journal line is synced (with the other
folders' lines of the moment, by the sync process) before the tagged OK and before any other
session hears of the change."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest
from imap_fixtures import (  # noqa: F401  (the fixtures are used by name)
    Running,
    imap_fixture,
    simple_message,
    tls_fixture,
    untagged,
)

from kepmta.imap.index import JOURNAL
from kepmta.syncer import Syncer


async def test_a_change_is_reported_only_once_its_journal_line_is_on_disk(
    imap: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    imap.deliver(simple_message("bir"))
    a, b = await imap.raw(), await imap.raw()
    await a.ok("SELECT INBOX")
    await b.ok("SELECT INBOX")
    synced: list[bytes] = []  # each journal's content when its sync was asked for
    real = Syncer.sync

    async def sync(self: Syncer, paths: Sequence[Path]) -> None:
        synced.extend(p.read_bytes() for p in paths if p.name == JOURNAL)
        await real(self, paths)

    monkeypatch.setattr(Syncer, "sync", sync)
    await a.ok("UID STORE 1 +FLAGS.SILENT (\\Flagged)")
    # The line naming the renamed file (":2,F") was in the journal when its sync was asked for.
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
    entered, gate = asyncio.Event(), asyncio.Event()
    inbox = imap.store().folder_dir("INBOX") / JOURNAL
    real = Syncer.sync

    async def sync(self: Syncer, paths: Sequence[Path]) -> None:
        if inbox in paths:
            entered.set()
            await gate.wait()
        await real(self, paths)

    monkeypatch.setattr(Syncer, "sync", sync)
    store = asyncio.ensure_future(a.ok("UID STORE 1 +FLAGS.SILENT (\\Flagged)"))
    try:
        await entered.wait()  # INBOX's line is being synced, and held there
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
