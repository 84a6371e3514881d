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
    return binascii.a2b_qp(raw)


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
