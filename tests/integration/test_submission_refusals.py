"""Every refusal of the submission path: a precise reply, nothing delivered, and (once the sender is
known) SubmissionRejection evidence that openssl verifies."""

from __future__ import annotations

import base64
import datetime as dt
import smtplib
import socket
import ssl
import time
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kepclient import (
    DevServer,
    folder_messages,
    imap,
    openssl_verify,
    p7m,
    receipts,
    signed_by,
    signed_message,
    smtp,
    smtp_reply,
    wait_for,
)
from kepclient import plain_message as unsigned


def subject() -> str:
    return "red-" + uuid.uuid4().hex[:10]


def person_cert(
    tmp: Path,
    email: str,
    *,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    not_after: dt.datetime | None = None,
) -> tuple[Path, Path]:
    """A personal signing certificate made here with `cryptography`, independently of kepmta."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, email)])
    if issuer is None:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Untrusted CA")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        issuer = (ca, ca_key)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=60))
        .not_valid_after(not_after or now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .sign(issuer[1], hashes.SHA256())
    )
    c, k = tmp / f"{uuid.uuid4().hex}.pem", tmp / f"{uuid.uuid4().hex}.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return c, k


def qualified_ca(srv: DevServer) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    data = Path(srv.info["data"])  # type: ignore[index]
    cert = x509.load_pem_x509_certificate((data / "pki" / "qualified-ca.pem").read_bytes())
    key = serialization.load_pem_private_key((data / "pki" / "qualified-ca.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return cert, key


def submit(srv: DevServer, sender: int, to: list[str], msg: bytes) -> tuple[str, int, str]:
    """(stage, code, text) of the first refusal, or ("done", 250, "") if all was accepted."""
    acct = srv.account(sender)
    with smtp(srv, acct) as s:
        try:
            s.sendmail(acct["address"], to, msg)
        except smtplib.SMTPRecipientsRefused as e:
            code, text = next(iter(e.recipients.values()))
            return "RCPT", code, text.decode()
        except smtplib.SMTPSenderRefused as e:
            return "MAIL", e.smtp_code, e.smtp_error.decode()
        except smtplib.SMTPDataError as e:
            return "DATA", e.smtp_code, e.smtp_error.decode()
    return "done", 250, ""


def assert_rejected_with_evidence(srv: DevServer, subj: str | None, reason: str, tmp: Path) -> None:
    """The recipient got nothing; the sender got SubmissionRejection evidence, verified by openssl,
    whose content names `reason`."""
    ca = srv.info["provider_ca"]  # type: ignore[index]
    a = imap(srv, srv.account(0))

    def matching() -> list[tuple[str, str]]:
        found = []
        for r in receipts(a, subj or "REM SubmissionRejection", "SubmissionRejection"):
            ok, content, printed = openssl_verify(p7m(r, "SubmissionRejection"), ca, tmp)
            if reason in content:
                found.append((content, printed if ok else "not verified"))
        return found

    try:
        found = wait_for(matching)
        assert found, f"no SubmissionRejection evidence naming {reason!r}"
        _content, printed = found[-1]
        assert "timeStampToken" in printed
    finally:
        a.logout()
    if subj:
        b = imap(srv, srv.account(1))
        try:
            assert folder_messages(b, "INBOX", subj) == []
        finally:
            b.logout()


def test_no_auth_before_tls(srv: DevServer) -> None:
    with smtplib.SMTP("127.0.0.1", srv.ports["submission"], timeout=30) as s:
        s.ehlo("client.test")
        assert not s.has_extn("auth")
        code, text = s.docmd("AUTH", "PLAIN AGFsaQBzZWNyZXQ=")
        assert code == 530 and b"STARTTLS" in text
        code, text = s.docmd("MAIL", "FROM:<ali.yilmaz@kep.test>")
        assert code == 530


def test_bad_password_and_unknown_user(srv: DevServer) -> None:
    for user, password in ((srv.account(0)["address"], "wrong"), ("nobody@kep.test", "x")):
        with smtp(srv) as s, pytest.raises(smtplib.SMTPAuthenticationError) as e:
            s.login(user, password)
        assert e.value.smtp_code == 535


def test_mail_before_auth_is_refused(srv: DevServer) -> None:
    with smtp(srv) as s:
        code, _ = s.mail(srv.account(0)["address"])
        assert code == 530


def test_wrong_mail_from(srv: DevServer, tmp_path: Path) -> None:
    with smtp(srv, srv.account(0)) as s:
        code, text_b = s.mail(srv.account(1)["address"])
        assert code == 553 and b"may not send as ayse.kaya@kep.test" in text_b and b"[RA05]" in text_b
    assert_rejected_with_evidence(srv, None, "may not send as ayse.kaya@kep.test", tmp_path)


def test_unknown_local_recipient(srv: DevServer, tmp_path: Path) -> None:
    subj = subject()
    stage, code, text = submit(srv, 0, ["nobody@kep.test"], signed_by(srv, 0, ["nobody@kep.test"], subj))
    assert (stage, code) == ("RCPT", 550) and "nobody@kep.test has no KEP mailbox" in text
    assert_rejected_with_evidence(srv, None, "nobody@kep.test has no KEP mailbox", tmp_path)


def test_non_kep_recipient(srv: DevServer, tmp_path: Path) -> None:
    subj = subject()
    stage, code, text = submit(srv, 0, ["someone@gmail.com"], signed_by(srv, 0, ["someone@gmail.com"], subj))
    assert (stage, code) == ("RCPT", 550) and "someone@gmail.com is not a KEP address" in text
    assert_rejected_with_evidence(srv, None, "someone@gmail.com is not a KEP address", tmp_path)


def test_unsigned_message(srv: DevServer, tmp_path: Path) -> None:
    subj = subject()
    to = [srv.account(1)["address"]]
    stage, code, text = submit(srv, 0, to, unsigned(srv.account(0)["address"], to, subj, "imzasız"))
    assert (stage, code) == ("DATA", 554) and "not S/MIME signed" in text and "[RA05]" in text
    assert_rejected_with_evidence(srv, subj, "not S/MIME signed", tmp_path)


def test_signed_by_untrusted_ca(srv: DevServer, tmp_path: Path) -> None:
    subj = subject()
    ali = srv.account(0)["address"]
    to = [srv.account(1)["address"]]
    cert, key = person_cert(tmp_path, ali)
    stage, code, text = submit(srv, 0, to, signed_message(ali, to, subj, "x", cert, key))
    assert (stage, code) == ("DATA", 554) and "'chain' failed" in text and "[RA04]" in text
    assert_rejected_with_evidence(srv, subj, "chain", tmp_path)


def test_certificate_of_another_person(srv: DevServer, tmp_path: Path) -> None:
    subj = subject()
    ali, ayse = srv.account(0), srv.account(1)
    msg = signed_message(ali["address"], [ayse["address"]], subj, "x", ayse["cert"], ayse["key"])
    stage, code, text = submit(srv, 0, [ayse["address"]], msg)
    assert (stage, code) == ("DATA", 554) and "'identity' failed" in text and "[RA05]" in text
    assert_rejected_with_evidence(srv, subj, "identity", tmp_path)


def test_expired_certificate(srv: DevServer, tmp_path: Path) -> None:
    subj = subject()
    ali = srv.account(0)["address"]
    to = [srv.account(1)["address"]]
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    cert, key = person_cert(tmp_path, ali, issuer=qualified_ca(srv), not_after=past)
    stage, code, text = submit(srv, 0, to, signed_message(ali, to, subj, "x", cert, key))
    assert stage == "DATA" and code == 554 and "[RA04]" in text and "expired" in text
    assert_rejected_with_evidence(srv, subj, "expired", tmp_path)


def test_tampered_signed_message(srv: DevServer, tmp_path: Path) -> None:
    subj = subject()
    to = [srv.account(1)["address"]]
    msg = signed_by(srv, 0, to, subj, "Borç tutarı 100 TL.").replace(b"100 TL", b"900 TL")
    stage, code, text = submit(srv, 0, to, msg)
    assert (stage, code) == ("DATA", 554) and "'integrity' failed" in text and "[RA02]" in text
    assert_rejected_with_evidence(srv, subj, "integrity", tmp_path)


def _raw_session(srv: DevServer) -> ssl.SSLSocket:
    ctx = srv.tls()
    raw = socket.create_connection(("127.0.0.1", srv.ports["submissions"]), timeout=30)
    return ctx.wrap_socket(raw)


def _cmd(sock: ssl.SSLSocket, line: bytes) -> bytes:
    if line:
        sock.sendall(line + b"\r\n")
    return smtp_reply(sock)


def _up_to_data(sock: ssl.SSLSocket, sender: dict[str, str], rcpt: dict[str, str]) -> None:
    """Greeting, EHLO, AUTH PLAIN as `sender`, MAIL, RCPT to `rcpt`, and DATA's 354."""
    assert _cmd(sock, b"").startswith(b"220")
    _cmd(sock, b"EHLO client.test")
    cred = base64.b64encode(f"\0{sender['address']}\0{sender['password']}".encode())
    assert _cmd(sock, b"AUTH PLAIN " + cred).startswith(b"235")
    assert _cmd(sock, f"MAIL FROM:<{sender['address']}>".encode()).startswith(b"250")
    assert _cmd(sock, f"RCPT TO:<{rcpt['address']}>".encode()).startswith(b"250")
    assert _cmd(sock, b"DATA").startswith(b"354")


@pytest.mark.parametrize("bad", [b"line one\nline two\r\n", b"cr\ralone\r\n"])
def test_bare_line_ending_is_refused(srv: DevServer, tmp_path: Path, bad: bytes) -> None:
    ali, ayse = srv.account(0), srv.account(1)
    subj = subject()
    msg = signed_by(srv, 0, [ayse["address"]], subj)
    head, body = msg.split(b"\r\n\r\n", 1)
    msg = head + b"\r\n\r\n" + bad + body
    with _raw_session(srv) as s:
        _up_to_data(s, ali, ayse)
        reply = _cmd(s, msg + b".")
        assert reply.startswith(b"554-5.6.0") and b"bare CR or LF" in reply and b"[RA02]" in reply
        assert _cmd(s, b"QUIT").startswith(b"221")
    assert_rejected_with_evidence(srv, subj, "bare CR or LF", tmp_path)


@pytest.mark.parametrize("sent", [b"", b"Subject: cut off\r\n\r\nhalf a bo"])
def test_a_client_gone_during_data_leaves_no_spool_file(srv: DevServer, sent: bytes) -> None:
    """A client that leaves at once after the 354, or part-way through its data, leaves no spool
    file behind."""
    ali, ayse = srv.account(0), srv.account(1)
    incoming = srv.data / "spool" / "incoming"
    with _raw_session(srv) as s:
        _up_to_data(s, ali, ayse)
        s.sendall(sent)
    deadline = time.monotonic() + 30
    while any(incoming.iterdir()):
        assert time.monotonic() < deadline, f"left in the spool: {list(incoming.iterdir())}"
        time.sleep(0.05)
    with smtp(srv, ali) as s:  # and the next message goes through
        s.sendmail(ali["address"], [ayse["address"]], signed_by(srv, 0, [ayse["address"]], subject()))


def test_declared_size_over_the_limit(srv: DevServer, tmp_path: Path) -> None:
    with smtp(srv, srv.account(0)) as s:
        limit = int(s.esmtp_features["size"])
        assert limit == 100 * 1024 * 1024
        code, text = s.mail(srv.account(0)["address"], [f"SIZE={limit + 1}"])
        assert code == 552 and b"5.3.4" in text
        code, _ = s.rset()
        code, _ = s.mail(srv.account(0)["address"], [f"SIZE={limit}"])
        assert code == 250
