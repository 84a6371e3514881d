"""Folder journals synced in groups: lines are written at once and synced together by the sync
process (`kepmta.syncer`), and `settled` returns only once what was written to the journals asked
about is on disk. Work is counted, not timed."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from kepmta.imap.index import Entry, Header, IndexFile, JournalSync, State, entry_line
from kepmta.syncer import Syncer


class Rounds:
    """Each round asked of the sync process: the journals' content when it was asked for (None for
    one that cannot be read). A test
    may hold the next round (`hold`) until it is let go (`gate`)."""

    def __init__(self) -> None:
        self.asked: list[dict[Path, str | None]] = []
        self.hold = False
        self.entered, self.gate = asyncio.Event(), asyncio.Event()

    def sizes(self) -> list[int]:
        return [len(round_) for round_ in self.asked]


@pytest.fixture
async def rounds(monkeypatch: pytest.MonkeyPatch) -> Rounds:
    seen = Rounds()
    real = Syncer.sync

    async def sync(self: Syncer, paths: Sequence[Path]) -> None:
        seen.asked.append({p: p.read_text() if p.is_file() else None for p in paths})
        if seen.hold:
            seen.entered.set()
            await seen.gate.wait()
        await real(self, paths)

    monkeypatch.setattr(Syncer, "sync", sync)
    return seen


@pytest.fixture
async def journals() -> AsyncIterator[JournalSync]:
    made = JournalSync()
    yield made
    await made.close()


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
    tmp_path: Path, journals: JournalSync, rounds: Rounds
) -> None:
    a, b = _folders(tmp_path, journals, 2)
    a.append([_line(1)])
    b.append([_line(2)])
    a.append([_line(3)])
    assert rounds.asked == []  # written, not yet synced
    await journals.settled([a])
    assert rounds.sizes() == [2]  # b's lines went with a's
    assert rounds.asked[0] == {
        a.journal_path: a.journal_path.read_text(),
        b.journal_path: b.journal_path.read_text(),
    }
    assert _line(3) in a.journal_path.read_text()
    await journals.settled([a, b])  # nothing new: no round
    assert rounds.sizes() == [2]


async def test_waiters_share_a_round_and_later_lines_get_the_next(
    tmp_path: Path, journals: JournalSync, rounds: Rounds
) -> None:
    (a,) = _folders(tmp_path, journals, 1)
    rounds.hold = True
    a.append([_line(1)])
    first = asyncio.ensure_future(journals.settled([a]))
    second = asyncio.ensure_future(journals.settled([a]))
    await rounds.entered.wait()  # the first round is asked for, and held
    a.append([_line(2)])  # written during that round
    third = asyncio.ensure_future(journals.settled([a]))
    rounds.gate.set()
    await asyncio.gather(first, second, third)
    assert rounds.sizes() == [1, 1]  # first and second shared one; third needed the next
    assert _line(2) not in rounds.asked[0][a.journal_path]
    assert _line(2) in rounds.asked[1][a.journal_path]


async def test_a_failed_sync_is_raised_and_tried_again(
    tmp_path: Path, journals: JournalSync, rounds: Rounds
) -> None:
    (a,) = _folders(tmp_path, journals, 1)
    a.append([_line(1)])
    # The sync process cannot open the journal: its folder's path names a file for a moment.
    a.directory.rename(tmp_path / "away")
    a.directory.write_bytes(b"")
    with pytest.raises(OSError, match="Not a directory") as failed:
        await journals.settled([a])
    assert failed.value.errno == errno.ENOTDIR and failed.value.filename == str(a.journal_path)
    a.directory.unlink()
    (tmp_path / "away").rename(a.directory)
    await journals.settled([a])
    assert rounds.sizes() == [1, 1]
    assert a.synced == a.appends


async def test_a_deleted_folder_is_no_error(tmp_path: Path, journals: JournalSync, rounds: Rounds) -> None:
    a, b = _folders(tmp_path, journals, 2)
    a.append([_line(1)])
    b.append([_line(2)])
    os.unlink(a.journal_path)
    await journals.close()  # syncs what is left, as at shutdown
    assert rounds.sizes() == [2]
    assert a.synced == a.appends and b.synced == b.appends


async def test_a_journal_with_nothing_new_is_not_waited_for(
    tmp_path: Path, journals: JournalSync, rounds: Rounds
) -> None:
    a, b = _folders(tmp_path, journals, 2)
    a.append([_line(1)])
    await journals.settled([b])  # b has nothing to sync: no round, a's lines wait
    assert rounds.sizes() == []
    await journals.settled([a, b])
    assert rounds.sizes() == [1]
    b.write_snapshot(_empty())  # a synced snapshot: nothing of b is left to wait for
    b.append([_line(2)])
    a.append([_line(3)])
    await journals.settled([a])
    assert rounds.sizes() == [1, 2]
    assert b.synced == b.appends


def _child(journals: JournalSync) -> asyncio.subprocess.Process:
    proc = journals._syncer._proc
    assert proc is not None
    return proc


async def test_a_sync_process_that_dies_in_a_round_fails_it_and_is_replaced(
    tmp_path: Path, journals: JournalSync, rounds: Rounds
) -> None:
    (a,) = _folders(tmp_path, journals, 1)
    await journals.start()
    first = _child(journals)
    os.kill(first.pid, signal.SIGSTOP)  # it cannot answer the round before it is killed
    rounds.hold = True
    rounds.gate.set()
    a.append([_line(1)])
    waiting = asyncio.ensure_future(journals.settled([a]))
    await rounds.entered.wait()
    await asyncio.sleep(0)  # the round's request is written; it waits for the answer
    os.kill(first.pid, signal.SIGKILL)
    with pytest.raises(OSError, match="sync process stopped"):
        await waiting
    assert a.synced < a.appends  # nothing counts as synced that was not
    await journals.settled([a])  # a new process syncs it
    assert _child(journals).pid != first.pid and a.synced == a.appends


async def test_a_sync_process_gone_between_rounds_is_started_again(
    tmp_path: Path, journals: JournalSync, rounds: Rounds
) -> None:
    (a,) = _folders(tmp_path, journals, 1)
    await journals.start()
    first = _child(journals)
    first.kill()
    await first.wait()
    a.append([_line(1)])
    await journals.settled([a])
    assert _child(journals).pid != first.pid and a.synced == a.appends
