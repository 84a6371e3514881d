"""LIST wildcards (RFC 3501 §6.3.8): the linear matcher agrees with the definition, and LIST's
results and child attributes come from one pass over the folders."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kepmta.imap.folders import MAX_PATTERN, WildcardPattern, list_folders
from kepmta.imap.protocol import BadCommand
from kepmta.maildir import Maildir


def _reference(pattern: str, name: str) -> bool:
    """The definition, read literally: exponential, so only for short inputs."""
    if not pattern:
        return not name
    head, rest = pattern[0], pattern[1:]
    if head == "*":
        return any(_reference(rest, name[i:]) for i in range(len(name) + 1))
    if head == "%":
        return any(_reference(rest, name[i:]) for i in range(len(name) + 1) if "." not in name[:i])
    return bool(name) and name[0] == head and _reference(rest, name[1:])


@settings(max_examples=3000, deadline=None)
@given(st.text("ab.*%", max_size=9), st.text("ab.*%", max_size=10))
def test_matcher_agrees_with_the_definition(pattern: str, name: str) -> None:
    assert WildcardPattern.compile(pattern).matches(name) == _reference(pattern, name)


@settings(max_examples=1000, deadline=None)
@given(st.text("aAbB.*%", max_size=8), st.text("aAbB.", max_size=8))
def test_case_insensitive_matching_folds_ascii(pattern: str, name: str) -> None:
    folded = WildcardPattern.compile(pattern, ignore_case=True).matches(name)
    assert folded == _reference(pattern.lower(), name.lower())


def test_pathological_pattern_answers_correctly() -> None:
    pattern = WildcardPattern.compile("*%" * 60 + "x")
    assert not pattern.matches("INBOX")
    assert not pattern.matches("a" * 200)
    assert pattern.matches("Tax")
    assert pattern.matches("A.B.Fax")
    local = WildcardPattern.compile("%" * 60 + "x")
    assert local.matches("Tax") and not local.matches("A.Fax")


def test_inbox_in_any_case() -> None:
    assert WildcardPattern.compile("inBox", ignore_case=True).matches("INBOX")
    assert WildcardPattern.compile("i%", ignore_case=True).matches("INBOX")
    assert not WildcardPattern.compile("inbox").matches("INBOX")


def _maildir(tmp_path: Path, *names: str) -> Maildir:
    md = Maildir(tmp_path / "mail")
    md.create("INBOX")
    for name in names:
        md.create(name)
    return md


def test_list_attributes_and_long_patterns(tmp_path: Path) -> None:
    md = _maildir(tmp_path, "A.B.C", "A.Bx", "Tax")
    entries = {e.name: e.attributes for e in list_folders(md, "", "*", {})}
    assert entries == {
        "INBOX": ("\\HasNoChildren",),
        "A": ("\\Noselect", "\\HasChildren"),
        "A.B": ("\\Noselect", "\\HasChildren"),
        "A.B.C": ("\\HasNoChildren",),
        "A.Bx": ("\\HasNoChildren",),
        "Tax": ("\\HasNoChildren",),
    }
    # INBOX, matched regardless of case, ends in an "x" too.
    assert [e.name for e in list_folders(md, "", "*%" * 60 + "x", {})] == ["INBOX", "A.Bx", "Tax"]
    assert [e.name for e in list_folders(md, "A.", "%", {})] == ["A.B", "A.Bx"]
    assert [e.name for e in list_folders(md, "", "x" * MAX_PATTERN, {})] == []
    with pytest.raises(BadCommand, match="may not exceed"):
        list_folders(md, "A.", "x" * MAX_PATTERN, {})
