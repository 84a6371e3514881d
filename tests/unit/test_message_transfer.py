"""Undoing transfer encodings (kepmta.message.transfer, RFC 2045 §6)."""

from __future__ import annotations

import base64

import pytest

from kepmta.message.transfer import UnknownEncoding, decode, quoted_printable, strict_base64


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        (b"Merhaba d=C3=BCnya\r\n", "Merhaba dünya\r\n".encode()),
        # Rule 3: white space ending a line is dropped; it is kept before a soft line break.
        (b"one two  \r\nthree\t\r\n", b"one two\r\nthree\r\n"),
        (b"a =\r\nb", b"a b"),
        # Rule 5: a soft line break, with white space after the "=".
        (b"three=  \r\nfour=\t\r\n five", b"threefour five"),
        (b"lf=\nonly \n", b"lfonly\n"),
        (b"lower =3d =c3=a7", "lower = ç".encode()),
        # Note 1 of §6.7: an "=" that starts no escape is kept.
        (b"a=ZZ b=4", b"a=ZZ b=4"),
        (b"ends with =3D", b"ends with ="),
        (b"soft at the end=", b"soft at the end"),
        (b"trailing  ", b"trailing"),
    ],
)
def test_quoted_printable(raw: bytes, decoded: bytes) -> None:
    assert quoted_printable(raw) == decoded
    assert decode("Quoted-Printable ", raw) == decoded


def test_base64_is_lenient_outside_signatures() -> None:
    data = bytes(range(256))
    lines = base64.encodebytes(data).replace(b"\n", b"\r\n")
    assert decode("base64", lines) == data
    # RFC 2045 §6.8: characters outside the alphabet are ignored, the data ends at "=".
    assert decode("BASE64", b"QU*JD!\r\n==junk") == b"ABC"
    assert decode("base64", b"QUJDR") == b"ABC"
    assert strict_base64(lines) == data
    with pytest.raises(ValueError):
        strict_base64(b"QU*JD")


def test_identity_and_unknown_encodings() -> None:
    for name in (None, "", "7bit", "8BIT", " binary "):
        assert decode(name, b"\x00raw\xff") == b"\x00raw\xff"
    with pytest.raises(UnknownEncoding) as e:
        decode("x-uuencode", b"begin 644 x")
    assert e.value.encoding == "x-uuencode"


def test_long_runs_take_linear_work() -> None:
    assert quoted_printable(b" " * 3_000_000 + b"x") == b" " * 3_000_000 + b"x"
    assert 0 < len(quoted_printable(b"=" * 3_000_000)) < 3_000_000
    assert quoted_printable(b" \n" * 1_000_000) == b"\n" * 1_000_000
