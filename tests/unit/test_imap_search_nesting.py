"""SEARCH criteria nest through OR, NOT and parentheses; parsing, compiling and testing recurse once per
level, so the depth is bounded (issue 9: 999 nested ORs answered SERVERBUG)."""

from __future__ import annotations

import pytest

from kepmta.imap import search
from kepmta.imap.protocol import MAX_NESTING, Args, Atom, BadCommand, ParenList, Token, parse_command


def _program(text: str) -> search.Key:
    return search.parse_program(Args(parse_command(b"s1 SEARCH " + text.encode() + b"\r\n").args))


def _left_nested_ors(depth: int) -> str:
    """`OR OR … OR 1 2 3 … n`: what a client sends for "any of these n", `depth` ORs deep."""
    return "OR " * depth + " ".join(str(n) for n in range(1, depth + 2))


def _right_nested_ors(depth: int) -> str:
    return "OR 1 " * depth + "ALL"


def _depth(key: search.Key) -> int:
    if isinstance(key, search.OrKey):
        return 1 + max(_depth(key.left), _depth(key.right))
    if isinstance(key, search.NotKey):
        return 1 + _depth(key.key)
    if isinstance(key, search.AndKey):
        return max(_depth(k) for k in key.keys)
    return 0


@pytest.mark.parametrize("build", [_left_nested_ors, _right_nested_ors])
def test_nesting_up_to_the_bound_is_parsed(build: object) -> None:
    assert callable(build)
    key = _program(build(MAX_NESTING))
    assert _depth(key) == MAX_NESTING
    assert search.need(key) == search.Need.NOTHING
    assert not search.uses_modseq(key)


@pytest.mark.parametrize(
    "text",
    [
        _left_nested_ors(MAX_NESTING + 1),
        _right_nested_ors(MAX_NESTING + 1),
        _right_nested_ors(999),
        _left_nested_ors(999),
        "NOT " * (MAX_NESTING + 1) + "ALL",
        "NOT " * 100_000 + "ALL",
        # Parentheses count as levels too.
        "(" * 32 + "OR " * 33 + " ".join(["ALL"] * 34) + ")" * 32,
    ],
)
def test_nesting_past_the_bound_is_bad(text: str) -> None:
    with pytest.raises(BadCommand, match=f"search criteria nested too deep: at most {MAX_NESTING} levels"):
        _program(text)


def test_parentheses_and_operators_share_the_bound() -> None:
    text = "(" * 32 + "OR " * 32 + " ".join(["ALL"] * 33) + ")" * 32
    assert _depth(_program(text)) == 32


def test_long_flat_programs_are_not_nesting() -> None:
    tokens: tuple[Token, ...] = tuple(Atom("ALL") for _ in range(10_000))
    key = search.parse_program(Args((*tokens, ParenList((Atom("SEEN"),)))))
    assert isinstance(key, search.AndKey) and len(key.keys) == 10_001
