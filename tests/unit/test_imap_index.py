"""The folder index: journal replay, torn lines, snapshots and generations, expunge history, and a
folder reopened from its index without listing its directories."""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, cast

import pytest

from kepmta.imap import index as index_module
from kepmta.imap.index import (
    INDEX,
    JOURNAL,
    Entry,
    Header,
    IndexCorrupt,
    IndexFile,
    JournalSync,
    State,
    Vanished,
    entry_fields,
    entry_line,
    fold_vanished,
    header_line,
    vanished_line,
)
from kepmta.imap.mailbox import FolderStore, MailboxView, MessageFile, Messages, StoreRegistry
from kepmta.maildir import Maildir


def _state() -> State:
    header = Header(77, 3, 1, 2, (10, 20), True)
    entries = {
        1: entry_fields(Entry(1, 1, 100, 5_000_000_000, "cur", "a:2,S", frozenset({"$Label"}))),
        2: entry_fields(Entry(2, 2, 200, 6_000_000_000, "new", "b", frozenset())),
    }
    return State(header, entries, [])


def test_snapshot_and_journal_round_trip(tmp_path: Path) -> None:
    index = IndexFile(tmp_path, JournalSync())
    assert index.load() is None
    index.write_snapshot(_state())
    index.append([entry_line(Entry(3, 4, 300, 7_000_000_000, "cur", "c:2,", frozenset()))])
    index.append([vanished_line(Vanished(5, ((1, 1),))), header_line(Header(77, 4, 3, 5, (11, 21), False))])
    loaded = IndexFile(tmp_path, JournalSync()).load()
    assert loaded is not None
    assert sorted(loaded.entries) == [2, 3]
    assert loaded.entry(2) == Entry(2, 2, 200, 6_000_000_000, "new", "b", frozenset())
    assert loaded.entry(3) == Entry(3, 4, 300, 7_000_000_000, "cur", "c:2,", frozenset())
    assert loaded.vanished == [Vanished(5, ((1, 1),))]
    assert loaded.header == Header(77, 4, 3, 5, (11, 21), False)


def test_torn_journal_line_is_ignored_and_counters_never_go_back(tmp_path: Path) -> None:
    index = IndexFile(tmp_path, JournalSync())
    index.write_snapshot(_state())
    index.append([entry_line(Entry(9, 9, 1, 1, "cur", "z:2,", frozenset()))])
    with open(tmp_path / JOURNAL, "ab") as f:
        f.write(b"M\t10\t10\t1\t1\tcur\tpartial")
    loaded = IndexFile(tmp_path, JournalSync()).load()
    assert loaded is not None
    assert sorted(loaded.entries) == [1, 2, 9]
    # The header said UIDNEXT 3, but UID 9 was handed out: UIDs must never be reused.
    assert loaded.header.uidnext == 10 and loaded.header.highestmodseq == 9


def test_journal_of_an_older_generation_is_ignored(tmp_path: Path) -> None:
    index = IndexFile(tmp_path, JournalSync())
    index.write_snapshot(_state())
    index.append([vanished_line(Vanished(3, ((1, 2),)))])
    stale = (tmp_path / JOURNAL).read_bytes()
    loaded = index.load()
    assert loaded is not None and loaded.entries == {}
    index.write_snapshot(_state())
    # A crash after the new snapshot but before the journal was reset leaves the old journal.
    (tmp_path / JOURNAL).write_bytes(stale)
    again = IndexFile(tmp_path, JournalSync()).load()
    assert again is not None and sorted(again.entries) == [1, 2]


def test_fold_leaves_one_snapshot_holding_the_journal(tmp_path: Path) -> None:
    index = IndexFile(tmp_path, JournalSync())
    index.write_snapshot(_state())
    index.append([entry_line(Entry(3, 4, 300, 7_000_000_000, "cur", "c:2,", frozenset()))])
    state = IndexFile(tmp_path, JournalSync()).load()
    assert state is not None
    index.fold(state)
    assert not (tmp_path / JOURNAL).exists()
    folded = IndexFile(tmp_path, JournalSync()).load()
    assert folded is not None and sorted(folded.entries) == [1, 2, 3]
    assert folded.entry(3) == Entry(3, 4, 300, 7_000_000_000, "cur", "c:2,", frozenset())
    # The journal starts again with the next change, of the new generation.
    index.append([vanished_line(Vanished(5, ((1, 1),)))])
    again = IndexFile(tmp_path, JournalSync()).load()
    assert again is not None and sorted(again.entries) == [2, 3]


def test_corrupt_snapshot(tmp_path: Path) -> None:
    (tmp_path / INDEX).write_text("kepmta-index 2 1\nH\t1\tx\n")
    with pytest.raises(IndexCorrupt):
        IndexFile(tmp_path, JournalSync()).load()


# Version 2, the text snapshot an older kepmta wrote: one line per message.
_TEXT_SNAPSHOT = (
    "kepmta-index 2 4\n"
    "H\t77\t4\t1\t3\t10\t20\t1\n"
    "M\t1\t1\t100\t5000000000\tcur\ta:2,S\t$Label\n"
    "M\t3\t3\t300\t7000000000\tnew\tc\t\n"
    "X\t2\t2:2\n"
)


@pytest.mark.parametrize("field", [2, 3, 4])
def test_a_bad_number_in_a_version_2_line_is_found_when_the_index_is_read(tmp_path: Path, field: int) -> None:
    # Messages are built from their lines only when used; their lines are checked at once.
    line = _TEXT_SNAPSHOT.split("\n")[3]
    parts = line.split("\t")
    parts[field] = "12x"
    (tmp_path / INDEX).write_text(_TEXT_SNAPSHOT.replace(line, "\t".join(parts)))
    with pytest.raises(IndexCorrupt, match="12x"):
        IndexFile(tmp_path, JournalSync()).load()


def test_a_folder_indexed_by_version_2_keeps_its_uids_and_is_rewritten_as_version_3(tmp_path: Path) -> None:
    Maildir(tmp_path).create("INBOX")
    (tmp_path / "cur" / "a:2,S").write_bytes(b"Subject: a\r\n\r\n")
    (tmp_path / "new" / "c").write_bytes(b"Subject: c\r\n\r\n")
    (tmp_path / INDEX).write_text(_TEXT_SNAPSHOT)
    store = StoreRegistry().open("INBOX", tmp_path)
    assert (store.uidvalidity, store.uidnext, store.highestmodseq) == (77, 4, 3)
    assert [(m.uid, m.base) for m in store.messages.values()] == [(1, "a"), (3, "c")]
    assert store.messages[1].flags == frozenset({"\\Seen", "$Label"}) and store.vanished_since(0) == [2]
    assert (tmp_path / INDEX).read_bytes().startswith(b"kepmta-index 3 5\n")
    again = StoreRegistry().open("INBOX", tmp_path)
    assert [(m.uid, m.base, m.flags) for m in again.messages.values()] == [
        (m.uid, m.base, m.flags) for m in store.messages.values()
    ]
    assert again.uidvalidity == 77 and not again.index.outdated


def _resealed(path: Path, change: Callable[[bytes], bytes]) -> None:
    """Apply `change` to a version 3 snapshot's body and give it a matching checksum, as a bug
    writing it would."""
    data = path.read_bytes()
    body = change(data[: data.rindex(b"C\t")])
    path.write_bytes(body + b"C\t%08x\n" % zlib.crc32(body))


def test_a_damaged_table_is_found_by_its_checksum(tmp_path: Path) -> None:
    IndexFile(tmp_path, JournalSync()).write_snapshot(_state())
    data = (tmp_path / INDEX).read_bytes()
    (tmp_path / INDEX).write_bytes(data.replace(b"a:2,S", b"a:2,T"))
    with pytest.raises(IndexCorrupt, match="checksum"):
        IndexFile(tmp_path, JournalSync()).load()


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda b: b.replace(b"T\t2\t", b"T\t3\t"), "columns"),  # a count that is not the columns'
        (
            lambda b: b.replace((100).to_bytes(8, "little"), (-1).to_bytes(8, "little", signed=True), 1),
            "bad UID, modification sequence, size or name",
        ),
        # UIDs 1 and 2 (little-endian) swapped: out of order.
        (
            lambda b: b.replace(
                (1).to_bytes(8, "little") + (2).to_bytes(8, "little"),
                (2).to_bytes(8, "little") + (1).to_bytes(8, "little"),
                1,
            ),
            "out of order",
        ),
    ],
)
def test_a_table_that_breaks_a_rule_is_refused_even_with_a_good_checksum(
    tmp_path: Path, change: Callable[[bytes], bytes], error: str
) -> None:
    IndexFile(tmp_path, JournalSync()).write_snapshot(_state())
    _resealed(tmp_path / INDEX, change)
    with pytest.raises(IndexCorrupt, match=error):
        IndexFile(tmp_path, JournalSync()).load()


def test_journal_lines_over_the_table_decide_new_keywords_and_order(tmp_path: Path) -> None:
    index = IndexFile(tmp_path, JournalSync())
    index.write_snapshot(_state())  # 1 in cur/ with $Label, 2 in new/
    index.append(
        [
            entry_line(Entry(2, 3, 200, 6_000_000_000, "cur", "b:2,S", frozenset({"$Done"}))),
            entry_line(Entry(5, 4, 10, 1, "new", "e", frozenset())),
            entry_line(Entry(4, 5, 10, 1, "new", "d", frozenset())),  # handed out after 5, written before
            vanished_line(Vanished(6, ((1, 1),))),
        ]
    )
    loaded = IndexFile(tmp_path, JournalSync()).load()
    assert loaded is not None
    assert loaded.in_new() == {4, 5}
    # The table's keywords stay even where the journal changed the message since.
    assert loaded.keyword_fields() == {"$Label", "", "$Done"}
    assert not loaded.in_order
    messages = Messages(lambda e: cast(MessageFile, e))
    messages.load(loaded)
    assert list(messages) == [2, 4, 5]
    assert messages.file(2) == ("cur", "b:2,S") and messages.file(5) == ("new", "e")


def test_fold_vanished_keeps_a_superset() -> None:
    history = [Vanished(m, ((m, m),)) for m in range(1, 11)]
    folded = fold_vanished(history, 4)
    assert len(folded) == 4
    assert folded[0] == Vanished(7, ((1, 7),))
    assert folded[1:] == history[7:]
    assert fold_vanished(history, 20) == history


def _deliver(md: Maildir, base: str) -> Path:
    def write(f: BinaryIO) -> None:
        f.write(b"Subject: x\r\n\r\nbody\r\n")

    return md.deliver("INBOX", base, write)


def _inbox_of(root: Path, count: int) -> tuple[Maildir, FolderStore, MailboxView]:
    """An INBOX of `count` delivered messages, opened and selected read-write."""
    md = Maildir(root)
    md.create("INBOX")
    for i in range(count):
        _deliver(md, f"m{i}")
    store = StoreRegistry().open("INBOX", root)
    return md, store, MailboxView(store, read_only=False)


def test_reopening_a_quiet_folder_reads_only_its_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    md, store, view = _inbox_of(tmp_path, 50)
    store.set_flags(3, frozenset({"\\Seen", "$Work"}), view)
    store.set_flags(4, frozenset({"\\Deleted"}), view)
    store.expunge([4])
    past = time.time() - 3600
    for sub in ("new", "cur"):
        os.utime(tmp_path / sub, (past, past))
    # Long after the last change the store records that the index matches the directories.
    store.refresh(force=True)
    listed: list[object] = []
    original = os.listdir
    monkeypatch.setattr(os, "listdir", lambda p=".": listed.append(p) or original(p))
    again = StoreRegistry().open("INBOX", tmp_path)
    assert listed == [] and again.scans == 0
    assert len(again.messages) == 49 and again.uidnext == 51
    assert again.messages[3].flags == frozenset({"\\Seen", "$Work"})
    assert again.highestmodseq == store.highestmodseq
    assert again.vanished_since(0) == [4]
    # A changed directory is noticed, and then scanned.
    _deliver(md, "late")
    third = StoreRegistry().open("INBOX", tmp_path)
    assert third.scans == 1 and third.uidnext == 52


def test_messages_never_used_are_written_back_as_they_were_read(tmp_path: Path) -> None:
    _, first, view = _inbox_of(tmp_path, 20)
    first.set_flags(5, frozenset({"\\Flagged", "$Work"}), view)
    state = first._state()
    before = {uid: state.entry(uid) for uid in state.entries}
    again = StoreRegistry().open("INBOX", tmp_path)
    # One message used (and so built), the others only read; a new snapshot holds all of them.
    assert again.messages[7].base == first.messages[7].base
    again.save_index()
    loaded = IndexFile(tmp_path, JournalSync()).load()
    assert loaded is not None
    assert {uid: loaded.entry(uid) for uid in loaded.entries} == before
    assert again.keywords == {"$Work"} and again.messages[5].flags == frozenset({"\\Flagged", "$Work"})


def test_journal_is_folded_into_a_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_module, "_MIN_JOURNAL", 20)
    md = Maildir(tmp_path)
    md.create("INBOX")
    _deliver(md, "one")
    store = StoreRegistry().open("INBOX", tmp_path)
    before = store.index.snapshots
    for i in range(30):
        store.set_flags(1, frozenset({f"k{i % 2}"}), None)
    assert store.index.snapshots == before + 1
    assert store.index.journal_lines < 20
    reloaded = StoreRegistry().open("INBOX", tmp_path)
    assert reloaded.messages[1].flags == store.messages[1].flags
    assert reloaded.highestmodseq == store.highestmodseq
