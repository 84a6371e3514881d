"""Hostile messages and evidence, property by property: MIME trees and RFC 5322 header blocks as IMAP
and submission read them, S/MIME signatures with bytes changed, CMS and DER, evidence XML and
bundles. Each ends in a result or the module's own refusal (HeaderError, SenderVerdict and
PolicyError, CmsError, DerError, ValueError, a failed BundleReport), never another exception.

Work is bounded by input size, never by a clock (deadline=None): these run on shared machines."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kepmta import pki
from kepmta.evidence import bundle
from kepmta.evidence.model import Event, Evidence, Party, Reason
from kepmta.evidence.xml import from_xml, to_xml
from kepmta.headers import HEADER_LIMIT, HeaderError, read_headers
from kepmta.imap import binary, cache, fetch, search
from kepmta.message import entity
from kepmta.policy.refusal import PolicyError
from kepmta.policy.signature import check_signature
from kepmta.smime import cms, der
from kepmta.smime.sender import CHECKS, verify_sender

# --- MIME trees -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tree:
    """A MIME entity as sent, and what it is made of: a leaf's body, or its parts."""

    wire: bytes
    body: bytes | None = None
    parts: tuple[Tree, ...] = ()
    encapsulated: Tree | None = None


# Charsets and encodings a sender may name, those Python's codecs choke on included.
content_types = st.sampled_from(
    [
        b"text/plain; charset=utf-8",
        b"text/plain; charset=idna",
        b"text/plain; charset=punycode",
        b'text/plain; charset="utf\x00-8"',
        b"text/plain; charset=x-unknown",
        b"text/html; charset=base64",
        b"application/octet-stream",
        b"image/png; name*0=a; name*1=b",
    ]
)
encodings = st.sampled_from([b"", b"7bit", b"base64", b"quoted-printable", b"x-uuencode", b"BASE64 "])
subjects = st.sampled_from(
    [b"plain", b"=?utf-8?b?x?=", b"=?idna?q?a?=", b"=?utf-8?q?=C3=BC?=", b"=?x\x00?q?a?=", b"(", b"\xff\xfe"]
)
bodies = st.binary(max_size=40).map(lambda b: b.replace(b"-", b"_"))


def _leaf(ctype: bytes, cte: bytes, subject: bytes, body: bytes) -> Tree:
    head = b"Content-Type: " + ctype + b"\r\nSubject: " + subject + b"\r\n"
    if cte:
        head += b"Content-Transfer-Encoding: " + cte + b"\r\n"
    return Tree(head + b"\r\n" + body, body=body)


def _multipart(parts: list[Tree]) -> Tree:
    # A boundary of its own level: no body holds "-", so no body holds a delimiter line.
    boundary = b"b-%d" % max((_depth(p) for p in parts), default=0)
    wire = b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n\r\npreamble\r\n'
    for part in parts:
        wire += b"--" + boundary + b"\r\n" + part.wire + b"\r\n"
    return Tree(wire + b"--" + boundary + b"--\r\nepilogue\r\n", parts=tuple(parts))


def _rfc822(inner: Tree) -> Tree:
    return Tree(b"Content-Type: message/rfc822\r\n\r\n" + inner.wire, encapsulated=inner)


def _depth(tree: Tree) -> int:
    below = [*tree.parts, *([tree.encapsulated] if tree.encapsulated else [])]
    return 1 + max((_depth(t) for t in below), default=0)


trees = st.recursive(
    st.builds(_leaf, content_types, encodings, subjects, bodies),
    lambda inner: st.one_of(st.lists(inner, min_size=1, max_size=3).map(_multipart), inner.map(_rfc822)),
    max_leaves=10,
)


def _same_shape(data: bytes, part: entity.Part, tree: Tree) -> None:
    if tree.body is not None:
        assert data[part.body_start : part.end] == tree.body
    elif tree.encapsulated is not None:
        assert part.message is not None
        _same_shape(data, part.message, tree.encapsulated)
    else:
        assert len(part.children) == len(tree.parts)
        for child, sub in zip(part.children, tree.parts, strict=True):
            _same_shape(data, child, sub)


def _walk(part: entity.Part) -> list[entity.Part]:
    inner = [part.message] if part.message is not None else []
    return [part, *(p for c in (*part.children, *inner) for p in _walk(c))]


@settings(max_examples=300, deadline=None)
@given(trees)
def test_mime_trees_are_found_part_by_part(tree: Tree) -> None:
    data = tree.wire
    top = entity.parse(data)
    _same_shape(data, top, tree)
    summary = cache.summarize(data, len(data), whole=True)
    assert summary.bodystructure is not None and summary.bodystructure.count(b"(") >= _depth(tree)
    for part in _walk(top):
        assert top.start <= part.start <= part.body_start <= part.end <= len(data)
        search.searchable_text(data, part, include_header=True)
        try:
            binary.decoded(data, part)
        except binary.UnknownCte:
            assert tree.wire.count(b"x-uuencode")


@settings(max_examples=300, deadline=None)
@given(trees, st.lists(st.tuples(st.integers(0, 10**6), st.binary(min_size=1, max_size=3)), max_size=6))
def test_damaged_mime_is_still_read(tree: Tree, damage: list[tuple[int, bytes]]) -> None:
    data = bytearray(tree.wire)
    for at, octets in damage:
        pos = at % (len(data) + 1)
        data[pos : pos + len(octets)] = octets
    message = bytes(data)
    top = entity.parse(message)
    cache.summarize(message, len(message), whole=True)
    for part in _walk(top):
        assert part.start <= part.body_start <= part.end <= len(message)
        fetch.body_structure(message, part, extended=True)
        search.searchable_text(message, part, include_header=True)


@pytest.mark.parametrize("depth", [entity.MAX_DEPTH, entity.MAX_DEPTH + 1, 999])
def test_a_message_nested_999_deep_is_read_to_the_bound(depth: int) -> None:
    """A BODYSTRUCTURE 999 levels deep: each level is parsed once, and nesting past MAX_DEPTH is
    opaque data, not recursion."""
    data = b"Content-Type: text/plain\r\n\r\ninnermost"
    for level in range(depth):
        boundary = b"n%04d" % level
        data = (
            (b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n\r\n--' + boundary + b"\r\n")
            + data
            + b"\r\n--"
            + boundary
            + b"--\r\n"
        )
    top = entity.parse(data)
    levels = 0
    part = top
    while part.children:
        (part,) = part.children
        levels += 1
    assert levels == min(depth, entity.MAX_DEPTH)
    structure = fetch.body_structure(data, top, extended=True)
    # Past the bound the innermost multipart is one opaque part: the answer stops growing too.
    assert structure.count(b'"MIXED"') == min(depth, entity.MAX_DEPTH + 1)


# --- RFC 5322 header blocks (kepmta.headers, as submission reads them) -----------------------------

header_lines = st.lists(
    st.one_of(
        st.sampled_from(
            [b"Subject: ", b"subject:", b"Message-ID: <", b"From: ", b"To: ", b"Bcc:", b" ", b"\t"]
        ),
        st.binary(max_size=12),
        st.sampled_from([b"\r\n", b"\n", b"\r", b"=?utf-8?b?", b"=?idna?q?", b"?=", b"\x1b[31m", b"\x00"]),
    ),
    max_size=30,
).map(b"".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header_lines, st.sampled_from([b"\r\n\r\nbody", b"", b"\r\n"]))
@example(b"Subject: =?utf-8?b?x?=", b"\r\n\r\n")
@example(b"", b"\r\nbody")
def test_header_blocks_are_read_or_refused(tmp_path: Path, head: bytes, tail: bytes) -> None:
    path = tmp_path / "message.eml"
    data = head + tail
    path.write_bytes(data)
    try:
        headers = read_headers(path)
    except HeaderError:
        # RFC 5322 §2.1: no empty line ends the header block.
        assert not data.startswith(b"\r\n") and b"\r\n\r\n" not in data[:HEADER_LIMIT]
        return
    assert headers.header_end <= len(data)
    # Evidence and replies carry the subject: no control characters, no line breaks.
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in headers.subject)
    assert headers.message_id is None or not any(c in headers.message_id for c in "<> \r\n")


# --- S/MIME ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Signed:
    ca: pki.KeyPair
    message: bytes
    content: tuple[int, int]  # the signed first part's octets in `message`


@pytest.fixture(scope="module")
def signed() -> Signed:
    ca = pki.issue("Fuzz CA", pki.Role.CA)
    person = pki.issue("Ali Veli", pki.Role.SMIME, ca, email="ali.veli@kep.test")
    content = b"Content-Type: text/plain; charset=utf-8\r\n\r\nMerhaba d\xc3\xbcnya.\r\n"
    signature = cms.sign(person, content=content, detached=True, chain=(ca.cert,)).dump()
    head = (
        b"From: ali.veli@kep.test\r\nTo: ayse.kaya@kep.test\r\nSubject: imzali\r\n"
        b'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256;'
        b' boundary="sig"\r\n\r\n--sig\r\n'
    )
    message = (
        head
        + content
        + b"\r\n--sig\r\nContent-Type: application/pkcs7-signature\r\n\r\n"
        + signature
        + b"\r\n--sig--\r\n"
    )
    return Signed(ca, message, (len(head), len(head) + len(content)))


def test_the_signed_message_itself_passes(tmp_path: Path, signed: Signed) -> None:
    path = tmp_path / "signed.eml"
    path.write_bytes(signed.message)
    verdict = verify_sender(path, "ali.veli@kep.test", [signed.ca.cert], dt.datetime.now(dt.UTC))
    assert verdict.ok, verdict.failed
    check_signature(verdict)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=4))
def test_any_changed_byte_ends_in_a_verdict(
    tmp_path: Path, signed: Signed, flips: list[tuple[int, int]]
) -> None:
    """Bytes of the signed message changed (XORed with a non-zero value): a verdict every time, its
    refusal an SMTP 5xx, and never a pass when a byte of the signed part changed."""
    data = bytearray(signed.message)
    for at, mask in flips:
        data[at % len(data)] ^= mask
    start, end = signed.content
    hit_content = data[start:end] != signed.message[start:end]
    path = tmp_path / "damaged.eml"
    path.write_bytes(bytes(data))
    verdict = verify_sender(path, "ali.veli@kep.test", [signed.ca.cert], dt.datetime.now(dt.UTC))
    assert tuple(c.name for c in verdict.checks) == CHECKS
    if hit_content:
        assert not verdict.checks[0].ok
    try:
        check_signature(verdict)
    except PolicyError as e:
        assert e.refusal.smtp_code == 554 and not verdict.ok
    else:
        assert verdict.ok


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.lists(
            st.sampled_from(
                [b"\x30\x80", b"\x30\x82\xff\xff", b"\x00\x00", b"\x06\x01\x2a", b"\x04\x00", b"\xa0\x81"]
            ),
            max_size=40,
        ).map(b"".join),
    )
)
@example(b"\x30\x80" * 5000)
def test_der_and_cms_end_in_their_own_errors(data: bytes) -> None:
    with contextlib.suppress(der.DerError):
        der.spans(data)
    with contextlib.suppress(der.DerError):
        der.elements(data)
    with pytest.raises(cms.CmsError):
        cms.load(data)


# --- evidence XML and bundles ---------------------------------------------------------------------


def _evidence() -> Evidence:
    return Evidence(
        evidence_id="ev-1@kep.test",
        event=Event.CONTENT_CONSIGNMENT,
        reason=Reason.RD01,
        details="İleti bırakıldı <tamam> & kaydedildi.",
        event_time=dt.datetime(2024, 5, 2, 10, 15, 30, tzinfo=dt.UTC),
        issuer_name="Fuzz KEP A.Ş.",
        issuer_domain="kep.test",
        policy_ids=("urn:oid:1.2.3",),
        sender=Party("ali.veli@kep.test", "Ali Veli"),
        sender_auth_time=None,
        sender_auth_method=None,
        recipients=(Party("ayse.kaya@kep.test"),),
        refers_to_recipient=1,
        message_id="m1@kep.test",
        ua_message_id=None,
        submission_time=dt.datetime(2024, 5, 2, 10, 15, tzinfo=dt.UTC),
        digest_sha256=bytes(32),
        subject="Sözleşme",
    )


XML = to_xml(_evidence())


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10**6), st.binary(max_size=4), st.integers(0, 4)), max_size=4))
@example([(0, b'<?xml version="1.0" encoding="UTF-3"?>', 0)])
@example([(0, b'<!DOCTYPE x [<!ENTITY a "aaaa">]>', 0)])
def test_evidence_xml_is_read_or_a_value_error(edits: list[tuple[int, bytes, int]]) -> None:
    data = bytearray(XML)
    for at, octets, cut in edits:
        pos = at % (len(data) + 1)
        data[pos : pos + cut] = octets
    try:
        parsed = from_xml(bytes(data))
    except ValueError:
        return
    assert isinstance(parsed, Evidence)


def test_evidence_xml_reads_back_and_refuses_entities() -> None:
    assert from_xml(XML) == _evidence()
    laughs = b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;">]><l>&b;</l>'
    with pytest.raises(ValueError, match="DTD"):
        from_xml(laughs)
    with pytest.raises(ValueError):
        from_xml(b"<a>" * 100_000 + b"</a>" * 100_000)


def _zip(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, body in members.items():
            zf.writestr(name, body)
    return out.getvalue()


BUNDLE = _zip({bundle.MANIFEST: b'{"format": "%s", "members": []}' % bundle.FORMAT.encode(), "a.xml": XML})


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 10**6), st.binary(min_size=1, max_size=4)), max_size=4),
    st.sampled_from([{}, {"../escape": b"x"}, {"/abs": b"x"}, {bundle.MANIFEST: b"[" * 100_000}]),
)
def test_bundles_end_in_a_failed_report(edits: list[tuple[int, bytes]], extra: dict[str, bytes]) -> None:
    data = bytearray(_zip({bundle.MANIFEST: b"{}", "a.xml": XML, **extra}) if extra else BUNDLE)
    for at, octets in edits:
        pos = at % (len(data) + 1)
        data[pos : pos + len(octets)] = octets
    report = bundle.verify(bytes(data), [], [])
    assert not report.ok
    assert report.checks and all(c.detail for c in report.checks)
