"""SEARCH criteria (RFC 3501 §6.4.4): parsing them into a tree and testing messages against it.

Each message is read only as far as the criteria need: flags, numbers, mod-sequences, sizes and
internal dates come from the folder index, header keys and sent dates from the message's summary
(`imap/summary.py`, kept by `imap/cache.py`), and only BODY and TEXT open the file. Those are
tested in worker threads, a batch of messages at a time, so a long search never holds the event
loop; the other keys are tested on it, yielding between batches.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from collections.abc import Awaitable, Callable, Container, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from kepmta.imap.condstore import mod_sequence
from kepmta.imap.mailbox import DELETED, SEEN, MessageFile, system_flag
from kepmta.imap.protocol import (
    MAX_NESTING,
    Args,
    Atom,
    BadCommand,
    CommandFailed,
    IntervalSet,
    ParenList,
    SequenceSet,
    String,
    Token,
    parse_date,
)
from kepmta.imap.summary import Summary
from kepmta.message import transfer
from kepmta.message.entity import Part, parse
from kepmta.message.header import text_of
from kepmta.message.words import decode_words

_CHARSETS = ("UTF-8", "US-ASCII")


class Need(IntEnum):
    NOTHING = 0
    HEADER = 1
    BODY = 2


@dataclass(frozen=True)
class FlagKey:
    flag: str
    present: bool


@dataclass(frozen=True)
class RecentKey:
    present: bool


@dataclass(frozen=True)
class AllKey:
    pass


@dataclass(frozen=True)
class TextKey:
    """`where` is a header field name, or the pseudo-fields BODY and TEXT (upper case)."""

    where: str
    needle: str
    header: bool


@dataclass(frozen=True)
class DateKey:
    sent: bool
    op: str
    date: dt.date


@dataclass(frozen=True)
class SizeKey:
    larger: bool
    size: int


@dataclass(frozen=True)
class SetKey:
    numbers: SequenceSet
    uid: bool


@dataclass(frozen=True)
class ModSeqKey:
    """RFC 7162 §3.1.5: messages whose mod-sequence is at least `modseq`."""

    modseq: int


@dataclass(frozen=True)
class NotKey:
    key: Key


@dataclass(frozen=True)
class OrKey:
    left: Key
    right: Key


@dataclass(frozen=True)
class AndKey:
    keys: tuple[Key, ...]


Key = (
    FlagKey | RecentKey | AllKey | TextKey | DateKey | SizeKey | SetKey | ModSeqKey | NotKey | OrKey | AndKey
)

_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True),
    "DELETED": (DELETED, True),
    "FLAGGED": ("\\Flagged", True),
    "SEEN": (SEEN, True),
    "DRAFT": ("\\Draft", True),
    "UNANSWERED": ("\\Answered", False),
    "UNDELETED": (DELETED, False),
    "UNFLAGGED": ("\\Flagged", False),
    "UNSEEN": (SEEN, False),
    "UNDRAFT": ("\\Draft", False),
}
_HEADER_KEYS = ("FROM", "TO", "CC", "BCC", "SUBJECT")
_DATE_KEYS = {
    "BEFORE": (False, "BEFORE"),
    "ON": (False, "ON"),
    "SINCE": (False, "SINCE"),
    "SENTBEFORE": (True, "BEFORE"),
    "SENTON": (True, "ON"),
    "SENTSINCE": (True, "SINCE"),
}


def parse_program(args: Args) -> Key:
    """`[CHARSET name] key...`; several keys mean all of them must match."""
    first = args.peek()
    if isinstance(first, Atom) and first.section is None and first.value.upper() == "CHARSET":
        args.next("CHARSET")
        charset = args.astring("charset name").decode("ascii", "replace").upper()
        if charset not in _CHARSETS:
            # RFC 3501 §6.4.4: an unsupported charset is NO with the supported ones listed.
            raise CommandFailed(f"unsupported charset {charset}", "BADCHARSET (UTF-8 US-ASCII)")
    keys: list[Key] = []
    while args.more():
        keys.append(_key(args, 0))
    if not keys:
        raise BadCommand("missing search criteria")
    return keys[0] if len(keys) == 1 else AndKey(tuple(keys))


def _text_arg(args: Args, what: str) -> str:
    raw = args.astring(what)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandFailed(f"{what} is not UTF-8", "BADCHARSET (UTF-8 US-ASCII)") from None


def _key(args: Args, depth: int) -> Key:
    """One search key; `depth` counts the OR, NOT and parentheses it is inside of. Parsing, compiling
    and testing all recurse once per level: 999 nested ORs ran out of Python's stack."""
    tok = args.next("search key")
    if isinstance(tok, ParenList):
        inner = Args(tok.items)
        keys = []
        while inner.more():
            keys.append(_key(inner, _deeper(depth)))
        if not keys:
            raise BadCommand("empty parenthesised search key")
        return keys[0] if len(keys) == 1 else AndKey(tuple(keys))
    if not isinstance(tok, Atom) or tok.section is not None:
        raise BadCommand("expected a search key")
    name = tok.value.upper()
    if name in _FLAG_KEYS:
        flag, present = _FLAG_KEYS[name]
        return FlagKey(flag, present)
    if name == "ALL":
        return AllKey()
    if name == "RECENT":
        return RecentKey(True)
    if name == "OLD":
        return RecentKey(False)
    if name == "NEW":
        return AndKey((RecentKey(True), FlagKey(SEEN, False)))
    if name in ("KEYWORD", "UNKEYWORD"):
        flag = args.atom("keyword")
        if flag.startswith("\\"):
            flag = system_flag(flag) or flag
        return FlagKey(flag, name == "KEYWORD")
    if name in _HEADER_KEYS:
        return TextKey(name, _text_arg(args, f"{name} value"), header=True)
    if name == "HEADER":
        field = args.astring("header field name").decode("ascii", "replace")
        return TextKey(field.upper(), _text_arg(args, "header value"), header=True)
    if name in ("BODY", "TEXT"):
        return TextKey(name, _text_arg(args, f"{name} value"), header=False)
    if name in _DATE_KEYS:
        sent, op = _DATE_KEYS[name]
        return DateKey(sent, op, parse_date(_date_arg(args)))
    if name in ("LARGER", "SMALLER"):
        return SizeKey(name == "LARGER", args.number("size"))
    if name == "UID":
        return SetKey(SequenceSet.parse_or_saved(args.atom("UID set")), uid=True)
    if name == "MODSEQ":
        # RFC 7162 §3.1.5: an optional metadata entry name and type; a message has one
        # mod-sequence for all its flags here, so they do not narrow anything.
        if isinstance(args.peek(), String):
            args.next("entry name")
            if args.atom("entry type").lower() not in ("all", "shared", "priv"):
                raise BadCommand("MODSEQ entry type must be all, shared or priv")
        return ModSeqKey(mod_sequence(args.atom("mod-sequence"), zero=True))
    if name == "NOT":
        return NotKey(_key(args, _deeper(depth)))
    if name == "OR":
        return OrKey(_key(args, _deeper(depth)), _key(args, _deeper(depth)))
    if name[:1].isdigit() or name[:1] == "*" or name == "$":
        return SetKey(SequenceSet.parse_or_saved(name), uid=False)
    raise BadCommand(f"unknown search key {tok.value!r}")


def _deeper(depth: int) -> int:
    if depth == MAX_NESTING:
        raise BadCommand(
            f"search criteria nested too deep: at most {MAX_NESTING} levels of OR, NOT and parentheses"
        )
    return depth + 1


def _date_arg(args: Args) -> str:
    tok: Token = args.next("date")
    if isinstance(tok, String):
        return tok.value.decode("ascii", "replace")
    if isinstance(tok, Atom) and tok.section is None:
        return tok.value
    raise BadCommand("expected a date")


def need(key: Key) -> Need:
    if isinstance(key, TextKey):
        return Need.HEADER if key.header else Need.BODY
    if isinstance(key, DateKey):
        return Need.HEADER if key.sent else Need.NOTHING
    if isinstance(key, NotKey):
        return need(key.key)
    if isinstance(key, OrKey):
        return max(need(key.left), need(key.right))
    if isinstance(key, AndKey):
        return max(need(k) for k in key.keys)
    return Need.NOTHING


@dataclass(frozen=True)
class Hit:
    """A message the search found: its sequence number and the folder's record of it."""

    seq: int
    message: MessageFile


class _Gone(Exception):
    """The message file was not where the folder said: renamed by another program, or expunged."""


class _Facts:
    """What is known about one message while it is being tested; the file is read on first need."""

    __slots__ = ("_body_text", "_data", "_header_text", "_top", "msg", "path", "recent", "seq", "summary")

    def __init__(
        self, seq: int, msg: MessageFile, recent: bool, summary: Summary | None, path: Path | None = None
    ) -> None:
        self.seq = seq
        self.msg = msg
        self.recent = recent
        self.summary = summary
        self.path = path
        self._data: bytes | None = None
        self._top: Part | None = None
        self._header_text: str | None = None
        self._body_text: str | None = None

    def _message(self) -> tuple[bytes, Part]:
        if self._data is None or self._top is None:
            if self.path is None:
                raise _Gone()
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                raise _Gone() from None
            try:
                data = _read_all(fd)
            finally:
                os.close(fd)
            self._data, self._top = data, parse(data)
        return self._data, self._top

    def header_text(self) -> str:
        """The top-level header, encoded-words decoded, case-folded."""
        if self._header_text is None:
            data, top = self._message()
            self._header_text = decode_words(text_of(data[top.start : top.body_start])).casefold()
        return self._header_text

    def body_text(self) -> str:
        """The text of the textual parts (and nested headers), decoded, case-folded."""
        if self._body_text is None:
            data, top = self._message()
            self._body_text = "\n".join(searchable_text(data, top, include_header=False)).casefold()
        return self._body_text


def searchable_text(data: bytes, part: Part, *, include_header: bool) -> list[str]:
    """Text of the textual leaves (and nested headers), decoded, for substring search."""
    out: list[str] = []
    if include_header:
        out.append(decode_words(data[part.start : part.body_start].decode("utf-8", "replace")))
    if part.children:
        for child in part.children:
            out.extend(searchable_text(data, child, include_header=False))
    elif part.message is not None:
        out.extend(searchable_text(data, part.message, include_header=True))
    elif part.ctype.maintype in ("text", "message"):
        raw = data[part.body_start : part.end]
        try:
            body = transfer.decode(part.header("Content-Transfer-Encoding"), raw)
        except transfer.UnknownEncoding:
            # Searched as it is written: better than not at all.
            body = raw
        charset = part.ctype.param("charset") or "utf-8"
        try:
            out.append(body.decode(charset, "replace"))
        except (LookupError, ValueError):
            # No such charset, a NUL in its name, or a codec (idna, punycode) that cannot decode
            # with errors="replace".
            out.append(body.decode("utf-8", "replace"))
    return out


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    offset = 0
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


# A search program compiled into nested closures: the key tree is walked once per search, not once
# per message, which matters when every message of a large folder is tested.
_Test = Callable[[_Facts], bool]


def _always(f: _Facts) -> bool:
    return True


def _compile(key: Key, max_seq: int, max_uid: int) -> _Test:
    """`max_seq`/`max_uid` are what `*` stands for in sequence and UID sets."""
    if isinstance(key, AllKey):
        return _always
    if isinstance(key, FlagKey):
        flag, present = key.flag, key.present
        return lambda f: (flag in f.msg.flags) == present
    if isinstance(key, RecentKey):
        recent = key.present
        return lambda f: f.recent == recent
    if isinstance(key, SetKey):
        if key.uid:
            uids = IntervalSet(key.numbers.intervals(max_uid))
            return lambda f: f.msg.uid in uids
        seqs = IntervalSet(key.numbers.intervals(max_seq))
        return lambda f: f.seq in seqs
    if isinstance(key, ModSeqKey):
        modseq = key.modseq
        return lambda f: f.msg.modseq >= modseq
    if isinstance(key, SizeKey):
        size = key.size
        if key.larger:
            return lambda f: f.msg.size > size
        return lambda f: f.msg.size < size
    if isinstance(key, DateKey):
        return _date_test(key)
    if isinstance(key, TextKey):
        return _text_test(key)
    if isinstance(key, NotKey):
        inner = _compile(key.key, max_seq, max_uid)
        return lambda f: not inner(f)
    if isinstance(key, OrKey):
        left, right = _compile(key.left, max_seq, max_uid), _compile(key.right, max_seq, max_uid)
        return lambda f: left(f) or right(f)
    tests = tuple(_compile(k, max_seq, max_uid) for k in key.keys)
    return lambda f: all(t(f) for t in tests)


def _internal_day(f: _Facts) -> int | None:
    return dt.datetime.fromtimestamp(f.msg.internal).astimezone().date().toordinal()


def _sent_day(f: _Facts) -> int | None:
    return None if f.summary is None else f.summary.sent_day


def _date_test(key: DateKey) -> _Test:
    # RFC 3501 §6.4.4: dates compare without time or timezone.
    wanted = key.date.toordinal()
    day_of = _sent_day if key.sent else _internal_day
    op = key.op

    def test(f: _Facts) -> bool:
        day = day_of(f)
        if day is None:
            return False
        if op == "BEFORE":
            return day < wanted
        if op == "ON":
            return day == wanted
        return day >= wanted

    return test


def _text_test(key: TextKey) -> _Test:
    # RFC 3501 §6.4.4: substring matches, case-insensitive.
    needle = key.needle.casefold()
    where = key.where
    if key.header:
        # A plain loop: this runs for every message of a folder, and any() over a generator costs
        # twice as much. RFC 3501 §6.4.4 HEADER: an empty string, in every value, matches every
        # message with the field.
        def test(f: _Facts) -> bool:
            if f.summary is None:
                return False
            for name, value in f.summary.fields:  # noqa: SIM110
                if name == where and needle in value:
                    return True
            return False

        return test
    if where == "TEXT":
        return lambda f: needle in f.header_text() or needle in f.body_text()
    return lambda f: needle in f.body_text()


def uses_modseq(key: Key) -> bool:
    """Whether the program has a MODSEQ key, which changes the response (RFC 7162 §3.1.5)."""
    if isinstance(key, ModSeqKey):
        return True
    if isinstance(key, NotKey):
        return uses_modseq(key.key)
    if isinstance(key, OrKey):
        return uses_modseq(key.left) or uses_modseq(key.right)
    if isinstance(key, AndKey):
        return any(uses_modseq(k) for k in key.keys)
    return False


# Messages tested per event-loop turn, or per worker-thread hop when files must be read.
_BATCH = 256
_FILE_BATCH = 32


async def run(
    key: Key,
    messages: Sequence[tuple[int, MessageFile]],
    recent: Container[int],
    summaries: Callable[[list[int]], Awaitable[dict[int, Summary]]],
    locate: Callable[[int], Path | None],
    catch_up: Callable[[], None],
    *,
    max_seq: int,
    max_uid: int,
) -> list[Hit]:
    """The messages, given as (sequence number, record) in mailbox order, that match `key`.

    `recent` holds the \\Recent UIDs; `summaries` gives the summaries of UIDs (leaving out
    expunged messages); `locate` a message's current path. Other programs may rename files while
    the search runs: a file not found is looked for again once after `catch_up` has brought the
    folder up to date. `max_seq`/`max_uid` are what `*` stands for.
    """
    test = _compile(key, max_seq, max_uid)
    level = need(key)
    hits: list[Hit] = []
    batch = _FILE_BATCH if level == Need.BODY else _BATCH
    for start in range(0, len(messages), batch):
        chunk = messages[start : start + batch]
        known = await summaries([m.uid for _, m in chunk]) if level > Need.NOTHING else {}
        if level == Need.BODY:
            facts = [
                _Facts(seq, m, m.uid in recent, known[m.uid], locate(m.uid))
                for seq, m in chunk
                if m.uid in known
            ]
            found, lost = await asyncio.to_thread(_test_files, test, facts)
            if lost:
                catch_up()
                for f in lost:
                    f.path = locate(f.msg.uid)
                more, _ = await asyncio.to_thread(_test_files, test, lost)
                found = sorted([*found, *more], key=lambda h: h.seq)
            hits.extend(found)
            continue
        for seq, m in chunk:
            summary = known.get(m.uid)
            if (summary is not None or level == Need.NOTHING) and test(
                _Facts(seq, m, m.uid in recent, summary)
            ):
                hits.append(Hit(seq, m))
        if start + batch < len(messages):
            # Let other sessions' commands in between batches of a long search; not after the
            # last: under load one turn of the loop is every other session's command.
            await asyncio.sleep(0)
    return hits


def _test_files(test: _Test, facts: list[_Facts]) -> tuple[list[Hit], list[_Facts]]:
    """In a worker thread: the messages that match, and those whose file was not found."""
    found: list[Hit] = []
    lost: list[_Facts] = []
    for f in facts:
        try:
            if test(f):
                found.append(Hit(f.seq, f.msg))
        except _Gone:
            lost.append(f)
    return found, lost
