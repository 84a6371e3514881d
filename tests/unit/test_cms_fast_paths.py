"""The shortcuts in kepmta.smime.cms against the asn1crypto readings they stand in for.

`_layout` walks the TLV headers of our own signatures instead of parsing them with asn1crypto;
`load` parses certificates, algorithms and signed attributes once per distinct encoding. Both
must give the answer, or the error, that the asn1crypto reading gives, on our outputs and on
whatever a mutation makes of them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asn1crypto.cms
import asn1crypto.core
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from evidence_fixtures import make_pki
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rem_fixtures import pki, sign_cryptography

from kepmta.evidence.tsa import BuiltinTsa
from kepmta.smime import cms, der

CONTENT = "Kayıtlı elektronik posta: şğüöçıİ\r\n".encode() * 40
TOKEN_TYPE = "1.2.840.113549.1.9.16.2.14"  # RFC 3161 Appendix A id-aa-timeStampToken
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass(frozen=True)
class Samples:
    basic: bytes  # CAdES-B-B, attached, with the CA certificate
    stamped: bytes  # the same with its signature time-stamp (CAdES-B-T)
    token: bytes  # the time-stamp token itself
    client: bytes  # a detached S/MIME signature made by `cryptography`, as a mail client sends it

    def all(self) -> list[bytes]:
        return [self.basic, self.stamped, self.token, self.client]


@functools.cache
def samples() -> Samples:
    p = make_pki(Path(tempfile.mkdtemp()))
    basic = cms.sign(p.evidence, content=CONTENT, detached=False, chain=[p.provider_ca.cert]).dump()
    imprint = hashlib.sha256(cms.signature_value(cms.DerContentInfo.load(basic))).digest()
    token = asyncio.run(BuiltinTsa(p.tsa, [p.tsa_ca.cert]).timestamp(imprint))
    stamped = cms.add_signature_timestamp(cms.DerContentInfo.load(basic), token).dump()
    return Samples(basic, stamped, token, client_signature(sign_cryptography(pki().ali)))


def client_signature(message: bytes) -> bytes:
    match = re.search(rb"filename=\"smime.p7s\"\r\n\r\n([A-Za-z0-9+/=\r\n]+?)\r\n--", message)
    assert match is not None
    return base64.b64decode(b"".join(match.group(1).split()))


def outcome(read: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "value", read()
    except Exception as exc:  # the same type on both sides is all that is asked
        return "error", type(exc)


def unparsed(data: bytes) -> asn1crypto.cms.ContentInfo:
    """A ContentInfo as stamp_der and is_time_stamped hold it: loaded, nothing parsed yet."""
    return cms.DerContentInfo.load(data)


def parsed(data: bytes) -> asn1crypto.cms.ContentInfo:
    """The same, once asn1crypto has read into it, so that cms takes its asn1crypto path."""
    ci = cms.DerContentInfo.load(data)
    with contextlib.suppress(Exception):  # what does not parse is cms's to report
        ci["content"]  # the item access is the parse
    return ci


# -- the asn1crypto readings, as cms had them before the walk ---------------------------------------


def asn1crypto_token(ci: asn1crypto.cms.ContentInfo) -> bytes | None:
    attrs = cms.signer_info(ci)["unsigned_attrs"]
    if isinstance(attrs, asn1crypto.core.Void):
        return None
    for attr in attrs:
        if attr["type"].native == "signature_time_stamp_token" and len(attr["values"]) >= 1:
            return cms._encoded(attr["values"][0])
    return None


def asn1crypto_signature(ci: asn1crypto.cms.ContentInfo) -> bytes:
    return bytes(cms.signer_info(ci)["signature"].native)


def asn1crypto_token_check(token: bytes) -> None:
    fields = cms._signed_data(token)
    with cms._malformed():
        for name, _, _ in asn1crypto.cms.SignedData._fields:
            fields[name]  # the item access is the parse


def assert_same_readings(data: bytes) -> None:
    assert outcome(lambda: cms.is_time_stamped(data)) == outcome(
        lambda: asn1crypto_token(unparsed(data)) is not None
    )
    assert outcome(lambda: cms.signature_timestamp_token(unparsed(data))) == outcome(
        lambda: asn1crypto_token(unparsed(data))
    )
    assert outcome(lambda: cms.signature_value(unparsed(data))) == outcome(
        lambda: asn1crypto_signature(unparsed(data))
    )
    value = der.utf8_string("x")
    assert outcome(lambda: cms.add_unsigned_attribute(unparsed(data), "1.2.3.4", value).dump()) == outcome(
        lambda: cms.add_unsigned_attribute(parsed(data), "1.2.3.4", value).dump()
    )


# -- our own objects --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["basic", "stamped", "token", "client"])
def test_the_walk_reads_our_signatures_as_asn1crypto_does(name: str) -> None:
    data = getattr(samples(), name)
    cms._layout(data)  # the shape the walk takes, so the shortcut is what is compared here
    assert_same_readings(data)
    token = cms.signature_timestamp_token(unparsed(data))
    assert (token == samples().token) if name == "stamped" else token is None


@pytest.mark.parametrize(("value", "first"), [(der.integer(5), True), (der.octet_string(bytes(3000)), False)])
def test_another_unsigned_attribute_before_or_after_the_token(value: bytes, first: bool) -> None:
    # DER orders the SET OF by encoding (X.690 §11.6): the short one sorts first, the long one last.
    data = cms.add_unsigned_attribute(unparsed(samples().stamped), "1.2.3.4", value).dump()
    unsigned = cms._layout(data).unsigned
    assert len(unsigned) == 2 and (samples().token in unsigned[1]) == first
    assert cms.signature_timestamp_token(unparsed(data)) == samples().token
    assert_same_readings(data)


def test_stamp_der_takes_the_walk_and_writes_what_the_asn1crypto_path_writes() -> None:
    ci = unparsed(samples().basic)
    cms.signature_value(ci)
    assert ci.children is None  # the walk left it unparsed, so the splice walks too
    assert cms.add_signature_timestamp(ci, samples().token).dump() == samples().stamped
    by_asn1crypto = cms.add_signature_timestamp(parsed(samples().basic), samples().token)
    assert by_asn1crypto.dump() == samples().stamped


# -- what only asn1crypto reads ---------------------------------------------------------------------


def with_unsigned(attributes: list[bytes]) -> bytes:
    """Our B-B signature with these unsigned attributes spliced in as they are."""
    layout = cms._layout(samples().basic)
    unsigned = der.implicit(1, der.set_of(attributes))
    info = der.sequence(*layout.signer_info, unsigned)
    return cms._content_info(der.sequence(layout.signed_data, der.set_of((info,)))).dump()


def token_attribute(type_contents: bytes, values: list[bytes]) -> bytes:
    return der.sequence(der.tlv(der.OID, type_contents), der.set_of(values))


TOKEN_OID = der.contents(der.oid(TOKEN_TYPE))


@pytest.mark.parametrize(
    "type_contents",
    [
        TOKEN_OID[:-1] + b"\x80" + TOKEN_OID[-1:],  # a padded last subidentifier (X.690 §8.19.2)
        TOKEN_OID + b"\x81",  # an unfinished subidentifier, which asn1crypto's decoding drops
    ],
    ids=["padded", "unfinished"],
)
def test_a_token_type_only_asn1crypto_decodes_as_ours_is_found(type_contents: bytes) -> None:
    data = with_unsigned([token_attribute(type_contents, [samples().token])])
    with pytest.raises(der.DerError):
        cms._time_stamp_token(cms._layout(data))
    assert cms.signature_timestamp_token(unparsed(data)) == samples().token
    assert cms.is_time_stamped(data)
    assert_same_readings(data)


def test_a_token_attribute_without_values_is_passed_over() -> None:
    empty = token_attribute(TOKEN_OID, [])
    other = token_attribute(der.contents(der.oid("1.2.3.4")), [der.integer(1)])
    assert not cms.is_time_stamped(with_unsigned([empty, other]))
    data = with_unsigned([empty, token_attribute(TOKEN_OID, [samples().token])])
    assert cms.signature_timestamp_token(unparsed(data)) == samples().token
    for case in (with_unsigned([empty, other]), data):
        assert_same_readings(case)


def test_indefinite_lengths_and_trailing_octets_go_to_asn1crypto() -> None:
    outer = der.elements(der.contents(samples().stamped))
    ber = b"\x30\x80" + outer[0] + b"\xa0\x80" + der.contents(outer[1]) + b"\x00\x00\x00\x00"
    for data in (ber, samples().stamped + b"\x00\x00", samples().basic + b"trailing"):
        with pytest.raises(der.DerError):
            cms._layout(data)
        assert_same_readings(data)
    assert cms.is_time_stamped(ber)


def test_two_signer_infos_fail_as_before() -> None:
    layout = cms._layout(samples().basic)
    info = der.sequence(*layout.signer_info)
    other = der.sequence(*layout.signer_info[:-1], der.octet_string(b"other"))
    data = cms._content_info(der.sequence(layout.signed_data, der.set_of((info, other)))).dump()
    with pytest.raises(cms.CmsError, match="exactly one SignerInfo"):
        cms.signature_value(unparsed(data))
    with pytest.raises(cms.CmsError, match="exactly one SignerInfo"):
        cms.add_signature_timestamp(unparsed(data), samples().token)
    assert_same_readings(data)


# -- mutations --------------------------------------------------------------------------------------


def header_offsets(data: bytes) -> list[int]:
    """Where each TLV inside `data` starts, so that mutations hit identifiers and lengths."""
    found: list[int] = []
    pending = [(0, len(data))]
    while pending:
        start, end = pending.pop()
        try:
            spans = der.spans(data, start, end)
        except der.DerError:
            continue
        for identifier, at, inner, stop in spans:
            found.append(at)
            if identifier & 0x20:
                pending.append((inner, stop))
    return sorted(found)


@st.composite
def mutations(draw: st.DrawFn, data: bytes) -> bytes:
    out = bytearray(data)
    offsets = header_offsets(data)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["identifier", "length", "byte", "cut"]))
        if kind == "cut":
            at = draw(st.integers(0, len(out)))
            del out[at : at + draw(st.integers(1, 40))]
            continue
        if kind == "byte":
            at = draw(st.integers(0, len(out) - 1))
        else:
            at = draw(st.sampled_from(offsets)) + (kind == "length")
        if at < len(out):
            out[at] = draw(st.integers(0, 255))
    return bytes(out)


@SETTINGS
@given(st.data())
def test_mutated_signatures_get_the_asn1crypto_answer(data: st.DataObject) -> None:
    original = data.draw(st.sampled_from(samples().all()))
    assert_same_readings(data.draw(mutations(original)))


@SETTINGS
@given(st.data())
def test_mutated_token_types_get_the_asn1crypto_answer(data: st.DataObject) -> None:
    """The attribute type octets, lengths kept: where the walk compares OIDs by their octets."""
    stamped = samples().stamped
    at = stamped.index(der.oid(TOKEN_TYPE)) + 2
    octets = data.draw(st.binary(min_size=len(TOKEN_OID), max_size=len(TOKEN_OID)))
    assert_same_readings(stamped[:at] + octets + stamped[at + len(octets) :])


@SETTINGS
@given(st.data())
def test_mutated_tokens_are_refused_as_asn1crypto_refuses_them(data: st.DataObject) -> None:
    token = data.draw(mutations(samples().token))

    def asn1crypto_path() -> bytes:
        asn1crypto_token_check(token)
        stamped = cms.add_unsigned_attribute(unparsed(samples().basic), "signature_time_stamp_token", token)
        return bytes(stamped.dump())

    assert outcome(lambda: cms.add_signature_timestamp(unparsed(samples().basic), token).dump()) == outcome(
        asn1crypto_path
    )


# -- load's parse, once per encoding ----------------------------------------------------------------


def load_as_before_fails(data: bytes) -> bool:
    """Whether cms.load, as it was before parsing piece by piece, refused `data`."""
    try:
        ci = asn1crypto.cms.ContentInfo.load(data, strict=True)
        if ci["content_type"].native != "signed_data":
            return True
        signed = ci["content"]
        signed["version"].native  # noqa: B018
        signed["digest_algorithms"].native  # noqa: B018
        signed["certificates"].copy().native  # noqa: B018
        encap = signed["encap_content_info"]
        encap["content_type"].native  # noqa: B018
        encap["content"].contents  # noqa: B018
        for info in signed["signer_infos"]:
            for name in ("version", "sid", "digest_algorithm", "signature_algorithm", "signature"):
                info[name].native  # noqa: B018
            info["signed_attrs"].copy().native  # noqa: B018
            unsigned = info["unsigned_attrs"]
            if not isinstance(unsigned, asn1crypto.core.Void):
                for attr in unsigned:
                    attr["type"].native  # noqa: B018
                    len(attr["values"])
    except Exception:
        return True
    return False


@SETTINGS
@given(st.data())
def test_load_refuses_what_it_refused_before(data: st.DataObject) -> None:
    original = data.draw(st.sampled_from(samples().all()))
    mutated = data.draw(mutations(original) | st.just(original))
    refused = outcome(lambda: cms.load(mutated))[0] == "error"
    assert refused == load_as_before_fails(mutated)
    if refused:
        with pytest.raises(cms.CmsError):
            cms.load(mutated)


def test_load_parses_each_certificate_once() -> None:
    client = samples().client
    cms.load(client)
    before = cms._parse_in_full_once.cache_info()
    cms.load(client)
    after = cms._parse_in_full_once.cache_info()
    assert after.misses == before.misses
    # digestAlgorithms, two certificates, sid, digest and signature algorithms, signed attributes
    assert after.hits - before.hits >= 6


def test_large_encodings_are_parsed_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    ali = pki().ali
    big = (
        x509.CertificateBuilder()
        .subject_name(ali.cert.subject)
        .issuer_name(ali.cert.issuer)
        .public_key(ali.key.public_key())
        .serial_number(ali.cert.serial_number)
        .not_valid_before(ali.cert.not_valid_before_utc)
        .not_valid_after(ali.cert.not_valid_after_utc)
        .add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.3.4"), der.octet_string(bytes(20_000))),
            critical=False,
        )
        .sign(pki().sub.key, hashes.SHA256())
    )
    data = cms.sign(ali, content=b"x", detached=False, chain=[big]).dump()
    parsed_in_full: list[int] = []
    original = cms._parse_in_full

    def counting(spec: Any, encoding: bytes) -> None:
        parsed_in_full.append(len(encoding))
        original(spec, encoding)

    monkeypatch.setattr(cms, "_parse_in_full", counting)
    cms.load(data)
    cms.load(data)
    assert len(parsed_in_full) == 2 and min(parsed_in_full) > cms._PARSE_MEMO_LIMIT
