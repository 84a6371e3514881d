"""BINARY (RFC 3516): a body part with its Content-Transfer-Encoding undone by the server.

Clients fetch attachments this way without decoding base64 themselves; the octets sent are the
decoded content, so a part with an encoding we do not know is refused rather than guessed at.
"""

from __future__ import annotations

from kepmta.imap.protocol import CommandFailed
from kepmta.message import transfer
from kepmta.message.entity import Part


class UnknownCte(CommandFailed):
    def __init__(self, cte: str) -> None:
        # RFC 3516 §4.3: a Content-Transfer-Encoding the server cannot decode is NO [UNKNOWN-CTE].
        super().__init__(f"cannot decode Content-Transfer-Encoding {cte!r}", "UNKNOWN-CTE")


def decoded(data: bytes, part: Part) -> bytes:
    """The body of `part` with its transfer encoding removed."""
    raw = data[part.body_start : part.end]
    if part.children or part.message is not None:
        # RFC 2045 §6.4: composite types are only ever 7bit/8bit/binary, i.e. not encoded.
        return raw
    try:
        return transfer.decode(part.header("Content-Transfer-Encoding"), raw)
    except transfer.UnknownEncoding as e:
        raise UnknownCte(e.encoding) from None
