"""The first registered message, end to end, against a real `kepmta serve --dev` process:
smtplib submits over TLS, imaplib reads, openssl verifies every evidence."""

from __future__ import annotations

import base64
import hashlib
import re
import sqlite3
import uuid
from pathlib import Path

from kepclient import (
    DevServer,
    imap,
    kepmta,
    openssl_verify,
    p7m,
    receipts,
    signed_by,
    submit,
    wait_for,
)
from kepclient import (
    folder_messages as messages,
)


def subject() -> str:
    return "ihtar-" + uuid.uuid4().hex[:10]


def attached_original(dispatch: bytes) -> bytes:
    """The body of the message/rfc822 part, cut per RFC 2046 §5.1.1 (the CRLF before a delimiter
    belongs to the delimiter), found without kepmta's code."""
    for bnd in re.findall(rb'boundary="([^"]+)"', dispatch):
        for piece in dispatch.split(b"\r\n--" + bnd)[1:-1]:
            head, _, body = piece.partition(b"\r\n\r\n")
            if re.search(rb"(?im)^content-type:\s*message/rfc822", head):
                return body
    raise AssertionError("no message/rfc822 part")


def test_dev_info_names_everything(srv: DevServer) -> None:
    info = srv.info
    assert info and info["domain"] == "kep.test"
    assert set(info["ports"]) == {"submission", "submissions", "imap", "imaps", "relay", "api", "metrics"}
    # Absolute, so a script in any folder can open them.
    files = [info["provider_ca"], info["qualified_ca"], info["tsa_cert"], info["config"]]
    files += [a[k] for a in info["accounts"] for k in ("cert", "key")]
    assert all(Path(f).is_absolute() and Path(f).is_file() for f in files), files
    addresses = [a["address"] for a in info["accounts"]]
    assert {"ali.yilmaz@kep.test", "ayse.kaya@kep.test"} <= set(addresses)
    for a in info["accounts"]:
        assert Path(a["cert"]).exists()
        assert Path(a["key"]).stat().st_mode & 0o077 == 0
    for key in Path(info["data"]).glob("pki/*.key"):
        assert key.stat().st_mode & 0o777 == 0o600
    human = kepmta("dev-info", "--data", info["data"])
    assert human.returncode == 0 and "ali.yilmaz@kep.test" in human.stdout


def test_signed_message_is_delivered_with_verifiable_evidence(srv: DevServer, tmp_path: Path) -> None:
    ali, ayse = srv.account(0), srv.account(1)
    subj = subject()
    msg = signed_by(srv, 0, [ayse["address"]], subj, "Sözleşmenin feshi bildirilir.")
    reply = submit(srv, 0, [ayse["address"]], msg)
    provider_id = re.search(r"<([^>]+)>", reply)
    assert provider_id, reply

    b = imap(srv, ayse)
    got = wait_for(lambda: messages(b, "INBOX", subj))
    assert len(got) == 1
    dispatch = got[0]
    head = dispatch.split(b"\r\n\r\n", 1)[0]
    assert re.search(rb"(?im)^Content-Type: multipart/signed", head)
    assert re.search(rb"(?im)^REM-MessageType: http://uri.etsi.org/19522/v1#/ERDMessageType/dispatch", head)
    assert f"Message-ID: <{provider_id.group(1)}>".encode() in head
    original = attached_original(dispatch)
    digest = re.search(rb"(?im)^REM-DigestValue:\s*(\S+)", head)
    assert digest and digest.group(1) == base64.b64encode(hashlib.sha256(original).digest())
    # The original travels unchanged but for its Message-ID (EN 319 532-3), so the sender's
    # signature over the body part still holds.
    sent_body = msg.split(b"\r\n\r\n", 1)[1]
    assert original.endswith(sent_body)

    a = imap(srv, ali)
    ca = srv.info["provider_ca"]  # type: ignore[index]
    for event in ("SubmissionAcceptance", "ContentConsignment"):
        found = wait_for(lambda ev=event: receipts(a, subj, ev))  # type: ignore[misc]
        assert len(found) == 1, event
        der = p7m(found[0], event)
        ok, content, printed = openssl_verify(der, ca, tmp_path)
        assert ok, content
        assert f"http://uri.etsi.org/19522/Event/{event}" in content
        assert base64.b64encode(hashlib.sha256(original).digest()).decode() in content
        assert "timeStampToken" in printed
        f = tmp_path / f"{event}.p7m"
        f.write_bytes(der)
        verified = kepmta("evidence", "verify", str(f), "--ca", ca)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "ali.yilmaz@kep.test" in verified.stdout and event in verified.stdout
    a.logout()
    b.logout()


def test_implicit_tls_submission_port(srv: DevServer) -> None:
    import smtplib

    ali, ayse = srv.account(0), srv.account(1)
    subj = subject()
    with smtplib.SMTP_SSL("127.0.0.1", srv.ports["submissions"], context=srv.tls(), timeout=60) as s:
        s.login(ali["address"], ali["password"])
        assert s.sendmail(ali["address"], [ayse["address"]], signed_by(srv, 0, [ayse["address"]], subj)) == {}
    b = imap(srv, ayse)
    assert len(wait_for(lambda: messages(b, "INBOX", subj))) == 1
    b.logout()


def ledger_events(srv: DevServer, message_id: str, event: str) -> int:
    """How many `event` evidences the server's ledger holds for the message (read-only look)."""
    db = Path(srv.info["data"]) / "kepmta.db"  # type: ignore[index]
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        (count,) = conn.execute(
            "SELECT count(*) FROM ledger WHERE message_id = ? AND event = ?", (message_id, event)
        ).fetchone()
    return int(count)


def test_read_evidence_once_and_never_for_peek(srv: DevServer, tmp_path: Path) -> None:
    ali, ayse = srv.account(0), srv.account(1)
    subj = subject()
    reply = submit(srv, 0, [ayse["address"]], signed_by(srv, 0, [ayse["address"]], subj))
    found_id = re.search(r"<([^>]+)>", reply)
    assert found_id
    message_id = found_id.group(1)
    a, b = imap(srv, ali), imap(srv, ayse)
    assert wait_for(lambda: messages(b, "INBOX", subj))
    b.select("INBOX")
    _, data = b.uid("SEARCH", None, "SUBJECT", f'"{subj}"')  # type: ignore[arg-type]
    uid = data[0].split()[0].decode()
    # The read hook has made (or not made) its evidence before the FETCH is answered.
    typ, _ = b.uid("FETCH", uid, "(BODY.PEEK[])")
    assert typ == "OK"
    _, flags = b.uid("FETCH", uid, "(FLAGS)")
    assert b"\\Seen" not in flags[0]
    assert ledger_events(srv, message_id, "ContentHandover") == 0

    typ, _ = b.uid("FETCH", uid, "(BODY[])")
    assert typ == "OK"
    assert ledger_events(srv, message_id, "ContentHandover") == 1
    found = wait_for(lambda: receipts(a, subj, "ContentHandover"))
    assert len(found) == 1
    ok, content, printed = openssl_verify(p7m(found[0], "ContentHandover"), srv.info["provider_ca"], tmp_path)  # type: ignore[index]
    assert ok and "ContentHandover" in content and "timeStampToken" in printed

    b.uid("FETCH", uid, "(BODY[])")
    b.uid("STORE", uid, "+FLAGS", "(\\Seen)")
    b.uid("STORE", uid, "-FLAGS", "(\\Seen)")
    b.uid("FETCH", uid, "(BODY[])")
    assert ledger_events(srv, message_id, "ContentHandover") == 1
    # STORE \Seen is a read too
    subj2 = subject()
    reply2 = submit(srv, 0, [ayse["address"]], signed_by(srv, 0, [ayse["address"]], subj2))
    second = re.search(r"<([^>]+)>", reply2)
    assert second and wait_for(lambda: messages(b, "INBOX", subj2))
    b.select("INBOX")
    _, data = b.uid("SEARCH", None, "SUBJECT", f'"{subj2}"')  # type: ignore[arg-type]
    b.uid("STORE", data[0].split()[0].decode(), "+FLAGS", "(\\Seen)")
    assert ledger_events(srv, second.group(1), "ContentHandover") == 1
    assert len(wait_for(lambda: receipts(a, subj2, "ContentHandover"))) == 1
    assert len(receipts(a, subj, "ContentHandover")) == 1
    a.logout()
    b.logout()


def test_evidence_verify_refuses_a_tampered_file(srv: DevServer, tmp_path: Path) -> None:
    ali, ayse = srv.account(0), srv.account(1)
    subj = subject()
    submit(srv, 0, [ayse["address"]], signed_by(srv, 0, [ayse["address"]], subj))
    a = imap(srv, ali)
    found = wait_for(lambda: receipts(a, subj, "SubmissionAcceptance"))
    der = bytearray(p7m(found[0], "SubmissionAcceptance"))
    a.logout()
    pos = der.find(b"ali.yilmaz@kep.test")
    der[pos] ^= 0x01
    f = tmp_path / "tampered.p7m"
    f.write_bytes(bytes(der))
    r = kepmta("evidence", "verify", str(f), "--ca", srv.info["provider_ca"])  # type: ignore[index]
    assert r.returncode == 1
    assert "✗" in r.stdout
    garbage = tmp_path / "garbage.p7m"
    garbage.write_bytes(b"not evidence at all")
    r = kepmta("evidence", "verify", str(garbage), "--ca", srv.info["provider_ca"])  # type: ignore[index]
    assert r.returncode == 1
