"""Undoing a Content-Transfer-Encoding (RFC 2045 §6).

Decoding is lenient, as RFC 2045 asks of readers: base64 ignores what is not in its alphabet
(§6.8), quoted-printable keeps an `=` that starts no escape (§6.7, note 1). Only a signature, which
must not be read into something else, asks for `strict_base64`.
"""

from __future__ import annotations

import base64
import binascii

IDENTITY = frozenset({"", "7bit", "8bit", "binary"})
_B64_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
_NOT_B64 = bytes(c for c in range(256) if c not in _B64_ALPHABET)


class UnknownEncoding(ValueError):
    """A Content-Transfer-Encoding this reader does not know (x-uuencode and the like)."""

    def __init__(self, encoding: str) -> None:
        super().__init__(f"unknown Content-Transfer-Encoding {encoding!r}")
        self.encoding = encoding


def base64_lenient(raw: bytes) -> bytes:
    """RFC 2045 §6.8: characters outside the alphabet are ignored, line breaks among them, and the
    data ends at the first `=`."""
    alphabet = raw.translate(None, _NOT_B64).split(b"=", 1)[0]
    # A last group of one character holds no whole octet.
    alphabet = alphabet[: len(alphabet) - (len(alphabet) % 4 == 1)]
    return base64.b64decode(alphabet + b"=" * (-len(alphabet) % 4))


def strict_base64(raw: bytes) -> bytes:
    """Base64 with nothing but white space (line breaks) outside the alphabet; else ValueError."""
    return base64.b64decode(b"".join(raw.split()), validate=True)


def quoted_printable(raw: bytes) -> bytes:
    """RFC 2045 §6.7 decoding; line breaks stay as they are in `raw`."""
    lines = raw.split(b"\n")
    last = len(lines) - 1
    out: list[bytes] = []
    for index, line in enumerate(lines):
        crlf = index < last and line.endswith(b"\r")
        # Rule 3: white space ending a line is padding added in transit, not content.
        text = (line[:-1] if crlf else line).rstrip(b" \t")
        if text.endswith(b"="):
            # Rule 5: "=" ending a line (white space after it allowed) is a soft line break.
            out.append(text[:-1])
        elif index < last:
            out.append(text + (b"\r\n" if crlf else b"\n"))
        else:
            out.append(text)
    joined = b"".join(out)
    # Rule 1 ("=" and two hex digits) is left to binascii, which would also take a final "=" for a
    # soft line break: every soft line break is gone already, so such an "=" is content.
    if joined.endswith(b"="):
        return binascii.a2b_qp(joined[:-1]) + b"="
    return binascii.a2b_qp(joined)


def decode(encoding: str | None, raw: bytes) -> bytes:
    """`raw` with the transfer encoding `encoding` (a field value, any case) undone."""
    name = (encoding or "").strip().lower()
    if name in IDENTITY:
        return raw
    if name == "base64":
        return base64_lenient(raw)
    if name == "quoted-printable":
        return quoted_printable(raw)
    raise UnknownEncoding(name)
