"""The DER writer and TLV reader against X.690 and against asn1crypto's encoder."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import asn1crypto.core
import asn1crypto.tsp
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from kepmta.smime import der

BOUNDARIES = [0, 1, 127, 128, 255, 256, 65535, 65536, 2**24 - 1, 2**24, 2**32]


def _decode_length(octets: bytes) -> tuple[int, int]:
    """(value, octets used): an independent reading of X.690 §8.1.3."""
    if octets[0] < 0x80:
        return octets[0], 1
    count = octets[0] & 0x7F
    return int.from_bytes(octets[1 : 1 + count], "big"), 1 + count


@pytest.mark.parametrize(
    ("n", "octets"),
    [
        (0, "00"),
        (127, "7f"),
        (128, "8180"),
        (255, "81ff"),
        (256, "820100"),
        (65535, "82ffff"),
        (65536, "83010000"),
    ],
)
def test_length_boundaries(n: int, octets: str) -> None:
    assert der.length(n).hex() == octets


@given(st.one_of(st.sampled_from(BOUNDARIES), st.integers(min_value=0, max_value=2**64)))
def test_length_is_minimal_and_reads_back(n: int) -> None:
    octets = der.length(n)
    assert _decode_length(octets) == (n, len(octets))
    if n < 128:
        assert len(octets) == 1  # X.690 §10.1: short form whenever it fits
    else:
        assert octets[0] & 0x80 and octets[1] != 0  # long form, no leading zero octet
        assert len(octets) - 1 == (n.bit_length() + 7) // 8


@given(st.one_of(st.sampled_from(BOUNDARIES[:7]), st.integers(min_value=0, max_value=70_000)))
@example(0)
def test_tlv_matches_asn1crypto_and_the_reader(n: int) -> None:
    value = bytes(i % 251 for i in range(n))
    encoded = der.octet_string(value)
    assert encoded == asn1crypto.core.OctetString(value).dump()
    tag, start, end, total = der.read(encoded)
    assert (tag, encoded[start:end], total) == (der.OCTET_STRING, value, len(encoded))
    assert der.contents(encoded, der.OCTET_STRING) == value


@given(st.integers())
@example(0)
@example(127)
@example(128)
@example(-128)
@example(-129)
@example(2**127)
def test_integer_matches_asn1crypto(value: int) -> None:
    assert der.integer(value) == asn1crypto.core.Integer(value).dump()


@given(
    st.tuples(
        st.integers(min_value=0, max_value=2),
        st.integers(min_value=0, max_value=39),
        st.lists(st.integers(min_value=0, max_value=2**70), max_size=12),
    )
)
@example((2, 999, []))
def test_oid_matches_asn1crypto(arcs: tuple[int, int, list[int]]) -> None:
    dotted = ".".join(map(str, (arcs[0], arcs[1], *arcs[2])))
    assert der.oid(dotted) == asn1crypto.core.ObjectIdentifier(dotted).dump()


@pytest.mark.parametrize("bad", ["", "1", "3.1", "1.40", "1.2.x", "1.-2"])
def test_oid_rejects_what_is_not_an_oid(bad: str) -> None:
    with pytest.raises(ValueError):
        der.oid(bad)


_TLVS = st.builds(
    der.tlv,
    st.sampled_from([der.INTEGER, der.OCTET_STRING, der.OID, der.SEQUENCE, der.SET, 0x80, 0xA0, 0xA1]),
    st.one_of(st.binary(max_size=40), st.binary(min_size=120, max_size=300)),
)


@given(st.lists(_TLVS, max_size=12))
def test_set_of_orders_members_as_x690_11_6_says(members: list[bytes]) -> None:
    encoded = der.set_of(members)
    width = max((len(m) for m in members), default=0)
    # X.690 §11.6: compared as octet strings, the shorter padded with trailing 0-octets.
    ordered = sorted(members, key=lambda m: m.ljust(width, b"\x00"))
    assert encoded == der.tlv(der.SET, b"".join(ordered))
    assert der.elements(der.contents(encoded, der.SET)) == ordered
    values = [asn1crypto.core.OctetString(der.contents(m)) for m in members if m[0] == der.OCTET_STRING]
    as_octets = [m for m in members if m[0] == der.OCTET_STRING]
    assert der.set_of(as_octets) == asn1crypto.core.SetOf(values, spec=asn1crypto.core.OctetString).dump()


def test_set_of_members_of_different_lengths() -> None:
    short = der.octet_string(b"\xff")  # 04 01 ff
    long = der.octet_string(b"\x00" * 200)  # 04 81 c8 …: long form sorts after short form 01
    assert der.set_of([long, short]) == der.tlv(der.SET, short + long)


_UTC_TIMES = st.datetimes(
    min_value=datetime(1950, 1, 1), max_value=datetime(2049, 12, 31, 23, 59, 59), timezones=st.just(UTC)
)


@given(_UTC_TIMES.map(lambda t: t.replace(microsecond=0)))
def test_utc_time_matches_asn1crypto(when: datetime) -> None:
    assert der.utc_time(when) == asn1crypto.core.UTCTime(when).dump()


@given(st.datetimes(min_value=datetime(1000, 1, 1), timezones=st.just(UTC)))
@example(datetime(2024, 1, 2, 3, 4, 5, 120000, tzinfo=UTC))
def test_generalized_time_matches_asn1crypto(when: datetime) -> None:
    assert der.generalized_time(when) == asn1crypto.core.GeneralizedTime(when).dump()


def test_times_are_written_in_utc_and_refuse_what_does_not_fit() -> None:
    local = datetime(2024, 5, 2, 13, 0, 0, tzinfo=timezone(timedelta(hours=3)))
    assert der.utc_time(local) == der.tlv(der.UTC_TIME, b"240502100000Z")
    assert der.generalized_time(local) == der.tlv(der.GENERALIZED_TIME, b"20240502100000Z")
    with pytest.raises(ValueError, match="timezone-aware"):
        der.utc_time(datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="1950-2049"):
        der.utc_time(datetime(2050, 1, 1, tzinfo=UTC))
    with pytest.raises(ValueError, match="fractional"):
        der.utc_time(datetime(2024, 1, 1, 0, 0, 0, 1, tzinfo=UTC))


def test_explicit_and_implicit_tags_match_asn1crypto() -> None:
    value = der.octet_string(b"x")
    assert der.explicit(1, value) == asn1crypto.core.OctetString(b"x", explicit=1).dump()
    assert der.implicit(1, value) == asn1crypto.core.OctetString(b"x", implicit=1).dump()
    seq = der.sequence(der.integer(5))
    assert (
        der.implicit(0, seq)
        == asn1crypto.core.SequenceOf([5], spec=asn1crypto.core.Integer, implicit=0).dump()
    )
    with pytest.raises(ValueError, match="0-30"):
        der.explicit(31, value)


@pytest.mark.parametrize(
    "bits", [{"bad_alg"}, {"bad_request"}, {"bad_data_format"}, {"unaccepted_extensions"}]
)
def test_named_bit_string_matches_asn1crypto(bits: set[str]) -> None:
    numbers = {n for n, name in asn1crypto.tsp.PKIFailureInfo._map.items() if name in bits}
    assert der.bit_string(numbers) == asn1crypto.tsp.PKIFailureInfo(bits).dump()
    assert der.bit_string(()) == asn1crypto.tsp.PKIFailureInfo(set()).dump()


def test_reader_follows_indefinite_lengths() -> None:
    inner = der.octet_string(b"abc")
    ber = b"\x30\x80" + inner + b"\xa0\x80" + inner + b"\x00\x00" + b"\x00\x00"
    tag, start, end, total = der.read(ber)
    assert (tag, total) == (der.SEQUENCE, len(ber))
    assert der.elements(ber[start:end]) == [inner, b"\xa0\x80" + inner + b"\x00\x00"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x04", "truncated header"),
        (b"\x04\x05abc", "past the end"),
        (b"\x04\x82\x01", "truncated length"),
        (b"\x1f\x01\x00", "high tag"),
        (b"\x04\x80abc\x00\x00", "primitive"),
        (b"\x30\x80\x04\x01a", "truncated header"),
        (b"\x04\x01a\x00", "after the end"),
    ],
)
def test_reader_refuses_malformed_input(data: bytes, message: str) -> None:
    with pytest.raises(der.DerError, match=message):
        der.contents(data)


def test_reader_bounds_nesting() -> None:
    deep = b"\x30\x80" * 100 + b"\x00\x00" * 100
    with pytest.raises(der.DerError, match="too deep"):
        der.read(deep)


@given(st.lists(st.binary(max_size=300), max_size=6))
def test_spans_agree_with_the_reader(values: list[bytes]) -> None:
    encodings = [der.octet_string(v) for v in values]
    data = b"junk" + b"".join(encodings) + b"tail"
    found = der.spans(data, 4, len(data) - 4)
    assert [data[start:end] for _, start, _, end in found] == encodings
    for identifier, start, inner, end in found:
        assert der.read(data, start) == (identifier, inner, end, end)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x04", "truncated header"),
        (b"\x04\x05abc", "past the end"),
        (b"\x04\x82\x01", "truncated length"),
        (b"\x04\xff" + b"\x00" * 127, "reserved"),
        (b"\x1f\x01\x00", "high tag"),
        (b"\x30\x80\x04\x01a\x00\x00", "indefinite"),
    ],
)
def test_spans_refuse_what_is_not_definite_der(data: bytes, message: str) -> None:
    with pytest.raises(der.DerError, match=message):
        der.spans(data)


def test_spans_stay_inside_the_range_given() -> None:
    data = der.sequence(der.octet_string(b"abc"))
    with pytest.raises(der.DerError, match="past the end"):
        der.spans(data, 0, len(data) - 1)
    assert der.spans(data, 2, len(data)) == [(der.OCTET_STRING, 2, 4, 7)]
