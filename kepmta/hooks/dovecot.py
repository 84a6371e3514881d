"""Read events from Dovecot: ContentHandover evidence when a recipient reads through Dovecot.

Dovecot's push-notification Lua driver runs `conf/dovecot/kepmta-read-events.lua` inside the IMAP
process for every MessageRead event. The script only appends one line to a spool file, since it
holds up the client's reply; this module does the rest:

    <user> TAB <mailbox> TAB <uidvalidity> TAB <uid> LF

in files `<spool>/<YYYYMMDD>.events` (UTC day of the write, opened O_APPEND, one write(2) a line).
A MessageRead event names no file and no Message-ID, only mailbox, UIDVALIDITY and UID, so each line
is resolved through Dovecot's `dovecot-uidlist` in that folder (UID → Maildir base name) to the
message file, and handed to the same `ReadHook` our own IMAP server feeds.

How far a file has been processed is kept in `<YYYYMMDD>.offset` (written atomically after each
batch). A crash can only replay lines after the last saved offset, and ReadHook makes ContentHandover
once per message and recipient, so a replay adds nothing. A file is renamed `<YYYYMMDD>.done` once it
is read to the end, a newer file exists and it has been quiet for `RETIRE_AFTER` seconds: writers
open the day's file for each line, so none can still hold the old one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from kepmta.addresses import AddressError
from kepmta.maildir import MailboxNameError, Maildir

log = logging.getLogger(__name__)

EVENTS_SUFFIX = ".events"
OFFSET_SUFFIX = ".offset"
DONE_SUFFIX = ".done"
UIDLIST = "dovecot-uidlist"
RETIRE_AFTER = 120.0
_CHUNK = 1024 * 1024
# Dovecot assigns the UID (and writes dovecot-uidlist) and renames files as it syncs; a lookup that
# falls between a rename's two directory scans is retried a few times before the line is dropped.
_FIND_ATTEMPTS = 5
_FIND_PAUSE = 0.2


class Opener(Protocol):
    async def opened(self, user: str, path: Path) -> None: ...


@dataclass(frozen=True)
class ReadEvent:
    user: str
    mailbox: str
    uidvalidity: int
    uid: int

    @classmethod
    def parse(cls, line: bytes) -> ReadEvent | None:
        try:
            user, mailbox, validity, uid = line.decode("utf-8").split("\t")
            return cls(user, mailbox, int(validity), int(uid))
        except ValueError:  # also UnicodeDecodeError
            return None


def uidlist_base(uidlist: Path, uidvalidity: int, uid: int) -> str | None:
    """The Maildir base name Dovecot gave `uid`, or None if the list does not have it.

    Dovecot wiki "MailboxFormat/Maildir", dovecot-uidlist version 3: a header
    `3 V<uidvalidity> N<next uid> …`, then one record a message, `<uid> [<key><value> …] :<file name>`.
    The stored name may carry an old `:2,<flags>` suffix; the base before ':' never changes.
    """
    try:
        text = uidlist.read_text("utf-8", errors="replace")
    except FileNotFoundError:
        return None
    lines = text.splitlines()
    if not lines:
        return None
    header = lines[0].split()
    if not header or header[0] != "3":
        log.warning("dovecot read events: %s is not a version 3 dovecot-uidlist", uidlist)
        return None
    if f"V{uidvalidity}" not in header[1:]:
        # A different UIDVALIDITY means the UIDs were reassigned since the read (RFC 3501 §2.3.1.1).
        log.warning("dovecot read events: UIDVALIDITY %d no longer matches %s", uidvalidity, uidlist)
        return None
    wanted = str(uid)
    for record in lines[1:]:
        head, sep, name = record.partition(" :")
        if sep and head.split(" ", 1)[0] == wanted:
            return name.split(":", 1)[0]
    return None


class DovecotReadSpool:
    """Consumes the spool folder the Lua script writes, feeding each read to `hook`."""

    def __init__(
        self, spool: Path, maildir: Callable[[str], Maildir], hook: Opener, poll: float = 0.5
    ) -> None:
        self.spool = spool
        self.maildir = maildir
        self.hook = hook
        self.poll = poll

    async def run(self) -> None:
        self.spool.mkdir(parents=True, exist_ok=True)
        log.info("reading Dovecot read events from %s", self.spool)
        while True:
            try:
                await self.drain()
            except asyncio.CancelledError:
                raise
            except Exception:
                # Evidence must not be skipped: the offset stays before the failed line, and the
                # next round tries it again once the database or disk is back.
                log.exception("dovecot read events: processing failed, retrying")
            await asyncio.sleep(self.poll)

    async def drain(self) -> int:
        """Process every complete new line in the spool; the number of lines handled."""
        files = sorted(p for p in self.spool.iterdir() if p.name.endswith(EVENTS_SUFFIX))
        handled = 0
        for i, events in enumerate(files):
            handled += await self._drain_file(events)
            if i < len(files) - 1:
                await asyncio.to_thread(_retire_if_finished, events)
        return handled

    async def _drain_file(self, events: Path) -> int:
        offset = _load_offset(events)
        try:
            size = events.stat().st_size
        except FileNotFoundError:
            return 0
        handled = 0
        while offset < size:
            chunk = await asyncio.to_thread(_read_from, events, offset)
            end = chunk.rfind(b"\n")
            if end < 0:
                break  # the rest is a line still being written
            position = offset
            try:
                for line in chunk[: end + 1].splitlines(keepends=True):
                    await self._handle(line.rstrip(b"\n"))
                    position += len(line)
                    handled += 1
            finally:
                if position != offset:
                    await asyncio.to_thread(_save_offset, events, position)
            offset = position
        return handled

    async def _handle(self, line: bytes) -> None:
        event = ReadEvent.parse(line)
        if event is None:
            log.warning("dovecot read events: malformed line %r", line[:200])
            return
        try:
            store = self.maildir(event.user)
            folder = store.folder_dir(event.mailbox)
        except (AddressError, MailboxNameError) as e:
            log.warning("dovecot read events: %s", e)
            return
        for attempt in range(_FIND_ATTEMPTS):
            if attempt:
                await asyncio.sleep(_FIND_PAUSE)
            base = await asyncio.to_thread(uidlist_base, folder / UIDLIST, event.uidvalidity, event.uid)
            path = store.find(event.mailbox, base) if base else None
            if path is None:
                continue
            pinned = _pin(path, folder / "tmp")
            if pinned is None:
                continue
            try:
                await self.hook.opened(event.user, pinned)
            finally:
                if pinned != path:
                    pinned.unlink(missing_ok=True)
            return
        log.warning(
            "dovecot read events: %s %s UID %d not found (expunged?)", event.user, event.mailbox, event.uid
        )


def _pin(path: Path, tmp: Path) -> Path | None:
    """A name for `path` that stays valid while the hook reads it.

    Dovecot renames a message file whenever its flags change (and may do so right after reporting
    the read), so a second hard link in the folder's tmp/ keeps the file reachable. Where a link is
    not allowed (another owner under fs.protected_hardlinks), the file's own name has to do.
    None: the file was renamed away before we got to it.
    """
    link = tmp / f"kepmta-read.{uuid.uuid4().hex}"
    try:
        os.link(path, link)
    except FileNotFoundError:
        return path if path.exists() else None
    except OSError:
        return path
    return link


def _read_from(path: Path, offset: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(_CHUNK)


def _offset_path(events: Path) -> Path:
    return events.with_name(events.name.removesuffix(EVENTS_SUFFIX) + OFFSET_SUFFIX)


def _load_offset(events: Path) -> int:
    try:
        return int(_offset_path(events).read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def _save_offset(events: Path, offset: int) -> None:
    target = _offset_path(events)
    tmp = target.with_name(target.name + ".tmp")
    with tmp.open("w") as f:
        f.write(f"{offset}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)


def _retire_if_finished(events: Path) -> None:
    try:
        st = events.stat()
    except FileNotFoundError:
        return
    if _load_offset(events) < st.st_size or time.time() - st.st_mtime < RETIRE_AFTER:
        return
    os.replace(events, events.with_name(events.name.removesuffix(EVENTS_SUFFIX) + DONE_SUFFIX))
    _offset_path(events).unlink(missing_ok=True)
