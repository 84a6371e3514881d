"""A message is its Maildir base name: renames by other programs reach the folder as inotify events in
any grouping (both halves of a rename together, one half only, a link before an unlink, new/ and cur/
in one read) and every one of them is a flag change of the same UID, never an expunge and arrival."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from kepmta.imap.mailbox import FolderStore, MailboxView, StoreRegistry
from kepmta.imap.notify import IN_CREATE, IN_DELETE, IN_MOVED_FROM, IN_MOVED_TO, DirEvent
from kepmta.maildir import Maildir


def _folder(tmp_path: Path, *bases: str) -> tuple[FolderStore, MailboxView]:
    md = Maildir(tmp_path)
    md.create("INBOX")

    def write(f: BinaryIO) -> None:
        f.write(b"Subject: x\r\n\r\nbody\r\n")

    for base in bases:
        md.deliver("INBOX", base, write)
    store = StoreRegistry().open("INBOX", tmp_path)
    view = MailboxView(store, read_only=False)
    assert sorted(os.listdir(tmp_path / "cur")) == sorted(f"{b}:2," for b in bases)
    return store, view


def _seen_rename(tmp_path: Path, base: str, info: str = "S") -> tuple[str, str]:
    old, new = f"{base}:2,", f"{base}:2,{info}"
    os.rename(tmp_path / "cur" / old, tmp_path / "cur" / new)
    return old, new


def test_rename_pair_is_a_flag_change(tmp_path: Path) -> None:
    store, view = _folder(tmp_path, "one", "two")
    modseq = store.messages[1].modseq
    old, new = _seen_rename(tmp_path, "one")
    store.apply_events({"cur": [DirEvent(IN_MOVED_FROM, old), DirEvent(IN_MOVED_TO, new)]})
    assert list(store.messages) == [1, 2] and store.uidnext == 3
    assert store.messages[1].flags == {"\\Seen"} and store.messages[1].modseq > modseq
    assert view.updates(allow_expunge=True, condstore=True) == [
        b"* 1 FETCH (UID 1 FLAGS (\\Seen \\Recent) MODSEQ (%d))" % store.messages[1].modseq
    ]


def test_first_half_of_a_rename_alone(tmp_path: Path) -> None:
    # The kernel queues MOVED_FROM before MOVED_TO; a read may fall between them.
    store, view = _folder(tmp_path, "one")
    old, new = _seen_rename(tmp_path, "one", "FS")
    store.apply_events({"cur": [DirEvent(IN_MOVED_FROM, old)]})
    assert store.messages[1].path == tmp_path / "cur" / new
    assert store.messages[1].flags == {"\\Seen", "\\Flagged"}
    # The second half, read later, changes nothing more.
    modseq = store.messages[1].modseq
    store.apply_events({"cur": [DirEvent(IN_MOVED_TO, new)]})
    assert store.messages[1].modseq == modseq and store.uidnext == 2
    assert view.updates(allow_expunge=True) == [b"* 1 FETCH (UID 1 FLAGS (\\Flagged \\Seen \\Recent))"]


def test_link_then_unlink_in_separate_reads(tmp_path: Path) -> None:
    store, view = _folder(tmp_path, "one")
    old, new = "one:2,", "one:2,S"
    os.link(tmp_path / "cur" / old, tmp_path / "cur" / new)
    store.apply_events({"cur": [DirEvent(IN_CREATE, new)]})
    os.unlink(tmp_path / "cur" / old)
    store.apply_events({"cur": [DirEvent(IN_DELETE, old)]})
    assert list(store.messages) == [1] and store.messages[1].flags == {"\\Seen"}
    assert view.updates(allow_expunge=True) == [b"* 1 FETCH (UID 1 FLAGS (\\Seen \\Recent))"]


def test_new_to_cur_move_across_both_watches(tmp_path: Path) -> None:
    md = Maildir(tmp_path)
    md.create("INBOX")
    (tmp_path / "new" / "one").write_bytes(b"Subject: x\r\n\r\nbody\r\n")
    store = StoreRegistry().open("INBOX", tmp_path)
    view = MailboxView(store, read_only=True)
    os.rename(tmp_path / "new" / "one", tmp_path / "cur" / "one:2,S")
    store.apply_events({"new": [DirEvent(IN_MOVED_FROM, "one")], "cur": [DirEvent(IN_MOVED_TO, "one:2,S")]})
    assert list(store.messages) == [1] and not store.messages[1].in_new
    assert view.updates(allow_expunge=True) == [b"* 1 FETCH (UID 1 FLAGS (\\Seen \\Recent))"]


def test_a_real_removal_is_still_an_expunge(tmp_path: Path) -> None:
    store, view = _folder(tmp_path, "one", "two")
    os.unlink(tmp_path / "cur" / "one:2,")
    store.apply_events({"cur": [DirEvent(IN_DELETE, "one:2,")]})
    assert list(store.messages) == [2]
    assert view.updates(allow_expunge=True) == [b"* 1 EXPUNGE"]


def test_rescan_after_restart_matches_by_base_name(tmp_path: Path) -> None:
    store, _ = _folder(tmp_path, "one", "two")
    modseq = store.highestmodseq
    os.rename(tmp_path / "cur" / "two:2,", tmp_path / "cur" / "two:2,RS")
    again = StoreRegistry().open("INBOX", tmp_path)
    assert {m.base: m.uid for m in again.messages.values()} == {"one": 1, "two": 2}
    assert again.messages[2].flags == {"\\Answered", "\\Seen"}
    assert again.messages[2].modseq > modseq and again.uidnext == 3
