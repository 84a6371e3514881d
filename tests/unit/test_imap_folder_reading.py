"""A large folder not in memory is read on a thread (`StoreRegistry.acquire`), so the event loop
serves other sessions meanwhile; a small one is read on the spot. Which thread read a folder, and
how often, is recorded, not timed."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

import pytest

from kepmta.imap import mailbox
from kepmta.imap.index import INDEX, JOURNAL
from kepmta.imap.mailbox import FolderStore, StoreRegistry, heavy
from kepmta.imap.notify import Inotify
from kepmta.maildir import Maildir


class Reads:
    """Each FolderStore.read: whether it ran on the event loop's thread. A test may hold the next
    read until it lets it go, before it looks at the folder or, with `after`, once it has."""

    def __init__(self) -> None:
        self.on_loop: list[bool] = []
        self.hold = False
        self.after = False
        self.entered, self.gate = threading.Event(), threading.Event()

    def held(self) -> None:
        if self.hold:
            self.entered.set()
            self.gate.wait(60)  # only a guard against a hang: the tests assert order, not time


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Reads:
    seen = Reads()
    real = FolderStore.read
    loop_thread = threading.current_thread()

    def read(self: FolderStore) -> None:
        seen.on_loop.append(threading.current_thread() is loop_thread)
        if not seen.after:
            seen.held()
        real(self)
        if seen.after:
            seen.held()

    monkeypatch.setattr(FolderStore, "read", read)
    return seen


@pytest.fixture
async def registry() -> AsyncIterator[StoreRegistry]:
    made = StoreRegistry()
    inotify = Inotify.create(made.dispatch)
    if inotify is not None:
        inotify.attach(asyncio.get_running_loop())
        made.use_inotify(inotify)
    yield made
    made.close()
    if inotify is not None:
        inotify.close()
    await made.journals.all_settled()


def _fill(md: Maildir, n: int, folder: str = "INBOX") -> None:
    def write(f: BinaryIO) -> None:
        f.write(b"Subject: x\r\n\r\nbody\r\n")

    for i in range(n):
        md.deliver(folder, f"{1_700_000_000 + i}.M{i}P1.kepmta", write)


def _inbox(root: Path, n: int) -> Maildir:
    """An account at `root` whose INBOX holds `n` messages."""
    md = Maildir(root)
    md.create("INBOX")
    _fill(md, n)
    return md


def test_heavy_is_judged_by_the_index_or_else_the_directories(tmp_path: Path) -> None:
    md = Maildir(tmp_path)
    md.create("INBOX")
    assert not heavy(tmp_path)  # empty directories, no index
    _fill(md, 300)  # new/ grows past its first block
    assert os.stat(tmp_path / "new").st_size > mailbox._HEAVY_DIRECTORY
    assert heavy(tmp_path)
    (tmp_path / INDEX).write_bytes(b"x" * 1000)  # an index says more than the directories
    assert not heavy(tmp_path)
    (tmp_path / INDEX).write_bytes(b"x" * (1000 + mailbox._HEAVY_INDEX // mailbox._JOURNAL_WEIGHT))
    assert not heavy(tmp_path)
    # The journal's lines cost more to read than the snapshot's table, byte for byte.
    (tmp_path / INDEX).write_bytes(b"x" * 1000)
    (tmp_path / JOURNAL).write_bytes(b"x" * (mailbox._HEAVY_INDEX // mailbox._JOURNAL_WEIGHT))
    assert heavy(tmp_path)
    assert not heavy(tmp_path / "missing")


async def test_a_large_folder_is_read_once_on_a_thread_for_every_session_waiting(
    tmp_path: Path, registry: StoreRegistry, reads: Reads
) -> None:
    _inbox(tmp_path, 300)
    first, second = await asyncio.gather(
        registry.acquire("INBOX", tmp_path), registry.acquire("INBOX", tmp_path)
    )
    assert first is second and first.holders == 2
    assert reads.on_loop == [False]
    assert len(first.messages) == 300 and (tmp_path / INDEX).exists()
    registry.release(first)
    registry.release(second)
    again = await registry.acquire("INBOX", tmp_path)  # cached: not read again
    assert again is first and reads.on_loop == [False]


async def test_a_small_folder_is_read_on_the_spot(
    tmp_path: Path, registry: StoreRegistry, reads: Reads
) -> None:
    _inbox(tmp_path, 3)
    store = await registry.acquire("INBOX", tmp_path)
    assert reads.on_loop == [True] and len(store.messages) == 3


async def test_mail_arriving_while_the_folder_is_read_is_not_lost(
    tmp_path: Path, registry: StoreRegistry, reads: Reads
) -> None:
    md = _inbox(tmp_path, 300)
    reads.hold = reads.after = True
    opening = asyncio.ensure_future(registry.acquire("INBOX", tmp_path))
    await asyncio.to_thread(reads.entered.wait)
    # Delivered after the read looked at the folder, before it is done: only its inotify event,
    # taken by the loop meanwhile (held for the store), tells of it.
    path = md.deliver("INBOX", "1800000000.late.kepmta", lambda f: f.write(b"Subject: late\r\n\r\n"))
    await asyncio.sleep(0.05)  # lets the loop take the event
    assert not opening.done()
    reads.gate.set()
    store = await opening
    store.refresh()
    assert len(store.messages) == 301
    assert any(m.base == "1800000000.late.kepmta" for m in store.messages.values())
    assert path.name in os.listdir(tmp_path / "new")


async def test_a_folder_renamed_away_while_it_is_read_is_not_kept(
    tmp_path: Path, registry: StoreRegistry, reads: Reads
) -> None:
    md = Maildir(tmp_path)
    directory = md.create("Arsiv")
    _fill(md, 300, folder="Arsiv")
    reads.hold = True
    opening = asyncio.ensure_future(registry.acquire("Arsiv", directory))
    await asyncio.to_thread(reads.entered.wait)
    # RENAME, as the session does it: the directory moves, then its store is forgotten.
    directory.rename(tmp_path / ".Eski")
    registry.forget(directory)
    reads.hold = False
    reads.gate.set()
    store = await opening
    # The read that was under way is dropped; what the name holds now (nothing) is read instead.
    assert reads.on_loop == [False, True]
    assert not store.dead and len(store.messages) == 0
    assert registry.get(directory) is store


async def test_a_failed_read_reaches_every_waiter_and_the_next_acquire_reads_again(
    tmp_path: Path, registry: StoreRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    _inbox(tmp_path, 300)
    real = FolderStore.read
    failures = [PermissionError(13, "Permission denied")]

    def read(self: FolderStore) -> None:
        if failures:
            raise failures.pop()
        real(self)

    monkeypatch.setattr(FolderStore, "read", read)
    results = await asyncio.gather(
        registry.acquire("INBOX", tmp_path), registry.acquire("INBOX", tmp_path), return_exceptions=True
    )
    assert all(isinstance(r, PermissionError) for r in results)
    assert registry.get(tmp_path) is None
    store = await registry.acquire("INBOX", tmp_path)
    assert len(store.messages) == 300
