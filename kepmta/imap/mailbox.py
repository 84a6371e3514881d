"""A folder's messages as IMAP sees them, shared by every session of this process.

`FolderStore` owns the folder: UIDs (persisted in `kepmta-uidlist`), flags (system flags live in the
Maildir file name info `:2,`, keywords in the UID list) and the directory scans that pick up mail
other code delivered into new/. `MailboxView` is one session's selection of it: its own message
sequence numbers, \\Recent set and the changes it has not yet been told about.

All methods run on the event loop thread and never await, so a rename or scan is atomic with
respect to every session.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

log = logging.getLogger("kepmta.imap")

UIDLIST = "kepmta-uidlist"
_UIDLIST_MAGIC = "kepmta-uidlist"
_UIDLIST_VERSION = "1"
SEEN = "\\Seen"
DELETED = "\\Deleted"
SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
_SYSTEM_BY_LOWER = {f.lower(): f for f in SYSTEM_FLAGS}
# Maildir info letters (cr.yp.to/proto/maildir.html), kept in ASCII order in the file name.
_LETTER_OF = {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R", "\\Seen": "S", "\\Deleted": "T"}
_FLAG_OF = {v: k for k, v in _LETTER_OF.items()}
# A directory mtime this close to the scan may still change without its value changing (coarse clocks).
_MTIME_SETTLE_NS = 2_000_000_000


def system_flag(name: str) -> str | None:
    """The canonical spelling of a system flag (flag names are case-insensitive, RFC 3501 §2.3.2)."""
    return _SYSTEM_BY_LOWER.get(name.lower())


@dataclass(frozen=True)
class MessageFile:
    """One message: `flags` holds system flags and keywords; \\Recent is per session, not here."""

    uid: int
    base: str
    path: Path
    flags: frozenset[str]
    other_info: str = ""

    @property
    def in_new(self) -> bool:
        return self.path.parent.name == "new"


def split_name(name: str) -> tuple[str, frozenset[str], str]:
    """Base name, system flags and uninterpreted info letters of a Maildir file name."""
    base, sep, info = name.partition(":")
    if not sep or not info.startswith("2,"):
        return base, frozenset(), ""
    flags = frozenset(_FLAG_OF[c] for c in info[2:] if c in _FLAG_OF)
    other = "".join(c for c in info[2:] if c not in _FLAG_OF)
    return base, flags, other


def cur_name(base: str, flags: frozenset[str], other_info: str) -> str:
    letters = sorted({_LETTER_OF[f] for f in flags if f in _LETTER_OF} | set(other_info))
    return f"{base}:2,{''.join(letters)}"


def _mtime_ns(path: Path) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return -1


class FolderStore:
    """The shared state of one folder directory."""

    def __init__(self, name: str, directory: Path, uidvalidity: int) -> None:
        self.name = name
        self.directory = directory
        self.messages: dict[int, MessageFile] = {}
        self.uidvalidity = uidvalidity
        self.uidnext = 1
        self.first_recent = 1
        self.dead = False
        # Sessions currently using this object (selected, or between the steps of an APPEND/COPY):
        # while any does, it must stay the only store of its directory.
        self.holders = 0
        self._uid_of: dict[str, int] = {}
        self._saved_keywords: dict[str, frozenset[str]] = {}
        self._views: set[MailboxView] = set()
        self._stamp: tuple[int, int] | None = None
        self._stamp_settled = False
        self._load_index()
        self.refresh(force=True)

    # --- persistence ----------------------------------------------------------------------------

    @property
    def _index_path(self) -> Path:
        return self.directory / UIDLIST

    def _load_index(self) -> None:
        try:
            text = self._index_path.read_text("utf-8")
        except FileNotFoundError:
            return
        except (OSError, UnicodeDecodeError) as e:
            log.warning("unreadable %s, assigning new UIDs: %s", self._index_path, e)
            return
        lines = text.split("\n")
        head = lines[0].split(" ")
        try:
            if len(head) != 5 or head[0] != _UIDLIST_MAGIC or head[1] != _UIDLIST_VERSION:
                raise ValueError("bad header")
            validity, uidnext, first_recent = int(head[2]), int(head[3]), int(head[4])
            entries: dict[str, tuple[int, frozenset[str]]] = {}
            for line in lines[1:]:
                if not line:
                    continue
                uid_text, base, keywords = line.split("\t")
                uid = int(uid_text)
                if not 0 < uid < uidnext:
                    raise ValueError(f"UID {uid} out of range")
                entries[base] = (uid, frozenset(k for k in keywords.split(" ") if k))
        except ValueError as e:
            # RFC 3501 §2.3.1.1: with the old UIDs lost, a new UIDVALIDITY tells clients to forget theirs.
            log.warning("corrupt %s, assigning new UIDs: %s", self._index_path, e)
            return
        self.uidvalidity, self.uidnext, self.first_recent = validity, uidnext, first_recent
        self._uid_of = {base: uid for base, (uid, _) in entries.items()}
        self._saved_keywords = {base: kw for base, (_, kw) in entries.items() if kw}

    def save_index(self) -> None:
        if self.dead or not self.directory.is_dir():
            return
        lines = [f"{_UIDLIST_MAGIC} {_UIDLIST_VERSION} {self.uidvalidity} {self.uidnext} {self.first_recent}"]
        for msg in self.messages.values():
            keywords = " ".join(sorted(f for f in msg.flags if not f.startswith("\\")))
            lines.append(f"{msg.uid}\t{msg.base}\t{keywords}")
        tmp = self.directory / f"{UIDLIST}.tmp"
        data = ("\n".join(lines) + "\n").encode("utf-8")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self._index_path)

    # --- scanning ---------------------------------------------------------------------------------

    def refresh(self, *, force: bool = False) -> None:
        """Pick up deliveries and removals; cheap (two stat calls) when neither directory changed."""
        if self.dead:
            if self.messages:
                self._drop(list(self.messages))
            return
        stamp = (_mtime_ns(self.directory / "new"), _mtime_ns(self.directory / "cur"))
        if not force and stamp == self._stamp and self._stamp_settled:
            return
        now = time.time_ns()
        self._stamp = stamp
        self._stamp_settled = all(m < now - _MTIME_SETTLE_NS for m in stamp)
        self._scan()

    def _scan(self) -> None:
        found: dict[str, tuple[Path, frozenset[str], str]] = {}
        for sub in ("cur", "new"):
            folder = self.directory / sub
            try:
                names = os.listdir(folder)
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name in names:
                # Tabs and line breaks would corrupt the UID list's line format.
                if name.startswith(".") or any(c in name for c in "\t\r\n"):
                    continue
                base, flags, other = split_name(name)
                if base not in found:
                    found[base] = (folder / name, flags, other)
        removed = [uid for base, uid in self._uid_of.items() if base not in found]
        changed_flags: list[int] = []
        arrivals: list[str] = []
        for base, (path, flags, other) in found.items():
            uid = self._uid_of.get(base)
            if uid is None:
                arrivals.append(base)
                continue
            old = self.messages.get(uid)
            if old is None:
                keywords = self._saved_keywords.get(base, frozenset())
                self.messages[uid] = MessageFile(uid, base, path, flags | keywords, other)
                continue
            keywords = frozenset(f for f in old.flags if not f.startswith("\\"))
            new = MessageFile(uid, base, path, flags | keywords, other)
            if new != old:
                self.messages[uid] = new
                if new.flags != old.flags:
                    changed_flags.append(uid)
        self._saved_keywords = {}
        dirty = bool(removed) or bool(arrivals)
        if removed:
            self._drop(removed)
        added = self._register(arrivals, found)
        self.messages = dict(sorted(self.messages.items()))
        if self.has_writer:
            self._move_new_to_cur()
        if dirty:
            self.save_index()
        for view in self._views:
            for uid in changed_flags:
                view.flags_changed(uid)
            if added:
                view.added(added)

    def _register(self, bases: list[str], found: dict[str, tuple[Path, frozenset[str], str]]) -> list[int]:
        def arrival_order(base: str) -> tuple[int, str]:
            return (_mtime_ns(found[base][0]), base)

        added: list[int] = []
        for base in sorted(bases, key=arrival_order):
            path, flags, other = found[base]
            uid = self.uidnext
            self.uidnext += 1
            self._uid_of[base] = uid
            self.messages[uid] = MessageFile(uid, base, path, flags, other)
            added.append(uid)
        return added

    def _drop(self, uids: list[int]) -> None:
        gone = set(uids)
        for uid in uids:
            self.messages.pop(uid, None)
        self._uid_of = {b: u for b, u in self._uid_of.items() if u not in gone}
        for view in self._views:
            view.removed(uids)

    def _move_new_to_cur(self) -> None:
        # Once a read-write session has seen a message it is no longer "new" to the Maildir sense.
        for uid, msg in list(self.messages.items()):
            if msg.in_new:
                target = self.directory / "cur" / cur_name(msg.base, msg.flags, msg.other_info)
                try:
                    os.rename(msg.path, target)
                except FileNotFoundError:
                    continue
                self.messages[uid] = replace(msg, path=target)

    # --- views ------------------------------------------------------------------------------------

    @property
    def has_writer(self) -> bool:
        return any(not v.read_only for v in self._views)

    def attach(self, view: MailboxView) -> None:
        self._views.add(view)
        if not view.read_only:
            self._move_new_to_cur()

    def detach(self, view: MailboxView) -> None:
        self._views.discard(view)

    def claim_recent(self, uids: list[int], view: MailboxView) -> list[int]:
        """RFC 3501 §2.3.2 \\Recent: the first read-write session told of a message owns it."""
        fresh = [u for u in uids if u >= self.first_recent]
        if fresh and not view.read_only:
            self.first_recent = max(fresh) + 1
            self.save_index()
        return fresh

    @property
    def recent_count(self) -> int:
        return sum(1 for uid in self.messages if uid >= self.first_recent)

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
                os.rename(msg.path, target)
            except FileNotFoundError:
                self.refresh(force=True)
                return None
        new = replace(msg, path=target, flags=flags)
        self.messages[uid] = new
        if {f for f in flags if not f.startswith("\\")} != {f for f in msg.flags if not f.startswith("\\")}:
            self.save_index()
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
            with contextlib.suppress(FileNotFoundError):
                os.unlink(msg.path)
            gone.append(uid)
        if gone:
            self._drop(gone)
            self.save_index()
        return gone

    def add(self, staged: Path, base: str, flags: frozenset[str]) -> MessageFile:
        """Move a complete file from tmp/ into cur/ under `base` with `flags` and give it the next UID."""
        target = self.directory / "cur" / cur_name(base, flags, "")
        os.rename(staged, target)
        uid = self.uidnext
        self.uidnext += 1
        self._uid_of[base] = uid
        msg = MessageFile(uid, base, target, flags)
        self.messages[uid] = msg
        self.save_index()
        for view in self._views:
            view.added([uid])
        return msg


class MailboxView:
    """One session's selected mailbox (RFC 3501 §5.1.2 sequence numbers are per session)."""

    def __init__(self, store: FolderStore, *, read_only: bool) -> None:
        self.store = store
        self.read_only = read_only
        self.uids: list[int] = []
        self.recent: set[int] = set()
        self.wakeup = asyncio.Event()
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
        return msg.flags | {"\\Recent"} if msg.uid in self.recent else msg.flags

    def updates(self, *, allow_expunge: bool) -> list[bytes]:
        """Untagged responses for what changed since the client was last told, applied to this view.

        RFC 3501 §7.4.1: EXPUNGE may not be sent while a FETCH, STORE or SEARCH is answered, since
        the client could no longer map sequence numbers; `allow_expunge` is False then.
        """
        self.wakeup.clear()
        lines: list[bytes] = []
        if allow_expunge and self._gone:
            # Highest first, so each response's number is still valid when the client applies it.
            for uid in sorted(self._gone, reverse=True):
                seq = self.seq_of(uid)
                if seq is not None:
                    del self.uids[seq - 1]
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
            lines.append(b"* %d RECENT" % len(self.recent))
        for uid in sorted(self._flag_changes):
            msg = self.message(uid)
            seq = self.seq_of(uid)
            if msg is None or seq is None:
                continue
            lines.append(b"* %d FETCH (UID %d FLAGS %s)" % (seq, uid, format_flags(self.flags_of(msg))))
        self._flag_changes.clear()
        return lines


def format_flags(flags: frozenset[str]) -> bytes:
    order = {f: i for i, f in enumerate((*SYSTEM_FLAGS, "\\Recent"))}
    return ("(" + " ".join(sorted(flags, key=lambda f: (order.get(f, 99), f))) + ")").encode("utf-8")


class StoreRegistry:
    """One FolderStore per folder directory for the whole process, kept while sessions use it."""

    def __init__(self) -> None:
        self._stores: dict[Path, FolderStore] = {}
        self._last_validity = 0

    def _next_validity(self) -> int:
        # RFC 3501 §2.3.1.1: strictly increasing, so a re-created folder never repeats an old value.
        self._last_validity = max(int(time.time()), self._last_validity + 1)
        return self._last_validity

    def open(self, name: str, directory: Path) -> FolderStore:
        """The folder's store, held until the matching `release`."""
        store = self._stores.get(directory)
        if store is None or store.dead:
            store = FolderStore(name, directory, self._next_validity())
            if not (directory / UIDLIST).exists():
                store.save_index()
            self._stores[directory] = store
        else:
            store.name = name
        store.holders += 1
        return store

    def release(self, store: FolderStore) -> None:
        """Let go of a store; once nobody holds it, it is forgotten (its state is on disk)."""
        store.holders -= 1
        if store.holders <= 0 and self._stores.get(store.directory) is store:
            del self._stores[store.directory]

    def forget(self, directory: Path) -> None:
        """The folder is gone (DELETE, RENAME): sessions still holding its store see it emptied."""
        store = self._stores.pop(directory, None)
        if store is not None:
            store.dead = True
