"""The DATA phase as a byte stream: end-of-data detection, dot-unstuffing, line-ending checks.

aiosmtpd reads DATA a line at a time and keeps it all in memory; this reads large chunks and writes
them straight to a spool file, so a 100 MB message costs a few buffers, not its size.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from aiosmtpd.smtp import TLSSetupException

from kepmta.outage import outage
from kepmta.smtp.starttls import LoopTLS

log = logging.getLogger(__name__)

# A line longer than this without CRLF is written out in pieces rather than held in memory.
_MAX_CARRY = 64 * 1024
READ_CHUNK = 256 * 1024


class Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...


@dataclass(frozen=True)
class DataOutcome:
    size: int  # bytes of the message after unstuffing (counted even past the limit)
    bare_line_end: bool  # a CR or LF that is not part of CRLF (RFC 5321 §2.3.8); still stored
    too_big: bool  # more than `limit` bytes; writing stopped at the limit


class DataReader:
    """Feed it what the client sends after `354`; it writes the message to `out`."""

    def __init__(self, out: Sink, limit: int) -> None:
        self._out = out
        self._limit = limit
        self._carry = b""
        self._line_start = True
        self._size = 0
        self._bare = False
        self._too_big = False

    @property
    def outcome(self) -> DataOutcome:
        return DataOutcome(self._size, self._bare, self._too_big)

    def feed(self, chunk: bytes) -> bytes | None:
        """None while the message goes on; at its end, the bytes that came after `CRLF.CRLF`."""
        data = self._carry + chunk
        # RFC 5321 §4.1.1.4: the data ends with a line holding a single ".".
        if self._line_start and data.startswith(b".\r\n"):
            end = 0
        else:
            found = data.find(b"\r\n.\r\n")
            end = found + 2 if found >= 0 else -1
        if end >= 0:
            self._emit(data[:end])
            self._carry = b""
            return data[end + 3 :]
        cut = data.rfind(b"\r\n")
        if cut >= 0:
            self._emit(data[: cut + 2])
            self._carry, self._line_start = data[cut + 2 :], True
        else:
            self._carry = data
        if len(self._carry) > _MAX_CARRY:
            # Keep the last byte: it may be the CR of a CRLF that the next chunk completes.
            self._emit(self._carry[:-1])
            self._carry, self._line_start = self._carry[-1:], False
        return None

    def _emit(self, block: bytes) -> None:
        if not block:
            return
        # Blocks never split a CRLF, so a CR or LF outside a pair shows in these counts.
        pairs = block.count(b"\r\n")
        if block.count(b"\r") != pairs or block.count(b"\n") != pairs:
            self._bare = True
        # RFC 5321 §4.5.2: remove the first "." of every line that starts with one.
        if self._line_start and block.startswith(b"."):
            block = block[1:]
        block = block.replace(b"\r\n.", b"\r\n")
        self._size += len(block)
        if self._size > self._limit:
            self._too_big = True
        if not self._too_big:
            self._out.write(block)


class SpoolingSMTP(LoopTLS):
    """aiosmtpd's SMTP with DATA streamed to a spool file (RFC 5321 §4.1.1.4)."""

    # The stream limit also bounds how much aiosmtpd buffers; DATA is read in chunks of this
    # order. Command lines stay limited by aiosmtpd's command_size_limit (RFC 5321 §4.5.3.1.4).
    line_length_limit = READ_CHUNK

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):
            # A client that gives up the handshake (say, it does not trust our certificate) is
            # one log line, not aiosmtpd's traceback; aiosmtpd closes the connection itself.
            log.info(
                "%r: TLS handshake failed: %r", self.session.peer if self.session else None, error.__cause__
            )
            return ""
        peer = self.session.peer if self.session else None
        found = outage(error)
        if found is not None:
            log.error("%r: %s: %s", peer, found.what, error)
            return found.smtp
        # Anything else is a fault of ours or of something we depend on: one log entry with its
        # traceback, and to the client only "try again later" (RFC 3463 X.3.0), never aiosmtpd's
        # default "500 Error: (ValueError) ...", which shows our internals and tells a client
        # with a good message to give it up.
        log.exception("%r: SMTP command failed", peer, exc_info=error)
        return "451 4.3.0 Internal error; try again later"

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's address reader, with what the standard library's parser raises besides
        HeaderParseError taken as the malformed address it is: an unterminated address literal
        (`MAIL FROM:<a@[127.0.0.1`) raises AttributeError there, `<kep@[ \n` UnboundLocalError in
        Python 3.11.2 (Debian 12), which would be a 451 "try again later" and a traceback, where
        RFC 5321 §4.1.2 has no address at all (553 5.1.3). Which exception a malformed address
        raises differs between Python releases, so any from the parser means that."""
        try:
            address: tuple[str | None, str | None] = super()._getaddr(arg)
        except Exception:
            return None, None
        return address

    async def _end_transaction(self) -> None:
        """Record what the transaction being left needs recorded; nothing here (the submission
        listener records its refused recipients)."""

    async def spool_data(self, path: Path, limit: int) -> DataOutcome | None:
        """Send 354 and write the data to `path`, at most `limit` bytes of it; None (and no file)
        when there is nothing left to do: the client went away before the end, or the spool could
        not be written and the client has been answered."""
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        spool = _Spool(path)
        try:
            reader = DataReader(spool, limit)
            while True:
                chunk = await self._reader.read(READ_CHUNK)
                if not chunk:  # the client went away mid-message: nothing was accepted
                    spool.discard()
                    return None
                self._reset_timeout()
                rest = reader.feed(chunk)
                if rest is not None:
                    break
            # No fsync: this is a working copy; what is kept is moved and synced by its owner.
            spool.close()
        except BaseException:
            spool.discard()
            raise
        if rest:
            # Pipelined commands after the final dot (RFC 2920 §3.1) go back to the command reader.
            self._reader._buffer[:0] = rest  # type: ignore[attr-defined]
        if spool.error is not None:
            # Answered only now, after the end of the data (RFC 5321 §4.1.1.4): answered at the
            # failing write, the rest of the message would be read as commands.
            spool.discard()
            found = outage(spool.error)
            log.error(
                "DATA from %r not spooled: %s", self.session.peer if self.session else None, spool.error
            )
            await self._end_transaction()
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            await self.push(found.smtp if found is not None else "451 4.3.0 Local error; try again later")
            return None
        return reader.outcome


class _Spool:
    """The spool file as DataReader's sink. A write that fails (a full disk) is kept, not raised, so
    the rest of the message is still read to its end; nothing more is written after it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.error: OSError | None = None
        self._file: BinaryIO | None = None
        try:
            self._file = path.open("wb")
        except OSError as e:  # no inode left: the client is still told after its data
            self.error = e

    def write(self, data: bytes, /) -> None:
        if self.error is not None or self._file is None:
            return
        try:
            self._file.write(data)
        except OSError as e:
            self.error = e

    def close(self) -> None:
        if self._file is None:
            return
        try:
            self._file.close()  # the last buffered write may fail here
        except OSError as e:
            self.error = self.error or e
        self._file = None

    def discard(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        self.path.unlink(missing_ok=True)
