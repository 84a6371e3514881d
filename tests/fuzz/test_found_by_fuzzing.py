"""Inputs the harnesses of this folder and fuzz/run.py found, each of which once ended in an exception
of the wrong type (a traceback, SERVERBUG or 451 where the module's own refusal was due)."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from kepmta import pki
from kepmta.evidence.xml import from_xml
from kepmta.imap import cache, fetch, search
from kepmta.imap.condstore import parse_select_params
from kepmta.imap.protocol import Args, BadCommand, SequenceSet, parse_command
from kepmta.imap.search import parse_program
from kepmta.message import entity
from kepmta.message.words import decode_words
from kepmta.smime import cms
from kepmta.smime.sender import CHECKS, verify_sender
from kepmta.smtp.data import SpoolingSMTP

HUGE = "1" * 5000  # past Python's 4300-digit limit for int(str): int() raised ValueError


@pytest.mark.parametrize(
    "command",
    [
        f"a FETCH {HUGE} FLAGS",
        f"a FETCH 1:{HUGE} FLAGS",
        f"a UID SEARCH UID {HUGE}",
        f"a SEARCH {HUGE}:*",
    ],
)
def test_a_huge_number_in_a_sequence_set_is_bad(command: str) -> None:
    # RFC 9051 §9: seq-number is nz-number or "*", and nz-number is at most 4294967295.
    cmd = parse_command(command.encode())
    args = Args(cmd.args)
    if cmd.name == "UID":
        args.next("command")
    with pytest.raises(BadCommand):
        if cmd.name == "FETCH":
            SequenceSet.parse(args.atom("sequence set"))
        else:
            parse_program(args)


@pytest.mark.parametrize("section", [f"BODY[{HUGE}]", f"BODY.PEEK[1.{HUGE}.MIME]", f"BINARY[{HUGE}]"])
def test_a_huge_part_number_is_bad(section: str) -> None:
    # RFC 9051 §9: section-part is nz-number *("." nz-number).
    cmd = parse_command(f"a FETCH 1 {section}".encode())
    with pytest.raises(BadCommand):
        fetch.parse_items(cmd.args[1])


def test_a_huge_uidvalidity_in_qresync_is_bad() -> None:
    # RFC 7162 §3.2.5: uidvalidity is nz-number.
    cmd = parse_command(f"a SELECT INBOX (QRESYNC ({HUGE} 1))".encode())
    args = Args(cmd.args)
    args.next("mailbox")
    with pytest.raises(BadCommand):
        parse_select_params(args)


@pytest.mark.parametrize(
    ("header", "shown"),
    [
        # Codecs that decode with errors="strict" only: read as UTF-8, as an unknown charset is.
        ("=?idna?q?abc?=", "abc"),
        ("=?punycode?q?a-=FF?=", "a-\ufffd"),
        ("=?utf\x00-8?q?abc?=", "abc"),  # a NUL in a codec name is a ValueError
        # Base64 that does not decode (email.header raises HeaderParseError): left as written.
        ("=?utf-8?b?x?=", "=?utf-8?b?x?="),
        ("a =?utf-8?q?=C3=BC?= b", "a ü b"),
    ],
)
def test_encoded_words_in_odd_charsets_are_read(header: str, shown: str) -> None:
    assert decode_words(header) == shown


@pytest.mark.parametrize(
    "message",
    [
        b"Subject: =?utf-8?b?x?=\r\nFrom: =?idna?q?a?= <a@b.test>\r\n\r\nbody\r\n",
        b"Content-Type: text/plain; charset=idna\r\n\r\nbody\r\n",
        b"Content-Type: text/plain; charset=punycode\r\n\r\nbody-\xff\r\n",
        b'Content-Type: text/plain; charset="utf\x00-8"\r\n\r\nbody\r\n',
    ],
)
def test_a_message_with_odd_charsets_is_summarised_and_searchable(message: bytes) -> None:
    """Every SEARCH, SORT and FETCH of the folder reads these summaries: one such message, which
    anyone can send, answered SERVERBUG to every one of them."""
    summary = cache.summarize(message, len(message), whole=True)
    assert summary.header_end == message.index(b"\r\n\r\n") + 4
    assert "body" in "".join(search.searchable_text(message, entity.parse(message), include_header=True))


def test_evidence_xml_in_an_unknown_encoding_is_a_value_error() -> None:
    xml = b'<?xml version="1.0" encoding="UTF-3"?><tns:Evidence xmlns:tns="x"/>'
    with pytest.raises(ValueError, match="not well-formed"):
        from_xml(xml)


async def test_an_unterminated_address_literal_is_a_malformed_address(tmp_path: Path) -> None:
    """`MAIL FROM:<a@[127.0.0.1` made the standard library's address parser raise AttributeError
    inside aiosmtpd: a 451 "try again later" and a traceback in the log, from any client of the
    relay port. RFC 5321 §4.1.2 has no address there: 553 5.1.3, as for any malformed address."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SpoolingSMTP(object(), loop=loop), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await reader.readline()
        replies = []
        for line in (b"EHLO client.test", b"MAIL FROM:<a@[127.0.0.1", b"MAIL FROM:a@[\x01", b"NOOP"):
            writer.write(line + b"\r\n")
            while True:
                reply = await asyncio.wait_for(reader.readline(), 10)
                if reply[3:4] != b"-":
                    break
            replies.append(reply)
        assert replies[1:] == [
            b"553 5.1.3 Error: malformed address\r\n",
            b"553 5.1.3 Error: malformed address\r\n",
            b"250 OK\r\n",
        ]
    finally:
        writer.close()
        server.close()
        await server.wait_closed()


P256 = bytes.fromhex("06082a8648ce3d030107")  # OID 1.2.840.10045.3.1.7
UNKNOWN_CURVE = bytes.fromhex("06081a8648ce3d030107")  # one arc changed: 0.26.840.10045.3.1.7


def _unknown_curve(cert: x509.Certificate) -> x509.Certificate:
    """`cert` with its P-256 key said to be on a curve cryptography does not know."""
    der = cert.public_bytes(Encoding.DER)
    assert der.count(P256) == 1
    return x509.load_der_x509_certificate(der.replace(P256, UNKNOWN_CURVE))


def _signed_message(path: Path, signer: pki.KeyPair, chain: tuple[x509.Certificate, ...]) -> Path:
    content = b"Content-Type: text/plain\r\n\r\nMerhaba.\r\n"
    signature = cms.sign(signer, content=content, detached=True, chain=chain).dump()
    encoded = base64.encodebytes(signature).replace(b"\n", b"\r\n")
    path.write_bytes(
        b"From: ali.veli@kep.test\r\nContent-Type: multipart/signed;"
        b' protocol="application/pkcs7-signature"; micalg=sha-256; boundary="b"\r\n\r\n--b\r\n'
        + content
        + b"\r\n--b\r\nContent-Type: application/pkcs7-signature\r\nContent-Transfer-Encoding: base64"
        b"\r\n\r\n" + encoded + b"\r\n--b--\r\n"
    )
    return path


def test_certificates_with_an_unknown_curve_fail_their_checks(tmp_path: Path) -> None:
    """Certificates naming a curve cryptography does not know raised UnsupportedAlgorithm out of
    verify_sender: the submission was answered 451 "try again later" for ever, where a verdict and
    a refusal with its evidence were due; a peer's REM message so signed crashed the REM reader."""
    ca = pki.issue("Fuzz CA", pki.Role.CA)
    person = pki.issue("Ali Veli", pki.Role.SMIME, ca, email="ali.veli@kep.test")
    now = dt.datetime.now(dt.UTC)

    # The signer's own key: integrity fails, and says why.
    odd_signer = pki.KeyPair(_unknown_curve(person.cert), person.key)
    path = _signed_message(tmp_path / "a.eml", odd_signer, (ca.cert,))
    verdict = verify_sender(path, "ali.veli@kep.test", [ca.cert], now)
    assert tuple(c.name for c in verdict.checks) == CHECKS
    assert not verdict.checks[0].ok and "key is not supported" in verdict.checks[0].detail

    # A certificate bearing the CA's name beside the signer's: trusting another CA, the chain is
    # looked for among the signature's own certificates, and this one issued nothing.
    path = _signed_message(tmp_path / "b.eml", person, (_unknown_curve(ca.cert),))
    trusted = pki.issue("Trusted CA", pki.Role.CA).cert
    verdict = verify_sender(path, "ali.veli@kep.test", [trusted], now)
    integrity, chain = verdict.checks[:2]
    assert integrity.ok, integrity
    assert not chain.ok and "is not a trusted qualified CA" in chain.detail, chain

    # Trusting the CA with its CRL, the same certificate is among the CRL's possible signers.
    verdict = verify_sender(path, "ali.veli@kep.test", [ca.cert], now, crls=[pki.issue_crl(ca)])
    checks = {c.name: c for c in verdict.checks}
    assert checks["integrity"].ok and checks["chain"].ok, verdict
    assert not checks["validity"].ok and "could not be read" in checks["validity"].detail
