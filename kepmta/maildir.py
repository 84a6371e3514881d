"""A user's Maildir++ store: folder names and paths, and crash-safe delivery.

Layout (the one Dovecot reads by default, so it can serve the same store): the account's root holds
`cur/ new/ tmp/` for INBOX; every other folder is a sibling directory `.<name>` with the name in
modified UTF-7 (RFC 3501 §5.1.3) and `.` as the hierarchy separator.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

INBOX = "INBOX"
SEPARATOR = "."
_SUBDIRS = ("cur", "new", "tmp")
_HOST = re.sub(r"[/:.]", "_", socket.gethostname()) or "localhost"


class MailboxNameError(ValueError):
    """A folder name that cannot name a Maildir++ folder safely."""


def encode_mutf7(name: str) -> str:
    """RFC 3501 §5.1.3: printable ASCII stands for itself ('&' as '&-'), the rest as modified base64."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(raw).decode().rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)


def decode_mutf7(text: str) -> str:
    """Inverse of `encode_mutf7`; raises MailboxNameError on a malformed name."""
    if "&" not in text and text.isascii() and text.isprintable():
        return text  # printable ASCII stands for itself: the usual name, read on every LIST
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "&":
            if not 0x20 <= ord(ch) <= 0x7E:
                raise MailboxNameError(f"mailbox name has a raw non-ASCII character: {text!r}")
            out.append(ch)
            i += 1
            continue
        end = text.find("-", i + 1)
        if end < 0:
            raise MailboxNameError(f"unterminated modified-UTF-7 sequence in {text!r}")
        chunk = text[i + 1 : end]
        if not chunk:
            out.append("&")
        else:
            b64 = chunk.replace(",", "/")
            try:
                raw = base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True)
                out.append(raw.decode("utf-16-be"))
            except (ValueError, UnicodeDecodeError) as e:
                raise MailboxNameError(f"bad modified-UTF-7 sequence in {text!r}") from e
        i = end + 1
    return "".join(out)


def fsync_dir(path: Path) -> None:
    """Make a new or renamed directory entry in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _stamp(folder: str) -> tuple[int, int]:
    """When new/ and cur/ last changed: any delivery, flag change or expunge changes one of them."""
    try:
        return (os.stat(folder + "/new").st_mtime_ns, os.stat(folder + "/cur").st_mtime_ns)
    except FileNotFoundError:
        return (0, 0)


def _count(folder: str) -> int:
    total = 0
    for sub in ("/cur", "/new"):
        with contextlib.suppress(FileNotFoundError), os.scandir(folder + sub) as entries:
            for entry in entries:
                with contextlib.suppress(FileNotFoundError):
                    total += entry.stat().st_size
    return total


@dataclass(frozen=True)
class _Counted:
    stamp: tuple[int, int]
    total: int


class SizeCache:
    """Folder sizes for quota, recounted only when the folder changed since it was counted, so a
    mailbox of thousands of messages is not walked on every delivery and every MAIL FROM.

    Our own changes (deliveries, and the IMAP server's appends, flag renames and expunges) adjust
    the count under the lock that also guards reading the stamp, so a count is never invalidated
    by a change of ours that happened while it was looked at; any other change (another program,
    Dovecot) makes the next look recount.

    Folders are keyed by their path as text: every quota look stats each folder, and making,
    joining and hashing Path objects cost more than the stat calls.
    """

    def __init__(self) -> None:
        self._folders: dict[str, _Counted] = {}
        self._lock = threading.Lock()  # deliveries and lookups run on worker threads

    def folder_size(self, folder: str) -> int:
        with self._lock:
            stamp = _stamp(folder)  # taken before counting: a change meanwhile makes the next look recount
            counted = self._folders.get(folder)
            if counted is not None and counted.stamp == stamp:
                return counted.total
        total = _count(folder)
        with self._lock:
            self._folders[folder] = _Counted(stamp, total)
        return total

    def known(self, folders: list[str]) -> int | None:
        """The sum of the counts of `folders` if nothing changed any since (two stat calls each),
        else None."""
        total = 0
        with self._lock:
            for folder in folders:
                counted = self._folders.get(folder)
                if counted is None or counted.stamp != _stamp(folder):
                    return None
                total += counted.total
        return total

    @contextlib.contextmanager
    def changing(self, directory: Path, delta: int) -> Iterator[None]:
        """Around one rename or unlink in `directory` that changes its size by `delta` bytes (0
        for a flag change): the count follows it. Without this, every flag change or expunge of a
        busy IMAP folder made the next quota look (each APPEND) recount the whole folder."""
        folder = os.fspath(directory)
        with self._lock:
            counted = self._folders.get(folder)
            if counted is None:
                # Nothing counted to follow (the next look counts afresh): no stat calls on the
                # way of every flag change.
                yield
                return
            before = _stamp(folder)
            yield
            del self._folders[folder]
            if counted.stamp == before:  # nothing else changed it meanwhile
                self._folders[folder] = _Counted(_stamp(folder), counted.total + delta)


class Maildir:
    """One account's mail store rooted at `root`."""

    def __init__(self, root: Path, sizes: SizeCache | None = None) -> None:
        self.root = root
        self.sizes = sizes or SizeCache()

    def folder_dir(self, name: str) -> Path:
        """Directory of folder `name` (a Unicode IMAP name with '/' or '.' hierarchy)."""
        if name.upper() == INBOX:
            return self.root
        parts = re.split(r"[/.]", name)
        if any(p in ("", "..") or "\x00" in p for p in parts):
            raise MailboxNameError(f"not a valid folder name: {name!r}")
        return self.root / ("." + SEPARATOR.join(encode_mutf7(p) for p in parts))

    def create(self, name: str) -> Path:
        folder = self.folder_dir(name)
        for sub in _SUBDIRS:
            (folder / sub).mkdir(parents=True, exist_ok=True)
        if folder != self.root:
            # Dovecot and Courier only treat a dot-directory as a folder once this marker exists.
            (folder / "maildirfolder").touch()
        return folder

    def folders(self) -> Iterator[str]:
        """Names of existing folders, INBOX first."""
        root = os.fspath(self.root)
        if os.path.isdir(root + "/cur"):
            yield INBOX
        for name in sorted(self._dot_dirs() or ()):
            if os.path.isdir(f"{root}/{name}/cur"):
                try:
                    yield SEPARATOR.join(decode_mutf7(p) for p in name[1:].split(SEPARATOR))
                except MailboxNameError:
                    continue

    def _dot_dirs(self) -> list[str] | None:
        """The names of the root's dot-directories (the folders but INBOX, and perhaps others), or
        None without a root. As text, from one listing that gives each entry's type: LIST and every
        quota look read them, and Path objects or a stat per entry cost more than the listing."""
        try:
            with os.scandir(self.root) as entries:
                return [e.name for e in entries if e.name.startswith(".") and e.is_dir()]
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _folder_dirs(self) -> list[str]:
        names = self._dot_dirs()
        if names is None:
            return []
        root = os.fspath(self.root)
        return [root, *(f"{root}/{name}" for name in names)]

    def size(self) -> int:
        """Bytes of every message in every folder: what counts against the account's quota."""
        return sum(self.sizes.folder_size(folder) for folder in self._folder_dirs())

    async def used(self) -> int:
        """`size()`, on the event loop when every folder's count is still current: a listing of
        the root and two stat calls per folder cost less than the hand-off to a thread and back,
        which under load waits a turn of every other session's work. Else counted on a thread."""
        known = self.sizes.known(self._folder_dirs())
        return known if known is not None else await asyncio.to_thread(self.size)

    @staticmethod
    def unique_name(token: str) -> str:
        """A Maildir base name fixed by `token`, so a retried delivery can find its earlier attempt."""
        if not re.fullmatch(r"[A-Za-z0-9_-]+", token):
            raise ValueError(f"unsafe Maildir token {token!r}")
        return f"K{token}.{_HOST}"

    def find(self, name: str, base: str) -> Path | None:
        """The delivered file with base name `base` in folder `name`, in new/ or cur/ (any flags)."""
        folder = self.folder_dir(name)
        candidate = folder / "new" / base
        if candidate.exists():
            return candidate
        cur = folder / "cur"
        if cur.is_dir():
            for entry in os.scandir(cur):
                if entry.name == base or entry.name.startswith(base + ":"):
                    return Path(entry.path)
        return None

    def deliver(self, name: str, base: str, write: Callable[[BinaryIO], None]) -> Path:
        """Write a message with `write` into folder `name` as tmp → fsync → new → fsync dir.

        The message is visible to readers only once complete; a crash leaves at most a file in tmp/.
        """
        write_synced(self.tmp_path(name, base), write)
        return self.publish(name, base)

    def tmp_path(self, name: str, base: str) -> Path:
        """Where a message with base name `base` is written before `publish` moves it into `name`."""
        folder = self.folder_dir(name)
        if not (folder / "tmp").is_dir():  # the first message of this folder: make it
            self.create(name)
        return folder / "tmp" / base

    def publish(self, name: str, base: str) -> Path:
        """Move the complete, synced message `base` from tmp/ into new/ of folder `name`."""
        final = self.move(name, base)
        fsync_dir(final.parent)
        return final

    def move(self, name: str, base: str) -> Path:
        """`publish` without the directory sync, for a caller that syncs several moves at once."""
        folder = self.folder_dir(name)
        tmp, final = folder / "tmp" / base, folder / "new" / base
        with self.sizes.changing(folder, os.stat(tmp).st_size):
            os.rename(tmp, final)
        return final


def write_synced(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """A new file written by `write` and on disk when this returns; no file if this raises."""
    try:
        with open(path, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        # A part written before the disk filled up would hold on to the space it took until the
        # job's next attempt (or for good, if the job is done by then).
        path.unlink(missing_ok=True)
        raise
