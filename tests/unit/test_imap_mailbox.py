"""Folder state: UIDs persisted in the folder index, flags in file names, views and their notifications."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import pytest

from kepmta import maildir
from kepmta.imap.index import INDEX, JOURNAL
from kepmta.imap.mailbox import MailboxView, StoreRegistry, cur_name, heavy, split_name
from kepmta.maildir import Maildir


def _deliver(
    md: Maildir, base: str, data: bytes = b"Subject: x\r\n\r\nbody\r\n", folder: str = "INBOX"
) -> Path:
    def write(f: BinaryIO) -> None:
        f.write(data)

    return md.deliver(folder, base, write)


def test_file_name_flags_round_trip() -> None:
    assert split_name("123.abc:2,FRS") == ("123.abc", frozenset({"\\Flagged", "\\Answered", "\\Seen"}), "")
    assert split_name("123.abc") == ("123.abc", frozenset(), "")
    assert split_name("x:2,Sab") == ("x", frozenset({"\\Seen"}), "ab")
    assert cur_name("x", frozenset({"\\Seen", "\\Draft", "\\Deleted", "kw"}), "a") == "x:2,DSTa"


def test_uids_persist_and_uidvalidity_is_stable(tmp_path: Path) -> None:
    md = Maildir(tmp_path)
    md.create("INBOX")
    _deliver(md, "one")
    _deliver(md, "two")
    store = StoreRegistry().open("INBOX", tmp_path)
    uids = {m.base: m.uid for m in store.messages.values()}
    assert sorted(uids.values()) == [1, 2]
    validity = store.uidvalidity
    _deliver(md, "three")
    again = StoreRegistry().open("INBOX", tmp_path)
    assert again.uidvalidity == validity
    assert {m.base: m.uid for m in again.messages.values()} == {**uids, "three": 3}
    assert again.uidnext == 4
    assert (tmp_path / INDEX).read_bytes().split(b"\n")[1].startswith(b"H\t%d\t" % validity)
    assert not (tmp_path / "dovecot-uidlist").exists()


def test_a_journal_of_an_older_generation_goes_at_shutdown(tmp_path: Path) -> None:
    # What a snapshot written while the folder is in use leaves until its next change: ignored when
    # read, but `heavy` counts its bytes.
    md = Maildir(tmp_path)
    md.create("INBOX")
    _deliver(md, "one")
    for sub in ("cur", "new"):  # settled: opening the folder again writes nothing
        os.utime(tmp_path / sub, (1_000_000_000, 1_000_000_000))
    generation = StoreRegistry().open("INBOX", tmp_path).index.generation
    stale = f"kepmta-journal 2 {generation - 1}\n".encode() + b"X\t9\t7:7\n" * 20_000
    (tmp_path / JOURNAL).write_bytes(stale)
    store = StoreRegistry().open("INBOX", tmp_path)
    assert store.index.journal_lines == 0 and heavy(tmp_path)
    store.fold_journal()
    assert not (tmp_path / JOURNAL).exists() and not heavy(tmp_path)
    assert [m.base for m in StoreRegistry().open("INBOX", tmp_path).messages.values()] == ["one"]


def test_corrupt_uidlist_gets_new_uidvalidity(tmp_path: Path) -> None:
    md = Maildir(tmp_path)
    md.create("INBOX")
    _deliver(md, "one")
    registry = StoreRegistry()
    first = registry.open("INBOX", tmp_path)
    (tmp_path / INDEX).write_text("garbage\n")
    registry.forget(tmp_path)
    second = registry.open("INBOX", tmp_path)
    assert second.uidvalidity > first.uidvalidity
    assert list(second.messages) == [1]


def test_select_moves_new_to_cur_and_claims_recent(tmp_path: Path) -> None:
    md = Maildir(tmp_path)
    md.create("INBOX")
    _deliver(md, "one")
    registry = StoreRegistry()
    store = registry.open("INBOX", tmp_path)
    examine = MailboxView(store, read_only=True)
    assert examine.recent == {1}
    assert os.listdir(tmp_path / "new") == ["one"]
    select = MailboxView(store, read_only=False)
    assert select.recent == {1}
    assert os.listdir(tmp_path / "new") == []
    assert os.listdir(tmp_path / "cur") == ["one:2,"]
    # Once a read-write session has been told, nobody else sees the message as recent.
    later = MailboxView(store, read_only=False)
    assert later.recent == set()
    assert store.recent_count == 0


def test_views_learn_of_changes_only_when_told(tmp_path: Path) -> None:
    md = Maildir(tmp_path)
    md.create("INBOX")
    for base in ("a", "b", "c"):
        _deliver(md, base)
    store = StoreRegistry().open("INBOX", tmp_path)
    mine = MailboxView(store, read_only=False)
    other = MailboxView(store, read_only=False)
    store.set_flags(2, frozenset({"\\Deleted"}), mine)
    store.expunge([2])
    _deliver(md, "d")
    store.refresh(force=True)
    assert other.wakeup.is_set()
    # During FETCH/STORE/SEARCH the expunge must wait; the new message may be announced.
    assert other.updates(allow_expunge=False) == [b"* 4 EXISTS", b"* 1 RECENT"]
    assert other.uids == [1, 2, 3, 4]
    assert other.message(2) is None
    assert other.updates(allow_expunge=True) == [b"* 2 EXPUNGE"]
    assert other.uids == [1, 3, 4]
    # "d" went to the session that was told first; 1 and 3 stay recent for the one that selected first.
    assert mine.updates(allow_expunge=True) == [b"* 2 EXPUNGE", b"* 3 EXISTS", b"* 2 RECENT"]


def test_flag_changes_by_one_session_reach_the_other(tmp_path: Path) -> None:
    md = Maildir(tmp_path)
    md.create("INBOX")
    _deliver(md, "a")
    store = StoreRegistry().open("INBOX", tmp_path)
    mine = MailboxView(store, read_only=False)
    other = MailboxView(store, read_only=True)
    new = store.set_flags(1, frozenset({"\\Seen", "urgent"}), mine)
    assert new is not None and new.path.name == "a:2,S"
    assert mine.updates(allow_expunge=True) == []
    assert other.updates(allow_expunge=True) == [b"* 1 FETCH (UID 1 FLAGS (\\Seen urgent))"]
    # Keywords live in the UID list and survive a reload.
    reloaded = StoreRegistry().open("INBOX", tmp_path)
    assert reloaded.messages[1].flags == frozenset({"\\Seen", "urgent"})


def test_external_removal_is_an_expunge(tmp_path: Path) -> None:
    md = Maildir(tmp_path)
    md.create("INBOX")
    path = _deliver(md, "a")
    store = StoreRegistry().open("INBOX", tmp_path)
    view = MailboxView(store, read_only=True)
    path.unlink()
    store.refresh(force=True)
    assert view.updates(allow_expunge=True) == [b"* 1 EXPUNGE"]


def test_forgotten_store_empties_its_views(tmp_path: Path) -> None:
    md = Maildir(tmp_path)
    md.create("Old")
    _deliver(md, "a", folder="Old")
    registry = StoreRegistry()
    directory = md.folder_dir("Old")
    store = registry.open("Old", directory)
    view = MailboxView(store, read_only=False)
    registry.forget(directory)
    store.refresh()
    assert view.updates(allow_expunge=True) == [b"* 1 EXPUNGE"]
    assert registry.open("Old", directory) is not store


def test_the_quota_count_follows_the_stores_own_changes_without_a_recount(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # bench/imap.py's writing mix: every flag change or expunge made the next APPEND's quota look
    # walk the whole folder again (14 % of the server's time in a py-spy profile).
    md = Maildir(tmp_path)
    md.create("INBOX")
    for i in range(5):
        _deliver(md, f"m{i}", b"Subject: x\r\n\r\n" + b"y" * (100 * i) + b"\r\n")
    store = StoreRegistry().open("INBOX", tmp_path, md.sizes)
    assert md.size() == maildir._count(str(tmp_path))
    counts: list[str] = []
    real_count = maildir._count
    monkeypatch.setattr(maildir, "_count", lambda folder: counts.append(folder) or real_count(folder))

    uids = sorted(store.messages)
    MailboxView(store, read_only=False)  # moves new/ into cur/
    assert store.set_flags(uids[0], frozenset({"\\Seen", "etiket"}), None) is not None
    store.expunge([uids[1], uids[2]])
    staged = tmp_path / "tmp" / "eklenen"
    staged.write_bytes(b"Subject: z\r\n\r\n" + b"z" * 777 + b"\r\n")
    store.add(staged, "eklenen", frozenset({"\\Flagged"}))
    assert md.size() == real_count(str(tmp_path))
    assert counts == []

    # A change the store did not make (another program) is still found, by a recount.
    os.unlink(store.messages[uids[3]].path)
    # Its directory time as a change a moment later shows it (not within the file system's tick).
    cur = os.stat(tmp_path / "cur")
    os.utime(tmp_path / "cur", ns=(cur.st_atime_ns, cur.st_mtime_ns + 1_000_000_000))
    assert md.size() == real_count(str(tmp_path))
    assert counts == [str(tmp_path)]
