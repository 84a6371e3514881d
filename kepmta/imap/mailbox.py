"""A folder's messages as IMAP sees them, shared by every session of this process.

`FolderStore` owns the folder: UIDs, keywords, modification sequences, sizes and dates (kept in the
index, `imap/index.py`), system flags (in the Maildir file name info `:2,`), and the changes other
programs make to the directories. Those changes arrive as inotify events (`imap/notify.py`) and
are applied one by one, so nothing costs more than the change itself; without inotify the store
compares the directories' modification times and scans them when they moved. `MailboxView` is one
session's selection of the folder: its own message sequence numbers, \\Recent set and the changes
it has not yet been told about.

All methods run on the event loop thread and never await, so a rename or scan is atomic with
respect to every session.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from kepmta.imap.index import (
    INDEX,
    JOURNAL,
    Entry,
    Fields,
    Header,
    IndexCorrupt,
    IndexFile,
    Item,
    JournalSync,
    State,
    Table,
    Vanished,
    entry_fields,
    entry_line,
    fold_vanished,
    header_line,
    keywords_of,
    uid_ranges,
    vanished_line,
)
from kepmta.imap.notify import DirEvent, Inotify
from kepmta.imap.protocol import format_uid_set
from kepmta.maildir import SizeCache

log = logging.getLogger("kepmta.imap")

SEEN = "\\Seen"
DELETED = "\\Deleted"
SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
_SYSTEM_BY_LOWER = {f.lower(): f for f in SYSTEM_FLAGS}
# Maildir info letters (cr.yp.to/proto/maildir.html), kept in ASCII order in the file name.
_LETTER_OF = {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R", "\\Seen": "S", "\\Deleted": "T"}
_FLAG_OF = {v: k for k, v in _LETTER_OF.items()}
# A directory mtime this close to the present may still change without its value changing.
_MTIME_SETTLE_NS = 2_000_000_000
# Expunge records kept for VANISHED (EARLIER) before the oldest are merged.
_VANISHED_KEEP = 256
# A folder whose index weighs more (its journal counting `_JOURNAL_WEIGHT` times, text read line by
# line), or which has none and a directory grown past its first block (about 64 entries on ext4),
# is read on a thread (`heavy`): about a millisecond of the event loop at most. In process, the
# 210 KB snapshot of bench/imap.py --cold's 3000 messages read in 0.9 ms, a journal line in 2 µs,
# and a scan of the folder without an index took 130 ms.
_HEAVY_INDEX = 256 * 1024
_JOURNAL_WEIGHT = 4
_HEAVY_DIRECTORY = 4096
# Journals shorter than this are left at shutdown: replaying one takes well under a millisecond,
# where folding it costs two fsyncs (7 to 10 ms for 3000 messages) that every folder in use or kept
# idle would add to the shutdown. None so short makes a folder `heavy` by itself.
_FOLD_AT_SHUTDOWN = 256
# Keywords clients may make in one folder, and their length: every FLAGS response lists them all
# (RFC 3501 §7.2.6), so they bound its size. Past the count, PERMANENTFLAGS loses "\\*".
MAX_KEYWORDS = 256
MAX_KEYWORD_LENGTH = 128


def system_flag(name: str) -> str | None:
    """The canonical spelling of a system flag (flag names are case-insensitive, RFC 3501 §2.3.2)."""
    return _SYSTEM_BY_LOWER.get(name.lower())


@functools.lru_cache(maxsize=1024)
def _shared(flags: frozenset[str]) -> frozenset[str]:
    """The first-made set equal to `flags`: a folder's messages repeat a handful of flag sets."""
    return flags


# Slots and shared flag sets: a store holds one of these per message of every folder in use, and
# the evidence folder is never emptied (bench/load.py measured 1 KB a message without them).
@dataclass(frozen=True, slots=True)
class MessageFile:
    """One message: `flags` holds system flags and keywords; \\Recent is per session, not here.

    `internal` is INTERNALDATE as a POSIX time; `modseq` the RFC 7162 modification sequence.
    """

    uid: int
    base: str
    path: Path
    flags: frozenset[str]
    other_info: str = ""
    modseq: int = 1
    size: int = 0
    internal: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "flags", _shared(self.flags))  # frozen: set once, here

    @property
    def in_new(self) -> bool:
        return self.path.parent.name == "new"

    @property
    def keywords(self) -> frozenset[str]:
        return frozenset(f for f in self.flags if not f.startswith("\\"))


def split_name(name: str) -> tuple[str, frozenset[str], str]:
    """Base name, system flags and uninterpreted info letters of a Maildir file name."""
    base, sep, info = name.partition(":")
    return (base, *_info(info)) if sep else (base, frozenset(), "")


@functools.lru_cache(maxsize=256)
def _info(info: str) -> tuple[frozenset[str], str]:
    # A folder's thousands of names repeat a handful of infos ("2,S", "2,RS"): a cold SELECT reads
    # every name, and parsing each anew was a quarter of its time.
    if not info.startswith("2,"):
        return frozenset(), ""
    flags = frozenset(_FLAG_OF[c] for c in info[2:] if c in _FLAG_OF)
    other = "".join(c for c in info[2:] if c not in _FLAG_OF)
    return flags, other


def cur_name(base: str, flags: frozenset[str], other_info: str) -> str:
    letters = sorted({_LETTER_OF[f] for f in flags if f in _LETTER_OF} | set(other_info))
    return f"{base}:2,{''.join(letters)}"


def _usable(name: str) -> bool:
    # Tabs and line breaks would corrupt the index's line format; dot files are not messages.
    return bool(name) and not name.startswith(".") and not any(c in name for c in "\t\r\n")


def _mtime_ns(path: Path) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return -1


class Messages:
    """A folder's messages by UID, in UID order, each built from the index when first used.

    A cold SELECT of a large folder must read its whole index, but a client looks at few of its
    messages; building all of them there was nine tenths of that SELECT's time (3000 messages:
    17 ms, measured in process). An entry holds either the built `MessageFile` or the index's
    `Item`, resolved through the table of the snapshot it was read with.
    """

    __slots__ = ("_build", "_items", "table")

    def __init__(self, build: Callable[[Entry], MessageFile]) -> None:
        self._items: dict[int, MessageFile | Item] = {}
        self._build = build
        self.table = Table()

    def load(self, state: State) -> None:
        self.table = state.table
        self._items = dict(state.entries) if state.in_order else dict(sorted(state.entries.items()))

    def get(self, uid: int) -> MessageFile | None:
        item = self._items.get(uid)
        if item is None or isinstance(item, MessageFile):
            return item
        msg = self._items[uid] = self._build(self.table.entry(item))
        return msg

    def __getitem__(self, uid: int) -> MessageFile:
        msg = self.get(uid)
        if msg is None:
            raise KeyError(uid)
        return msg

    def __setitem__(self, uid: int, msg: MessageFile) -> None:
        self._items[uid] = msg

    def pop(self, uid: int) -> MessageFile:
        msg = self[uid]
        del self._items[uid]
        return msg

    def __contains__(self, uid: object) -> bool:
        return uid in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[int]:
        return iter(self._items)

    def values(self) -> list[MessageFile]:
        return [self[uid] for uid in self._items]

    def sort(self) -> None:
        self._items = dict(sorted(self._items.items()))

    def file(self, uid: int) -> tuple[str, str]:
        """Where message `uid`'s file is, as (sub-directory, file name), without building it."""
        item = self._items[uid]
        if isinstance(item, MessageFile):
            return item.path.parent.name, item.path.name
        return self.table.file(item)

    def bases(self) -> dict[str, int]:
        """Maildir base name → UID of every message, without building any."""
        out: dict[str, int] = {}
        for uid, item in self._items.items():
            base = item.base if isinstance(item, MessageFile) else self.table.file(item)[1].partition(":")[0]
            out[base] = uid
        return out

    def items(self, convert: Callable[[MessageFile], Fields]) -> dict[int, Item]:
        """Every message as the index holds it: as read for those never built."""
        return {
            uid: convert(item) if isinstance(item, MessageFile) else item for uid, item in self._items.items()
        }


class StoreObserver(Protocol):
    """What a store tells of its changes: a session's selection (`MailboxView`), or a session
    watching the folder unselected (RFC 5465 NOTIFY, `imap/notifications.py`)."""

    read_only: bool

    def added(self, uids: list[int]) -> None: ...

    def removed(self, uids: list[int]) -> None: ...

    def flags_changed(self, uid: int) -> None: ...


class FolderStore:
    """The shared state of one folder directory."""

    def __init__(
        self,
        name: str,
        directory: Path,
        uidvalidity: int,
        journals: JournalSync,
        sizes: SizeCache | None = None,
    ) -> None:
        self.name = name
        self.directory = directory
        # The account's folder sizes for quota (kepmta.maildir): told of every change made here.
        self.sizes = sizes or SizeCache()
        self.messages = Messages(self._build)
        self.uidvalidity = uidvalidity
        self.uidnext = 1
        self.first_recent = 1
        self.highestmodseq = 0
        self.keywords: set[str] = set()
        self.vanished: list[Vanished] = []
        self.dead = False
        # Sessions currently using this object (selected, or between the steps of an APPEND/COPY):
        # while any does, it must stay the only store of its directory.
        self.holders = 0
        # Set while inotify watches new/ and cur/: reads pending events instead of stat'ing.
        self.sync: Callable[[], None] | None = None
        self.scans = 0
        self.index = IndexFile(directory, journals)
        # Made from `messages` when a directory change must first be matched (`_bases`).
        self._uid_of: dict[str, int] | None = None
        self._in_new: set[int] = set()
        self._subs = {sub: directory / sub for sub in ("cur", "new")}
        self._views: set[StoreObserver] = set()
        self._stamp: tuple[int, int] = (-1, -1)
        self._settled = False
        self._changed_ns = 0
        # While the folder is read on a thread (`StoreRegistry.acquire`): the inotify batches that
        # arrived meanwhile, None for a lost queue.
        self.held: list[dict[str, list[DirEvent]] | None] | None = None

    def read(self) -> None:
        """Load the folder, and write its first snapshot if it has none or one of an older version."""
        self.load()
        if self.index.outdated or not self.index.snapshot_path.exists():
            self.save_index()

    def load(self) -> None:
        """Read the index, scanning the directories only when it is missing or out of date."""
        if not self._load_index():
            self._scan(self._current_stamp())

    # --- persistence ----------------------------------------------------------------------------

    def _load_index(self) -> bool:
        """Take the folder's state from its index; True when the directories need no scan."""
        try:
            state = self.index.load()
        except IndexCorrupt as e:
            # RFC 3501 §2.3.1.1: with the old UIDs lost, a new UIDVALIDITY tells clients to forget theirs.
            log.warning("corrupt index, assigning new UIDs: %s", e)
            return False
        if state is None:
            return False
        h = state.header
        self.uidvalidity, self.uidnext, self.first_recent = h.uidvalidity, h.uidnext, h.first_recent
        self.highestmodseq = h.highestmodseq
        self.vanished = state.vanished
        self.messages.load(state)
        self._uid_of = None
        self._in_new = state.in_new()
        # A folder's messages repeat a few keyword fields: each is read once.
        for field in state.keyword_fields():
            self.keywords.update(keywords_of(field))
        self._stamp, self._settled = h.stamp, h.settled
        return h.settled and self._current_stamp() == h.stamp

    def _build(self, e: Entry) -> MessageFile:
        base, flags, other = split_name(e.name)
        # The index holds only new/ and cur/, whose paths are made once: a join costs a microsecond.
        path = self._subs[e.sub] / e.name
        return MessageFile(
            e.uid, base, path, flags | e.keywords, other, e.modseq, e.size, e.internal_ns / 1e9
        )

    def _state(self) -> State:
        return State(
            self._header(),
            self.messages.items(lambda m: entry_fields(self._entry(m))),
            list(self.vanished),
            self.messages.table,
        )

    def _header(self) -> Header:
        return Header(
            self.uidvalidity, self.uidnext, self.first_recent, self.highestmodseq, self._stamp, self._settled
        )

    @staticmethod
    def _entry(m: MessageFile) -> Entry:
        return Entry(
            m.uid, m.modseq, m.size, int(m.internal * 1e9), m.path.parent.name, m.path.name, m.keywords
        )

    def _record(self, lines: list[str]) -> None:
        """Journal `lines`, or fold everything into a new snapshot once the journal is long."""
        if self.dead or not self.directory.is_dir():
            return
        if self.index.wants_snapshot(len(self.messages)):
            self.index.write_snapshot(self._state())
        else:
            self.index.append(lines)

    def save_index(self) -> None:
        """Write a complete snapshot (a folder seen for the first time, or a re-scanned one)."""
        if self.dead or not self.directory.is_dir():
            return
        self.index.write_snapshot(self._state())

    def fold_journal(self) -> None:
        """At shutdown, once nothing changes the folder in this process: a long journal folded into
        a new snapshot (`IndexFile.fold`), and so is one of an older generation (no lines of this
        one), which `heavy` would still count."""
        if 0 < self.index.journal_lines < _FOLD_AT_SHUTDOWN or self.dead:
            return
        if self.directory.is_dir() and self.index.journal_path.exists():
            self.index.fold(self._state())

    # --- bookkeeping -----------------------------------------------------------------------------

    def _put(self, msg: MessageFile) -> None:
        self.messages[msg.uid] = msg
        if self._uid_of is not None:
            self._uid_of[msg.base] = msg.uid
        if msg.in_new:
            self._in_new.add(msg.uid)
        else:
            self._in_new.discard(msg.uid)

    def _bases(self) -> dict[str, int]:
        """Maildir base name → UID, made when a change in the directories must first be matched."""
        if self._uid_of is None:
            self._uid_of = self.messages.bases()
        return self._uid_of

    def next_modseq(self) -> int:
        self.highestmodseq += 1
        return self.highestmodseq

    def _current_stamp(self) -> tuple[int, int]:
        return (_mtime_ns(self.directory / "new"), _mtime_ns(self.directory / "cur"))

    def _touched(self) -> None:
        """The directories changed: the recorded stamp no longer vouches for the index."""
        self._settled = False
        self._changed_ns = time.time_ns()

    # --- picking up changes -------------------------------------------------------------------------

    def refresh(self, *, force: bool = False) -> None:
        """Pick up deliveries and removals made by other programs.

        With inotify this only reads queued events; otherwise two stat calls tell whether the
        directories changed, and a scan follows when they did.
        """
        if self.dead:
            if self.messages:
                self._drop(list(self.messages), record=False)
            return
        if self.sync is not None and not force:
            self.sync()
            self._settle()
            return
        stamp = self._current_stamp()
        if not force and stamp == self._stamp and self._settled:
            return
        self._scan(stamp)

    def _settle(self) -> None:
        """Once the directories have been quiet for a while, record that the index matches them."""
        if self._settled or time.time_ns() - self._changed_ns < _MTIME_SETTLE_NS:
            # Every change to the directories was either ours or reported by inotify, so while
            # the last one is this recent their times cannot be old enough: no need to look.
            return
        stamp = self._current_stamp()
        if all(m < time.time_ns() - _MTIME_SETTLE_NS for m in stamp):
            self._stamp, self._settled = stamp, True
            self._record([header_line(self._header())])

    def _scan(self, stamp: tuple[int, int]) -> None:
        self.scans += 1
        self._stamp = stamp
        self._settled = all(m < time.time_ns() - _MTIME_SETTLE_NS for m in stamp)
        # (sub-directory, file name) by base name. Paths are made, and messages built, only for
        # the files that are new or moved: doing it for all 3000 of a folder was half its scan.
        found: dict[str, tuple[str, str]] = {}
        for sub in ("cur", "new"):
            try:
                names = os.listdir(self._subs[sub])
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name in names:
                if _usable(name):
                    found.setdefault(name.partition(":")[0], (sub, name))
        known = self._bases()
        removed = [uid for base, uid in known.items() if base not in found]
        arrivals = {base: self._subs[sub] / name for base, (sub, name) in found.items() if base not in known}
        changed = [
            self._moved(self.messages[uid], self._subs[sub] / name)
            for base, (sub, name) in found.items()
            if (uid := known.get(base)) is not None and self.messages.file(uid) != (sub, name)
        ]
        self._apply(removed, list(arrivals), arrivals, changed, full=True)

    def scan_new(self) -> None:
        """Look for deliveries in new/ only: the cheap check when told that mail arrived."""
        if self.dead:
            return
        if self.sync is not None:
            self.sync()
            return
        try:
            names = os.listdir(self.directory / "new")
        except FileNotFoundError:
            return
        found = {split_name(n)[0]: self.directory / "new" / n for n in names if _usable(n)}
        known = self._bases()
        arrivals = [b for b in found if b not in known]
        self._apply([], arrivals, found, [], full=False)

    def lost_events(self) -> None:
        """Inotify lost events (an overflow): look at the directories again."""
        if self.held is not None:
            self.held.append(None)
        else:
            self.refresh(force=True)

    def apply_events(self, batches: dict[str, list[DirEvent]]) -> None:
        """Apply the inotify events of new/ and cur/ read together: each named entry is looked at once.

        Both directories' events come in one call, so a file another program moved from new/ to
        cur/ (its MOVED_FROM in one watch, its MOVED_TO in the other) is seen as one message moving.
        """
        if self.held is not None:
            self.held.append(batches)
            return
        if self.dead:
            return
        if any(e.lost_directory for events in batches.values() for e in events):
            self._scan(self._current_stamp())
            return
        self._touched()
        candidates: dict[str, list[Path]] = {}
        for sub, events in batches.items():
            for e in events:
                if _usable(e.name):
                    candidates.setdefault(split_name(e.name)[0], []).append(self.directory / sub / e.name)
        removed: list[int] = []
        arrivals: list[str] = []
        found: dict[str, Path] = {}
        changed: list[MessageFile] = []
        unaccounted: list[MessageFile] = []
        bases = self._bases()
        for base, paths in candidates.items():
            uid = bases.get(base)
            known = self.messages[uid] if uid is not None else None
            # The recorded file wins while it exists: events of our own renames arrive late.
            order = [known.path] if known else []
            order += [p for p in reversed(paths) if p not in order]
            present = next((p for p in order if p.exists()), None)
            if known is None:
                if present is not None:
                    arrivals.append(base)
                    found[base] = present
            elif present is None:
                unaccounted.append(known)
            elif present != known.path:
                changed.append(self._moved(known, present))
        if unaccounted:
            # Neither the recorded name nor any name the events mention exists. The message may be
            # gone, or renamed by a writer whose later event is not read yet (the kernel queues a
            # rename's two halves one after the other) or that linked the new name before these
            # events; only the directories can tell which.
            where = self._find_bases({m.base for m in unaccounted})
            for msg in unaccounted:
                path = where.get(msg.base)
                if path is None:
                    removed.append(msg.uid)
                else:
                    changed.append(self._moved(msg, path))
        self._apply(removed, arrivals, found, changed, full=False)

    def _find_bases(self, bases: set[str]) -> dict[str, Path]:
        """Where the files with these Maildir base names are now, looked up in the directories."""
        out: dict[str, Path] = {}
        for base in bases:
            candidate = self.directory / "new" / base
            if candidate.exists():
                out[base] = candidate
        if len(out) < len(bases):
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                for name in os.listdir(self.directory / "cur"):
                    base = split_name(name)[0]
                    if base in bases and base not in out and _usable(name):
                        out[base] = self.directory / "cur" / name
        return out

    def _moved(self, msg: MessageFile, path: Path) -> MessageFile:
        """Another program renamed a message's file: its system flags are what the name says now."""
        _, flags, other = split_name(path.name)
        new_flags = flags | msg.keywords
        modseq = msg.modseq if new_flags == msg.flags else self.next_modseq()
        return replace(msg, path=path, flags=new_flags, other_info=other, modseq=modseq)

    def _apply(
        self,
        removed: list[int],
        arrivals: list[str],
        found: dict[str, Path],
        changed: list[MessageFile],
        *,
        full: bool,
    ) -> None:
        lines: list[str] = []
        flag_changes: list[int] = []
        for new in changed:
            old = self.messages[new.uid]
            self._put(new)
            lines.append(entry_line(self._entry(new)))
            if new.flags != old.flags:
                flag_changes.append(new.uid)
        if removed:
            lines.extend(self._drop(removed, record=False))
        added = self._register(arrivals, found)
        lines.extend(entry_line(self._entry(self.messages[uid])) for uid in added)
        if added:
            self.messages.sort()
        if self.has_writer:
            lines.extend(self._move_new_to_cur())
        if full and lines:
            self.save_index()
        elif full:
            self._record([header_line(self._header())])
        elif lines:
            self._record(lines)
        for view in self._views:
            for uid in flag_changes:
                view.flags_changed(uid)
            if added:
                view.added(added)

    def _register(self, bases: list[str], found: dict[str, Path]) -> list[int]:
        stats: dict[str, os.stat_result] = {}
        for base in bases:
            with contextlib.suppress(FileNotFoundError):
                stats[base] = os.stat(found[base])

        def arrival_order(base: str) -> tuple[int, str]:
            return (stats[base].st_mtime_ns, base)

        added: list[int] = []
        for base in sorted(stats, key=arrival_order):
            path = found[base]
            _, flags, other = split_name(path.name)
            st = stats[base]
            uid = self.uidnext
            self.uidnext += 1
            self._put(MessageFile(uid, base, path, flags, other, self.next_modseq(), st.st_size, st.st_mtime))
            added.append(uid)
        return added

    def _drop(self, uids: list[int], *, record: bool) -> list[str]:
        """Forget `uids`; returns the journal line recording them as expunged (written if `record`)."""
        gone = [u for u in uids if u in self.messages]
        if not gone:
            return []
        for uid in gone:
            msg = self.messages.pop(uid)
            if self._uid_of is not None:
                self._uid_of.pop(msg.base, None)
            self._in_new.discard(uid)
        # RFC 7162 §3.2.10: an expunge is a change with its own modification sequence.
        v = Vanished(self.next_modseq(), uid_ranges(gone))
        self.vanished = fold_vanished([*self.vanished, v], _VANISHED_KEEP)
        for view in self._views:
            view.removed(gone)
        line = [vanished_line(v)]
        if record:
            self._record(line)
        return line

    def _move_new_to_cur(self) -> list[str]:
        # Once a read-write session has seen a message it is no longer "new" in the Maildir sense.
        lines: list[str] = []
        for uid in sorted(self._in_new):
            msg = self.messages[uid]
            target = self.directory / "cur" / cur_name(msg.base, msg.flags, msg.other_info)
            try:
                with self.sizes.changing(self.directory, 0):
                    os.rename(msg.path, target)
            except FileNotFoundError:
                continue
            moved = replace(msg, path=target)
            self._put(moved)
            lines.append(entry_line(self._entry(moved)))
        if lines:
            self._touched()
        return lines

    # --- views ------------------------------------------------------------------------------------

    @property
    def has_writer(self) -> bool:
        return any(not v.read_only for v in self._views)

    def attach(self, view: StoreObserver) -> None:
        self._views.add(view)
        if not view.read_only:
            self._record(self._move_new_to_cur())

    def detach(self, view: StoreObserver) -> None:
        self._views.discard(view)

    def claim_recent(self, uids: list[int], view: MailboxView) -> list[int]:
        """RFC 3501 §2.3.2 \\Recent: the first read-write session told of a message owns it."""
        fresh = [u for u in uids if u >= self.first_recent]
        if fresh and not view.read_only:
            self.first_recent = max(fresh) + 1
            self._record([header_line(self._header())])
        return fresh

    @property
    def recent_count(self) -> int:
        return len(self.messages) - bisect.bisect_left(list(self.messages), self.first_recent)

    def vanished_since(self, modseq: int) -> list[int]:
        """UIDs expunged after `modseq` (RFC 7162 §3.2.5.2), possibly with some expunged earlier."""
        out: list[int] = []
        for v in self.vanished:
            if v.modseq > modseq:
                for lo, hi in v.uids:
                    out.extend(range(lo, hi + 1))
        return sorted(set(out))

    # --- changes ----------------------------------------------------------------------------------

    def set_flags(self, uid: int, flags: frozenset[str], origin: MailboxView | None) -> MessageFile | None:
        """Give message `uid` exactly `flags`, renaming its file atomically; None if it is gone."""
        msg = self.messages.get(uid)
        if msg is None:
            return None
        if flags == msg.flags and not msg.in_new:
            return msg
        target = self.directory / "cur" / cur_name(msg.base, flags, msg.other_info)
        if target != msg.path:
            try:
                with self.sizes.changing(self.directory, 0):
                    os.rename(msg.path, target)
            except FileNotFoundError:
                self.refresh(force=True)
                return None
            self._touched()
        # RFC 7162 §3.1: every change of a message's metadata gets a new modification sequence.
        modseq = self.next_modseq() if flags != msg.flags else msg.modseq
        new = replace(msg, path=target, flags=flags, modseq=modseq)
        self._put(new)
        self.keywords.update(new.keywords)
        self._record([entry_line(self._entry(new))])
        for view in self._views:
            if view is not origin:
                view.flags_changed(uid)
        return new

    def expunge(self, uids: list[int]) -> list[int]:
        """Delete the files of `uids`; every view learns of it at its next permitted moment."""
        gone: list[int] = []
        for uid in uids:
            msg = self.messages.get(uid)
            if msg is None:
                continue
            with contextlib.suppress(FileNotFoundError), self.sizes.changing(self.directory, -msg.size):
                os.unlink(msg.path)
            gone.append(uid)
        if gone:
            self._touched()
            self._drop(gone, record=True)
        return gone

    def add(self, staged: Path, base: str, flags: frozenset[str]) -> MessageFile:
        """Move a complete file from tmp/ into cur/ under `base` with `flags` and give it the next UID."""
        st = os.stat(staged)
        target = self.directory / "cur" / cur_name(base, flags, "")
        with self.sizes.changing(self.directory, st.st_size):
            os.rename(staged, target)
        self._touched()
        uid = self.uidnext
        self.uidnext += 1
        msg = MessageFile(uid, base, target, flags, "", self.next_modseq(), st.st_size, st.st_mtime)
        self._put(msg)
        self.keywords.update(msg.keywords)
        self._record([entry_line(self._entry(msg))])
        for view in self._views:
            view.added([uid])
        return msg


class MailboxView:
    """One session's selected mailbox (RFC 3501 §5.1.2 sequence numbers are per session)."""

    def __init__(self, store: FolderStore, *, read_only: bool, recent: bool = True) -> None:
        self.store = store
        self.read_only = read_only
        # Whether the session is told of \\Recent: IMAP4rev2 has none (RFC 9051 §2.3.2).
        self.show_recent = recent
        self.uids: list[int] = []
        self.recent: set[int] = set()
        self.wakeup = asyncio.Event()
        # The keywords the session was told of in an untagged FLAGS (RFC 3501 §7.2.6).
        self.announced: frozenset[str] = frozenset()
        self._new: list[int] = []
        self._gone: set[int] = set()
        self._flag_changes: set[int] = set()
        store.refresh()
        store.attach(self)
        self.uids = list(store.messages)
        self.recent.update(store.claim_recent(self.uids, self))

    def close(self) -> None:
        self.store.detach(self)

    # --- notifications from the store --------------------------------------------------------------

    def added(self, uids: list[int]) -> None:
        self._new.extend(uids)
        self.wakeup.set()

    def removed(self, uids: list[int]) -> None:
        for uid in uids:
            if uid in self._new:
                self._new.remove(uid)
            elif self.seq_of(uid) is not None:
                self._gone.add(uid)
        self.wakeup.set()

    def flags_changed(self, uid: int) -> None:
        self._flag_changes.add(uid)
        self.wakeup.set()

    # --- lookups ----------------------------------------------------------------------------------

    @property
    def exists(self) -> int:
        return len(self.uids)

    def seq_of(self, uid: int) -> int | None:
        i = bisect.bisect_left(self.uids, uid)
        return i + 1 if i < len(self.uids) and self.uids[i] == uid else None

    def message(self, uid: int) -> MessageFile | None:
        return None if uid in self._gone else self.store.messages.get(uid)

    def flags_of(self, msg: MessageFile) -> frozenset[str]:
        return msg.flags | {"\\Recent"} if self.show_recent and msg.uid in self.recent else msg.flags

    def updates(
        self, *, allow_expunge: bool, condstore: bool = False, qresync: bool = False, flags: bool = True
    ) -> list[bytes]:
        """Untagged responses for what changed since the client was last told, applied to this view.

        RFC 3501 §7.4.1: EXPUNGE may not be sent while a FETCH, STORE or SEARCH is answered, since
        the client could no longer map sequence numbers; `allow_expunge` is False then. With
        QRESYNC enabled the expunges are one VANISHED response (RFC 7162 §3.2.10), and with
        CONDSTORE every flag change carries its MODSEQ (RFC 7162 §3.1.4). Without `flags`, flag
        changes wait for a later call (RFC 5465 §5.1: a NOTIFY without FlagChange).
        """
        self.wakeup.clear()
        lines: list[bytes] = []
        if allow_expunge and self._gone:
            if qresync:
                lines.append(b"* VANISHED " + format_uid_set(sorted(self._gone)).encode())
            # Highest first, so each response's number is still valid when the client applies it.
            for uid in sorted(self._gone, reverse=True):
                seq = self.seq_of(uid)
                if seq is not None:
                    del self.uids[seq - 1]
                    if not qresync:
                        lines.append(b"* %d EXPUNGE" % seq)
            self.recent -= self._gone
            self._flag_changes -= self._gone
            self._gone.clear()
        if self._new:
            fresh = sorted(self._new)
            self._new.clear()
            self.uids.extend(fresh)
            self.recent.update(self.store.claim_recent(fresh, self))
            lines.append(b"* %d EXISTS" % len(self.uids))
            if self.show_recent:
                lines.append(b"* %d RECENT" % len(self.recent))
        if not flags:
            return lines
        for uid in sorted(self._flag_changes):
            msg = self.message(uid)
            seq = self.seq_of(uid)
            if msg is None or seq is None:
                continue
            line = b"* %d FETCH (UID %d FLAGS %s" % (seq, uid, format_flags(self.flags_of(msg)))
            if condstore:
                line += b" MODSEQ (%d)" % msg.modseq
            lines.append(line + b")")
        self._flag_changes.clear()
        return lines


def format_flags(flags: Iterable[str]) -> bytes:
    order = {f: i for i, f in enumerate((*SYSTEM_FLAGS, "\\Recent"))}
    return ("(" + " ".join(sorted(flags, key=lambda f: (order.get(f, 99), f))) + ")").encode("utf-8")


def heavy(directory: Path) -> bool:
    """Whether reading the folder at `directory` would hold the event loop noticeably, judged by
    the size of its index or, without one, of its directories (a few stat calls)."""
    index = 0
    for name, weight in ((INDEX, 1), (JOURNAL, _JOURNAL_WEIGHT)):
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            index += weight * os.stat(directory / name).st_size
    if index:
        return index > _HEAVY_INDEX
    for sub in ("cur", "new"):
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            if os.stat(directory / sub).st_size > _HEAVY_DIRECTORY:
                return True
    return False


class StoreRegistry:
    """One FolderStore per folder directory for the whole process.

    Stores nobody holds stay cached (up to `cache_size`, least recently used dropped first) and
    watched, so selecting a folder again costs nothing but the changes since.
    """

    def __init__(self, *, cache_size: int = 64) -> None:
        self._stores: dict[Path, FolderStore] = {}
        self._idle: OrderedDict[Path, None] = OrderedDict()
        self._cache_size = cache_size
        self._last_validity = 0
        self._inotify: Inotify | None = None
        self._watches: dict[int, tuple[FolderStore, str]] = {}
        self._reading: dict[Path, tuple[FolderStore, asyncio.Future[None]]] = {}  # by `acquire`
        self._wds: dict[Path, list[int]] = {}
        # Every folder's journal lines are synced together (kepmta.imap.index).
        self.journals = JournalSync()

    def use_inotify(self, inotify: Inotify) -> None:
        self._inotify = inotify

    def _next_validity(self) -> int:
        # RFC 3501 §2.3.1.1: strictly increasing, so a re-created folder never repeats an old value.
        self._last_validity = max(int(time.time()), self._last_validity + 1)
        return self._last_validity

    def get(self, directory: Path) -> FolderStore | None:
        """The store of `directory` if one is open or cached, without opening one."""
        store = self._stores.get(directory)
        return None if store is None or store.dead else store

    def open(self, name: str, directory: Path, sizes: SizeCache | None = None) -> FolderStore:
        """The folder's store, held until the matching `release`, read on the spot if it is not in
        memory; it keeps `sizes` (the account's folder sizes for quota) up to date with its own
        changes."""
        store = self.get(directory)
        if store is None:
            store = self._new(name, directory, sizes)
            store.read()
            self._stores[directory] = store
        else:
            store.name = name
            self._idle.pop(directory, None)
        store.holders += 1
        return store

    async def acquire(self, name: str, directory: Path, sizes: SizeCache | None = None) -> FolderStore:
        """`open`, except that a folder too large to read without holding up every other session
        (`heavy`) is read on a thread; whoever asks for it meanwhile waits for that one reading."""
        while self.get(directory) is None:
            reading = self._reading.get(directory)
            if reading is None:
                if not heavy(directory):
                    break
                store = self._new(name, directory, sizes)
                reading = (store, asyncio.ensure_future(self._read_on_thread(store)))
                self._reading[directory] = reading
            # Shielded: a session that goes away must not cancel what others wait for.
            await asyncio.shield(reading[1])
        return self.open(name, directory, sizes)

    async def _read_on_thread(self, store: FolderStore) -> None:
        directory = store.directory
        store.held = []
        try:
            await asyncio.to_thread(store.read)
        except BaseException:
            self._discard(directory)
            raise
        finally:
            held, store.held = store.held, None
            del self._reading[directory]
        # What inotify reported while the folder was read, in order, as `open` applies it at its
        # first refresh; None stands for a lost queue (an overflow): the folder is scanned again.
        for batches in held:
            if batches is None:
                store.lost_events()
            else:
                store.apply_events(batches)
        if not store.dead:  # a DELETE or RENAME meanwhile leaves nothing to keep
            self._stores[directory] = store
            self._idle[directory] = None

    def _new(self, name: str, directory: Path, sizes: SizeCache | None) -> FolderStore:
        self._discard(directory)
        store = FolderStore(name, directory, self._next_validity(), self.journals, sizes)
        # Watching before reading: a change made while the index is read is then not lost, its
        # event is applied afterwards.
        self._watch(store)
        return store

    def release(self, store: FolderStore) -> None:
        """Let go of a store; once nobody holds it, it is kept among the idle ones."""
        store.holders -= 1
        if store.holders > 0 or self._stores.get(store.directory) is not store:
            return
        self._idle[store.directory] = None
        while len(self._idle) > self._cache_size:
            oldest, _ = self._idle.popitem(last=False)
            self._discard(oldest)

    def forget(self, directory: Path) -> None:
        """The folder is gone (DELETE, RENAME): sessions still holding its store see it emptied."""
        reading = self._reading.get(directory)
        store = self._stores.get(directory) or (reading[0] if reading else None)
        self._discard(directory)
        if store is not None:
            store.dead = True

    def _discard(self, directory: Path) -> None:
        self._idle.pop(directory, None)
        self._stores.pop(directory, None)
        for wd in self._wds.pop(directory, []):
            self._watches.pop(wd, None)
            if self._inotify is not None:
                self._inotify.unwatch(wd)

    def _watch(self, store: FolderStore) -> None:
        if self._inotify is None:
            return
        wds: list[int] = []
        for sub in ("new", "cur"):
            wd = self._inotify.watch(store.directory / sub)
            if wd is None:
                for taken in wds:
                    self._inotify.unwatch(taken)
                return
            wds.append(wd)
            self._watches[wd] = (store, sub)
        self._wds[store.directory] = wds
        store.sync = self._inotify.drain

    def dispatch(self, events: dict[int, list[DirEvent]], overflow: bool) -> None:
        """Route inotify events to their stores; after an overflow every store scans itself."""
        per_store: dict[FolderStore, dict[str, list[DirEvent]]] = {}
        for wd, batch in events.items():
            target = self._watches.get(wd)
            if target is not None:
                store, sub = target
                per_store.setdefault(store, {})[sub] = batch
        for store, batches in per_store.items():
            store.apply_events(batches)
        if overflow:
            for store in [*self._stores.values(), *(store for store, _ in self._reading.values())]:
                store.lost_events()

    def close(self) -> list[FolderStore]:
        """Stop watching every folder; returns the stores that were open."""
        stores = list(self._stores.values())
        for directory in list(self._stores):
            self._discard(directory)
        return stores
