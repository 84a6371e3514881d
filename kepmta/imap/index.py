"""The folder index beside the Maildir: `kepmta-index` (a snapshot) and `kepmta-index.log` (a journal).

It records what a directory scan would otherwise have to find out again: every message's UID, file
name, keywords, modification sequence (RFC 7162 §3), size and internal date; the UIDs expunged at
each modification sequence (for QRESYNC's VANISHED); UIDVALIDITY, UIDNEXT, the first \\Recent UID,
and the directory modification times the index is known to match. Opening a folder after a
restart therefore reads one file instead of listing and stat'ing every message.

Each change is one appended journal line, so its cost does not grow with the folder; once the
journal is longer than the snapshot both are folded into a new snapshot. Lines are synced by
`JournalSync`, the journals of every folder written meanwhile together on a thread (group commit),
and nothing that rests on a line is reported before it is on disk. The snapshot names a
generation and so does the journal, so a journal left behind by a crash during that fold is
recognised as already folded in and ignored.

The snapshot keeps its messages column by column (`Table`): UIDs, modification sequences, sizes and
dates as arrays of 64-bit integers, file names and keywords as lines, and a CRC-32 of the whole
file. Reading it is a few calls into C however many messages the folder holds; the line per
message of version 2 took 2 µs each to read and check, 6 ms of a cold SELECT of 3000 messages.
Version 2 snapshots are still read, and replaced by version 3 on first use.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sys
import zlib
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import compress
from pathlib import Path

from kepmta.maildir import fsync_dir

log = logging.getLogger("kepmta.imap")

INDEX = "kepmta-index"
JOURNAL = "kepmta-index.log"
_SNAPSHOT_MAGIC = "kepmta-index"
_JOURNAL_MAGIC = "kepmta-journal"
_SNAPSHOT_VERSION = "3"
_TEXT_SNAPSHOT_VERSION = "2"
_JOURNAL_VERSION = "2"
_MIN_JOURNAL = 1024
# The table's integers are stored little-endian whatever the machine.
_SWAP = sys.byteorder != "little"


class IndexCorrupt(ValueError):
    """The snapshot cannot be trusted; the folder gets new UIDs and a new UIDVALIDITY."""


@dataclass(frozen=True)
class Entry:
    """One message as the index remembers it; `sub` is "new" or "cur"."""

    uid: int
    modseq: int
    size: int
    internal_ns: int
    sub: str
    name: str
    keywords: frozenset[str]


@dataclass(frozen=True)
class Header:
    uidvalidity: int
    uidnext: int
    first_recent: int
    highestmodseq: int
    # Modification times (ns) of new/ and cur/ that the entries match, and whether they were old
    # enough when taken that a change within the same clock tick cannot hide behind them.
    stamp: tuple[int, int]
    settled: bool


@dataclass(frozen=True)
class Vanished:
    """UIDs expunged at modification sequence `modseq`, as closed ranges."""

    modseq: int
    uids: tuple[tuple[int, int], ...]


# A journal message line's fields as read and checked ("M", uid, modseq, size, internal_ns, sub,
# name, keywords), never changed. They are converted only when the message is used: a cold SELECT
# reads the whole index of a large folder and looks at few of its messages.
Fields = list[str]
# A message as the index holds it before it is used: a row of the snapshot's `Table`, or the
# fields of a journal line that changed it since.
Item = int | Fields


def _column(data: bytes) -> array[int]:
    a = array("q")
    a.frombytes(data)
    if _SWAP:
        a.byteswap()
    return a


def _column_bytes(a: array[int]) -> bytes:
    if _SWAP:
        a = array("q", a)
        a.byteswap()
    return a.tobytes()


@dataclass(frozen=True)
class Table:
    """A snapshot's messages, column by column in UID order."""

    uids: array[int] = field(default_factory=lambda: array("q"))
    modseqs: array[int] = field(default_factory=lambda: array("q"))
    sizes: array[int] = field(default_factory=lambda: array("q"))
    internal_ns: array[int] = field(default_factory=lambda: array("q"))
    in_new: bytes = b""  # 1 for a file in new/, 0 for cur/
    names: list[str] = field(default_factory=list)
    keywords: list[str] = field(default_factory=list)  # each message's, space-separated

    def entry(self, item: Item) -> Entry:
        if isinstance(item, list):
            return entry_of(item)
        return Entry(
            self.uids[item],
            self.modseqs[item],
            self.sizes[item],
            self.internal_ns[item],
            "new" if self.in_new[item] else "cur",
            self.names[item],
            keywords_of(self.keywords[item]),
        )

    def file(self, item: Item) -> tuple[str, str]:
        """Where the message is, as (sub-directory, file name)."""
        if isinstance(item, list):
            return item[5], item[6]
        return "new" if self.in_new[item] else "cur", self.names[item]


@dataclass
class State:
    header: Header
    entries: dict[int, Item] = field(default_factory=dict)
    vanished: list[Vanished] = field(default_factory=list)
    table: Table = field(default_factory=Table)
    # The highest modification sequence of any message line read, even of a message expunged since.
    top_modseq: int = 0
    # UIDs whose entry was set by a line: of the journal, or of a version 2 snapshot.
    from_lines: set[int] = field(default_factory=set)
    # Whether `entries` is in UID order: a table is, and the journal hands out UIDs in order.
    in_order: bool = True

    def entry(self, uid: int) -> Entry:
        return self.table.entry(self.entries[uid])

    def in_new(self) -> set[int]:
        """The UIDs of messages whose file is in new/."""
        entries, t = self.entries, self.table
        out = {uid for uid in compress(t.uids, t.in_new) if isinstance(entries.get(uid), int)}
        out.update(
            uid for uid in self.from_lines if isinstance(item := entries.get(uid), list) and item[5] == "new"
        )
        return out

    def keyword_fields(self) -> set[str]:
        """The keyword fields of the messages. A table's are all taken, even of a message the journal
        changed since: keywords are never withdrawn from a folder while it is open either."""
        fields = set(self.table.keywords)
        fields.update(item[7] for uid in self.from_lines if isinstance(item := self.entries.get(uid), list))
        return fields


# --- line format ------------------------------------------------------------------------------------


def header_line(h: Header) -> str:
    return "\t".join(
        (
            "H",
            str(h.uidvalidity),
            str(h.uidnext),
            str(h.first_recent),
            str(h.highestmodseq),
            str(h.stamp[0]),
            str(h.stamp[1]),
            "1" if h.settled else "0",
        )
    )


def entry_fields(e: Entry) -> Fields:
    keywords = " ".join(sorted(e.keywords))
    return ["M", str(e.uid), str(e.modseq), str(e.size), str(e.internal_ns), e.sub, e.name, keywords]


def entry_line(e: Entry) -> str:
    return "\t".join(entry_fields(e))


def entry_of(fields: Fields) -> Entry:
    """The entry a checked message line holds."""
    return Entry(
        int(fields[1]),
        int(fields[2]),
        int(fields[3]),
        int(fields[4]),
        fields[5],
        fields[6],
        keywords_of(fields[7]),
    )


def vanished_line(v: Vanished) -> str:
    return f"X\t{v.modseq}\t" + ",".join(f"{lo}:{hi}" for lo, hi in v.uids)


def uid_ranges(uids: list[int]) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    for uid in sorted(set(uids)):
        if out and uid == out[-1][1] + 1:
            out[-1] = (out[-1][0], uid)
        else:
            out.append((uid, uid))
    return tuple(out)


def fold_vanished(vanished: list[Vanished], keep: int) -> list[Vanished]:
    """At most `keep` records: the oldest are merged under the newest of them.

    RFC 7162 §3.2.6 lets a server that has forgotten when a UID was expunged report it as
    vanished to a client that may already know; merging trades that precision for bounded size.
    """
    if len(vanished) <= keep:
        return vanished
    cut = len(vanished) - keep + 1
    ranges: list[tuple[int, int]] = []
    for lo, hi in sorted(r for v in vanished[:cut] for r in v.uids):
        if ranges and lo <= ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], max(hi, ranges[-1][1]))
        else:
            ranges.append((lo, hi))
    return [Vanished(vanished[cut - 1].modseq, tuple(ranges)), *vanished[cut:]]


@functools.lru_cache(maxsize=1024)
def keywords_of(field: str) -> frozenset[str]:
    # A folder's messages repeat a few keyword sets (most have none): one set each, parsed once.
    return frozenset(k for k in field.split(" ") if k)


def _apply(state: State, line: str) -> None:
    parts = line.split("\t")
    kind = parts[0]
    if kind == "H" and len(parts) == 8:
        h = Header(
            int(parts[1]),
            int(parts[2]),
            int(parts[3]),
            int(parts[4]),
            (int(parts[5]), int(parts[6])),
            parts[7] == "1",
        )
        if h.uidvalidity != state.header.uidvalidity:
            raise ValueError("UIDVALIDITY changed inside the index")
        state.header = h
    elif kind == "M" and len(parts) == 8:
        # Every number is converted here so that a damaged line is found now, not when it is used.
        uid, modseq, size, _internal = int(parts[1]), int(parts[2]), int(parts[3]), int(parts[4])
        if parts[5] not in ("new", "cur") or not parts[6] or uid <= 0 or modseq <= 0 or size < 0:
            raise ValueError(f"bad message line {line!r}")
        if uid not in state.entries and state.entries and uid < next(reversed(state.entries)):
            state.in_order = False
        state.entries[uid] = parts
        state.from_lines.add(uid)
        if modseq > state.top_modseq:
            state.top_modseq = modseq
    elif kind == "X" and len(parts) == 3:
        ranges: list[tuple[int, int]] = []
        for piece in parts[2].split(","):
            first, _, last = piece.partition(":")
            ranges.append((int(first), int(last)))
        v = Vanished(int(parts[1]), tuple(ranges))
        for lo, hi in v.uids:
            if hi - lo < len(state.entries):
                for uid in range(lo, hi + 1):
                    state.entries.pop(uid, None)
            else:
                for uid in [u for u in state.entries if lo <= u <= hi]:
                    del state.entries[uid]
        state.vanished.append(v)
    else:
        raise ValueError(f"unknown index line {line[:40]!r}")


def _settle_counters(state: State) -> None:
    """UIDNEXT and HIGHESTMODSEQ never fall below what any line read shows was handed out."""
    h = state.header
    top_uid = max(state.entries, default=0)
    top_modseq = state.top_modseq
    for v in state.vanished:
        top_uid = max(top_uid, v.uids[-1][1] if v.uids else 0)
        top_modseq = max(top_modseq, v.modseq)
    state.header = Header(
        h.uidvalidity,
        max(h.uidnext, top_uid + 1),
        h.first_recent,
        max(h.highestmodseq, top_modseq),
        h.stamp,
        h.settled,
    )


# --- the snapshot ----------------------------------------------------------------------------------


def _snapshot_state(lines: list[str]) -> State:
    """The state the text lines of a snapshot hold: its header, expunge history and, in version 2,
    its messages."""
    if not lines or not lines[0].startswith("H\t"):
        raise ValueError("snapshot lacks its folder header")
    state = State(Header(int(lines[0].split("\t")[1]), 1, 1, 0, (-1, -1), False))
    for line in lines:
        if line:
            _apply(state, line)
    return state


def _read_table_snapshot(data: bytes) -> State:
    """A version 3 snapshot after its first line and before its checksum."""
    lines: list[str] = []
    pos = 0
    while True:
        end = data.index(b"\n", pos)
        line = data[pos:end].decode("utf-8")
        pos = end + 1
        if line.startswith("T\t"):
            break
        lines.append(line)
    state = _snapshot_state(lines)
    _, *counts = line.split("\t")
    n, names_len, keywords_len = (int(c) for c in counts)
    columns = [_column(data[pos + 8 * n * k : pos + 8 * n * (k + 1)]) for k in range(4)]
    pos += 32 * n
    in_new = data[pos : pos + n]
    pos += n
    names = data[pos : pos + names_len].decode("utf-8").split("\n") if n else []
    pos += names_len
    keywords = data[pos : pos + keywords_len].decode("utf-8").split("\n") if n else []
    pos += keywords_len
    uids, modseqs, sizes, internal = columns
    if pos != len(data) or any(len(c) != n for c in (*columns, in_new, names, keywords)):
        raise ValueError("the table's columns do not match its message count")
    # What version 2 checked line by line, each in one pass in C.
    order = uids.tolist()
    if n and (order[0] <= 0 or min(modseqs) <= 0 or min(sizes) < 0 or "" in names):
        raise ValueError("a message of the table has a bad UID, modification sequence, size or name")
    if order != sorted(set(order)) or in_new.translate(None, b"\0\1"):
        raise ValueError("the table's UIDs are out of order or its folders unknown")
    state.table = Table(uids, modseqs, sizes, internal, in_new, names, keywords)
    state.entries = dict(zip(order, range(n), strict=True))
    state.top_modseq = max(modseqs, default=0)
    return state


def _table_snapshot(first: str, state: State) -> bytes:
    """A version 3 snapshot of `state`, without its checksum."""
    t = state.table
    uids, modseqs, sizes, internal = (array("q") for _ in range(4))
    in_new = bytearray()
    names: list[str] = []
    keywords: list[str] = []
    for uid, item in sorted(state.entries.items()):
        uids.append(uid)
        if isinstance(item, int):
            modseqs.append(t.modseqs[item])
            sizes.append(t.sizes[item])
            internal.append(t.internal_ns[item])
            in_new.append(t.in_new[item])
            names.append(t.names[item])
            keywords.append(t.keywords[item])
        else:
            modseqs.append(int(item[2]))
            sizes.append(int(item[3]))
            internal.append(int(item[4]))
            in_new.append(item[5] == "new")
            names.append(item[6])
            keywords.append(item[7])
    name_bytes = "\n".join(names).encode("utf-8")
    keyword_bytes = "\n".join(keywords).encode("utf-8")
    text = [first, header_line(state.header), *(vanished_line(v) for v in state.vanished)]
    text.append(f"T\t{len(uids)}\t{len(name_bytes)}\t{len(keyword_bytes)}")
    parts = ["\n".join(text).encode("utf-8"), b"\n"]
    parts.extend(_column_bytes(c) for c in (uids, modseqs, sizes, internal))
    parts.extend((bytes(in_new), name_bytes, keyword_bytes))
    return b"".join(parts)


# --- the files --------------------------------------------------------------------------------------


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class JournalSync:
    """Syncs journal lines in groups: `IndexFile.append` writes on the event loop and leaves the
    sync to this, which syncs every journal written since its last round on one thread, one fsync
    each, while the loop goes on with other sessions. An fsync on the loop for every STORE held
    every session still for it (15 % of the loop's time under bench/imap.py's writing mix).

    Whoever reports on a folder waits for `settled` of its journal first, so what a client is
    told (a tagged OK, a FETCH of new flags, a HIGHESTMODSEQ) is on disk: a crash cannot take back
    what was reported, nor hand a modification sequence a client has seen to another change
    (RFC 7162 §3.1.2). Only the folders reported on are waited for: a session reading one folder
    does not wait for the writes of another.
    """

    def __init__(self) -> None:
        self._dirty: dict[IndexFile, None] = {}  # journals with lines not yet synced
        self._round: asyncio.Task[None] | None = None

    def wrote(self, index: IndexFile) -> None:
        self._dirty[index] = None

    async def settled(self, journals: Iterable[IndexFile]) -> None:
        """Returns once every line written to `journals` before the call is on disk (at once if
        all is); raises the OSError of a sync that failed, which the next call tries again."""
        targets = [(index, index.appends) for index in journals if index.synced < index.appends]
        while any(index.synced < upto for index, upto in targets):
            if self._round is None or self._round.done():
                self._round = asyncio.ensure_future(self._sync_round())
            # Shielded: a session that goes away must not cancel the round others wait for.
            await asyncio.shield(self._round)

    async def all_settled(self) -> None:
        """`settled` for every journal (at shutdown)."""
        await self.settled(list(self._dirty))

    async def _sync_round(self) -> None:
        # list() copies in one step: a folder being read on a thread (StoreRegistry.acquire) may
        # add its journal meanwhile.
        batch = [(index, index.appends) for index in list(self._dirty)]
        await asyncio.to_thread(_sync_journals, [index for index, _ in batch])
        for index, upto in batch:
            index.synced = max(index.synced, upto)
            if index.synced >= index.appends:  # nothing written while it was synced
                del self._dirty[index]


def _sync_journals(journals: list[IndexFile]) -> None:
    for index in journals:
        try:
            fd = os.open(index.journal_path, os.O_RDONLY)
        except FileNotFoundError:
            continue  # the folder was deleted meanwhile: nothing of it is left to report
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class IndexFile:
    """Reads and writes one folder's index; `appends`/`snapshots` count the writes."""

    def __init__(self, directory: Path, journals: JournalSync) -> None:
        self.directory = directory
        self.journals = journals
        self.synced = 0  # of `appends`, those on disk (JournalSync)
        self.generation = 0
        self.journal_lines = 0
        self.appends = 0
        self.snapshots = 0
        # The snapshot read is of an older version, to be replaced.
        self.outdated = False

    @property
    def snapshot_path(self) -> Path:
        return self.directory / INDEX

    @property
    def journal_path(self) -> Path:
        return self.directory / JOURNAL

    def load(self) -> State | None:
        """The index as last written, or None when there is none; raises IndexCorrupt."""
        try:
            data = self.snapshot_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise IndexCorrupt(str(e)) from e
        try:
            first = data[: data.index(b"\n")]
            head = first.decode("ascii").split(" ")
            if len(head) != 3 or head[0] != _SNAPSHOT_MAGIC:
                raise ValueError("bad snapshot header")
            generation = int(head[2])
            if head[1] == _SNAPSHOT_VERSION:
                end = data.rindex(b"C\t")
                if zlib.crc32(data[:end]) != int(data[end + 2 :], 16):
                    raise ValueError("checksum mismatch")
                state = _read_table_snapshot(data[len(first) + 1 : end])
            elif head[1] == _TEXT_SNAPSHOT_VERSION:
                state = _snapshot_state(data[len(first) + 1 :].decode("utf-8").split("\n"))
                self.outdated = True
            else:
                raise ValueError(f"snapshot version {head[1]!r} unknown")
        except (ValueError, IndexError, UnicodeDecodeError) as e:
            raise IndexCorrupt(f"{self.snapshot_path}: {e}") from e
        self.generation = generation
        self.journal_lines = self._replay(state)
        _settle_counters(state)
        return state

    def _replay(self, state: State) -> int:
        try:
            text = self.journal_path.read_text("utf-8", errors="replace")
        except FileNotFoundError:
            return 0
        lines = text.split("\n")
        if lines[0] != f"{_JOURNAL_MAGIC} {_JOURNAL_VERSION} {self.generation}":
            # A journal of another generation was already folded into this snapshot.
            return 0
        # The last element is whatever followed the final newline: a line torn by a crash, never
        # acknowledged to anyone, so it is left out.
        complete = lines[1:-1]
        applied = 0
        for line in complete:
            try:
                _apply(state, line)
            except (ValueError, IndexError):
                log.warning("%s: ignoring the journal from a damaged line on", self.journal_path)
                break
            applied += 1
        return applied

    def append(self, lines: list[str]) -> None:
        """Add lines to the journal; `journals` syncs them before the change they describe is
        reported."""
        if not lines:
            return
        data = "".join(line + "\n" for line in lines).encode("utf-8")
        if self.journal_lines == 0:
            data = f"{_JOURNAL_MAGIC} {_JOURNAL_VERSION} {self.generation}\n".encode() + data
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        else:
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        fd = os.open(self.journal_path, flags, 0o600)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        self.journal_lines += len(lines)
        self.appends += 1
        self.journals.wrote(self)

    def wants_snapshot(self, entries: int) -> bool:
        # A journal line costs a reader several times what a message of the snapshot does (µs: 2
        # against 0.3 to read, 0.6 to write), so the journal is folded at a quarter of the folder.
        return self.journal_lines > max(_MIN_JOURNAL, entries // 4)

    def write_snapshot(self, state: State) -> None:
        """Replace snapshot and journal with one snapshot of `state` (atomic rename)."""
        generation = self.generation + 1
        body = _table_snapshot(f"{_SNAPSHOT_MAGIC} {_SNAPSHOT_VERSION} {generation}", state)
        body += b"C\t%08x\n" % zlib.crc32(body)
        tmp = self.directory / f"{INDEX}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.snapshot_path)
        self.generation = generation
        self.journal_lines = 0
        self.snapshots += 1
        self.outdated = False
        self.synced = self.appends  # every line so far is folded into the synced snapshot

    def fold(self, state: State) -> None:
        """`write_snapshot`, then the journal it replaces removed: the next process to open the
        folder reads one file, on the event loop (`heavy` counts a journal's bytes four times, even
        one of an older generation, which is ignored)."""
        self.write_snapshot(state)
        # The rename first on disk: a crash must not leave the old snapshot without its journal.
        fsync_dir(self.directory)
        self.journal_path.unlink(missing_ok=True)
