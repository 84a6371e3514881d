"""Folder limits from the policy file (issue 9: 10 000 CREATEs took 157 MB and 50 000 inodes outside the
quota; a 2000-character or 300-level name failed with `File name too long`), and names that are, or
look like, the read-only evidence folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from kepmta.config import DEFAULT_POLICY, ConfigError, load_policy
from kepmta.imap import folders
from kepmta.imap.folders import NAME_MAX, FolderLimits
from kepmta.imap.protocol import CommandFailed
from kepmta.maildir import Maildir, encode_mutf7

SMALL = FolderLimits(max_folders=4, max_folder_depth=3, max_folder_name=20)


def _account(tmp_path: Path) -> Maildir:
    md = Maildir(tmp_path / "ali")
    md.create("INBOX")
    return md


def _refused(code: str, fn: object, *args: object) -> str:
    assert callable(fn)
    with pytest.raises(CommandFailed) as e:
        fn(*args)
    assert e.value.code == code, e.value
    return e.value.text


def test_the_shipped_policy_sets_the_limits() -> None:
    assert load_policy(DEFAULT_POLICY).imap == FolderLimits(
        max_folders=1000, max_folder_depth=16, max_folder_name=NAME_MAX
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [("max_folder_name", 256), ("max_folders", 0), ("max_folder_depth", 0), ("max_folder_depth", "3")],
)
def test_limits_out_of_range_are_a_configuration_error(tmp_path: Path, key: str, value: object) -> None:
    text = DEFAULT_POLICY.read_text()
    line = next(line for line in text.splitlines() if line.startswith(f"{key} = "))
    path = tmp_path / "policy.toml"
    path.write_text(text.replace(line, f"{key} = {value!r}".replace("'", '"')))
    with pytest.raises(ConfigError, match=f"imap.{key} must be an integer"):
        load_policy(path)


def test_folder_count_at_its_bound(tmp_path: Path) -> None:
    md = _account(tmp_path)
    for name in ("a", "b", "c"):
        folders.create(md, name, SMALL)
    assert folders.count(md) == 3
    # "x.y" needs two new folders where one place is left: refused whole, nothing made.
    text = _refused("LIMIT", folders.create, md, "x.y", SMALL)
    assert text == "an account may have at most 4 folders; delete some before creating more"
    assert not (md.root / ".x").exists()
    folders.create(md, "a.b", SMALL)
    assert folders.count(md) == 4
    _refused("LIMIT", folders.create, md, "d", SMALL)
    # Renames move folders without adding any, unless superiors of the new name must be made.
    folders.rename(md, "a", "e", SMALL)
    assert sorted(md.folders()) == ["INBOX", "b", "c", "e", "e.b"]
    _refused("LIMIT", folders.rename, md, "b", "f.b", SMALL)
    # Renaming INBOX makes a new folder for its messages.
    _refused("LIMIT", folders.rename, md, "INBOX", "Old", SMALL)
    # A deleted folder frees its place; directories that are not complete folders count as well,
    # since each costs its inodes all the same.
    _, doomed = folders.delete(md, "c")
    folders.remove(doomed)
    (md.root / ".broken").mkdir()
    _refused("LIMIT", folders.create, md, "d", SMALL)
    (md.root / ".broken").rmdir()
    folders.create(md, "d", SMALL)
    assert not any((md.root / "tmp").iterdir())


def test_depth_at_its_bound(tmp_path: Path) -> None:
    md = _account(tmp_path)
    limits = FolderLimits(max_folder_depth=3)
    folders.create(md, "a.b.c", limits)
    text = _refused("LIMIT", folders.create, md, "a.b.c.d", limits)
    assert text == "folders may be nested at most 3 levels deep; 'a.b.c.d' has 4"
    # A rename that takes inferiors below the bound is refused before anything moves.
    folders.create(md, "x", limits)
    _refused("LIMIT", folders.rename, md, "a", "x.a", limits)
    assert sorted(md.folders()) == ["INBOX", "a", "a.b", "a.b.c", "x"]


def test_name_length_at_its_bound(tmp_path: Path) -> None:
    md = _account(tmp_path)
    limits = FolderLimits()
    # The directory is "." and the modified UTF-7 name: 254 octets of name fill NAME_MAX.
    longest = "n" * (NAME_MAX - 1)
    folders.create(md, longest, limits)
    assert folders.exists(md, longest)
    text = _refused("LIMIT", folders.create, md, longest + "n", limits)
    assert text == "mailbox name too long: at most 254 octets in modified UTF-7, this one has 255"
    # Non-ASCII characters are counted as they are written: "ş" is "&AF8-" alone, and a run of
    # them shares one shift.
    turkish = "ş" * 100
    assert len(encode_mutf7(turkish)) == 269
    _refused("LIMIT", folders.create, md, turkish, limits)
    folders.create(md, "ş" * 90, limits)
    # The 2000-character and 300-level names: NO [LIMIT], not `File name too long`.
    _refused("LIMIT", folders.create, md, "x" * 2000, limits)
    _refused("LIMIT", folders.create, md, ".".join(["a"] * 300), limits)
    _refused("LIMIT", folders.create, md, ".".join(["a"] * 300), FolderLimits(max_folder_depth=127))
    # A rename whose inferiors would get names too long is refused before anything moves.
    folders.create(md, "p.q", limits)
    _refused("LIMIT", folders.rename, md, "p", "p" * (NAME_MAX - 2), limits)
    assert folders.exists(md, "p.q")
    folders.rename(md, "p", "p" * (NAME_MAX - 3), limits)
    assert folders.exists(md, "p" * (NAME_MAX - 3) + ".q")


def test_a_name_no_folder_can_have_does_not_exist(tmp_path: Path) -> None:
    md = _account(tmp_path)
    for name in ("x" * 2000, ".".join(["a"] * 300), "a/../../b"):
        assert not folders.exists(md, name)
        _refused("CANNOT", folders.folder_dir, md, name)
        _refused("NONEXISTENT", folders.delete, md, name)
        _refused("NONEXISTENT", folders.rename, md, name, "b", FolderLimits())


@pytest.mark.parametrize(
    "name",
    [
        "Kanıt",
        "Kanıt.sub",
        "Kanıt.a.b",
        "kanıt",
        "KANIT",
        "kanit.Sub",
        "KANİT",
        "Kan\u0131t",
        "Kan\u200dıt",
        "Kanıt ",
        " Kanıt .x",
        "K\uff41n\u0131t",
    ],
)
def test_names_within_the_evidence_folder(name: str) -> None:
    assert folders.within(name, "Kanıt")


@pytest.mark.parametrize("name", ["Kanıtlar", "Kanıt-2", "INBOX", "Arşiv.Kanıt", "Kan", "Kanıtsub"])
def test_names_outside_the_evidence_folder(name: str) -> None:
    assert not folders.within(name, "Kanıt")
