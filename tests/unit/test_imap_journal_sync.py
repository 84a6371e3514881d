"""Folder journals synced in groups: lines are written at once and synced together on a thread,
and `settled` returns only once what was written to the journals asked about is on disk. Work is
counted, not timed."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from pathlib import Path

import pytest

from kepmta.imap import index as index_module
from kepmta.imap.index import JOURNAL, Entry, Header, IndexFile, JournalSync, State, entry_line


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The journal content each fsync of a journal found on disk, in order."""
    seen: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(JOURNAL):
            seen.append(os.pread(fd, 1 << 20, 0).decode())
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


@pytest.fixture
def rounds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many journals each hop to the syncing thread took."""
    counted: list[int] = []
    real = index_module._sync_journals

    def counting(journals: list[IndexFile]) -> None:
        counted.append(len(journals))
        real(journals)

    monkeypatch.setattr(index_module, "_sync_journals", counting)
    return counted


def _line(uid: int) -> str:
    return entry_line(Entry(uid, uid, 100, 1, "cur", f"m{uid}:2,", frozenset()))


def _empty() -> State:
    return State(Header(1, 1, 1, 0, (0, 0), True), {}, [])


def _folders(tmp_path: Path, journals: JournalSync, n: int) -> list[IndexFile]:
    out = []
    for i in range(n):
        (tmp_path / str(i)).mkdir()
        out.append(IndexFile(tmp_path / str(i), journals))
    return out


async def test_journals_written_together_are_synced_in_one_round(
    tmp_path: Path, synced: list[str], rounds: list[int]
) -> None:
    journals = JournalSync()
    a, b = _folders(tmp_path, journals, 2)
    a.append([_line(1)])
    b.append([_line(2)])
    a.append([_line(3)])
    assert synced == []  # written, not yet synced
    await journals.settled([a])
    assert rounds == [2]  # b's lines went with a's
    assert sorted(synced) == sorted([a.journal_path.read_text(), b.journal_path.read_text()])
    assert _line(3) in a.journal_path.read_text()
    await journals.settled([a, b])  # nothing new: no round
    assert rounds == [2]


async def test_waiters_share_a_round_and_later_lines_get_the_next(
    tmp_path: Path, synced: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    journals = JournalSync()
    (a,) = _folders(tmp_path, journals, 1)
    entered, gate = threading.Event(), threading.Event()
    rounds: list[int] = []
    real = index_module._sync_journals

    def held(batch: list[IndexFile]) -> None:
        rounds.append(len(batch))
        entered.set()
        gate.wait()
        real(batch)

    monkeypatch.setattr(index_module, "_sync_journals", held)
    a.append([_line(1)])
    first = asyncio.ensure_future(journals.settled([a]))
    second = asyncio.ensure_future(journals.settled([a]))
    await asyncio.to_thread(entered.wait)  # the first round is on its thread
    a.append([_line(2)])  # written during that round
    third = asyncio.ensure_future(journals.settled([a]))
    gate.set()
    await asyncio.gather(first, second, third)
    assert rounds == [1, 1]  # first and second shared one; third needed the next
    assert len(synced) == 2 and _line(2) in synced[1]


async def test_a_failed_sync_is_raised_and_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rounds: list[int]
) -> None:
    journals = JournalSync()
    (a,) = _folders(tmp_path, journals, 1)
    real = os.fsync
    failures = [OSError(errno.EIO, "I/O error")]

    def failing(fd: int) -> None:
        if failures:
            raise failures.pop()
        real(fd)

    monkeypatch.setattr(os, "fsync", failing)
    a.append([_line(1)])
    with pytest.raises(OSError, match="I/O error"):
        await journals.settled([a])
    await journals.settled([a])
    assert rounds == [1, 1]


async def test_a_deleted_folder_is_no_error(tmp_path: Path, rounds: list[int]) -> None:
    journals = JournalSync()
    a, b = _folders(tmp_path, journals, 2)
    a.append([_line(1)])
    b.append([_line(2)])
    os.unlink(a.journal_path)
    await journals.all_settled()
    assert rounds == [2]


async def test_a_journal_with_nothing_new_is_not_waited_for(tmp_path: Path, rounds: list[int]) -> None:
    journals = JournalSync()
    a, b = _folders(tmp_path, journals, 2)
    a.append([_line(1)])
    await journals.settled([b])  # b has nothing to sync: no round, a's lines wait
    assert rounds == []
    await journals.settled([a, b])
    assert rounds == [1]
    b.write_snapshot(_empty())  # a synced snapshot: nothing of b is left to wait for
    b.append([_line(2)])
    a.append([_line(3)])
    await journals.settled([a])
    assert rounds == [1, 2]
    assert b.synced == b.appends
