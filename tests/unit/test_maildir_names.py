"""Folder names on disk: modified UTF-7 (RFC 3501 §5.1.3) both ways, and the folders of a store."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kepmta.maildir import INBOX, MailboxNameError, Maildir, decode_mutf7, encode_mutf7


@given(st.text(max_size=40))
def test_every_name_comes_back_from_its_encoding(name: str) -> None:
    assert decode_mutf7(encode_mutf7(name)) == name


@given(st.text(alphabet=st.characters(max_codepoint=0x80), max_size=20))
def test_text_without_a_shift_is_itself_or_refused(text: str) -> None:
    if "&" in text:
        return
    if all(0x20 <= ord(c) <= 0x7E for c in text):
        assert decode_mutf7(text) == text
    else:
        with pytest.raises(MailboxNameError):
            decode_mutf7(text)


def test_folders_are_listed_inbox_first_then_by_name_on_disk(tmp_path: Path) -> None:
    box = Maildir(tmp_path / "ali")
    for name in ("Zarflar", INBOX, "Arşiv/2024", "A&B"):
        box.create(name)
    (box.root / ".yarım").mkdir()  # no cur/: not a folder
    (box.root / ".dosya").write_text("")  # not a directory
    (box.root / ".bozuk&").mkdir()
    (box.root / ".bozuk&" / "cur").mkdir()  # an unterminated shift: not a name we can give
    assert list(box.folders()) == [INBOX, "A&B", "Arşiv.2024", "Zarflar"]
    assert list(Maildir(tmp_path / "yok").folders()) == []
