"""RFC 2047 encoded-words (kepmta.message.words): decoded, or shown as written, never an exception."""

from __future__ import annotations

import pytest

from kepmta.message.words import decode_words


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("plain text", "plain text"),
        ("=?UTF-8?Q?Toplant=C4=B1_notlar=C4=B1?=", "Toplantı notları"),
        ("=?utf-8?b?w4dpw6dlaw==?=", "Çiçek"),
        ("=?ISO-8859-9?B?/Ho=?=", "üz"),
        # RFC 2047 §6.2: white space between adjacent encoded-words is not shown; other text is.
        ("=?utf-8?q?a?= \t =?utf-8?q?b?=", "ab"),
        ("x =?utf-8?q?a?= y =?utf-8?q?b?= z", "x a y b z"),
        # RFC 2231 §5: a language after the charset.
        ("=?utf-8*tr?q?=C3=A7?=", "ç"),
        # An unknown charset is shown as written (RFC 2047 §6.2) ...
        ("=?nonsense?q?x?=", "=?nonsense?q?x?="),
        # ... so is base64 that does not decode, and Q text that is not ASCII.
        ("=?utf-8?b?x?=", "=?utf-8?b?x?="),
        ("=?utf-8?q?\u00e7?=", "=?utf-8?q?\u00e7?="),
        # Codecs that cannot decode with replacement, or a NUL in the name: read as UTF-8.
        ("=?idna?q?abc?=", "abc"),
        ("=?punycode?q?a-=FF?=", "a-\ufffd"),
        ("=?utf\x00-8?q?abc?=", "abc"),
        ("=?utf-8?q?=FF?=", "\ufffd"),
        # Not an encoded-word: white space inside, or no closing "?=".
        ("=?utf-8?q?a b?=", "=?utf-8?q?a b?="),
        ("=?utf-8?q?ab", "=?utf-8?q?ab"),
    ],
)
def test_encoded_words(value: str, shown: str) -> None:
    assert decode_words(value) == shown


def test_many_words_take_linear_work() -> None:
    value = "=?utf-8?q?a?= " * 50_000 + "=?" * 50_000
    assert decode_words(value).startswith("a" * 50_000)
