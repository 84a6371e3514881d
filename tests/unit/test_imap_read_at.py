"""Reading message octets for FETCH: on the event loop when the page cache holds them, in a
thread when they must come from the disk, and the same octets either way."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kepmta.imap import fetch


@pytest.fixture
def message(tmp_path: Path) -> Iterator[tuple[int, bytes]]:
    data = os.urandom(200_000)
    path = tmp_path / "m"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    yield fd, data
    os.close(fd)


async def test_octets_in_memory_are_read_without_a_thread(message: tuple[int, bytes]) -> None:
    fd, data = message
    os.pread(fd, len(data), 0)  # now certainly in the page cache
    assert fetch._cached(fd, 100, 5000) == data[100:5100]
    assert await fetch.read_at(fd, 100, 5000) == data[100:5100]


async def test_octets_on_disk_only_are_read_in_a_thread(message: tuple[int, bytes]) -> None:
    fd, data = message
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # clean pages: dropped from the cache
    assert fetch._cached(fd, 150_000, 4096) is None
    assert await fetch.read_at(fd, 150_000, 4096) == data[150_000:154_096]


async def test_a_read_past_the_end_gives_what_there_is(message: tuple[int, bytes]) -> None:
    fd, data = message
    assert fetch._cached(fd, 199_000, 5000) is None
    assert await fetch.read_at(fd, 199_000, 5000) == data[199_000:]
    assert await fetch.read_at(fd, len(data), 10) == b""


async def test_a_large_read_is_whole_whether_in_memory_or_not(tmp_path: Path) -> None:
    data = os.urandom(3 * fetch._INLINE_READ + 5)
    path = tmp_path / "large"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert await fetch.read_at(fd, 7, len(data)) == data[7:]
    finally:
        os.close(fd)
