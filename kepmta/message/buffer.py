"""The octets a message is read from: `bytes` in memory, or a file read on demand.

A 100 MB spool file is searched and hashed through `FileBuffer` without its pages ever being
resident in this process all at once (an mmap would make them so).
"""

from __future__ import annotations

import os
from typing import Protocol

_HASH_SLICE = 1 << 20


class Buffer(Protocol):
    """What the readers need: `bytes` and `FileBuffer` both qualify."""

    def find(self, sub: bytes, start: int, end: int, /) -> int: ...

    def __getitem__(self, key: slice, /) -> bytes: ...

    def __len__(self) -> int: ...


class FileBuffer:
    """An open file as a `Buffer`, read with pread."""

    _SCAN = 1 << 20

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._size = os.fstat(fd).st_size

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, key: slice, /) -> bytes:
        start, stop, _ = key.indices(self._size)
        return os.pread(self._fd, max(0, stop - start), start) if stop > start else b""

    def find(self, sub: bytes, start: int, end: int, /) -> int:
        end = min(end, self._size)
        at = max(start, 0)
        while at < end:
            # overlap by len(sub) - 1 so a match across two reads is still seen
            chunk = self[at : min(at + self._SCAN + len(sub) - 1, end)]
            found = chunk.find(sub)
            if found >= 0:
                return at + found
            at += self._SCAN
        return -1


class Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...


def hash_range(buf: Buffer, start: int, end: int, hasher: Hasher) -> None:
    """Feed [start, end) to `hasher` in slices so a file is never copied whole."""
    for at in range(start, end, _HASH_SLICE):
        hasher.update(buf[at : min(at + _HASH_SLICE, end)])
