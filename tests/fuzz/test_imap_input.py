"""Hostile IMAP input, property by property: the command reader with its literals, the lexer and its
nesting bound, sequence sets with numbers of any size, LIST wildcards against their definition, and
SEARCH programs nested to and past the bound. Each answer is a parse or the module's BadCommand
(a BAD on the wire), never another exception.

Work is bounded by input size, never by a clock (deadline=None): these run on shared machines."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kepmta.imap import folders, search
from kepmta.imap.mailbox import SEEN
from kepmta.imap.protocol import (
    MAX_NESTING,
    Args,
    Atom,
    BadCommand,
    CommandFailed,
    CommandReader,
    ConnectionClosed,
    Limits,
    ParenList,
    Refused,
    SequenceSet,
    String,
    Token,
    parse_command,
)

# --- the lexer ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """A token as sent, and the token the lexer must read back from it."""

    wire: bytes
    token: Token


atoms = st.sampled_from(["FLAGS", "1:*", "4294967295", "9" * 30, "\\Seen", "$Label", "*", "%", "NIL", "a.b"])
quoted_text = st.binary(max_size=12).map(lambda b: bytes(c for c in b if c not in b"\r\n\x00"))
literal_text = st.binary(max_size=20)


def _quote(value: bytes) -> bytes:
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


leaves = st.one_of(
    atoms.map(lambda a: Sample(a.encode(), Atom(a))),
    quoted_text.map(lambda v: Sample(_quote(v), String(v))),
    literal_text.map(lambda v: Sample(b"{%d}\r\n" % len(v) + v, String(v, literal=True))),
    literal_text.map(lambda v: Sample(b"~{%d+}\r\n" % len(v) + v, String(v, literal=True))),
)


def _paren(children: list[Sample]) -> Sample:
    return Sample(
        b"(" + b" ".join(c.wire for c in children) + b")", ParenList(tuple(c.token for c in children))
    )


samples = st.recursive(leaves, lambda inner: st.lists(inner, max_size=4).map(_paren), max_leaves=25)


def _depth(token: Token) -> int:
    if isinstance(token, ParenList):
        return 1 + max((_depth(t) for t in token.items), default=0)
    return 0


@settings(max_examples=300, deadline=None)
@given(st.lists(samples, max_size=5))
def test_well_formed_arguments_read_back_exactly(arguments: list[Sample]) -> None:
    data = b"a1 CMD" + b"".join(b" " + s.wire for s in arguments) + b"\r\n"
    cmd = parse_command(data)
    assert (cmd.tag, cmd.name) == ("a1", "CMD")
    assert cmd.args == tuple(s.token for s in arguments)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 3 * MAX_NESTING), st.sampled_from([b"NOOP ", b"FETCH 1 ", b"ID ", b""]))
@example(MAX_NESTING, b"NOOP ")
@example(MAX_NESTING + 1, b"NOOP ")
@example(10_000, b"NOOP ")
def test_nesting_is_read_to_the_bound_and_refused_past_it(depth: int, head: bytes) -> None:
    data = b"n1 " + head + b"(" * depth + b"FLAGS" + b")" * depth + b"\r\n"
    try:
        cmd = parse_command(data)
    except BadCommand as e:
        assert depth > MAX_NESTING or not head, e
        return
    assert depth <= MAX_NESTING
    assert max((_depth(t) for t in cmd.args), default=0) == depth


# What a hostile client types: the lexer's special characters, literal markers with wrong counts,
# unbalanced brackets, 8-bit octets and NULs.
hostile_bytes = st.lists(
    st.sampled_from(
        [
            b"(",
            b")",
            b"[",
            b"]",
            b"<",
            b">",
            b'"',
            b"\\",
            b" ",
            b"{",
            b"}",
            b"{5}\r\n",
            b"{0}\r\n",
            b"~{",
            b"{99999999999}\r\n",
            b"+}",
            b"\r\n",
            b"\n",
            b"\x00",
            b"\xff",
            b"BODY[",
            b"a",
            b"1",
            b".",
        ]
    ),
    max_size=40,
).map(b"".join)


@settings(max_examples=500, deadline=None)
@given(st.one_of(hostile_bytes.map(lambda b: b"t1 X " + b), hostile_bytes, st.binary(max_size=200)))
def test_any_command_octets_parse_or_are_bad(data: bytes) -> None:
    try:
        cmd = parse_command(data)
    except BadCommand:
        return
    assert data.startswith(cmd.tag.encode() + b" ")
    assert all(_depth(t) <= MAX_NESTING for t in cmd.args)


# --- the command reader ---------------------------------------------------------------------------

LIMITS = Limits(line=200, literal=64, command=300, message=4096)


async def _continue() -> None:
    return None


async def _read_all(stream: bytes, spool: Path) -> list[bytes | str]:
    """Every command the reader makes of `stream`: its octets, or the refusal's status and text."""
    reader = asyncio.StreamReader()
    reader.feed_data(stream)
    reader.feed_eof()
    commands = CommandReader(reader)
    counter = iter(range(1000))

    async def admit(head: bytes, index: int, size: int) -> Path | None:
        # Literals after "STREAM" go to a file, as APPEND's message does.
        if b" STREAM " not in head or index:
            return None
        return spool / f"literal-{next(counter)}"

    out: list[bytes | str] = []
    while True:
        try:
            raw = await commands.command(_continue, LIMITS, admit)
        except Refused as e:
            out.append(f"{e.status} {e}")
            continue
        except ConnectionClosed:
            return out
        out.append(raw.data)
        for file in raw.files.values():
            assert file.path.stat().st_size == file.size
        raw.discard()


command_lines = st.one_of(
    st.builds(lambda v: b"c NOOP " + _quote(v) + b"\r\n", quoted_text),
    st.builds(lambda v: b"c LOGIN {%d}\r\n" % len(v) + v + b' "p"\r\n', literal_text),
    st.builds(lambda v: b"c STREAM {%d+}\r\n" % len(v) + v + b"\r\n", literal_text),
    st.builds(lambda n: b"c LOGIN {%d}\r\n" % n, st.sampled_from([65, 301, 4097, 10**11])),
    st.builds(lambda n: b"c LOGIN {%d+}\r\n" % n, st.sampled_from([65, 4097])),
    st.just(b"c NOOP " + b"x" * 250 + b"\r\n"),
    hostile_bytes.map(lambda b: b + b"\r\n"),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(command_lines, max_size=8))
def test_the_reader_ends_every_command_within_its_limits(
    tmp_path_factory: pytest.TempPathFactory, lines: list[bytes]
) -> None:
    spool = tmp_path_factory.mktemp("spool")
    out = asyncio.run(_read_all(b"".join(lines), spool))
    for item in out:
        if isinstance(item, bytes):
            assert len(item) <= LIMITS.line + LIMITS.command
        else:
            assert item.startswith(("BAD ", "NO ")), item
    # Nothing the reader wrote outlives its command.
    assert list(spool.iterdir()) == []


def test_well_formed_commands_come_out_whole_and_in_order(tmp_path: Path) -> None:
    lines = [b'c1 NOOP "a"\r\n', b"c2 LOGIN {3}\r\nabc {1+}\r\nd\r\n", b"c3 STREAM {5+}\r\nhello\r\n"]
    out = asyncio.run(_read_all(b"".join(lines), tmp_path))
    assert out == [lines[0], lines[1], b"c3 STREAM {0}\r\n\r\n"]


# --- sequence sets --------------------------------------------------------------------------------

numbers = st.one_of(
    st.integers(0, 12).map(str),
    st.sampled_from(["*", "4294967295", "4294967296", "00001", "9" * 11, "1" * 5000]),
)
ranges = st.one_of(numbers, st.tuples(numbers, numbers).map(":".join))


@settings(max_examples=400, deadline=None)
@given(st.lists(ranges, min_size=1, max_size=5).map(",".join), st.integers(1, 12))
@example("1" * 5000, 3)
@example("4294967295:*", 3)
def test_sequence_sets_mean_what_rfc_9051_says(text: str, star: int) -> None:
    try:
        parsed = SequenceSet.parse(text)
    except BadCommand:
        # RFC 9051 §9: seq-number is nz-number (1 to 4294967295, no leading zeros needed) or "*".
        assert any(
            n != "*" and (len(n) > 10 or not 0 < int(n) <= 0xFFFFFFFF)
            for piece in text.split(",")
            for n in piece.split(":")
        )
        return
    wanted: set[int] = set()
    for piece in text.split(","):
        ends = [star if n == "*" else int(n) for n in piece.split(":")]
        wanted.update(range(min(ends), min(max(ends), 20) + 1))
    # Compared up to 20: the numbers past it are far from `star` and the merges alike.
    got = {n for lo, hi in parsed.intervals(star) for n in range(lo, min(hi, 20) + 1)}
    assert got == wanted


# --- LIST wildcards -------------------------------------------------------------------------------


def by_definition(pattern: str, name: str) -> bool:
    """RFC 3501 §6.3.8: "*" matches zero or more characters, "%" the same without the hierarchy
    delimiter, anything else itself."""

    @cache
    def match(i: int, j: int) -> bool:
        if i == len(pattern):
            return j == len(name)
        c = pattern[i]
        if c == "*":
            return match(i + 1, j) or (j < len(name) and match(i, j + 1))
        if c == "%":
            return match(i + 1, j) or (j < len(name) and name[j] != "." and match(i, j + 1))
        return j < len(name) and name[j] == c and match(i + 1, j + 1)

    return match(0, 0)


@settings(max_examples=1000, deadline=None)
@given(
    st.lists(st.sampled_from("ab.*%I"), max_size=12).map("".join),
    st.lists(st.sampled_from("abi."), max_size=14).map("".join),
)
@example("*%" * 30 + "x", "Tax")
@example("%.%", "a.b")
def test_list_patterns_match_by_their_definition(pattern: str, name: str) -> None:
    assert folders.WildcardPattern.compile(pattern).matches(name) == by_definition(pattern, name)
    # INBOX is matched regardless of case (RFC 3501 §5.1): ASCII folded on both sides.
    folded = folders.WildcardPattern.compile(pattern, ignore_case=True).matches(name.upper())
    assert folded == by_definition(pattern.lower(), name.lower())


# --- SEARCH programs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Program:
    wire: str
    key: search.Key
    level: int  # the levels of OR, NOT and parentheses it is nested in, at its deepest


program_leaves = st.sampled_from(
    [
        Program("ALL", search.AllKey(), 0),
        Program("SEEN", search.FlagKey(SEEN, True), 0),
        Program("2:4", search.SetKey(SequenceSet(((2, 4),)), uid=False), 0),
        Program("LARGER 10", search.SizeKey(True, 10), 0),
        Program('SUBJECT "x y"', search.TextKey("SUBJECT", "x y", header=True), 0),
    ]
)


def _not(p: Program) -> Program:
    return Program(f"NOT {p.wire}", search.NotKey(p.key), p.level + 1)


def _or(pair: tuple[Program, Program]) -> Program:
    a, b = pair
    return Program(f"OR {a.wire} {b.wire}", search.OrKey(a.key, b.key), max(a.level, b.level) + 1)


def _group(items: list[Program]) -> Program:
    key = items[0].key if len(items) == 1 else search.AndKey(tuple(p.key for p in items))
    return Program("(" + " ".join(p.wire for p in items) + ")", key, max(p.level for p in items) + 1)


def _chain(base: Program, kinds: list[int]) -> Program:
    """`base` wrapped once per entry: NOT, OR with ALL, or parentheses."""
    for kind in kinds:
        if kind == 0:
            base = _not(base)
        elif kind == 1:
            base = _or((Program("ALL", search.AllKey(), 0), base))
        else:
            base = _group([base])
    return base


programs = st.recursive(
    program_leaves,
    lambda inner: st.one_of(
        inner.map(_not), st.tuples(inner, inner).map(_or), st.lists(inner, min_size=1, max_size=3).map(_group)
    ),
    max_leaves=12,
)


def _parse(wire: str) -> search.Key:
    cmd = parse_command(f"s SEARCH {wire}\r\n".encode())
    return search.parse_program(Args(cmd.args))


@settings(max_examples=300, deadline=None)
@given(programs, st.lists(st.integers(0, 2), max_size=3 * MAX_NESTING))
@example(Program("ALL", search.AllKey(), 0), [1] * 999)
@example(Program("ALL", search.AllKey(), 0), [2] * MAX_NESTING)
@example(Program("ALL", search.AllKey(), 0), [0] * (MAX_NESTING + 1))
def test_search_programs_parse_to_the_bound_and_are_bad_past_it(program: Program, kinds: list[int]) -> None:
    wrapped = _chain(program, kinds)
    try:
        key = _parse(wrapped.wire)
    except (BadCommand, CommandFailed) as e:
        assert isinstance(e, BadCommand) and wrapped.level > MAX_NESTING, (wrapped.level, e)
        return
    assert wrapped.level <= MAX_NESTING
    assert key == wrapped.key
