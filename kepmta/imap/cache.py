"""Message summaries (`imap/summary.py`) kept where SEARCH, SORT and FETCH find them without opening
the message: a bounded least-recently-used set in memory for the whole process, and `kepmta-cache`
beside each folder's index, so a restart does not parse every message again.

The file is a log of one record line per summary, keyed by the message's Maildir base name (the
content of a base name never changes; a rename only changes flags), the latest line for a base
winning. Loading it keeps only each record's offset; a record is read when a message misses the
memory set. Records of expunged messages are dropped when the file is rewritten, which happens once
it holds more than twice as many records as the folder has messages.

Everything touching files (the record file, reading and parsing messages) runs in worker threads, a
batch of messages per hop, so neither a cold folder nor a large range holds the event loop.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from kepmta.imap import fetch
from kepmta.imap.mailbox import FolderStore, MessageFile
from kepmta.imap.sort import base_subject, first_mailbox
from kepmta.imap.summary import ADDRESS_FIELDS, Summary, decode, encode, record_base
from kepmta.message.addresses import searchable
from kepmta.message.entity import parse, parse_header_only
from kepmta.message.header import find_body
from kepmta.message.words import decode_words

log = logging.getLogger("kepmta.imap")

CACHE = "kepmta-cache"
# The version changes whenever a summary of the same message would come out different, so that
# records made by an older reader are made again rather than trusted.
_MAGIC = b"kepmta-cache 4\n"
# A message up to this size is read whole when first summarised: its MIME structure (BODY,
# BODYSTRUCTURE) then costs no second read. Larger ones are read only as far as their header.
_WHOLE = 256 * 1024
_BATCH = 64
_COMPACT_SLACK = 256
_FOLDERS = 256


@dataclass(frozen=True)
class Wanted:
    """A message to summarise: where its file is now, and its size as the folder index has it."""

    base: str
    path: Path
    size: int


def summarize(data: bytes, size: int, *, whole: bool) -> Summary:
    """The summary of a message of `size` octets; `data` is all of it when `whole`, else its header."""
    top = parse(data) if whole else parse_header_only(data)
    sent, sent_day = _sent(top.header("Date"))
    fields = [(f.name.upper(), decode_words(f.value).casefold()) for f in top.fields if f.name]
    fields += [
        (f.name.upper(), searchable(f.value).casefold())
        for f in top.fields
        if f.name.upper() in ADDRESS_FIELDS
    ]
    summary = Summary(
        size=size,
        header_end=top.body_start,
        fields=tuple(fields),
        envelope=fetch.envelope(top),
        sent=sent,
        sent_day=sent_day,
        sort_subject=base_subject(top.header("Subject") or ""),
        sort_from=first_mailbox(top.header("From")),
        sort_to=first_mailbox(top.header("To")),
        sort_cc=first_mailbox(top.header("Cc")),
    )
    if not whole:
        return summary
    return replace(
        summary,
        body=fetch.body_structure(data, top, extended=False),
        bodystructure=fetch.body_structure(data, top, extended=True),
    )


def _sent(raw: str | None) -> tuple[float | None, int | None]:
    if raw is None:
        return None, None
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None, None
    try:
        stamp: float | None = when.timestamp()
    except (ValueError, OverflowError, OSError):
        stamp = None
    return stamp, when.date().toordinal()


def summarize_file(path: Path, *, structure: bool) -> Summary:
    """Read and summarise one message file; raises FileNotFoundError when it is gone."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if not structure and size > _WHOLE:
            head = fetch.pread_all(fd, 0, _WHOLE)
            header_end, body_start = find_body(head, 0, len(head))
            if body_start > header_end:
                return summarize(head, size, whole=False)
        return summarize(fetch.pread_all(fd, 0, size), size, whole=True)
    finally:
        os.close(fd)


class FolderCache:
    """One folder's record file. `fill` runs in worker threads; a lock keeps the file consistent.

    `parsed` counts messages summarised from their files and `loaded` summaries read back from the
    record file: what a test counts instead of timing.
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / CACHE
        self.records = 0
        self.parsed = 0
        self.loaded = 0
        self._lock = threading.Lock()
        self._offsets: dict[str, tuple[int, int]] | None = None

    def due(self, messages: int) -> bool:
        """Whether the next fill should be given the live base names (first load, or compaction)."""
        return self._offsets is None or self.records > 2 * messages + _COMPACT_SLACK

    def fill(
        self, wanted: Sequence[Wanted], *, structure: bool, live: frozenset[str] | None
    ) -> dict[str, Summary]:
        """Summaries of `wanted` by base name, from the record file or the messages; a message whose
        file is gone is left out. `live`, when given, lets the record file be loaded and compacted."""
        with self._lock:
            stored = self._stored(wanted, live)
        out: dict[str, Summary] = {}
        lines: list[tuple[str, bytes]] = []
        parsed = 0
        for w in wanted:
            s = stored.get(w.base)
            if s is not None and s.size == w.size and (s.has_structure or not structure):
                out[w.base] = s
                continue
            try:
                s = summarize_file(w.path, structure=structure)
            except FileNotFoundError:
                continue
            parsed += 1
            out[w.base] = s
            lines.append((w.base, encode(w.base, s)))
        with self._lock:
            self.parsed += parsed
            self.loaded += len(out) - parsed
            if lines:
                self._append(lines)
        return out

    # --- the record file (called with the lock held) -------------------------------------------------

    def _stored(self, wanted: Sequence[Wanted], live: frozenset[str] | None) -> dict[str, Summary]:
        if self._offsets is None or live is not None:
            self._load(live)
        assert self._offsets is not None
        spans = [(w.base, self._offsets[w.base]) for w in wanted if w.base in self._offsets]
        if not spans:
            return {}
        out: dict[str, Summary] = {}
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            self._offsets = {}
            return out
        try:
            for base, (offset, length) in spans:
                line = os.pread(fd, length, offset)
                try:
                    # A record is trusted only for the base it names.
                    if line.endswith(b"\n") and record_base(line) == base:
                        out[base] = decode(line)
                except ValueError:
                    continue
        finally:
            os.close(fd)
        return out

    def _load(self, live: frozenset[str] | None) -> None:
        """Index the record file's lines; rewrite it without dead records when it has grown."""
        self._offsets = {}
        self.records = 0
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as e:
            log.warning("%s: unreadable, starting afresh: %s", self.path, e)
            data = b""
        if not data.startswith(_MAGIC):
            self._rewrite([])
            return
        # What follows the last line break was torn by a crash; the next append must not extend it.
        complete = data.rfind(b"\n") + 1
        lines: dict[str, bytes] = {}
        pos = len(_MAGIC)
        while pos < complete:
            end = data.index(b"\n", pos) + 1
            line = data[pos:end]
            try:
                base = record_base(line)
            except ValueError:
                pos = end
                continue
            self._offsets[base] = (pos, end - pos)
            lines[base] = line
            self.records += 1
            pos = end
        if live is not None and self.records > 2 * len(live) + _COMPACT_SLACK:
            self._rewrite([line for base, line in lines.items() if base in live])
        elif complete < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(complete)

    def _rewrite(self, lines: list[bytes]) -> None:
        tmp = self.path.with_name(CACHE + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                _write_all(fd, _MAGIC + b"".join(lines))
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as e:
            # Only a cache: without it messages are summarised again.
            log.warning("%s: cannot rewrite: %s", self.path, e)
            self._offsets = {}
            self.records = 0
            return
        offsets: dict[str, tuple[int, int]] = {}
        pos = len(_MAGIC)
        for line in lines:
            offsets[record_base(line)] = (pos, len(line))
            pos += len(line)
        self._offsets = offsets
        self.records = len(lines)

    def _append(self, lines: list[tuple[str, bytes]]) -> None:
        assert self._offsets is not None
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as e:
            log.warning("%s: cannot record summaries: %s", self.path, e)
            return
        try:
            pos = os.fstat(fd).st_size
            data = b"".join(line for _, line in lines)
            if pos == 0:
                data = _MAGIC + data
                pos = len(_MAGIC)
            _write_all(fd, data)
        except OSError as e:
            log.warning("%s: cannot record summaries: %s", self.path, e)
            return
        finally:
            os.close(fd)
        for base, line in lines:
            self._offsets[base] = (pos, len(line))
            pos += len(line)
        self.records += len(lines)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class SummaryCache:
    """The process's summaries: at most `capacity` in memory, every folder's on disk."""

    def __init__(self, *, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._memory: OrderedDict[tuple[Path, str], Summary] = OrderedDict()
        self._folders: OrderedDict[Path, FolderCache] = OrderedDict()

    def folder(self, directory: Path) -> FolderCache:
        folder = self._folders.get(directory)
        if folder is None:
            folder = self._folders[directory] = FolderCache(directory)
            while len(self._folders) > _FOLDERS:
                self._folders.popitem(last=False)
        else:
            self._folders.move_to_end(directory)
        return folder

    async def get(
        self, store: FolderStore, messages: Sequence[MessageFile], *, structure: bool = False
    ) -> dict[int, Summary]:
        """Summaries of `messages` by UID; one whose file is not where the folder last saw it is
        left out (the caller catches up with the folder and asks again).

        With `structure`, each summary also has BODY and BODYSTRUCTURE.
        """
        out = self.held(store, messages, structure=structure)
        misses = [m for m in messages if m.uid not in out]
        if not misses:
            return out
        folder = self.folder(store.directory)
        for start in range(0, len(misses), _BATCH):
            chunk = misses[start : start + _BATCH]
            live = (
                frozenset(m.base for m in store.messages.values())
                if folder.due(len(store.messages))
                else None
            )
            found = await asyncio.to_thread(
                folder.fill, [Wanted(m.base, m.path, m.size) for m in chunk], structure=structure, live=live
            )
            for m in chunk:
                s = found.get(m.base)
                if s is not None:
                    self._remember((store.directory, m.base), s)
                    out[m.uid] = s
        return out

    def held(
        self, store: FolderStore, messages: Sequence[MessageFile], *, structure: bool = False
    ) -> dict[int, Summary]:
        """The summaries of `messages` already in memory, by UID: nothing is read or made."""
        out: dict[int, Summary] = {}
        for m in messages:
            key = (store.directory, m.base)
            s = self._memory.get(key)
            if s is not None and s.size == m.size and (s.has_structure or not structure):
                self._memory.move_to_end(key)
                out[m.uid] = s
        return out

    def clear(self) -> None:
        """Forget everything held in memory (the record files stay)."""
        self._memory.clear()
        self._folders.clear()

    def _remember(self, key: tuple[Path, str], summary: Summary) -> None:
        self._memory[key] = summary
        self._memory.move_to_end(key)
        while len(self._memory) > self.capacity:
            self._memory.popitem(last=False)
