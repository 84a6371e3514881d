"""What a folder's store holds per message: it keeps one entry for every message of each folder in
use, and an evidence folder only grows, so the entries share what they can."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from kepmta.imap.mailbox import StoreRegistry
from kepmta.maildir import Maildir


def _folder(root: Path, per_kind: int) -> Maildir:
    """`per_kind` messages in new/, as many seen and as many seen and flagged in cur/."""
    md = Maildir(root)
    md.create("INBOX")

    def write(f: BinaryIO) -> None:
        f.write(b"Subject: x\r\n\r\nbody\r\n")

    for i in range(per_kind):
        md.deliver("INBOX", f"new{i}", write)
        for base, info in ((f"seen{i}", "S"), (f"flagged{i}", "FS")):
            path = md.deliver("INBOX", base, write)
            path.rename(root / "cur" / f"{base}:2,{info}")
    return md


def test_messages_with_the_same_flags_share_one_set(tmp_path: Path) -> None:
    _folder(tmp_path, 50)
    store = StoreRegistry().open("INBOX", tmp_path)
    assert len(store.messages) == 150
    assert len({id(m.flags) for m in store.messages.values()}) == 3
    # read again from the index the first open wrote, as after a restart
    again = StoreRegistry().open("INBOX", tmp_path)
    assert len({id(m.flags) for m in again.messages.values()}) == 3


def test_flags_set_by_store_are_shared_too(tmp_path: Path) -> None:
    _folder(tmp_path, 2)
    store = StoreRegistry().open("INBOX", tmp_path)
    new = [m for m in store.messages.values() if not m.flags]
    changed = [store.set_flags(m.uid, frozenset({"\\Seen", "\\Answered"}), None) for m in new]
    assert changed[0] is not None and changed[1] is not None
    assert changed[0].flags is changed[1].flags


def test_a_message_entry_has_no_per_instance_dict(tmp_path: Path) -> None:
    _folder(tmp_path, 1)
    store = StoreRegistry().open("INBOX", tmp_path)
    assert not any(hasattr(m, "__dict__") for m in store.messages.values())
