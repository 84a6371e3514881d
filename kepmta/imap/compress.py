"""COMPRESS=DEFLATE (RFC 4978): raw deflate (RFC 1951) on the stream, both ways, inside TLS.

Output is flushed with a sync flush at the end of every batch of responses, so the client can
decompress each response as it arrives (RFC 4978 §4). Input is inflated no more than a read asks
for at a time: a few octets that inflate to gigabytes (a deflate bomb) cost no more memory than
as many octets sent plainly, and the line and literal limits apply to what they inflate to.
"""

from __future__ import annotations

import asyncio
import zlib

DEFLATE = "DEFLATE"
# RFC 4978 §4: raw deflate, no zlib header or trailer.
_WBITS = -15
# Speed over ratio: responses are written as commands complete, and level 1 already shrinks
# headers and text several times.
_LEVEL = 1


class Deflater:
    def __init__(self) -> None:
        self._z = zlib.compressobj(_LEVEL, zlib.DEFLATED, _WBITS)

    def compress(self, data: bytes) -> bytes:
        """`data` compressed and flushed, so the client can decompress all of it now."""
        return self._z.compress(data) + self._z.flush(zlib.Z_SYNC_FLUSH)


class InflatingReader:
    """What `CommandReader` reads from once COMPRESS is active: the connection's octets inflated.
    `pending` holds octets read from the connection before compression began."""

    def __init__(self, reader: asyncio.StreamReader, pending: bytes = b"") -> None:
        self._reader = reader
        self._z = zlib.decompressobj(_WBITS)
        self._tail = pending

    async def read(self, n: int) -> bytes:
        """Up to `n` inflated octets; b"" once the client has closed the connection."""
        while True:
            if not self._tail:
                self._tail = await self._reader.read(n)
                if not self._tail:
                    return b""
            try:
                out = self._z.decompress(self._tail, n)
            except zlib.error:
                # Not deflate: nothing after it can be read as commands.
                return b""
            self._tail = self._z.unconsumed_tail
            if out:
                return out
            if self._z.eof:
                return b""
