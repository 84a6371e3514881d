"""SEARCH criteria (RFC 3501 §6.4.4): parsing them into a tree and testing messages against it.

Each message is read only as far as the criteria need: flags, numbers, mod-sequences, sizes and
internal dates come from the folder index, header keys need the header, BODY and TEXT the file.
"""

from __future__ import annotations

import datetime as dt
import email.utils
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from kepmta.imap import mime
from kepmta.imap.condstore import mod_sequence
from kepmta.imap.fetch import MessageReader
from kepmta.imap.headers import decode_words, text_of
from kepmta.imap.mailbox import DELETED, SEEN, system_flag
from kepmta.imap.protocol import (
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
        keys.append(_key(args))
    if not keys:
        raise BadCommand("missing search criteria")
    return keys[0] if len(keys) == 1 else AndKey(tuple(keys))


def _text_arg(args: Args, what: str) -> str:
    raw = args.astring(what)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandFailed(f"{what} is not UTF-8", "BADCHARSET (UTF-8 US-ASCII)") from None


def _key(args: Args) -> Key:
    tok = args.next("search key")
    if isinstance(tok, ParenList):
        inner = Args(tok.items)
        keys = []
        while inner.more():
            keys.append(_key(inner))
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
        return SetKey(SequenceSet.parse(args.atom("UID set")), uid=True)
    if name == "MODSEQ":
        # RFC 7162 §3.1.5: an optional metadata entry name and type; a message has one
        # mod-sequence for all its flags here, so they do not narrow anything.
        if isinstance(args.peek(), String):
            args.next("entry name")
            if args.atom("entry type").lower() not in ("all", "shared", "priv"):
                raise BadCommand("MODSEQ entry type must be all, shared or priv")
        return ModSeqKey(mod_sequence(args.atom("mod-sequence"), zero=True))
    if name == "NOT":
        return NotKey(_key(args))
    if name == "OR":
        return OrKey(_key(args), _key(args))
    if name[:1].isdigit() or name[:1] == "*":
        return SetKey(SequenceSet.parse(name), uid=False)
    raise BadCommand(f"unknown search key {tok.value!r}")


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
class Candidate:
    seq: int
    uid: int
    flags: frozenset[str]
    recent: bool
    modseq: int = 1
    size: int = 0
    internal: float = 0.0


class _Facts:
    """What is known about one message while it is being tested."""

    def __init__(self, c: Candidate, sets: dict[int, IntervalSet], uid_sets: dict[int, IntervalSet]) -> None:
        self.c = c
        self.sets = sets
        self.uid_sets = uid_sets
        self.data = b""
        self.top: mime.Part | None = None
        self.body_text: str | None = None


def _contains(haystack: str, needle: str) -> bool:
    return needle.casefold() in haystack.casefold()


def _test(key: Key, f: _Facts) -> bool:
    if isinstance(key, AllKey):
        return True
    if isinstance(key, FlagKey):
        return (key.flag in f.c.flags) == key.present
    if isinstance(key, RecentKey):
        return f.c.recent == key.present
    if isinstance(key, SetKey):
        table = f.uid_sets if key.uid else f.sets
        return (f.c.uid if key.uid else f.c.seq) in table[id(key)]
    if isinstance(key, ModSeqKey):
        return f.c.modseq >= key.modseq
    if isinstance(key, SizeKey):
        return f.c.size > key.size if key.larger else f.c.size < key.size
    if isinstance(key, DateKey):
        return _test_date(key, f)
    if isinstance(key, TextKey):
        return _test_text(key, f)
    if isinstance(key, NotKey):
        return not _test(key.key, f)
    if isinstance(key, OrKey):
        return _test(key.left, f) or _test(key.right, f)
    return all(_test(k, f) for k in key.keys)


def _test_date(key: DateKey, f: _Facts) -> bool:
    # RFC 3501 §6.4.4: dates compare without time or timezone.
    if key.sent:
        raw = f.top.header("Date") if f.top else None
        if raw is None:
            return False
        try:
            day = email.utils.parsedate_to_datetime(raw).date()
        except (TypeError, ValueError, IndexError):
            return False
    else:
        day = dt.datetime.fromtimestamp(f.c.internal).astimezone().date()
    if key.op == "BEFORE":
        return day < key.date
    if key.op == "ON":
        return day == key.date
    return day >= key.date


def _test_text(key: TextKey, f: _Facts) -> bool:
    top = f.top
    if top is None:
        return False
    if key.header:
        values = [h.value for h in top.fields if h.name.upper() == key.where]
        if key.where not in _HEADER_KEYS and key.needle == "":
            # RFC 3501 §6.4.4 HEADER: an empty string matches every message with the field.
            return bool(values)
        return any(_contains(decode_words(v), key.needle) for v in values)
    if f.body_text is None:
        f.body_text = "\n".join(mime.searchable_text(f.data, top, include_header=False))
    if key.where == "TEXT":
        header = decode_words(text_of(f.data[top.start : top.body_start]))
        if _contains(header, key.needle):
            return True
    return _contains(f.body_text, key.needle)


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


def _collect_sets(key: Key, out: list[SetKey]) -> None:
    if isinstance(key, SetKey):
        out.append(key)
    elif isinstance(key, NotKey):
        _collect_sets(key.key, out)
    elif isinstance(key, OrKey):
        _collect_sets(key.left, out)
        _collect_sets(key.right, out)
    elif isinstance(key, AndKey):
        for k in key.keys:
            _collect_sets(k, out)


async def run(
    key: Key,
    candidates: Sequence[Candidate],
    locate: Callable[[int], Path | None],
    max_seq: int,
    max_uid: int,
) -> list[Candidate]:
    """The candidates matching `key`; `max_seq`/`max_uid` are what `*` stands for.

    `locate` gives a message's current path at the moment it is opened: other sessions may rename
    files (flag changes) while this search waits for reads.
    """
    set_keys: list[SetKey] = []
    _collect_sets(key, set_keys)
    sets = {id(k): IntervalSet(k.numbers.intervals(max_seq)) for k in set_keys if not k.uid}
    uid_sets = {id(k): IntervalSet(k.numbers.intervals(max_uid)) for k in set_keys if k.uid}
    level = need(key)
    hits: list[Candidate] = []
    for c in candidates:
        facts = _Facts(c, sets, uid_sets)
        if level > Need.NOTHING:
            path = locate(c.uid)
            if path is None:
                continue
            try:
                reader = MessageReader.open(path)
            except FileNotFoundError:
                continue
            try:
                if level == Need.HEADER:
                    facts.data, facts.top = await reader.header()
                elif level == Need.BODY:
                    facts.data = await reader.data()
                    facts.top = await reader.tree()
            finally:
                reader.close()
        if _test(key, facts):
            hits.append(c)
    return hits
