"""Directory change notification, so a folder learns of a delivery the moment it lands.

On Linux this is inotify, reached through ctypes (no extra dependency) and read by the event loop
with `add_reader`: an IDLE session hears of mail that another program renamed into new/ without
any polling. Where inotify is missing, `Inotify.create` returns None and folders fall back to
comparing directory modification times.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import logging
import os
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("kepmta.imap")

# <sys/inotify.h>
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = 0o2000000
# A Maildir writer makes a message visible by renaming or linking it in (never by writing in
# place), so creation, rename and removal are all that can change what a folder holds.
WATCH_MASK = IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
_EVENT = struct.Struct("iIII")
_READ_SIZE = 64 * 1024


@dataclass(frozen=True)
class DirEvent:
    """One change inside a watched directory: `name` is the entry, empty for the directory itself."""

    mask: int
    name: str

    @property
    def lost_directory(self) -> bool:
        return bool(self.mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED))


# Called with the events of one read, grouped by watch descriptor, and whether the kernel dropped
# events (queue overflow), in which case every watched directory must be looked at again.
EventSink = Callable[[dict[int, list[DirEvent]], bool], None]


class _Libc:
    def __init__(self, lib: ctypes.CDLL) -> None:
        self.init1 = lib.inotify_init1
        self.init1.argtypes = [ctypes.c_int]
        self.init1.restype = ctypes.c_int
        self.add_watch = lib.inotify_add_watch
        self.add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self.add_watch.restype = ctypes.c_int
        self.rm_watch = lib.inotify_rm_watch
        self.rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        self.rm_watch.restype = ctypes.c_int


def _libc() -> _Libc | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return _Libc(lib)
    except (OSError, AttributeError):
        return None


def parse_events(data: bytes) -> list[tuple[int, DirEvent]]:
    """(watch descriptor, event) pairs of a buffer read from an inotify descriptor."""
    out: list[tuple[int, DirEvent]] = []
    pos = 0
    while pos + _EVENT.size <= len(data):
        wd, mask, _cookie, length = _EVENT.unpack_from(data, pos)
        pos += _EVENT.size
        raw = data[pos : pos + length].split(b"\0", 1)[0]
        pos += length
        out.append((wd, DirEvent(mask, os.fsdecode(raw))))
    return out


class Inotify:
    """One inotify descriptor for the whole server, read by the event loop."""

    def __init__(self, libc: _Libc, fd: int, sink: EventSink) -> None:
        self._libc = libc
        self._fd = fd
        self._sink = sink
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closed = False

    @classmethod
    def create(cls, sink: EventSink) -> Inotify | None:
        """A watcher delivering to `sink`, or None where the platform has no inotify."""
        libc = _libc()
        if libc is None:
            return None
        fd = libc.init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            log.warning(
                "inotify unavailable (%s); IMAP falls back to polling", os.strerror(ctypes.get_errno())
            )
            return None
        return cls(libc, fd, sink)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Have `loop` dispatch events as soon as the kernel queues them."""
        self._loop = loop
        loop.add_reader(self._fd, self.drain)

    def watch(self, directory: Path) -> int | None:
        """Watch descriptor for `directory`, or None when it cannot be watched (gone, limit reached)."""
        if self.closed:
            return None
        wd = self._libc.add_watch(self._fd, os.fsencode(directory), WATCH_MASK)
        if wd < 0:
            err = ctypes.get_errno()
            if err == errno.ENOSPC:
                log.warning("inotify watch limit reached; %s falls back to polling", directory)
            return None
        return int(wd)

    def unwatch(self, wd: int) -> None:
        if not self.closed:
            self._libc.rm_watch(self._fd, wd)

    def drain(self) -> None:
        """Read and dispatch whatever the kernel has queued, without blocking."""
        if self.closed:
            return
        grouped: dict[int, list[DirEvent]] = {}
        overflow = False
        while True:
            try:
                data = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                break
            except OSError as e:
                log.warning("reading inotify events failed: %s", e)
                overflow = True
                break
            if not data:
                break
            for wd, event in parse_events(data):
                if event.mask & IN_Q_OVERFLOW:
                    overflow = True
                    continue
                grouped.setdefault(wd, []).append(event)
        if grouped or overflow:
            self._sink(grouped, overflow)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
        os.close(self._fd)
