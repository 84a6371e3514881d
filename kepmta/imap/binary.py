"""BINARY (RFC 3516): a body part with its Content-Transfer-Encoding undone by the server.

Clients fetch attachments this way without decoding base64 themselves; the octets sent are the
decoded content, so a part with an encoding we do not know is refused rather than guessed at.
"""

from __future__ import annotations

import base64
import binascii
import quopri

from kepmta.imap import mime
from kepmta.imap.protocol import CommandFailed

_IDENTITY = frozenset({"", "7bit", "8bit", "binary"})
_B64_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")


class UnknownCte(CommandFailed):
    def __init__(self, cte: str) -> None:
        # RFC 3516 §4.3: a Content-Transfer-Encoding the server cannot decode is NO [UNKNOWN-CTE].
        super().__init__(f"cannot decode Content-Transfer-Encoding {cte!r}", "UNKNOWN-CTE")


def decoded(data: bytes, part: mime.Part) -> bytes:
    """The body of `part` with its transfer encoding removed."""
    raw = data[part.body_start : part.end]
    if part.children or part.message is not None:
        # RFC 2045 §6.4: composite types are only ever 7bit/8bit/binary, i.e. not encoded.
        return raw
    cte = (part.header("Content-Transfer-Encoding") or "").strip().lower()
    if cte in _IDENTITY:
        return raw
    if cte == "base64":
        # RFC 2045 §6.8: characters outside the alphabet are ignored, line breaks among them.
        alphabet = bytes(c for c in raw if c in _B64_CHARS)
        alphabet = alphabet.split(b"=", 1)[0]
        try:
            return base64.b64decode(alphabet + b"=" * (-len(alphabet) % 4))
        except (binascii.Error, ValueError):
            return base64.b64decode(alphabet[: len(alphabet) - len(alphabet) % 4])
    if cte == "quoted-printable":
        return quopri.decodestring(raw)
    raise UnknownCte(cte)
