"""Moves into new/ made a batch at a time (kepmta.delivery.Publisher): each message lands once, the
folder's size count follows, a batch syncs each directory once, and a move that fails fails only
its own caller."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kepmta import delivery, maildir
from kepmta.delivery import Publisher
from kepmta.maildir import INBOX, Maildir, write_synced


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every directory sync the publisher makes, so a test can count them."""
    calls: list[Path] = []
    real = maildir.fsync_dir

    def counting(path: Path) -> None:
        calls.append(path)
        real(path)

    monkeypatch.setattr(delivery, "fsync_dir", counting)
    return calls


@pytest.fixture
def thread() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(1) as pool:
        yield pool


def _filed(box: Maildir, folder: str, base: str, size: int) -> None:
    box.create(folder)
    write_synced(box.folder_dir(folder) / "tmp" / base, lambda out: out.write(b"x" * size))


async def test_moves_waiting_together_share_one_sync_per_directory(
    tmp_path: Path, synced: list[Path], thread: ThreadPoolExecutor
) -> None:
    ali, ayse = Maildir(tmp_path / "ali"), Maildir(tmp_path / "ayse")
    for box in (ali, ayse):
        box.create(INBOX)
        assert box.size() == 0
    moves = [(ali, INBOX, f"a{i}", 100) for i in range(5)] + [(ayse, "Kanıt", f"k{i}", 10) for i in range(3)]
    for box, folder, base, size in moves:
        _filed(box, folder, base, size)
    publisher = Publisher(thread)
    await asyncio.gather(*(publisher.publish(box, folder, base) for box, folder, base, _ in moves))
    for box, folder, base, _ in moves:
        assert (box.folder_dir(folder) / "new" / base).exists()
        assert not (box.folder_dir(folder) / "tmp" / base).exists()
    assert sorted(synced) == sorted([ali.root / "new", ayse.folder_dir("Kanıt") / "new"])
    assert ali.size() == 500 and ayse.size() == 30


async def test_a_failed_move_fails_only_its_caller(tmp_path: Path, thread: ThreadPoolExecutor) -> None:
    box = Maildir(tmp_path / "ali")
    _filed(box, INBOX, "good", 10)
    publisher = Publisher(thread)
    results = await asyncio.gather(
        publisher.publish(box, INBOX, "good"),
        publisher.publish(box, INBOX, "never-written"),
        publisher.publish(box, "../outside", "x"),
        return_exceptions=True,
    )
    assert results[0] is None
    assert isinstance(results[1], FileNotFoundError)
    assert isinstance(results[2], maildir.MailboxNameError)
    assert (box.root / "new" / "good").exists()
    # The publisher is not left stuck: the next move goes through.
    _filed(box, INBOX, "later", 10)
    await publisher.publish(box, INBOX, "later")
    assert (box.root / "new" / "later").exists()


async def test_moves_arriving_during_a_batch_go_in_the_next(
    tmp_path: Path, synced: list[Path], thread: ThreadPoolExecutor
) -> None:
    box = Maildir(tmp_path / "ali")
    for base in ("first", "second"):
        _filed(box, INBOX, base, 10)
    publisher = Publisher(thread)
    busy = threading.Event()
    thread.submit(busy.wait)  # the thread is busy: the first batch waits for it
    first = asyncio.create_task(publisher.publish(box, INBOX, "first"))
    while publisher._draining is None or publisher._waiting:
        await asyncio.sleep(0)  # until the first batch has been taken
    second = asyncio.create_task(publisher.publish(box, INBOX, "second"))
    await asyncio.sleep(0)
    busy.set()
    await asyncio.gather(first, second)
    assert len(synced) == 2 and box.size() == 20
