"""A hostile or broken client against a real server, with small limits from its own policy file:
failed logins slow the address that makes them and lock nobody out, a flood of refused
recipients ends the session and costs one evidence, malformed addresses get a proper reply and
evidence, and a certificate carrying an invalid T.C. kimlik no identifies nobody."""

from __future__ import annotations

import base64
import imaplib
import re
import smtplib
import socket
import sqlite3
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kepclient import (
    DevServer,
    compose,
    free_port_base,
    issue_cert,
    new_person,
    rejection_evidence,
    send_as,
    smtp,
    wait_for,
)

from kepmta import devinit
from kepmta.config import DEFAULT_POLICY, Ports

# The limits of this module's server: small, so each is reached in a few commands.
LIMITS = {
    "failures_per_pair": 3,
    "failures_per_address": 8,
    "failures_per_account": 3,
    "first_delay_seconds": 1,
    "account_delay_seconds": 1,
    "max_delay_seconds": 1,
    "max_refused_recipients": 4,
    "max_refused_per_session": 6,
}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    folder = tmp_path_factory.mktemp("abuse") / "data"
    base = free_port_base()
    devinit.create_identity(folder, Ports(base, base + 1, base + 2, base + 3, base + 4))
    text = DEFAULT_POLICY.read_text()
    for key, value in LIMITS.items():
        text, n = re.subn(rf"(?m)^{key} = \d+", f"{key} = {value}", text)
        assert n == 1, key
    (folder / "policy.toml").write_text(text)
    with (folder / devinit.CONFIG_NAME).open("a") as config:
        config.write('\n[policy]\nfile = "policy.toml"\n')
    server = DevServer(folder).start()
    yield server
    server.stop()


def from_address(srv: DevServer, source: str) -> smtplib.SMTP:
    """A submission session from `source` (any 127.0.0.0/8 address reaches the loopback)."""
    s = smtplib.SMTP("127.0.0.1", srv.ports["submission"], timeout=60, source_address=(source, 0))
    s.ehlo("client.test")
    s.starttls(context=srv.tls())
    s.ehlo("client.test")
    return s


def auth_plain(srv: DevServer, source: str, user: str, password: str) -> int:
    """The reply code to one AUTH PLAIN (smtplib's login() would try each mechanism in turn)."""
    with from_address(srv, source) as s:
        blob = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        code, _ = s.docmd("AUTH", "PLAIN " + blob)
        return code


class SourcedIMAP(imaplib.IMAP4_SSL):
    """IMAPS from a chosen local address."""

    def __init__(self, port: int, ctx: ssl.SSLContext, source: str) -> None:
        self.source = source
        super().__init__("127.0.0.1", port, ssl_context=ctx, timeout=60)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        raw = socket.create_connection((self.host, self.port), timeout, source_address=(self.source, 0))
        wrapped: socket.socket = self.ssl_context.wrap_socket(raw, server_hostname=self.host)
        return wrapped


def imap_login(srv: DevServer, source: str, user: str, password: str) -> str:
    m = SourcedIMAP(srv.ports["imaps"], srv.tls(), source)
    try:
        m.login(user, password)
    except imaplib.IMAP4.error as e:
        return str(e)
    finally:
        m.shutdown()
    return "OK"


def rejections(srv: DevServer, sender: str) -> int:
    """SubmissionRejection records in the ledger for messages of `sender`."""
    db = Path(srv.info["data"]) / "kepmta.db"  # type: ignore[index]
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        (n,) = conn.execute(
            "SELECT COUNT(*) FROM ledger JOIN messages ON ledger.message_id = messages.id "
            "WHERE messages.sender = ? AND ledger.event = 'SubmissionRejection'",
            (sender,),
        ).fetchone()
    return int(n)


def unknown(tag: str, i: int) -> str:
    return f"yok-{tag}-{i}@kep.test"


# -- finding 4: failed logins ----------------------------------------------------------------------


def test_failed_logins_from_one_address_do_not_lock_the_holder_out(srv: DevServer) -> None:
    ayse = srv.account(1)
    user, right = ayse["address"], ayse["password"]
    attacker, holder = "127.0.0.2", "127.0.0.3"
    for _ in range(LIMITS["failures_per_pair"]):
        assert auth_plain(srv, attacker, user, "yanlis-parola") == 535
    # Past the pair's limit: the next try waits first_delay (1 s, the cap) and is checked ...
    assert auth_plain(srv, attacker, user, "yanlis-parola") == 535
    # ... and the one after would wait 2 s, past max_delay: "try later", even with the password.
    assert auth_plain(srv, attacker, user, right) == 454
    assert "[UNAVAILABLE]" in imap_login(srv, attacker, user, right)
    # The holder, from another address, is slowed by at most account_delay and let in, on both.
    assert auth_plain(srv, holder, user, right) == 235
    assert imap_login(srv, holder, user, right) == "OK"
    # A wrong password from the holder's address is still only a wrong password.
    assert auth_plain(srv, holder, user, "yanlis-parola") == 535


def test_an_address_spraying_passwords_is_slowed_and_others_are_not(srv: DevServer) -> None:
    mehmet = srv.account(2)
    sprayer, other = "127.0.0.4", "127.0.0.5"
    for i in range(LIMITS["failures_per_address"]):
        assert auth_plain(srv, sprayer, unknown("sprey", i), "parola-123") == 535
    # One more failure past the address's limit (slept 1 s), then every account is "try later".
    assert auth_plain(srv, sprayer, unknown("sprey", 99), "parola-123") == 535
    assert auth_plain(srv, sprayer, mehmet["address"], mehmet["password"]) == 454
    assert auth_plain(srv, other, mehmet["address"], mehmet["password"]) == 235


# -- finding 5: refused recipients -----------------------------------------------------------------


def test_a_flood_of_refused_recipients_ends_the_session_with_one_evidence(
    srv: DevServer, tmp_path: Path
) -> None:
    p = new_person(srv, "Sel", "Baskin", "--active")
    tag = uuid.uuid4().hex[:8]
    cap = LIMITS["max_refused_recipients"]
    s = smtp(srv, p)
    assert s.mail(p["address"])[0] == 250
    for i in range(cap):
        code, text = s.rcpt(unknown(tag, i))
        assert code == 550 and b"no KEP mailbox" in text
    code, text = s.rcpt(unknown(tag, cap))
    assert code == 421 and b"4.7.0" in text and b"too many refused" in text
    with pytest.raises(smtplib.SMTPServerDisconnected):
        for i in range(cap + 1, 1000):
            s.rcpt(unknown(tag, i))
    s.close()
    # Recorded before the 421 went out: one SubmissionRejection naming every refused recipient.
    assert rejections(srv, p["address"]) == 1
    content = rejection_evidence(srv, p, "REM SubmissionRejection", unknown(tag, cap), tmp_path)
    assert all(unknown(tag, i) in content for i in range(cap + 1)) and "too many refused" in content


def test_refusals_are_capped_per_session_and_recorded_once_per_transaction(srv: DevServer) -> None:
    p = new_person(srv, "Oturum", "Siniri", "--active")
    tag = uuid.uuid4().hex[:8]
    per_tx, per_session = LIMITS["max_refused_recipients"], LIMITS["max_refused_per_session"]
    with smtp(srv, p) as s:
        assert s.mail(p["address"])[0] == 250
        for i in range(per_tx):
            assert s.rcpt(unknown(tag, i))[0] == 550
        assert s.rset()[0] == 250
        assert rejections(srv, p["address"]) == 1  # RSET ended the transaction: recorded
        assert s.mail(p["address"])[0] == 250
        for i in range(per_tx, per_session):
            assert s.rcpt(unknown(tag, i))[0] == 550
        # The session's refusal past its limit, though the transaction is under its own.
        assert s.rcpt(unknown(tag, per_session))[0] == 421
    assert rejections(srv, p["address"]) == 2


def test_refusals_are_recorded_when_the_transaction_ends_any_way(srv: DevServer, tmp_path: Path) -> None:
    p = new_person(srv, "Son", "Islem", "--active")
    ayse = srv.account(1)["address"]
    tag = uuid.uuid4().hex[:8]
    # DATA accepted for the good recipient: the refused one is recorded with it.
    with smtp(srv, p) as s:
        assert s.mail(p["address"])[0] == 250
        assert s.rcpt(unknown(tag, 0))[0] == 550
        assert s.rcpt(ayse)[0] == 250
        msg = compose(p["address"], [ayse], f"kabul-{tag}", "x", p["cert"], p["key"])
        assert s.data(msg)[0] == 250
        assert rejections(srv, p["address"]) == 1
    # The client goes away without RSET or QUIT.
    s = smtp(srv, p)
    assert s.mail(p["address"])[0] == 250
    assert s.rcpt(unknown(tag, 1))[0] == 550
    s.sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
    s.close()
    assert wait_for(lambda: rejections(srv, p["address"]) == 2)
    rejection_evidence(srv, p, "REM SubmissionRejection", unknown(tag, 1), tmp_path)


# -- finding 6: malformed recipients ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("rcpt", "code", "status", "needle"),
    [
        ("<postmaster>", 550, "5.1.1", "postmaster is not a KEP address"),
        ("<Postmaster>", 550, "5.1.1", "postmaster is not a KEP address"),
        ('<"">', 501, "5.1.3", "is not valid"),
        ("<>", 501, "5.1.3", "is not valid"),
        ('<"iki kelime"@kep.test>', 501, "5.1.3", "is not valid"),
        ("<kontrol\x01karakteri@kep.test>", 501, "5.1.3", "is not valid"),
    ],
)
def test_malformed_recipients_get_a_reply_and_evidence(
    srv: DevServer, tmp_path: Path, rcpt: str, code: int, status: str, needle: str
) -> None:
    p = new_person(srv, "Bozuk", "Adres", "--active")
    with smtp(srv, p) as s:
        assert s.mail(p["address"])[0] == 250
        got, text = s.docmd("RCPT", f"TO:{rcpt}")
        assert (got, text.split(b" ")[0].decode()) == (code, status), text
        assert b"[RA05]" in text and b"Error: (" not in text and b"\x01" not in text
    content = rejection_evidence(srv, p, "REM SubmissionRejection", needle, tmp_path)
    assert "RA05" in content or "PolicyViolation" in content


# -- finding 9: the T.C. kimlik no in a certificate ------------------------------------------------


def test_a_certificate_with_an_invalid_national_id_identifies_nobody(srv: DevServer) -> None:
    d = str(srv.info["data"])  # type: ignore[index]
    ayse = srv.account(1)["address"]
    p = new_person(srv, "Eski", "Kayit", "--active", "--national-id", "12345678950")
    # An account stored before numbers were checked: its T.C. kimlik no has wrong check digits.
    with sqlite3.connect(Path(d) / "kepmta.db") as conn:
        conn.execute("UPDATE accounts SET national_id = '12345678901' WHERE address = ?", (p["address"],))
    cert, key = issue_cert(d, None, serial_number="TCKN12345678901")
    msg = compose(p["address"], [ayse], f"kimlik-{uuid.uuid4().hex[:8]}", "x", cert, key)
    stage, code, text = send_as(srv, p, p["address"], [ayse], msg)
    assert (stage, code) == ("DATA", 554) and "'identity' failed" in text
    # The same certificate for a valid number on record still identifies its holder.
    with sqlite3.connect(Path(d) / "kepmta.db") as conn:
        conn.execute("UPDATE accounts SET national_id = '12345678950' WHERE address = ?", (p["address"],))
    good_cert, good_key = issue_cert(d, None, serial_number="TCKN12345678950")
    ok = compose(p["address"], [ayse], f"kimlik-{uuid.uuid4().hex[:8]}", "x", good_cert, good_key)
    assert send_as(srv, p, p["address"], [ayse], ok)[1] == 250
