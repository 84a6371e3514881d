"""The DATA phase as a byte stream: end-of-data detection, dot-unstuffing, line-ending checks.

aiosmtpd reads DATA a line at a time and keeps it all in memory; this reads large chunks and writes
them straight to a spool file, so a 100 MB message costs a few buffers, not its size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# A line longer than this without CRLF is written out in pieces rather than held in memory.
_MAX_CARRY = 64 * 1024


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
