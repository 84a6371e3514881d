"""original_digest on dispatches we wrote and on dispatches built by hand, independently."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from rem_fixtures import pki, sign_cryptography

from kepmta.rem.digest import original_digest
from kepmta.rem.dispatch import DispatchInfo, write_dispatch
from kepmta.smime import cms

ORIGINAL = (
    b"From: ali.yilmaz@kep.test\r\n"
    b"To: ayse.kaya@kep.test\r\n"
    b"Subject: =?utf-8?q?S=C3=B6zle=C5=9Fme?=\r\n"
    b"Message-ID: <20261128T103000Z.abc123@kep.test>\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n" + "Merhaba,\r\nsözleşme ektedir.\r\n".encode() + b"\r\n"  # ends with an empty line
)


def b64_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def hand_built(original: bytes, *, section: bytes = b"REM-Section-Type: rem_message/original\r\n") -> bytes:
    """A dispatch as another provider might lay it out: preamble, epilogues, padding, a decoy."""
    return (
        b"From: rem-service@peer.example\r\n"
        b"Content-Type: multipart/signed;\r\n"
        b'\tprotocol="application/pkcs7-signature"; micalg=sha-256; boundary=OUTER\r\n'
        b"\r\n"
        b"preamble text\r\n"
        b"--OUTER\r\n"
        b"Content-Type: Multipart/Mixed; BOUNDARY=\"inner 'b'\"\r\n"
        b"\r\n"
        b"--inner 'b'  \r\n"  # transport padding after the boundary (RFC 2046 §5.1.1)
        b"Content-Type: text/plain\r\n"
        b"\r\n"
        b"introduction\r\n"
        b"--inner 'b'\r\n"
        b"Content-Type: message/rfc822\r\n"
        b"\r\n"
        b"Subject: a forwarded decoy, not the REM original\r\n\r\ndecoy\r\n"
        b"\r\n"
        b"--inner 'b'\r\n"
        b"content-type: Message/RFC822\r\n" + section + b"Content-Transfer-Encoding: 8bit\r\n"
        b"\r\n" + original + b"\r\n"
        b"--inner 'b'\r\n"
        b"Content-Type: application/xml\r\n"
        b"\r\n"
        b"<Evidence/>\r\n"
        b"--inner 'b'--\r\n"
        b"inner epilogue\r\n"
        b"--OUTER\r\n"
        b"Content-Type: application/pkcs7-signature\r\n"
        b"\r\n"
        b"AAAA\r\n"
        b"--OUTER--\r\n"
    )


def test_hand_built_dispatch() -> None:
    assert original_digest(hand_built(ORIGINAL)) == b64_sha256(ORIGINAL)


def test_marked_section_is_matched_case_insensitively() -> None:
    marked = hand_built(ORIGINAL, section=b"rem-section-type:  REM_MESSAGE/ORIGINAL \r\n")
    assert original_digest(marked) == b64_sha256(ORIGINAL)


def test_without_section_marker_the_first_rfc822_part_is_taken() -> None:
    decoy = b"Subject: a forwarded decoy, not the REM original\r\n\r\ndecoy\r\n"
    assert original_digest(hand_built(ORIGINAL, section=b"")) == b64_sha256(decoy)


def test_final_crlf_of_the_original_is_included_and_the_delimiters_is_not() -> None:
    digest = original_digest(hand_built(ORIGINAL))
    assert digest != b64_sha256(ORIGINAL[:-2])
    assert digest != b64_sha256(ORIGINAL + b"\r\n")


@pytest.mark.parametrize(
    "dispatch",
    [
        b"Content-Type: text/plain\r\n\r\nnot multipart\r\n",
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n"
        b"x\r\n--b--\r\n",
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: message/rfc822\r\n\r\nx\r\n",
        b"Content-Type: multipart/mixed\r\n\r\n--b\r\nContent-Type: message/rfc822\r\n\r\nx\r\n--b--\r\n",
        b"",
    ],
    ids=["not-multipart", "no-rfc822", "unterminated", "no-boundary", "empty"],
)
def test_no_original_gives_none(dispatch: bytes) -> None:
    assert original_digest(dispatch) is None


def test_agrees_with_write_dispatch(tmp_path: Path) -> None:
    original = sign_cryptography(pki().ali)
    (tmp_path / "original.eml").write_bytes(original)
    info = DispatchInfo(
        "p.1@kep.test",
        "ali.yilmaz@kep.test",
        ("ayse.kaya@kep.test",),
        (),
        "Sözleşme",
        "<client.1@mail.example>",
        "ev.1@kep.test",
        "urn:event",
        "urn:reason",
        ("urn:policy",),
        "rem-service@kep.test",
    )
    evidence = cms.sign(pki().provider, content=b"<Evidence/>", detached=False).dump()
    with (tmp_path / "dispatch.eml").open("wb") as out:
        written = write_dispatch(
            out,
            tmp_path / "original.eml",
            info,
            b"<Evidence/>",
            evidence,
            "SubmissionAcceptance",
            pki().provider,
            [pki().root.cert],
        )
    raw = (tmp_path / "dispatch.eml").read_bytes()
    assert original_digest(raw) == written
    attached = original.replace(b"Message-ID: <client.1@mail.example>", b"Message-ID: <p.1@kep.test>")
    assert written == b64_sha256(attached)
