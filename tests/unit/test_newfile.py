"""kepmta.newfile: a file created on a thread is either the caller's or removed, whatever the
caller does meanwhile."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from kepmta.newfile import NewFile


async def _settle() -> None:
    """Until the default executor has run what was given to it and its callbacks have run."""
    await asyncio.get_running_loop().run_in_executor(None, lambda: None)
    for _ in range(3):
        await asyncio.sleep(0)


async def test_the_file_is_the_callers(tmp_path: Path) -> None:
    new = NewFile(tmp_path / "m")
    fd = await new.fd()
    os.write(fd, b"kept")
    new.abandon()  # too late: it was handed over
    await _settle()
    os.close(fd)
    assert (tmp_path / "m").read_bytes() == b"kept"
    assert (tmp_path / "m").stat().st_mode & 0o777 == 0o600


async def test_an_existing_file_is_not_taken(tmp_path: Path) -> None:
    (tmp_path / "m").write_bytes(b"someone else's")
    with pytest.raises(FileExistsError):
        await NewFile(tmp_path / "m").fd()
    assert (tmp_path / "m").read_bytes() == b"someone else's"


async def test_an_abandoned_file_is_removed(tmp_path: Path) -> None:
    new = NewFile(tmp_path / "m")
    new.abandon()
    new.abandon()  # once is enough, twice does no harm
    await _settle()
    assert list(tmp_path.iterdir()) == []


async def test_a_caller_cancelled_while_it_is_created_leaves_nothing(tmp_path: Path) -> None:
    new = NewFile(tmp_path / "m")
    waiting = asyncio.ensure_future(new.fd())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await _settle()
    assert list(tmp_path.iterdir()) == []
