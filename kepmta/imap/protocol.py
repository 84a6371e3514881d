"""IMAP4rev1 wire syntax: reading commands with their literals, tokenising arguments, writing responses.

A command is read as one byte string: its lines with their CRLFs and, after every line ending in a
literal marker `{n}` / `{n+}`, the n literal octets (RFC 3501 §4.3, RFC 7888). The lexer then walks
that string, so a literal is just another token wherever the grammar allows a string.

What a command may hold in memory is small, and smaller still before login; the one literal that may
be big, APPEND's message, is written to a file as it arrives and stands in the string as an empty
literal the lexer knows the file of.
"""

from __future__ import annotations

import asyncio
import bisect
import datetime as dt
import os
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from kepmta.outage import outage

# Octets of a streamed literal written at once: what one read from the connection brings.
_CHUNK = 64 * 1024

_TAG = re.compile(rb"[^\x00-\x20\x7f-\xff(){%*\"\\\]+]+")
_LITERAL_MARK = re.compile(rb"\{(\d{1,12})(\+?)\}\r?\n\Z")
_LITERAL_TOKEN = re.compile(rb"\{(\d{1,12})\+?\}\r?\n")
_PARTIAL = re.compile(rb"<(\d{1,10})\.(\d{1,10})>")
_SECTION_ATOMS = frozenset({"BODY", "BODY.PEEK", "BINARY", "BINARY.PEEK", "BINARY.SIZE"})
# What an atom runs over (RFC 3501 §9 ATOM-CHAR, read leniently: anything but CTL, SP and `(){"`),
# up to a "[" that may open a section, and inside a section up to its "]" too; scanned in C, which
# took typical commands from 11 to 9.5 µs to tokenise.
_ATOM_RUN = re.compile(rb'[^\x00-\x20(){"\x7f\[]*')
_ATOM_RUN_IN_SECTION = re.compile(rb'[^\x00-\x20(){"\x7f\[\]]*')
# A quoted string without escapes (RFC 3501 §9 quoted), the common case; one with escapes is
# read an octet at a time.
_PLAIN_QUOTED = re.compile(rb'"([^"\\\r\n]*)"')
# Levels of parentheses and section brackets one command may open. The grammar sets no bound, but
# the lexer and everything that walks its tokens recurse once per level; no client needs more than a
# few (a SEARCH of nested ORs in parentheses), and 500 ran out of Python's stack before any login.
MAX_NESTING = 64


class BadCommand(Exception):
    """A command that breaks the grammar; answered with a tagged (or untagged) BAD carrying the text."""


class Refused(BadCommand):
    """A command refused while it was still being read (too long, literal too big, no room for it):
    answered `status` (BAD, or NO for a well-formed command that cannot be carried out)."""

    def __init__(self, tag: str | None, text: str, status: str = "BAD") -> None:
        super().__init__(text)
        self.tag = tag
        self.status = status


class CommandFailed(Exception):
    """A well-formed command that cannot be carried out: a tagged NO with an optional response code."""

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


class LineTooLong(Exception):
    def __init__(self, head: bytes) -> None:
        super().__init__("line too long")
        self.head = head


class ConnectionClosed(Exception):
    """The client went away, or must be disconnected after a fatal protocol violation."""

    def __init__(self, farewell: str | None = None) -> None:
        super().__init__(farewell or "connection closed")
        self.farewell = farewell


# --- tokens -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Atom:
    """An atom; FETCH's `BODY[...]<a.b>` forms keep their section tokens and partial range here."""

    value: str
    section: tuple[Token, ...] | None = None
    partial: tuple[int, int] | None = None


@dataclass(frozen=True)
class LiteralFile:
    """A literal the reader wrote to a file instead of keeping it in memory.

    `synced` resolves once the file's octets are on disk, to None, or to the error that stopped
    them getting there: the sync runs on a thread from the literal's last octet, while the client
    sends the rest of its command, so the command need not wait for it afterwards."""

    path: Path
    size: int
    synced: asyncio.Future[OSError | None]


@dataclass(frozen=True)
class String:
    """A quoted string or a literal, as the octets the client sent; a literal written to a file has
    no octets here but the file."""

    value: bytes
    literal: bool = False
    file: LiteralFile | None = None


@dataclass(frozen=True)
class ParenList:
    items: tuple[Token, ...]


Token = Atom | String | ParenList


class _Lexer:
    def __init__(self, data: bytes, pos: int, files: Mapping[int, LiteralFile]) -> None:
        self.data = data
        self.pos = pos
        self.files = files
        self.depth = 0

    def nested(self, closer: int) -> list[Token]:
        """The tokens up to `closer`, one level deeper than the caller."""
        if self.depth == MAX_NESTING:
            raise BadCommand(f"nesting too deep: at most {MAX_NESTING} levels of parentheses")
        self.depth += 1
        items = self.sequence(closer)
        self.depth -= 1
        return items

    def sequence(self, closer: int | None) -> list[Token]:
        data = self.data
        items: list[Token] = []
        while True:
            at_end = self.pos >= len(data) or data[self.pos] in b"\r\n"
            if at_end:
                if closer is not None:
                    raise BadCommand(f"missing '{chr(closer)}'")
                return items
            ch = data[self.pos]
            if closer is not None and ch == closer:
                self.pos += 1
                return items
            if ch == ord(")"):
                raise BadCommand("unexpected ')'")
            if items:
                # RFC 3501 §9: tokens are separated by exactly one space.
                if ch != 0x20:
                    raise BadCommand("missing space between arguments")
                self.pos += 1
                if self.pos >= len(data) or data[self.pos] in b" \r\n" or data[self.pos] == closer:
                    raise BadCommand("unexpected space")
                ch = data[self.pos]
            elif ch == 0x20:
                raise BadCommand("unexpected space")
            items.append(self.token(ch, closer))

    def token(self, ch: int, closer: int | None) -> Token:
        if ch == ord("("):
            self.pos += 1
            return ParenList(tuple(self.nested(ord(")"))))
        if ch == ord(")"):
            raise BadCommand("unexpected ')'")
        if ch == ord('"'):
            return self.quoted()
        if ch == ord("{"):
            return self.literal()
        if ch == ord("~") and self.data[self.pos + 1 : self.pos + 2] == b"{":
            # RFC 3516 §4.4 literal8: the same framing, octets that may include NUL.
            self.pos += 1
            return self.literal()
        return self.atom(closer)

    def quoted(self) -> String:
        data = self.data
        plain = _PLAIN_QUOTED.match(data, self.pos)
        if plain:
            self.pos = plain.end()
            return String(plain.group(1))
        out = bytearray()
        i = self.pos + 1
        while i < len(data):
            c = data[i]
            if c == ord('"'):
                self.pos = i + 1
                return String(bytes(out))
            if c in b"\r\n":
                break
            if c == ord("\\"):
                i += 1
                if i >= len(data) or data[i] not in b'"\\':
                    raise BadCommand("invalid escape in quoted string")
                c = data[i]
            out.append(c)
            i += 1
        raise BadCommand("unterminated quoted string")

    def literal(self) -> String:
        m = _LITERAL_TOKEN.match(self.data, self.pos)
        if not m:
            raise BadCommand("malformed literal")
        file = self.files.get(self.pos)
        if file is not None:
            self.pos = m.end()
            return String(b"", literal=True, file=file)
        size = int(m.group(1))
        start = m.end()
        if start + size > len(self.data):
            raise BadCommand("literal is shorter than announced")
        self.pos = start + size
        return String(self.data[start : self.pos], literal=True)

    def atom(self, closer: int | None) -> Atom:
        data = self.data
        start = i = self.pos
        run = _ATOM_RUN_IN_SECTION if closer == ord("]") else _ATOM_RUN
        while True:
            i = run.match(data, i).end()  # type: ignore[union-attr]  # matches the empty string
            if i >= len(data) or data[i] != ord("["):
                break
            name = data[start:i].decode("ascii", "replace").upper()
            if name in _SECTION_ATOMS:
                self.pos = i
                return self.section_atom(name)
            i += 1  # a "[" that opens no section is part of the atom
        self.pos = i
        raw = data[start:i]
        try:
            return Atom(raw.decode("ascii"))
        except UnicodeDecodeError:
            raise BadCommand("8-bit characters are not allowed in an atom") from None

    def section_atom(self, name: str) -> Atom:
        self.pos += 1
        section = tuple(self.nested(ord("]")))
        partial = None
        if self.pos < len(self.data) and self.data[self.pos] == ord("<"):
            m = _PARTIAL.match(self.data, self.pos)
            if not m or int(m.group(2)) == 0:
                raise BadCommand("malformed partial range, expected <start.length>")
            partial = (int(m.group(1)), int(m.group(2)))
            self.pos = m.end()
        return Atom(name, section, partial)


@dataclass(frozen=True)
class Command:
    tag: str
    name: str
    args: tuple[Token, ...]


def split_tag(line: bytes) -> str | None:
    """The tag of a (possibly malformed) command line, for addressing the BAD reply."""
    m = _TAG.match(line)
    if not m or m.end() >= len(line) or line[m.end()] != 0x20:
        return None
    return m.group().decode("ascii")


def parse_command(data: bytes, files: Mapping[int, LiteralFile] | None = None) -> Command:
    """Tokenise a complete command (lines and literals, as `CommandReader.command` returns it)."""
    tag = split_tag(data)
    if tag is None:
        raise BadCommand("missing or invalid tag")
    lexer = _Lexer(data, len(tag) + 1, files or {})
    tokens = lexer.sequence(None)
    if lexer.data[lexer.pos :] not in (b"\r\n", b"\n", b""):
        raise BadCommand("garbage after command")
    if not tokens or not isinstance(tokens[0], Atom) or tokens[0].section is not None:
        raise BadCommand("missing command name")
    return Command(tag, tokens[0].value.upper(), tuple(tokens[1:]))


def parse_head(head: bytes) -> Command | None:
    """The command so far, when `head` is a command read up to a literal marker: what the literal
    would be an argument of. None when that much does not parse (the whole command will not either)."""
    m = _LITERAL_MARK.search(head)
    if not m:
        return None
    start = m.start()
    if head[start - 1 : start] == b"~":
        start -= 1
    if head[start - 7 : start].upper() == b" UTF8 (":
        # RFC 6855 §4: APPEND's message as UTF8 (literal8); the command so far ends before it.
        start -= 6
    if head[start - 1 : start] != b" ":
        return None
    try:
        return parse_command(head[: start - 1])
    except BadCommand:
        return None


# --- argument cursor --------------------------------------------------------------------------------


class Args:
    """Consumes a command's tokens in grammar order; every mismatch is a BadCommand naming what was due."""

    def __init__(self, tokens: Sequence[Token]) -> None:
        self._tokens = tokens
        self._i = 0

    def peek(self) -> Token | None:
        return self._tokens[self._i] if self._i < len(self._tokens) else None

    def more(self) -> bool:
        return self._i < len(self._tokens)

    def next(self, what: str) -> Token:
        if self._i >= len(self._tokens):
            raise BadCommand(f"missing {what}")
        tok = self._tokens[self._i]
        self._i += 1
        return tok

    def atom(self, what: str) -> str:
        tok = self.next(what)
        if not isinstance(tok, Atom) or tok.section is not None:
            raise BadCommand(f"expected {what}")
        return tok.value

    def astring(self, what: str) -> bytes:
        tok = self.next(what)
        if isinstance(tok, String):
            if tok.file is not None:
                raise BadCommand(f"{what} is too long")
            return tok.value
        if isinstance(tok, Atom) and tok.section is None:
            return tok.value.encode("ascii")
        raise BadCommand(f"expected {what}")

    def paren_list(self, what: str) -> tuple[Token, ...]:
        tok = self.next(what)
        if not isinstance(tok, ParenList):
            raise BadCommand(f"expected {what} in parentheses")
        return tok.items

    def number(self, what: str) -> int:
        text = self.atom(what)
        if not text.isdigit() or len(text) > 10:
            raise BadCommand(f"expected {what} as a number")
        return int(text)

    def end(self) -> None:
        if self._i < len(self._tokens):
            raise BadCommand("unexpected extra arguments")


# --- sequence sets (RFC 3501 §9 sequence-set) --------------------------------------------------------

# RFC 9051 §9: nz-number is at most 4294967295, ten digits; a longer run of digits is no number to
# read (int() of more than 4300 digits raises ValueError, and below that only costs time).
_SEQ_RANGE = re.compile(r"(\d{1,10}|\*)(?::(\d{1,10}|\*))?\Z")


@dataclass(frozen=True)
class SequenceSet:
    """Ranges with `None` standing for `*`, the largest number in use; or, `saved`, "$": the UIDs a
    SEARCH saved (RFC 5182 §2.1), which the session puts in their place."""

    ranges: tuple[tuple[int | None, int | None], ...]
    saved: bool = False

    @classmethod
    def parse_or_saved(cls, text: str) -> SequenceSet:
        """A sequence set, or "$" where RFC 5182 §3 allows it in its place."""
        return cls((), saved=True) if text == "$" else cls.parse(text)

    @classmethod
    def of(cls, numbers: Iterable[int]) -> SequenceSet:
        """The set of the sorted `numbers`, as ranges of consecutive ones."""
        ranges: list[tuple[int | None, int | None]] = []
        last = None
        for n in numbers:
            if ranges and last is not None and n == last + 1:
                ranges[-1] = (ranges[-1][0], n)
            else:
                ranges.append((n, n))
            last = n
        return cls(tuple(ranges))

    @classmethod
    def parse(cls, text: str) -> SequenceSet:
        ranges: list[tuple[int | None, int | None]] = []
        for piece in text.split(","):
            m = _SEQ_RANGE.match(piece)
            if not m:
                raise BadCommand(f"invalid sequence set {text!r}")
            lo = None if m.group(1) == "*" else int(m.group(1))
            hi_text = m.group(2) if m.group(2) is not None else m.group(1)
            hi = None if hi_text == "*" else int(hi_text)
            if lo == 0 or hi == 0 or (lo or 0) > 0xFFFFFFFF or (hi or 0) > 0xFFFFFFFF:
                raise BadCommand(f"invalid sequence set {text!r}: numbers run from 1 to 4294967295")
            ranges.append((lo, hi))
        return cls(tuple(ranges))

    def intervals(self, star: int) -> list[tuple[int, int]]:
        """Sorted, merged closed intervals, with `*` taken as `star`."""
        spans = sorted(
            (min(a, b), max(a, b))
            for a, b in ((star if lo is None else lo, star if hi is None else hi) for lo, hi in self.ranges)
        )
        merged: list[tuple[int, int]] = []
        for lo, hi in spans:
            if merged and lo <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
            else:
                merged.append((lo, hi))
        return merged

    def max_explicit(self) -> int:
        """The largest number given outright, the other end of an `n:*` range included: `*` stands
        for the largest number in use, the range for all between, so `n` must be in use as well."""
        return max((n for r in self.ranges for n in r if n is not None), default=0)

    def only_star_ranges(self) -> bool:
        """Whether every range has `*` at one end or both."""
        return all(None in r for r in self.ranges)


class IntervalSet:
    """Membership test over merged intervals in O(log n)."""

    def __init__(self, intervals: list[tuple[int, int]]) -> None:
        self._starts = [lo for lo, _ in intervals]
        self._intervals = intervals

    def __contains__(self, n: object) -> bool:
        if not isinstance(n, int):
            return False
        i = bisect.bisect_right(self._starts, n) - 1
        return i >= 0 and self._intervals[i][1] >= n


def format_uid_set(uids: Iterable[int]) -> str:
    """Compact `a:b,c` form for COPYUID / APPENDUID (RFC 4315 §3)."""
    out: list[str] = []
    run: list[int] = []
    for uid in uids:
        if run and uid == run[-1] + 1:
            run.append(uid)
            continue
        if run:
            out.append(str(run[0]) if len(run) == 1 else f"{run[0]}:{run[-1]}")
        run = [uid]
    if run:
        out.append(str(run[0]) if len(run) == 1 else f"{run[0]}:{run[-1]}")
    return ",".join(out)


# --- response formatting ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FileSlice:
    """Octets of an open file, streamed into a response instead of being read into memory."""

    fd: int
    offset: int
    length: int


Segment = bytes | FileSlice

_QUOTABLE = re.compile(rb"[\x01-\x09\x0b\x0c\x0e-\x7f]*\Z")


def string(value: bytes) -> bytes:
    """A quoted string when the octets allow one, else a literal (RFC 3501 §4.3)."""
    if len(value) < 1024 and _QUOTABLE.match(value):
        return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(value) + value


def nstring(value: bytes | None) -> bytes:
    return b"NIL" if value is None else string(value)


def literal_header(length: int) -> bytes:
    return b"{%d}\r\n" % length


def paren(items: Iterable[bytes]) -> bytes:
    return b"(" + b" ".join(items) + b")"


# --- reading commands -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """What one command may hold: each line, each literal kept in memory, those literals and the
    lines after the first together, and the largest literal taken at all (only ever into a file:
    one message). The numbers are the caller's (kepmta.limits, from the policy file)."""

    line: int
    literal: int
    command: int
    message: int


@dataclass(frozen=True)
class RawCommand:
    """A command as read: its octets, and the literals written to files by the offset of their
    marker in `data` (rewritten as the empty literal `{0}`)."""

    data: bytes
    files: Mapping[int, LiteralFile] = field(default_factory=dict)

    def discard(self) -> None:
        """Remove the files no command took: that of a command that failed, or was refused."""
        for file in self.files.values():
            file.path.unlink(missing_ok=True)


Admit = Callable[[bytes, int, int], Awaitable[Path | None]]


class _Source(Protocol):
    async def read(self, n: int) -> bytes: ...


class CommandReader:
    """Reads CRLF lines and literals from a stream with its own buffer, enforcing the size limits.

    Owning the buffer lets STARTTLS discard whatever a client pipelined after the command, which
    would otherwise be taken as if it had arrived under TLS (the CVE-2011-0411 injection).
    """

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader: asyncio.StreamReader | _Source = reader
        self._buf = bytearray()

    def inflate(self, wrap: Callable[[asyncio.StreamReader, bytes], _Source]) -> None:
        """From now on read through `wrap` (COMPRESS, RFC 4978 §3): it gets the stream and the
        octets already read from it but not yet taken, which came compressed as well."""
        assert isinstance(self._reader, asyncio.StreamReader)
        pending = bytes(self._buf)
        self._buf.clear()
        self._reader = wrap(self._reader, pending)

    def discard_buffer(self) -> None:
        self._buf.clear()
        # Octets the stream received but nobody has read yet are cleartext as well. StreamReader has
        # no public way to drop them, hence the guarded look at its buffer.
        pending = getattr(self._reader, "_buffer", None)
        if isinstance(pending, bytearray):
            pending.clear()

    async def _fill(self) -> None:
        chunk = await self._reader.read(65536)
        if not chunk:
            raise ConnectionClosed()
        self._buf += chunk

    async def line(self, limit: int) -> bytes:
        """One line including its LF; raises LineTooLong (after skipping the rest of it) past `limit`."""
        scanned = 0
        while True:
            nl = self._buf.find(b"\n", scanned)
            if nl >= 0:
                line = bytes(self._buf[: nl + 1])
                del self._buf[: nl + 1]
                if len(line) > limit:
                    raise LineTooLong(line[:256])
                return line
            if len(self._buf) > limit:
                head = bytes(self._buf[:256])
                await self._skip_line()
                raise LineTooLong(head)
            scanned = len(self._buf)
            await self._fill()

    async def _skip_line(self) -> None:
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                del self._buf[: nl + 1]
                return
            self._buf.clear()
            await self._fill()

    async def exactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            await self._fill()
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    async def _skip(self, n: int) -> None:
        while n:
            if not self._buf:
                await self._fill()
            taken = min(n, len(self._buf))
            del self._buf[:taken]
            n -= taken

    async def _stream(self, path: Path, n: int, synced: asyncio.Future[OSError | None]) -> OSError | None:
        """Write the next `n` octets to a new file at `path`, a chunk at a time as they arrive, and
        start syncing it (`synced`). Returns the error that stopped the writing (a full disk), once
        all `n` are read past: the client sends them whatever happens here, and they are not the
        next command."""
        error: OSError | None = None
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            synced.set_result(e)
            await self._skip(n)
            return e
        owned = True
        try:
            while n:
                if not self._buf:
                    await self._fill()
                chunk = bytes(self._buf[: min(n, _CHUNK)])
                del self._buf[: len(chunk)]
                n -= len(chunk)
                view = memoryview(chunk)
                try:
                    while view and error is None:
                        view = view[os.write(fd, view) :]
                except OSError as e:
                    error = e
            if error is None:
                owned = False
                _sync_in_thread(fd, synced)
            else:
                synced.set_result(error)
        finally:
            if owned:
                os.close(fd)
                if not synced.done():
                    synced.cancel()
        return error

    async def command(
        self, send_continuation: Callable[[], Awaitable[None]], limits: Limits, admit: Admit | None = None
    ) -> RawCommand:
        """A whole command; raises Refused when it must be turned down before it is complete.

        Before a continuation invites a literal, `admit(head, index, size)` is asked where it goes,
        with the command up to and including the literal's marker and the number of literals before
        it: it returns a new file's path to write the literal to, or None to keep it in memory within
        `limits`, or raises BadCommand (answered BAD) or CommandFailed (answered NO) to refuse the
        command there and then.
        """
        try:
            first = await self.line(limits.line)
        except LineTooLong as e:
            raise Refused(split_tag(e.head), "command line too long") from None
        tag = split_tag(first)
        parts = [first]
        files: dict[int, LiteralFile] = {}
        # Where the last line starts in the command; what literals and the lines after them hold in
        # memory (the first line has a limit of its own).
        offset = 0
        held = 0
        line = first
        try:
            while True:
                m = _LITERAL_MARK.search(line)
                if not m:
                    if held > limits.command:
                        raise Refused(tag, f"[TOOBIG] command longer than {limits.command} octets")
                    return RawCommand(b"".join(parts), files)
                size, non_sync = int(m.group(1)), bool(m.group(2))
                if size > limits.message:
                    _too_big(non_sync)
                    raise Refused(tag, f"[TOOBIG] literals are limited to {limits.message} octets")
                try:
                    path = await admit(b"".join(parts), len(parts) // 2, size) if admit else None
                except (BadCommand, CommandFailed) as e:
                    if non_sync:
                        # RFC 7888: a non-synchronising literal is sent without waiting, so its
                        # octets must be read past before the next command begins.
                        await self._skip(size)
                        await self._skip_command(limits)
                    if isinstance(e, CommandFailed):
                        raise Refused(tag, (f"[{e.code}] " if e.code else "") + e.text, "NO") from None
                    raise Refused(tag, str(e)) from None
                if path is None and (size > limits.literal or held + size > limits.command):
                    _too_big(non_sync)
                    raise Refused(
                        tag,
                        f"[TOOBIG] literals are limited to {limits.literal} octets each, "
                        f"{limits.command} octets per command",
                    )
                if not non_sync:
                    await send_continuation()
                if path is None:
                    parts.append(await self.exactly(size))
                    held += size
                    offset += len(line) + size
                else:
                    # Registered before the first octet, so a failure part-way removes the file.
                    synced: asyncio.Future[OSError | None] = asyncio.get_running_loop().create_future()
                    files[offset + m.start()] = LiteralFile(path, size, synced)
                    failed = await self._stream(path, size, synced)
                    if failed is not None:
                        await self._skip_command(limits)
                        found = outage(failed)
                        why = found.imap if found else f"[UNAVAILABLE] the message was not stored: {failed}"
                        raise Refused(tag, why, "NO")
                    parts[-1] = line[: m.start()] + b"{0}\r\n"
                    parts.append(b"")
                    offset += len(parts[-2])
                try:
                    line = await self.line(limits.line)
                except LineTooLong:
                    raise Refused(tag, "command line too long") from None
                parts.append(line)
                held += len(line)
        except BaseException:
            for file in files.values():
                file.path.unlink(missing_ok=True)
            raise

    async def _skip_command(self, limits: Limits) -> None:
        """Read past the rest of a refused command: its lines and its non-synchronising literals
        (a synchronising one ends it: its client waits for a continuation it will not get)."""
        while True:
            try:
                line = await self.line(limits.line)
            except LineTooLong:
                return
            m = _LITERAL_MARK.search(line)
            if not m or not m.group(2):
                return
            size = int(m.group(1))
            if size > limits.message:
                raise ConnectionClosed("literal too large")
            await self._skip(size)


def _sync_in_thread(fd: int, synced: asyncio.Future[OSError | None]) -> None:
    """Sync and close `fd` on a thread; `synced` gets the outcome (no one need be waiting)."""

    def sync() -> OSError | None:
        try:
            os.fsync(fd)
        except OSError as e:
            return e
        finally:
            os.close(fd)
        return None

    done = asyncio.get_running_loop().run_in_executor(None, sync)
    done.add_done_callback(lambda f: None if synced.done() else synced.set_result(f.result()))


def _too_big(non_sync: bool) -> None:
    if non_sync:
        # RFC 7888 §4: the octets are already on their way; a session that will not take them cannot
        # tell where the next command starts.
        raise ConnectionClosed("literal too large")


# --- dates (RFC 3501 §9 date-time, date) ---------------------------------------------------------------

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DATE_TIME = re.compile(r"([ \d]?\d)-([A-Za-z]{3})-(\d{4}) (\d{2}):(\d{2}):(\d{2}) ([+-])(\d{2})(\d{2})\Z")
_DATE = re.compile(r"(\d{1,2})-([A-Za-z]{3})-(\d{4})\Z")


def _month(name: str) -> int:
    for i, m in enumerate(_MONTHS):
        if m.lower() == name.lower():
            return i + 1
    raise BadCommand(f"unknown month {name!r}")


def format_date_time(when: dt.datetime) -> bytes:
    """INTERNALDATE as `"dd-Mon-yyyy hh:mm:ss +zzzz"`."""
    offset = when.utcoffset() or dt.timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(minutes)
    text = (
        f"{when.day:02d}-{_MONTHS[when.month - 1]}-{when.year:04d} "
        f"{when.hour:02d}:{when.minute:02d}:{when.second:02d} {sign}{minutes // 60:02d}{minutes % 60:02d}"
    )
    return b'"' + text.encode("ascii") + b'"'


def parse_date_time(text: str) -> dt.datetime:
    m = _DATE_TIME.match(text)
    if not m:
        raise BadCommand(f'invalid date-time {text!r}, expected "dd-Mon-yyyy hh:mm:ss +zzzz"')
    day, mon, year, hh, mm, ss, sign, zh, zm = m.groups()
    offset = dt.timedelta(hours=int(zh), minutes=int(zm)) * (-1 if sign == "-" else 1)
    try:
        return dt.datetime(
            int(year), _month(mon), int(day), int(hh), int(mm), int(ss), tzinfo=dt.timezone(offset)
        )
    except ValueError:
        raise BadCommand(f"invalid date-time {text!r}") from None


def parse_date(text: str) -> dt.date:
    m = _DATE.match(text)
    if not m:
        raise BadCommand(f"invalid date {text!r}, expected dd-Mon-yyyy")
    try:
        return dt.date(int(m.group(3)), _month(m.group(2)), int(m.group(1)))
    except ValueError:
        raise BadCommand(f"invalid date {text!r}") from None
