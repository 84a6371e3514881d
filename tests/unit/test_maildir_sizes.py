"""Folder sizes for quota: exact after our own deliveries, even concurrent ones, without walking
the folder again; recounted after a change made by anyone else."""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import pytest

from kepmta import maildir
from kepmta.maildir import INBOX, Maildir


@pytest.fixture
def walks(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every full count of a folder, so a test can see when one happens."""
    counted: list[Path] = []
    real = maildir._count

    def counting(folder: Path) -> int:
        counted.append(folder)
        return real(folder)

    monkeypatch.setattr(maildir, "_count", counting)
    return counted


def _writer(size: int):  # type: ignore[no-untyped-def]
    def write(out: BinaryIO) -> None:
        out.write(b"x" * size)

    return write


def _on_disk(box: Maildir) -> int:
    return sum(p.stat().st_size for sub in ("new", "cur") for p in (box.root / sub).iterdir())


def test_concurrent_deliveries_keep_the_count_exact_without_a_walk(tmp_path: Path, walks: list[Path]) -> None:
    box = Maildir(tmp_path / "ali")
    box.create(INBOX)
    assert box.size() == 0 and len(walks) == 1
    with ThreadPoolExecutor(8) as pool:
        for i in range(200):
            pool.submit(box.deliver, INBOX, f"m{i}", _writer(100 + i))
    assert box.size() == _on_disk(box) == sum(100 + i for i in range(200))
    assert len(walks) == 1  # never walked again: each delivery added its own size


def test_a_change_by_another_program_is_counted(tmp_path: Path, walks: list[Path]) -> None:
    box = Maildir(tmp_path / "ali")
    box.deliver(INBOX, "ours", _writer(1000))
    assert box.size() == 1000
    (box.root / "new" / "theirs").write_bytes(b"y" * 500)  # another program (Dovecot, mbsync)
    os.utime(box.root / "new", ns=(1, 1))  # an mtime no delivery of ours can have left
    assert box.size() == 1500
    assert len(walks) == 2


async def test_used_counts_on_a_thread_only_what_changed_behind_its_back(
    tmp_path: Path, walks: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    box = Maildir(tmp_path / "ali")
    box.create("Arşiv")
    box.deliver(INBOX, "ours", _writer(1000))
    hops: list[object] = []
    real = asyncio.to_thread

    async def hop(fn, *args):  # type: ignore[no-untyped-def]
        hops.append(fn)
        return await real(fn, *args)

    monkeypatch.setattr(asyncio, "to_thread", hop)
    assert await box.used() == 1000  # nothing counted yet: counted on a thread
    assert len(hops) == 1 and len(walks) == 2
    box.deliver("Arşiv", "ours too", _writer(300))
    assert await box.used() == 1300  # our own delivery kept the count: read on the loop
    assert len(hops) == 1 and len(walks) == 2
    (box.root / "new" / "theirs").write_bytes(b"y" * 500)
    os.utime(box.root / "new", ns=(1, 1))
    assert await box.used() == 1800 == box.size()
    assert len(hops) == 2 and len(walks) == 3
