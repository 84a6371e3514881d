"""write_dispatch: shape, provider signature, digest, the attached original, streaming."""

from __future__ import annotations

import base64
import email
import email.policy
import functools
import hashlib
import os
import re
import secrets
import subprocess
import sys
from email.header import decode_header, make_header
from email.message import EmailMessage
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st
from rem_fixtures import (
    OPENSSL,
    OTHER,
    SENDER,
    openssl_smime_verify,
    pki,
    sign_cryptography,
)

from kepmta.pki import utcnow
from kepmta.rem import mime
from kepmta.rem.digest import original_digest
from kepmta.rem.dispatch import DispatchInfo, _EncodingProbe, write_dispatch
from kepmta.smime import cms
from kepmta.smime.sender import verify_sender

needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl command not installed")

PROVIDER_ID = "20261128T103000Z.abc123@kep.test"
UA_ID = "<client.1@mail.example>"
SUBJECT = "Sözleşme – ağır işçi güvenliği ÇŞİĞÜÖ"
EVIDENCE_XML = (
    '<tns:Evidence xmlns:tns="http://uri.etsi.org/19522/v1#"><s>Sözleşme</s></tns:Evidence>'.encode()
)
INFO = DispatchInfo(
    provider_message_id=PROVIDER_ID,
    sender=SENDER,
    to=(OTHER,),
    cc=("mehmet.oz@kep.test",),
    subject=SUBJECT,
    ua_message_id=UA_ID,
    evidence_id="ev.20261128T103000Z.1@kep.test",
    event_uri="http://uri.etsi.org/19522/Event/SubmissionAcceptance",
    reason_uri="http://uri.etsi.org/19522/EventReason/MessageAccepted",
    policy_ids=("urn:oid:2.16.792.1.2.1.1.5.7.50.1", "http://kep.test/policy/2"),
    service_address="rem-service@kep.test",
)


@functools.cache
def evidence_der() -> bytes:
    der: bytes = cms.sign(pki().provider, content=EVIDENCE_XML, detached=False).dump()
    return der


def dispatch(tmp_path: Path, original: bytes, info: DispatchInfo = INFO) -> tuple[bytes, str]:
    source = tmp_path / "original.eml"
    source.write_bytes(original)
    with (tmp_path / "dispatch.eml").open("wb") as out:
        digest = write_dispatch(
            out,
            source,
            info,
            EVIDENCE_XML,
            evidence_der(),
            "SubmissionAcceptance",
            pki().provider,
            [pki().root.cert],
        )
    return (tmp_path / "dispatch.eml").read_bytes(), digest


def attached_original(raw: bytes) -> bytes:
    """The original part's body, found without kepmta code: boundary from the header, then split."""
    mixed = re.search(rb'multipart/mixed; boundary="([^"]+)"', raw)
    assert mixed is not None
    section = raw.index(b"REM-Section-Type: rem_message/original\r\n")
    body = raw.index(b"\r\n\r\n", section) + 4
    end = raw.index(b"\r\n--" + mixed.group(1) + b"\r\n", body)
    return raw[body:end]


def expected_attached(original: bytes) -> bytes:
    return original.replace(
        f"Message-ID: {UA_ID}\r\n".encode(), f"Message-ID: <{PROVIDER_ID}>\r\n".encode(), 1
    )


@pytest.fixture
def signed_original() -> bytes:
    return sign_cryptography(pki().ali)


@needs_openssl
def test_dispatch_verifies_with_openssl(tmp_path: Path, signed_original: bytes) -> None:
    raw, _ = dispatch(tmp_path, signed_original)
    content = openssl_smime_verify(tmp_path, raw, pki().root.cert)
    assert content.startswith(b"Content-Type: multipart/mixed;")
    assert expected_attached(signed_original) in content


def test_digest_value_is_sha256_of_the_attached_original(tmp_path: Path, signed_original: bytes) -> None:
    raw, digest = dispatch(tmp_path, signed_original)
    attached = attached_original(raw)
    independent = base64.b64encode(hashlib.sha256(attached).digest()).decode()
    assert digest == independent
    assert f"\r\nREM-DigestValue: {independent}\r\n".encode() in raw
    assert original_digest(raw) == independent


def test_original_is_attached_unchanged_but_for_its_message_id(
    tmp_path: Path, signed_original: bytes
) -> None:
    raw, _ = dispatch(tmp_path, signed_original)
    attached = attached_original(raw)
    assert attached == expected_attached(signed_original)
    assert attached != signed_original
    assert attached.count(b"Message-ID:") == 1
    assert f"\r\nREM-UAMessageIdentifier: {UA_ID}\r\n".encode() in raw
    # The sender's signature covers the body part only, so it still verifies in the dispatch.
    (tmp_path / "attached.eml").write_bytes(attached)
    assert verify_sender(tmp_path / "attached.eml", SENDER, [pki().root.cert], utcnow()).ok


def test_original_carries_a_file_name_outside_the_digest(tmp_path: Path, signed_original: bytes) -> None:
    raw, digest = dispatch(tmp_path, signed_original)
    section = raw.index(b"REM-Section-Type: rem_message/original\r\n")
    head = raw[raw.rindex(b"\r\n--", 0, section) : section]
    # the REM sample dispatch's name, with .eml so that a saved copy opens as a message
    assert b'\r\nContent-Type: message/rfc822; name="AttachedMimeMessage.eml"\r\n' in head
    assert b'\r\nContent-Disposition: attachment; filename="AttachedMimeMessage.eml"\r\n' in head
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    _, original, _, _ = next(message.iter_parts()).iter_parts()
    assert original.get_content_type() == "message/rfc822"
    assert original.get_content_disposition() == "attachment"
    assert original.get_filename() == "AttachedMimeMessage.eml"
    # The name is in the part's header, not its body: the digest is that of the original alone,
    # computed here from what was submitted, not read back from the dispatch.
    submitted = base64.b64encode(hashlib.sha256(expected_attached(signed_original)).digest()).decode()
    assert digest == submitted == original_digest(raw)
    assert f"\r\nREM-DigestValue: {submitted}\r\n".encode() in raw


def test_email_package_sees_the_rem_tree(tmp_path: Path, signed_original: bytes) -> None:
    raw, digest = dispatch(tmp_path, signed_original)
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert [part.get_content_type() for part in message.walk()][:10] == [
        "multipart/signed",
        "multipart/mixed",
        "multipart/alternative",
        "text/plain",
        "text/html",
        "message/rfc822",
        # walk() descends into the attached original: its own multipart/signed tree
        "multipart/signed",
        "text/plain",
        "application/x-pkcs7-signature",
        "application/xml",
    ]
    assert [p.get_content_type() for p in message.iter_parts()] == [
        "multipart/mixed",
        "application/pkcs7-signature",
    ]
    mixed = next(message.iter_parts())
    intro, original, xml, p7m = mixed.iter_parts()
    assert intro["REM-Section-Type"] == "rem_message/introduction"
    assert original["REM-Section-Type"] == "rem_message/original"
    assert original["Content-Transfer-Encoding"] == "8bit"
    assert xml["REM-Section-Type"] == "rem_message/xml_evidence"
    assert xml.get_filename() == "SubmissionAcceptance.xml"
    assert xml.get_payload(decode=True) == EVIDENCE_XML
    assert p7m.get_content_type() == "application/pkcs7-mime"
    assert p7m.get_param("smime-type") == "signed-data"
    assert p7m.get_filename() == "SubmissionAcceptance.p7m"
    assert p7m.get_content_disposition() == "attachment"
    assert p7m.get_payload(decode=True) == evidence_der()

    assert message["From"].addresses[0].display_name == f"{SENDER} adına"
    assert message["From"].addresses[0].addr_spec == "rem-service@kep.test"
    assert str(message["Reply-To"]) == SENDER
    assert str(message["To"]) == OTHER
    assert str(message["Cc"]) == "mehmet.oz@kep.test"
    assert str(message["Subject"]) == f"REM Dispatch: {SUBJECT}"
    assert message["Message-ID"] == f"<{PROVIDER_ID}>"
    assert message["Date"].datetime is not None
    assert message["REM-MetadataVersion"] == "EN31953203V010201"
    assert message.get_all("REM-ApplicablePolicy") == list(INFO.policy_ids)
    assert message["REM-MessageType"] == "http://uri.etsi.org/19522/v1#/ERDMessageType/dispatch"
    assert message["REM-DigestAlgorithm"] == "http://www.w3.org/2001/04/xmlenc#sha256"
    assert message["REM-DigestValue"] == digest
    assert message["REM-UAMessageIdentifier"] == UA_ID
    assert message["REM-EventIdentifier"] == INFO.event_uri
    assert message["REM-Evidence-ID"] == INFO.evidence_id
    assert message["REM-ReasonIdentifier"] == INFO.reason_uri
    assert message["REM-MD08"] == SENDER
    assert message["X-TR-REM-iletiTip"] == "standart"
    assert message["X-TR-REM-iletiID"] == PROVIDER_ID
    assert message.get_param("micalg") == "sha-256"
    assert message.get_param("protocol") == "application/pkcs7-signature"


def test_introduction_names_sender_subject_time_and_evidence(tmp_path: Path, signed_original: bytes) -> None:
    when = utcnow().replace(year=2026, month=11, day=28, hour=10, minute=30, second=0, microsecond=0)
    info = DispatchInfo(**{**INFO.__dict__, "submission_time": when})
    raw, _ = dispatch(tmp_path, signed_original, info)
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    plain = message.get_body(preferencelist=("plain",))
    rich = message.get_body(preferencelist=("html",))
    assert plain is not None and rich is not None
    text, page = plain.get_content(), rich.get_content()
    for expected in (SENDER, SUBJECT, "28.11.2026 10:30:00 UTC", "2026-11-28 10:30:00 UTC"):
        assert expected in text and expected in page
    assert "kanıtı ekteki SubmissionAcceptance.p7m" in text
    assert "evidence of its submission is attached as SubmissionAcceptance.p7m" in text
    assert '<div lang="tr">' in page and '<div lang="en">' in page
    assert message["Date"].datetime == when


def test_non_ascii_subject_round_trips_through_rfc2047(tmp_path: Path, signed_original: bytes) -> None:
    raw, _ = dispatch(tmp_path, signed_original)
    head = raw[: raw.index(b"\r\n\r\n")].decode("ascii")
    folded = re.search(r"\r\nSubject: (.*?)\r\n(?! )", head, re.S)
    assert folded is not None
    assert "=?utf-8?" in folded.group(1)
    assert str(make_header(decode_header(folded.group(1).replace("\r\n", "")))) == f"REM Dispatch: {SUBJECT}"
    assert all(len(line) <= 78 for line in head.split("\r\n") if not line.startswith("Content-Type"))


def test_every_line_ends_in_crlf(tmp_path: Path, signed_original: bytes) -> None:
    raw, _ = dispatch(tmp_path, signed_original)
    assert raw.count(b"\n") == raw.count(b"\r\n")
    assert raw.count(b"\r") == raw.count(b"\r\n")
    assert raw.endswith(b"--\r\n")


def test_original_without_final_crlf_gets_one_inside_the_digest(tmp_path: Path) -> None:
    original = f"From: {SENDER}\r\nMessage-ID: {UA_ID}\r\nSubject: x\r\n\r\nno final line break".encode()
    raw, digest = dispatch(tmp_path, original)
    attached = attached_original(raw)
    assert attached == expected_attached(original) + b"\r\n"
    assert digest == base64.b64encode(hashlib.sha256(attached).digest()).decode()
    assert original_digest(raw) == digest


def test_folded_message_id_is_replaced_whole(tmp_path: Path) -> None:
    original = (
        f"From: {SENDER}\r\nmessage-id:\r\n {UA_ID}\r\nSubject: x\r\n\r\nbody\r\n"
        "Message-ID: <in-the-body-stays@example>\r\n"
    ).encode()
    raw, _ = dispatch(tmp_path, original)
    attached = attached_original(raw)
    assert (
        attached
        == (
            f"From: {SENDER}\r\nMessage-ID: <{PROVIDER_ID}>\r\nSubject: x\r\n\r\nbody\r\n"
            "Message-ID: <in-the-body-stays@example>\r\n"
        ).encode()
    )


def test_original_without_message_id_gets_the_provider_id(tmp_path: Path) -> None:
    original = f"From: {SENDER}\r\nSubject: x\r\n\r\nbody\r\n".encode()
    raw, _ = dispatch(tmp_path, original, DispatchInfo(**{**INFO.__dict__, "ua_message_id": None}))
    assert attached_original(raw) == (
        f"From: {SENDER}\r\nSubject: x\r\nMessage-ID: <{PROVIDER_ID}>\r\n\r\nbody\r\n".encode()
    )
    assert b"REM-UAMessageIdentifier" not in raw


@pytest.mark.parametrize(
    ("body", "encoding"),
    [
        (b"plain ascii\r\n", "7bit"),
        ("Türkçe metin\r\n".encode(), "8bit"),
        (b"x" * 999 + b"\r\n", "binary"),
        (b"bare\nline feed\r\n", "binary"),
        (b"nul \x00 byte\r\n", "binary"),
    ],
)
def test_transfer_encoding_fits_the_original(tmp_path: Path, body: bytes, encoding: str) -> None:
    original = f"From: {SENDER}\r\nMessage-ID: {UA_ID}\r\n\r\n".encode() + body
    raw, _ = dispatch(tmp_path, original)
    assert (
        f'rfc822; name="AttachedMimeMessage.eml"\r\nContent-Transfer-Encoding: {encoding}\r\n'.encode() in raw
    )
    assert attached_original(raw) == expected_attached(original)
    assert b"Content-Transfer-Encoding: base64\r\nREM-Section-Type: rem_message/original" not in raw


def line_by_line_encoding(data: bytes) -> str:
    """RFC 2045 §2.7-§2.9 read literally: CRLF lines of at most 998 octets, no NUL."""
    lines = data.split(b"\r\n")
    if b"\0" in data or lines[-1] or any(b"\r" in line or b"\n" in line or len(line) > 998 for line in lines):
        return "binary"
    return "7bit" if data.isascii() else "8bit"


lines_of_every_kind = st.lists(
    st.one_of(
        st.binary(max_size=30),
        st.sampled_from([b"x" * 998, b"x" * 999, "ş".encode() * 499, b"\r" * 3, b"a\nb"]),
    ),
    max_size=12,
).map(lambda lines: b"".join(line + b"\r\n" for line in lines))
originals = st.tuples(lines_of_every_kind, st.sampled_from([b"", b"no final break", b"\r"])).map(b"".join)


@given(originals, st.data())
def test_encoding_probe_agrees_with_a_line_by_line_reading(original: bytes, data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(original)), max_size=4)))
    probe = _EncodingProbe()
    for start, end in zip([0, *cuts], [*cuts, len(original)], strict=True):
        probe.feed(original[start:end])
    assert probe.result() == line_by_line_encoding(original)


def test_boundary_collision_with_the_original_is_avoided(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signed_original: bytes
) -> None:
    tokens = iter(["0" * 32, "1" * 32, "2" * 32, "3" * 32, "4" * 32, "5" * 32])
    monkeypatch.setattr(secrets, "token_hex", lambda _: next(tokens))
    # The original quotes the boundaries the first draws would give.
    trap = b"--=_kep_s_" + b"0" * 32 + b"\r\n--=_kep_m_" + b"2" * 32 + b"\r\n"
    original = signed_original.replace(b"Merhaba", trap + b"Merhaba", 1)
    raw, digest = dispatch(tmp_path, original)
    assert b'boundary="=_kep_s_' + b"1" * 32 + b'"' in raw
    assert b'boundary="=_kep_m_' + b"3" * 32 + b'"' in raw
    assert b'boundary="=_kep_a_' + b"4" * 32 + b'"' in raw
    assert attached_original(raw) == expected_attached(original)
    assert original_digest(raw) == digest
    message = email.message_from_bytes(raw, policy=email.policy.default)
    mixed = next(message.iter_parts())
    assert len(list(mixed.iter_parts())) == 4


def test_new_boundary_retries_until_free() -> None:
    seen: list[bytes] = []

    def collides(candidate: bytes) -> bool:
        seen.append(candidate)
        return len(seen) < 3

    boundary = mime.new_boundary("x", collides)
    assert len(seen) == 3 and boundary.encode() == seen[-1]
    assert re.fullmatch(r"=_kep_x_[0-9a-f]{32}", boundary)


_STREAM_SCRIPT = """
import resource, sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from kepmta.pki import Role, issue
from kepmta.rem.dispatch import DispatchInfo, write_dispatch

big, small, out = map(Path, sys.argv[1:4])
ca = issue("Root", Role.CA)
provider = issue("Provider", Role.EVIDENCE, ca)
info = DispatchInfo("p.1@kep.test", "a@kep.test", ("b@kep.test",), (), "s", "<u@x>", "e@kep.test",
                    "urn:e", "urn:r", ("urn:p",), "rem-service@kep.test")

def run(original):
    with out.open("wb") as f:
        return write_dispatch(f, original, info, b"<x/>", b"0", "SubmissionAcceptance", provider, [ca.cert])

run(small)  # imports and caches settle before the measurement
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
digest = run(big)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) * 1024, digest)
"""


def test_twenty_megabyte_original_is_streamed(tmp_path: Path) -> None:
    size = 20 * (1 << 20)
    head = b"From: a@kep.test\r\nMessage-ID: <u@x>\r\nSubject: s\r\n\r\n"
    block = (b"QmlyIGtheWl0bGkgZWxla3Ryb25payBwb3N0YSBla2kgcGFyw6dhc8Sx" + b"\r\n") * 4096
    expected = hashlib.sha256(head.replace(b"<u@x>", b"<p.1@kep.test>"))
    with (tmp_path / "big.eml").open("wb") as f:
        f.write(head)
        while f.tell() < size:
            f.write(block)
            expected.update(block)
    (tmp_path / "small.eml").write_bytes(head + b"hi\r\n")
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _STREAM_SCRIPT,
            *(str(tmp_path / n) for n in ("big.eml", "small.eml", "out.eml")),
        ],
        capture_output=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    growth, digest = result.stdout.split()
    assert int(growth) < size // 4, f"peak RSS grew by {int(growth) >> 20} MiB for a 20 MiB original"
    assert digest.decode() == base64.b64encode(expected.digest()).decode()
    assert (tmp_path / "out.eml").stat().st_size > size


@needs_openssl
def test_binary_original_signature_verifies_byte_exact(tmp_path: Path) -> None:
    """OpenSSL's MIME reader re-canonicalises line ends, which a binary original (a bare LF) does
    not survive; the signature itself is over the exact bytes, as `cms -verify -binary` shows."""
    assert OPENSSL is not None
    original = f"From: {SENDER}\r\nMessage-ID: {UA_ID}\r\n\r\nbare\nline feed\r\n".encode()
    raw, _ = dispatch(tmp_path, original)
    outer = re.search(
        rb'multipart/signed; protocol="application/pkcs7-signature";\r\n micalg=sha-256; '
        rb'boundary="([^"]+)"',
        raw,
    )
    assert outer is not None
    delimiter = b"\r\n--" + outer.group(1) + b"\r\n"
    first = raw.index(b"--" + outer.group(1) + b"\r\n") + len(outer.group(1)) + 4
    second = raw.index(delimiter, first)
    (tmp_path / "part.bin").write_bytes(raw[first:second])
    signature = raw[raw.index(b"\r\n\r\n", second) + 4 : raw.rindex(b"\r\n--" + outer.group(1) + b"--")]
    (tmp_path / "sig.der").write_bytes(base64.b64decode(b"".join(signature.split())))
    (tmp_path / "ca.pem").write_bytes(pki().root.cert.public_bytes(serialization.Encoding.PEM))
    result = subprocess.run(
        [
            OPENSSL,
            "cms",
            "-verify",
            "-binary",
            "-inform",
            "DER",
            "-in",
            str(tmp_path / "sig.der"),
            "-content",
            str(tmp_path / "part.bin"),
            "-CAfile",
            str(tmp_path / "ca.pem"),
            "-out",
            os.devnull,
        ],
        capture_output=True,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert b"\r\nContent-Transfer-Encoding: binary\r\n" in raw[first:second]
