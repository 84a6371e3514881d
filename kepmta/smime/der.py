"""A small DER writer (ITU-T X.690) for the CMS and RFC 3161 structures we build, and a TLV reader.

asn1crypto builds values from Python data through a recursive re-encoding that costs milliseconds
per SignedData; the structures we sign have a fixed shape, so writing their octets directly is
both faster and easier to check against the standard. Only single-octet identifiers are written or
read (tag numbers below 31, X.690 §8.1.2.2): every type CMS and RFC 3161 use fits. The reader,
which takes fields out of certificates and time-stamp requests, also accepts the indefinite length
form (X.690 §8.1.3.6) that BER encoders outside our control may send.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from functools import lru_cache

__all__ = [
    "BIT_STRING",
    "GENERALIZED_TIME",
    "INTEGER",
    "NULL",
    "OCTET_STRING",
    "OID",
    "SEQUENCE",
    "SET",
    "UTC_TIME",
    "UTF8_STRING",
    "DerError",
    "bit_string",
    "contents",
    "elements",
    "explicit",
    "generalized_time",
    "implicit",
    "integer",
    "length",
    "octet_string",
    "oid",
    "read",
    "sequence",
    "set_of",
    "spans",
    "tlv",
    "utc_time",
    "utf8_string",
]

# Identifier octets of the universal types used here (X.690 §8.1.2, X.680 §8.4).
INTEGER = 0x02
BIT_STRING = 0x03
OCTET_STRING = 0x04
NULL = 0x05
OID = 0x06
UTF8_STRING = 0x0C
UTC_TIME = 0x17
GENERALIZED_TIME = 0x18
SEQUENCE = 0x30  # constructed bit (0x20) set: X.690 §8.9.1
SET = 0x31  # X.690 §8.11.1

_CONSTRUCTED = 0x20
_CONTEXT = 0x80
# Deeper nesting than any CMS object needs; bounds the recursion over indefinite-length input.
_MAX_DEPTH = 64


class DerError(ValueError):
    """Octets that are not a well-formed TLV encoding this module can read."""


def length(n: int) -> bytes:
    """The length octets for `n` contents octets."""
    if n < 0:
        raise ValueError("a length cannot be negative")
    if n < 0x80:
        return bytes((n,))  # X.690 §8.1.3.4 short form; §10.1 makes it mandatory in DER below 128
    # X.690 §8.1.3.5 long form with the fewest octets (§10.1).
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def tlv(identifier: int, value: bytes) -> bytes:
    """One encoding: identifier octet, length octets, contents octets (X.690 §8.1.1)."""
    return bytes((identifier,)) + length(len(value)) + value


def sequence(*parts: bytes) -> bytes:
    """SEQUENCE of already encoded components, in the order given (X.690 §8.9)."""
    return tlv(SEQUENCE, b"".join(parts))


def set_of(members: Iterable[bytes]) -> bytes:
    """SET OF with its encoded members in DER order (X.690 §11.6).

    §11.6 compares encodings as octet strings padded with trailing zeros. No complete TLV is a
    proper prefix of another (equal leading identifier and length octets mean equal lengths), so
    plain byte ordering gives the same order.
    """
    return tlv(SET, b"".join(sorted(members)))


def octet_string(value: bytes) -> bytes:
    """Primitive OCTET STRING (X.690 §8.7; DER forbids the constructed form, §10.2)."""
    return tlv(OCTET_STRING, value)


def integer(value: int) -> bytes:
    """INTEGER in the fewest two's-complement octets (X.690 §8.3.2)."""
    size = (value if value >= 0 else ~value).bit_length() // 8 + 1
    return tlv(INTEGER, value.to_bytes(size, "big", signed=True))


@lru_cache(maxsize=256)
def oid(dotted: str) -> bytes:
    """OBJECT IDENTIFIER from dotted decimal (X.690 §8.19)."""
    try:
        arcs = [int(arc) for arc in dotted.split(".")]
    except ValueError as exc:
        raise ValueError(f"not a dotted OID: {dotted!r}") from exc
    if len(arcs) < 2 or arcs[0] > 2 or (arcs[0] < 2 and arcs[1] > 39) or min(arcs) < 0:
        raise ValueError(f"not a valid OID: {dotted!r}")
    out = bytearray()
    # X.690 §8.19.4: the first two arcs share one subidentifier.
    for sub in (arcs[0] * 40 + arcs[1], *arcs[2:]):
        # X.690 §8.19.2: base 128, most significant group first, bit 8 set on all but the last.
        groups = [sub & 0x7F]
        sub >>= 7
        while sub:
            groups.append(0x80 | (sub & 0x7F))
            sub >>= 7
        out += bytes(reversed(groups))
    return tlv(OID, bytes(out))


def bit_string(bits: Iterable[int]) -> bytes:
    """BIT STRING of a named bit list with bits `bits` set (X.690 §8.6).

    X.690 §11.2.2: DER drops trailing zero bits of a named bit list, so the last set bit ends it.
    """
    numbers = set(bits)
    if not numbers:
        return tlv(BIT_STRING, b"\x00")
    last = max(numbers)
    value = bytearray(last // 8 + 1)
    for n in numbers:
        value[n // 8] |= 0x80 >> (n % 8)  # X.690 §8.6.2.1: bit 0 is the first octet's leading bit
    return tlv(BIT_STRING, bytes((7 - last % 8,)) + bytes(value))


def utf8_string(text: str) -> bytes:
    return tlv(UTF8_STRING, text.encode())


def _utc(when: datetime) -> datetime:
    if when.tzinfo is None:
        raise ValueError("a DER time needs a timezone-aware datetime")
    return when.astimezone(UTC)


def utc_time(when: datetime) -> bytes:
    """UTCTime YYMMDDHHMMSSZ: X.690 §11.8 requires the seconds and the Z, and no fraction."""
    when = _utc(when)
    if not 1950 <= when.year < 2050:
        raise ValueError("UTCTime covers 1950-2049 only (RFC 5280 §4.1.2.5.1)")
    if when.microsecond:
        raise ValueError("UTCTime has no fractional seconds")
    return tlv(UTC_TIME, when.strftime("%y%m%d%H%M%SZ").encode("ascii"))


def generalized_time(when: datetime) -> bytes:
    """GeneralizedTime YYYYMMDDHHMMSS[.f]Z (X.690 §11.7): fraction without trailing zeros, if any."""
    when = _utc(when)
    text = f"{when.year:04d}{when:%m%d%H%M%S}"
    if when.microsecond:
        text += f".{when.microsecond:06d}".rstrip("0")
    return tlv(GENERALIZED_TIME, (text + "Z").encode("ascii"))


def explicit(number: int, value: bytes) -> bytes:
    """[number] EXPLICIT around an encoded value: always constructed (X.690 §8.14.2)."""
    if not 0 <= number < 31:
        raise ValueError("only tag numbers 0-30 fit one identifier octet")
    return tlv(_CONTEXT | _CONSTRUCTED | number, value)


def implicit(number: int, value: bytes) -> bytes:
    """[number] IMPLICIT: the value's identifier replaced, its constructed bit kept (X.690 §8.14.3)."""
    if not 0 <= number < 31:
        raise ValueError("only tag numbers 0-30 fit one identifier octet")
    return bytes((_CONTEXT | (value[0] & _CONSTRUCTED) | number,)) + value[1:]


def read(data: bytes, pos: int = 0) -> tuple[int, int, int, int]:
    """(identifier, contents start, contents end, encoding end) of the encoding at `data[pos]`."""
    return _read(data, pos, 0)


def _header(data: bytes, pos: int, stop: int) -> tuple[int, int, int | None]:
    """(identifier, contents start, contents length, or None in the indefinite form) of the
    encoding at `data[pos]`, which must lie within `data[:stop]`."""
    if pos + 2 > stop:
        raise DerError("truncated header")
    identifier = data[pos]
    if identifier & 0x1F == 0x1F:
        raise DerError("high tag numbers are not supported")
    first = data[pos + 1]
    start = pos + 2
    if first == 0x80:
        return identifier, start, None
    if first & 0x80:
        count = first & 0x7F
        if count == 0x7F:
            raise DerError("reserved length octet 0xFF")  # X.690 §8.1.3.5 c)
        if start + count > stop:
            raise DerError("truncated length")
        size = int.from_bytes(data[start : start + count], "big")
        start += count
    else:
        size = first
    if start + size > stop:
        raise DerError("contents run past the end of the data")
    return identifier, start, size


def _read(data: bytes, pos: int, depth: int) -> tuple[int, int, int, int]:
    if depth > _MAX_DEPTH:
        raise DerError("nesting too deep")
    identifier, start, size = _header(data, pos, len(data))
    if size is None:
        # X.690 §8.1.3.6: indefinite form, constructed only, closed by end-of-contents octets.
        if not identifier & _CONSTRUCTED:
            raise DerError("indefinite length on a primitive encoding")
        end = start
        while data[end : end + 2] != b"\x00\x00":
            end = _read(data, end, depth + 1)[3]
        return identifier, start, end, end + 2
    return identifier, start, start + size, start + size


def contents(encoding: bytes, identifier: int | None = None) -> bytes:
    """The contents octets of one complete encoding, checking its identifier when given."""
    tag, start, end, total = read(encoding)
    if total != len(encoding):
        raise DerError("data after the end of the encoding")
    if identifier is not None and tag != identifier:
        raise DerError(f"identifier 0x{tag:02x} where 0x{identifier:02x} was expected")
    return encoding[start:end]


def elements(octets: bytes) -> list[bytes]:
    """The complete encodings that the contents of a constructed value consist of, in order."""
    out: list[bytes] = []
    pos = 0
    while pos < len(octets):
        end = read(octets, pos)[3]
        out.append(octets[pos:end])
        pos = end
    return out


def spans(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[int, int, int, int]]:
    """(identifier, start, contents start, end) of each encoding that `data[start:end]` consists of.

    Offsets instead of copies, for walks through large structures. Definite lengths only, as in DER
    (X.690 §10.1): what `read` takes in the indefinite form is refused here.
    """
    stop = len(data) if end is None else end
    out: list[tuple[int, int, int, int]] = []
    pos = start
    while pos < stop:
        identifier, inner, size = _header(data, pos, stop)
        if size is None:
            raise DerError("indefinite length")
        out.append((identifier, pos, inner, inner + size))
        pos = inner + size
    return out
