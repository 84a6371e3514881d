"""Folder sizes for quota: exact after our own deliveries, even concurrent ones, without walking
the folder again; recounted after a change made by anyone else."""

from __future__ import annotations

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
