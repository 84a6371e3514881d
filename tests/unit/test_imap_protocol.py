"""IMAP wire syntax: command tokenising, sequence sets, response strings, dates, the command reader."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest

from kepmta.imap.protocol import (
    MAX_NESTING,
    Args,
    Atom,
    BadCommand,
    CommandFailed,
    CommandReader,
    ConnectionClosed,
    IntervalSet,
    Limits,
    ParenList,
    Refused,
    SequenceSet,
    String,
    format_date_time,
    format_uid_set,
    nstring,
    parse_command,
    parse_date,
    parse_date_time,
    parse_head,
    split_tag,
    string,
)

LIMITS = Limits(line=64 * 1024, literal=64, command=256, message=100 * 1024 * 1024)


def test_atoms_quoted_strings_lists_and_literals() -> None:
    cmd = parse_command(b'a1 login "ali \\"q\\" \\\\" {5}\r\nx y z (a (b)) NIL\r\n')
    assert cmd.tag == "a1"
    assert cmd.name == "LOGIN"
    assert cmd.args == (
        String(b'ali "q" \\'),
        String(b"x y z", literal=True),
        ParenList((Atom("a"), ParenList((Atom("b"),)))),
        Atom("NIL"),
    )


def test_paren_list_with_inner_spaces_is_bad() -> None:
    with pytest.raises(BadCommand, match="unexpected space"):
        parse_command(b"a1 FETCH 1 ( FLAGS)\r\n")


def test_literal_plus_and_literal_content_is_opaque() -> None:
    cmd = parse_command(b'a APPEND INBOX {8+}\r\n(\r\n"x{3}\r\n')
    assert cmd.args == (Atom("INBOX"), String(b'(\r\n"x{3}', literal=True))


def test_body_section_atoms_keep_section_and_partial() -> None:
    cmd = parse_command(b'a FETCH 1 (BODY.PEEK[HEADER.FIELDS (From "To")]<0.100> BODY[])\r\n')
    items = cmd.args[1]
    assert isinstance(items, ParenList)
    first, second = items.items
    assert first == Atom(
        "BODY.PEEK", (Atom("HEADER.FIELDS"), ParenList((Atom("From"), String(b"To")))), (0, 100)
    )
    assert second == Atom("BODY", (), None)


def test_brackets_in_other_atoms_are_plain_characters() -> None:
    cmd = parse_command(b"a SELECT foo[1]\r\n")
    assert cmd.args == (Atom("foo[1]"),)


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"\r\n", "missing or invalid tag"),
        (b"a\r\n", "missing or invalid tag"),
        (b"a  NOOP\r\n", "unexpected space"),
        (b'a LOGIN "abc\r\n', "unterminated quoted string"),
        (b'a LOGIN "a\\b" x\r\n', "invalid escape"),
        (b"a LIST (a\r\n", "missing ')'"),
        (b"a LIST a)\r\n", "unexpected ')'"),
        (b'a LOGIN "a"b\r\n', "missing space"),
        (b"a FETCH 1 BODY[TEXT\r\n", "missing ']'"),
        (b"a FETCH 1 BODY[]<5>\r\n", "partial"),
        (b"a LOGIN {5}\r\nab\r\n", "shorter than announced"),
        (b"a SELECT \xc3\xa7\r\n", "8-bit"),
        (b"a (x)\r\n", "missing command name"),
    ],
)
def test_malformed_commands_have_specific_errors(line: bytes, error: str) -> None:
    with pytest.raises(BadCommand, match=error.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        parse_command(line)


def test_split_tag() -> None:
    assert split_tag(b"abc NOOP\r\n") == "abc"
    assert split_tag(b"a+b NOOP\r\n") is None
    assert split_tag(b"NOOP") is None
    assert split_tag(b"\xc3\xa7 NOOP\r\n") is None


def test_args_cursor_reports_what_was_expected() -> None:
    args = Args((Atom("x"),))
    with pytest.raises(BadCommand, match="expected mailbox"):
        Args((ParenList(()),)).astring("mailbox")
    assert args.atom("name") == "x"
    with pytest.raises(BadCommand, match="missing password"):
        args.astring("password")
    with pytest.raises(BadCommand, match="extra arguments"):
        Args((Atom("x"),)).end()


def test_sequence_sets() -> None:
    s = SequenceSet.parse("1:3,7,10:*,*")
    assert s.intervals(12) == [(1, 3), (7, 7), (10, 12)]
    assert SequenceSet.parse("5:2").intervals(9) == [(2, 5)]
    # RFC 3501 §6.4.8: "n:*" with n above the largest UID still includes the largest UID.
    assert SequenceSet.parse("50:*").intervals(7) == [(7, 50)]
    members = IntervalSet(SequenceSet.parse("1:3,7").intervals(7))
    assert [n for n in range(1, 9) if n in members] == [1, 2, 3, 7]
    for bad in ("0", "1:0", "a", "1,,2", "", "1:2:3", "4294967296"):
        with pytest.raises(BadCommand):
            SequenceSet.parse(bad)


def test_a_range_ending_in_star_names_its_other_end() -> None:
    # RFC 9051 §9 seq-number: "4294967295:*" names 4294967295, far beyond any mailbox's EXISTS.
    assert SequenceSet.parse("4294967295:*").max_explicit() == 4294967295
    assert SequenceSet.parse("*:3,2").max_explicit() == 3
    assert SequenceSet.parse("*").max_explicit() == 0
    assert SequenceSet.parse("1:*,*").only_star_ranges()
    assert not SequenceSet.parse("1:*,2").only_star_ranges()


def _nested(depth: int) -> bytes:
    return b"a1 FETCH 1 " + b"(" * depth + b"FLAGS" + b")" * depth + b"\r\n"


def test_nesting_is_bounded() -> None:
    deepest = parse_command(_nested(MAX_NESTING)).args[1]
    for _ in range(MAX_NESTING):
        assert isinstance(deepest, ParenList)
        (deepest,) = deepest.items
    assert deepest == Atom("FLAGS")
    # 500 levels ran out of Python's stack (RecursionError) before the fix; now any depth past
    # the bound is a BAD, also unclosed, also before a command name.
    for data in (
        _nested(MAX_NESTING + 1),
        _nested(500),
        _nested(100_000),
        b"a1 " + b"(" * 5000 + b"\r\n",
        b"a1 FETCH 1 BODY[" + b"(" * MAX_NESTING + b"x" + b")" * MAX_NESTING + b"]\r\n",
    ):
        with pytest.raises(BadCommand, match=f"nesting too deep: at most {MAX_NESTING} levels"):
            parse_command(data)
    # Section brackets count as a level: BODY[...] holds one fewer parentheses.
    cmd = parse_command(
        b"a1 FETCH 1 BODY[" + b"(" * (MAX_NESTING - 1) + b"x" + b")" * (MAX_NESTING - 1) + b"]\r\n"
    )
    inner: Atom | ParenList = Atom("x")
    for _ in range(MAX_NESTING - 1):
        inner = ParenList((inner,))
    assert cmd.args[1] == Atom("BODY", section=(inner,))


def test_uid_set_formatting() -> None:
    assert format_uid_set([1, 2, 3, 5, 7, 8]) == "1:3,5,7:8"
    assert format_uid_set([4]) == "4"


def test_strings_are_quoted_or_literal() -> None:
    assert string(b'a "b" \\') == b'"a \\"b\\" \\\\"'
    assert string(b"line\r\nbreak") == b"{11}\r\nline\r\nbreak"
    assert string("Çiçek".encode()) == b"{7}\r\n" + "Çiçek".encode()
    assert nstring(None) == b"NIL"


def test_dates() -> None:
    when = parse_date_time(" 4-Jul-2024 13:05:09 +0300")
    assert when == dt.datetime(2024, 7, 4, 10, 5, 9, tzinfo=dt.UTC)
    assert format_date_time(when.astimezone(dt.timezone(dt.timedelta(hours=3)))) == (
        b'"04-Jul-2024 13:05:09 +0300"'
    )
    assert format_date_time(dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone(-dt.timedelta(hours=5)))) == (
        b'"02-Jan-2024 03:04:05 -0500"'
    )
    assert parse_date("1-feb-2024") == dt.date(2024, 2, 1)
    for bad in ("2024-02-01", "31-Feb-2024", "1-Foo-2024"):
        with pytest.raises(BadCommand):
            parse_date(bad)
    with pytest.raises(BadCommand):
        parse_date_time("04-Jul-2024 13:05:09")


class _Feed:
    """A StreamReader fed with fixed data, then EOF."""

    def __init__(self, data: bytes) -> None:
        self.reader = asyncio.StreamReader()
        self.reader.feed_data(data)
        self.reader.feed_eof()


async def test_reader_assembles_literals_and_asks_for_synchronising_ones() -> None:
    continuations = []

    async def cont() -> None:
        continuations.append(1)

    feed = _Feed(b"a LOGIN {3}\r\nali {4+}\r\npass\r\nb NOOP\r\n")
    r = CommandReader(feed.reader)
    assert (await r.command(cont, LIMITS)).data == b"a LOGIN {3}\r\nali {4+}\r\npass\r\n"
    assert continuations == [1]
    assert (await r.command(cont, LIMITS)).data == b"b NOOP\r\n"
    with pytest.raises(ConnectionClosed):
        await r.command(cont, LIMITS)


async def test_reader_refuses_long_lines_and_keeps_going() -> None:
    feed = _Feed(b"x1 NOOP " + b"a" * (LIMITS.line + 10) + b"\r\nx2 NOOP\r\n")
    r = CommandReader(feed.reader)

    async def cont() -> None:
        raise AssertionError("no literal here")

    with pytest.raises(Refused) as info:
        await r.command(cont, LIMITS)
    assert info.value.tag == "x1"
    assert (await r.command(cont, LIMITS)).data == b"x2 NOOP\r\n"


async def test_reader_refuses_huge_literals() -> None:
    async def cont() -> None:
        raise AssertionError("must not invite a literal it will refuse")

    r = CommandReader(_Feed(b"a APPEND INBOX {999999999999}\r\nb NOOP\r\n").reader)
    with pytest.raises(Refused, match="TOOBIG") as info:
        await r.command(cont, LIMITS)
    assert info.value.tag == "a"
    assert (await r.command(cont, LIMITS)).data == b"b NOOP\r\n"
    r = CommandReader(_Feed(b"a APPEND INBOX {999999999999+}\r\n").reader)
    with pytest.raises(ConnectionClosed):
        await r.command(cont, LIMITS)


async def _no_continuation() -> None:
    raise AssertionError("must not invite a literal it will refuse")


async def test_reader_keeps_literals_within_the_memory_limits() -> None:
    # Refused before the continuation, and the session reads on.
    r = CommandReader(_Feed(b"a LOGIN {65}\r\nb NOOP\r\n").reader)
    with pytest.raises(Refused, match="TOOBIG") as info:
        await r.command(_no_continuation, LIMITS)
    assert (info.value.tag, info.value.status) == ("a", "BAD")
    assert (await r.command(_no_continuation, LIMITS)).data == b"b NOOP\r\n"
    # Small literals, too many of them together.
    many = b"a ID (" + b" ".join([b"{60+}\r\n" + b"x" * 60] * 5) + b")\r\n"
    r = CommandReader(_Feed(many).reader)
    with pytest.raises(ConnectionClosed):
        await r.command(_no_continuation, LIMITS)
    # A non-synchronising literal past the limit cannot be skipped without reading it: the end.
    r = CommandReader(_Feed(b"a LOGIN {65+}\r\n" + b"x" * 65 + b" y\r\n").reader)
    with pytest.raises(ConnectionClosed):
        await r.command(_no_continuation, LIMITS)


async def test_reader_streams_an_admitted_literal_to_a_file(tmp_path: Path) -> None:
    asked = []
    target = tmp_path / "message"

    async def admit(head: bytes, index: int, size: int) -> Path | None:
        asked.append((head, index, size))
        return target if index == 1 else None

    message = b"y" * 200_000
    data = b"a APPEND {5+}\r\nINBOX (\\Seen) {%d+}\r\n" % len(message) + message + b"\r\n"
    raw = await CommandReader(_Feed(data).reader).command(_no_continuation, LIMITS, admit)
    assert [(i, n) for _, i, n in asked] == [(0, 5), (1, 200_000)]
    assert asked[1][0] == b"a APPEND {5+}\r\nINBOX (\\Seen) {200000+}\r\n"
    assert target.read_bytes() == message
    # The literal is an empty one in the command, and the lexer hands out its file instead.
    assert raw.data == b"a APPEND {5+}\r\nINBOX (\\Seen) {0}\r\n\r\n"
    cmd = parse_command(raw.data, raw.files)
    (file,) = raw.files.values()
    assert (file.path, file.size) == (target, len(message))
    # Synced on a thread from the literal's last octet; the command finds it done or waits for it.
    assert await file.synced is None
    assert cmd.args == (String(b"INBOX", literal=True), ParenList((Atom("\\Seen"),)), String(b"", True, file))
    with pytest.raises(BadCommand, match="too long"):
        Args(cmd.args[2:]).astring("mailbox name")
    raw.discard()
    assert not target.exists()


async def test_reader_removes_a_file_left_incomplete(tmp_path: Path) -> None:
    target = tmp_path / "message"

    async def admit(head: bytes, index: int, size: int) -> Path | None:
        return target

    r = CommandReader(_Feed(b"a APPEND INBOX {1000+}\r\n" + b"z" * 500).reader)
    with pytest.raises(ConnectionClosed):
        await r.command(_no_continuation, LIMITS, admit)
    assert list(tmp_path.iterdir()) == []


async def test_reader_refusal_by_admit_reads_past_a_non_synchronising_literal() -> None:
    async def admit(head: bytes, index: int, size: int) -> Path | None:
        raise CommandFailed("no room", "OVERQUOTA")

    feed = _Feed(b"a APPEND INBOX {300+}\r\n" + b"q" * 300 + b"\r\nb APPEND INBOX {300}\r\nc NOOP\r\n")
    r = CommandReader(feed.reader)
    with pytest.raises(Refused) as info:
        await r.command(_no_continuation, LIMITS, admit)
    assert (info.value.tag, info.value.status, str(info.value)) == ("a", "NO", "[OVERQUOTA] no room")
    # A synchronising one is refused before its continuation, and the client sends nothing more.
    with pytest.raises(Refused) as info:
        await r.command(_no_continuation, LIMITS, admit)
    assert (info.value.tag, info.value.status) == ("b", "NO")
    assert (await r.command(_no_continuation, LIMITS, admit)).data == b"c NOOP\r\n"


def test_parse_head_tokenises_a_command_up_to_its_literal() -> None:
    head = parse_head(b'a APPEND "Sent" (\\Seen) "01-Jan-2024 00:00:00 +0000" {12}\r\n')
    assert head is not None and head.name == "APPEND"
    assert head.args[0] == String(b"Sent") and len(head.args) == 3
    head = parse_head(b"a APPEND {5}\r\n")
    assert head is not None and head.args == ()
    assert parse_head(b'a APPEND "open {5}\r\n') is None
    assert parse_head(b"a NOOP\r\n") is None
