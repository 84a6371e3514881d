"""RFC 2047 encoded-words in header text: `=?charset?B|Q?text?=`.

Anyone can send an encoded-word, so none may raise: a word that does not decode (bad base64, text
that is not ASCII) or names a charset Python does not know is shown as written (RFC 2047 §6.2
allows that for a charset the reader does not support); a charset whose codec cannot decode with
replacement characters (idna, punycode) or whose name holds a NUL is read as UTF-8.
"""

from __future__ import annotations

import base64
import binascii
import re

# RFC 2047 §2 (charset and encoded-text hold no white space and no "?"); RFC 2231 §5 adds a
# language after "*" to the charset, which does not change the decoding.
_ENCODED_WORD = re.compile(r"=\?([^?*\s]+)(?:\*[^?\s]*)?\?([bBqQ])\?([^?\s]*)\?=")


def _decode_word(word: re.Match[str]) -> str:
    charset, encoding, text = word.groups()
    try:
        if encoding in "qQ":
            raw = binascii.a2b_qp(text.encode("ascii"), header=True)  # RFC 2047 §4.2: "_" is a space
        else:
            raw = base64.b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, binascii.Error):
        return word.group(0)
    try:
        return raw.decode(charset, "replace")
    except LookupError:
        return word.group(0)
    except ValueError:
        # A NUL in the charset name, or a codec (idna, punycode) that cannot decode with
        # errors="replace" (UnicodeError).
        return raw.decode("utf-8", "replace")


def decode_words(value: str) -> str:
    """`value` with its encoded-words decoded and the text around them kept as it is."""
    if "=?" not in value:
        # Every encoded-word starts so (RFC 2047 §2); most values have none.
        return value
    out: list[str] = []
    pos = 0
    for word in _ENCODED_WORD.finditer(value):
        between = value[pos : word.start()]
        # RFC 2047 §6.2: white space between two adjacent encoded-words is not displayed.
        if not (pos > 0 and not between.strip(" \t\r\n")):
            out.append(between)
        out.append(_decode_word(word))
        pos = word.end()
    out.append(value[pos:])
    return "".join(out)
