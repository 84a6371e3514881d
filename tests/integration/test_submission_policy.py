"""Every submission rule of KEP.md, both sides of each boundary, against a real server: accounts
made with `kepmta accounts`, mail sent with smtplib, evidence checked with openssl."""

from __future__ import annotations

import base64
import email
import email.policy
import imaplib
import smtplib
import uuid
from pathlib import Path

import pytest
from kepclient import (
    DevServer,
    accounts_cli,
    compose,
    folder_messages,
    headers,
    imap,
    issue_cert,
    new_person,
    openssl_verify,
    p7m,
    rejection_evidence,
    send_as,
    signed_by,
    smime_sign,
    smtp,
    wait_for,
)

MB = 1024 * 1024


def subject() -> str:
    return "kural-" + uuid.uuid4().hex[:10]


def data(srv: DevServer) -> str:
    return str(srv.info["data"])  # type: ignore[index]


def login_reply(srv: DevServer, creds: dict[str, str]) -> tuple[int, bytes]:
    """One AUTH PLAIN attempt (smtplib's login() would try each mechanism in turn)."""
    token = base64.b64encode(f"\0{creds['address']}\0{creds['password']}".encode()).decode()
    with smtp(srv) as s:
        return s.docmd("AUTH", f"PLAIN {token}")


def signed(creds: dict[str, str], to: list[str], subj: str, **kw: object) -> bytes:
    return compose(creds["address"], to, subj, "Sayın ilgili,", creds["cert"], creds["key"], **kw)  # type: ignore[arg-type]


def test_pending_blocked_and_closed_accounts_cannot_log_in(srv: DevServer) -> None:
    p = new_person(srv, "Bekir", "Bekler")  # pending: the activation contract is not signed yet
    code, text = login_reply(srv, p)
    assert code == 535 and b"not active" in text
    assert accounts_cli(data(srv), "activate", p["address"])[0] == 0
    assert login_reply(srv, p)[0] == 235
    assert accounts_cli(data(srv), "block", p["address"])[0] == 0
    assert login_reply(srv, p)[0] == 535
    assert accounts_cli(data(srv), "close", p["address"])[0] == 0
    assert login_reply(srv, p)[0] == 535


def test_blocked_recipient_is_refused_at_rcpt(srv: DevServer, tmp_path: Path) -> None:
    p = new_person(srv, "Kapalı", "Kutu", "--active")
    assert accounts_cli(data(srv), "block", p["address"])[0] == 0
    ali = srv.account(0)
    stage, code, text = send_as(srv, ali, ali["address"], [p["address"]], b"")
    assert (stage, code) == ("RCPT", 550) and "5.2.1" in text and "blocked" in text and "[RA05]" in text
    rejection_evidence(
        srv, ali, "SubmissionRejection", f"the KEP mailbox {p['address']} is blocked", tmp_path
    )


def test_recipient_only_account_cannot_submit(srv: DevServer, tmp_path: Path) -> None:
    p = new_person(srv, "Salt", "Alıcı", "--active", "--type", "recipient-only")
    assert login_reply(srv, p)[0] == 235
    stage, code, text = send_as(srv, p, p["address"], [srv.account(1)["address"]], b"")
    assert (stage, code) == ("MAIL", 550) and "recipient-only" in text and "[RA05]" in text
    content = rejection_evidence(srv, p, "SubmissionRejection", "recipient-only", tmp_path)
    assert "yalnızca alıcı" in content  # the Turkish sentence travels in the evidence too


def test_operator_sends_as_the_entity_and_evidence_names_both(srv: DevServer, tmp_path: Path) -> None:
    info = srv.info
    assert info
    entity = info["entities"][0]["address"]
    mehmet = srv.account(2)
    assert info["entities"][0]["operators"] == [mehmet["address"]]
    ayse = srv.account(1)["address"]
    subj = subject()
    msg = compose(entity, [ayse], subj, "Kurum adına bildirim.", mehmet["cert"], mehmet["key"])
    stage, code, text = send_as(srv, mehmet, entity, [ayse], msg)
    assert (stage, code) == ("done", 250), text
    b = imap(srv, srv.account(1))
    dispatch = wait_for(lambda: folder_messages(b, "INBOX", subj))
    b.logout()
    assert dispatch and f"REM-MD08: {entity}".encode() in dispatch[0]
    # the entity's receipts: its operators read them from its mailbox store
    kanit = Path(data(srv)) / "mail" / "kep.test" / entity.split("@")[0] / ".Kan&ATE-t"
    found = wait_for(
        lambda: [
            f
            for d in ("new", "cur")
            for f in (kanit / d).glob("*")
            if f"REM SubmissionAcceptance: {subj}".encode() in f.read_bytes()
        ]
    )
    assert found
    ok, content, _ = openssl_verify(
        p7m(found[0].read_bytes(), "SubmissionAcceptance"), info["provider_ca"], tmp_path
    )
    assert ok and entity in content and mehmet["address"] in content


def test_only_authorised_operators_send_as_an_entity(srv: DevServer, tmp_path: Path) -> None:
    entity = srv.info["entities"][0]["address"]  # type: ignore[index]
    ali = srv.account(0)
    stage, code, text = send_as(srv, ali, entity, [srv.account(1)["address"]], b"")
    assert (stage, code) == ("MAIL", 553) and "not an authorised operator" in text
    rejection_evidence(srv, ali, "SubmissionRejection", "is not an authorised operator", tmp_path)


def test_over_quota_cannot_send_but_still_receives(srv: DevServer, tmp_path: Path) -> None:
    p = new_person(srv, "Dolu", "Kutu", "--active", "--quota", "4K")
    ali = srv.account(0)
    subj = subject()
    stage, code, _ = send_as(
        srv, ali, ali["address"], [p["address"]], signed_by(srv, 0, [p["address"]], subj, "x" * 5000)
    )
    assert (stage, code) == ("done", 250)
    m = imap(srv, p)
    assert wait_for(lambda: folder_messages(m, "INBOX", subj))  # received although over quota
    warning = wait_for(lambda: folder_messages(m, "INBOX", "quota warning"))
    assert len(warning) == 1
    subject_line = email.message_from_bytes(warning[0], policy=email.policy.default)["Subject"]
    assert str(subject_line).endswith("%100")  # 5 KB of a 4 KB quota: straight to the last level
    m.logout()
    stage, code, text = send_as(srv, p, p["address"], [ali["address"]], b"")
    assert (stage, code) == ("MAIL", 552) and "5.2.2" in text and "over its quota" in text
    assert accounts_cli(data(srv), "set-quota", p["address"], "100MB")[0] == 0
    subj2 = subject()
    stage, code, text = send_as(srv, p, p["address"], [ali["address"]], signed(p, [ali["address"]], subj2))
    assert (stage, code) == ("done", 250), text


def test_quota_warnings_at_each_level_once(srv: DevServer) -> None:
    import json

    p = new_person(srv, "Uyarı", "Alan", "--active")
    ali = srv.account(0)
    m = imap(srv, p)

    def used() -> int:
        code, out, err = accounts_cli(data(srv), "show", p["address"], "--json")
        assert code == 0, err
        return int(json.loads(out)["used"])

    def levels() -> list[str]:
        subjects = [
            str(email.message_from_bytes(w, policy=email.policy.default)["Subject"])
            for w in folder_messages(m, "INBOX", "quota warning")
        ]
        return sorted(s.rsplit("%", 1)[1] for s in subjects)

    def deliver(lines: int) -> None:
        subj = subject()
        body = "\n".join(["Bu satır kotayı doldurmak içindir."] * lines)
        msg = signed_by(srv, 0, [p["address"]], subj, body)
        assert send_as(srv, ali, ali["address"], [p["address"]], msg)[1] == 250
        assert wait_for(lambda: folder_messages(m, "INBOX", subj))

    deliver(6000)  # a large first message
    before = used()
    deliver(10)
    step = used() - before  # what one small dispatch takes
    # From here on: the next small message brings usage to 85 %, the one after to 85 % + step / quota.
    quota = (used() + step) * 100 // 85
    assert 0.05 <= step / quota < 0.15, "the large message should be about ten small ones"
    assert accounts_cli(data(srv), "set-quota", p["address"], str(quota))[0] == 0
    deliver(10)
    assert wait_for(lambda: levels() == ["80"])
    deliver(10)
    assert wait_for(lambda: levels() == ["80", "90"])
    assert accounts_cli(data(srv), "set-quota", p["address"], str(used() + step // 2))[0] == 0
    deliver(10)
    assert wait_for(lambda: levels() == ["100", "80", "90"])
    m.logout()


def test_kep_recipients_only_and_peers_accepted(srv: DevServer, tmp_path: Path) -> None:
    ali = srv.account(0)
    peer = "birisi@peer.test"
    subj = subject()
    stage, code, text = send_as(srv, ali, ali["address"], [peer], signed_by(srv, 0, [peer], subj))
    assert (stage, code) == ("done", 250), text
    stage, code, text = send_as(srv, ali, ali["address"], ["someone@hotmail.com"], b"")
    assert (stage, code) == ("RCPT", 550) and "not a KEP address" in text


def test_size_is_checked_at_mail_and_at_each_rcpt(srv: DevServer) -> None:
    ali = srv.account(0)
    local, peer = srv.account(1)["address"], "kisi@peer.test"
    with smtp(srv, ali) as s:
        assert int(s.esmtp_features["size"]) == 100 * MB
        assert s.mail(ali["address"], [f"SIZE={100 * MB + 1}"])[0] == 552
        s.rset()
        assert s.mail(ali["address"], [f"SIZE={100 * MB}"])[0] == 250
        assert s.rcpt(local)[0] == 250  # 100 MB is fine while every recipient is here
        code, text = s.rcpt(peer)
        assert code == 552 and b"5.3.4" in text and b"another KEP provider" in text
        s.rset()
        assert s.mail(ali["address"], [f"SIZE={25 * MB}"])[0] == 250
        assert s.rcpt(peer)[0] == 250
        assert s.rcpt(local)[0] == 250


def text_of_length(n: int) -> bytes:
    """Lines of at most 77 octets with CRLF, `n` octets in all (n >= 2)."""
    full, rest = divmod(n, 76)
    if rest == 1:  # no line is one octet long: borrow a full line
        full, rest = full - 1, 77
    return (b"A" * 74 + b"\r\n") * full + (b"B" * (rest - 2) + b"\r\n" if rest else b"")


def exact_size_message(sender: dict[str, str], to: list[str], subj: str, size: int) -> bytes:
    """A signed message of exactly `size` octets, re-signed until the variable-length ECDSA
    signature lands on the size."""
    head = headers(sender["address"], to, subj)
    pad = size - 3000
    for _ in range(20):
        body = text_of_length(pad)
        inner = b"Content-Type: text/plain; charset=us-ascii\r\n\r\n" + body
        msg = head + smime_sign(inner, sender["cert"], sender["key"])
        if len(msg) == size:
            return msg
        pad += size - len(msg)
    raise AssertionError("could not make a message of the exact size")


@pytest.mark.slow
def test_exactly_25_mb_to_a_peer_is_accepted_one_byte_more_is_not(srv: DevServer, tmp_path: Path) -> None:
    ali = srv.account(0)
    peer = "kisi@peer.test"
    subj = subject()
    exact = exact_size_message(ali, [peer], subj, 25 * MB)
    assert len(exact) == 25 * MB
    stage, code, text = send_as(srv, ali, ali["address"], [peer], exact)
    assert (stage, code) == ("done", 250), text
    subj2 = subject()
    over = exact_size_message(ali, [peer], subj2, 25 * MB + 1)
    stage, code, text = send_as(srv, ali, ali["address"], [peer], over)
    assert (stage, code) == ("DATA", 552) and "5.3.4" in text
    rejection_evidence(srv, ali, subj2, "another KEP provider", tmp_path)


@pytest.mark.slow
def test_exactly_100_mb_within_the_provider_is_accepted_and_delivered(srv: DevServer) -> None:
    ali, ayse = srv.account(0), srv.account(1)
    subj = subject()
    exact = exact_size_message(ali, [ayse["address"]], subj, 100 * MB)
    stage, code, text = send_as(srv, ali, ali["address"], [ayse["address"]], exact)
    assert (stage, code) == ("done", 250), text
    b = imap(srv, ayse)
    b.select("INBOX", readonly=True)
    found = wait_for(lambda: b.uid("SEARCH", None, "SUBJECT", f'"{subj}"')[1][0].split(), timeout=120)  # type: ignore[arg-type]
    _, sizes = b.uid("FETCH", found[0].decode(), "(RFC822.SIZE)")
    assert int(sizes[0].split(b"RFC822.SIZE ")[1].rstrip(b")")) > 100 * MB
    b.logout()


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("from", "the From header"),
        ("bcc", "Bcc header"),
        ("hidden", "must also appear in the To or Cc header"),
    ],
)
def test_formal_checks(srv: DevServer, tmp_path: Path, case: str, needle: str) -> None:
    ali, ayse, mehmet = srv.account(0), srv.account(1)["address"], srv.account(2)["address"]
    subj = subject()
    if case == "from":
        msg = compose(ayse, [mehmet], subj, "x", ali["cert"], ali["key"])
        rcpts = [mehmet]
    elif case == "bcc":
        msg = signed(ali, [ayse], subj, extra=f"Bcc: {mehmet}\r\n")
        rcpts = [ayse, mehmet]
    else:
        msg = signed(ali, [ayse], subj)
        rcpts = [ayse, mehmet]
    stage, code, text = send_as(srv, ali, ali["address"], rcpts, msg)
    assert (stage, code) == ("DATA", 550) and needle in text and "[RA02]" in text
    rejection_evidence(srv, ali, subj, needle, tmp_path)
    # and the well-formed message, Cc included, passes
    subj2 = subject()
    ok = signed(ali, [ayse], subj2, cc=[mehmet])
    assert send_as(srv, ali, ali["address"], [ayse, mehmet], ok)[1] == 250


def test_identity_by_national_id_or_registered_certificate(srv: DevServer, tmp_path: Path) -> None:
    d = data(srv)
    ayse = srv.account(1)["address"]
    p = new_person(srv, "Tuba", "Kimlik", "--active", "--national-id", "12345678950")
    # a qualified certificate with the T.C. kimlik no as serialNumber and no e-mail address
    cert, key = issue_cert(d, None, serial_number="TCKN12345678950")
    msg = compose(p["address"], [ayse], subject(), "x", cert, key)
    assert send_as(srv, p, p["address"], [ayse], msg)[1] == 250
    other_cert, other_key = issue_cert(d, None, serial_number="TCKN10987654370")
    subj = subject()
    stage, code, text = send_as(
        srv, p, p["address"], [ayse], compose(p["address"], [ayse], subj, "x", other_cert, other_key)
    )
    assert (stage, code) == ("DATA", 554) and "'identity' failed" in text
    rejection_evidence(srv, p, subj, "identity", tmp_path)

    reg_cert, reg_key = issue_cert(d, None)
    code, address, err = accounts_cli(
        d,
        "add",
        "person",
        "--first-name",
        "Kayıtlı",
        "--last-name",
        "Sertifika",
        "--active",
        "--cert",
        str(reg_cert),
        "--password-stdin",
        stdin="uzun-bir-parola\n",
    )
    assert code == 0, err
    r = {"address": address, "password": "uzun-bir-parola"}
    assert (
        send_as(srv, r, address, [ayse], compose(address, [ayse], subject(), "x", reg_cert, reg_key))[1]
        == 250
    )


def test_failed_logins_slow_the_address_but_do_not_lock_the_account(srv: DevServer) -> None:
    # Past failures_per_pair (5) the next try waits first_delay (1 s) and is then checked; waits
    # double up to "try later" (454 4.7.0), tested with small limits in test_submission_abuse.py.
    p = new_person(srv, "Çok", "Deneme", "--active")
    for _ in range(5):
        assert login_reply(srv, {**p, "password": "yanlis-parola"})[0] == 535
    assert login_reply(srv, p)[0] == 235


def test_a_remembered_password_stops_working_the_moment_it_is_changed(srv: DevServer) -> None:
    # The server keeps a confirmed password for [auth] cache_seconds (300 s) to spare scrypt; a
    # new password must end that at once, on both protocols, and the old one gets no second life.
    acct = new_person(srv, "Bellek", "Deneme", "--active", password="eski-parola-123")
    for _ in range(2):  # the second login of each is the remembered one
        with smtp(srv, acct):
            pass
        imap(srv, acct).logout()
    code, _, err = accounts_cli(
        data(srv), "passwd", acct["address"], "--password-stdin", stdin="yeni-parola-456\n"
    )
    assert code == 0, err
    with smtp(srv) as s, pytest.raises(smtplib.SMTPAuthenticationError) as refused:
        s.login(acct["address"], "eski-parola-123")
    assert refused.value.smtp_code == 535
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        imap(srv, acct)
    changed = {**acct, "password": "yeni-parola-456"}
    with smtp(srv, changed):
        pass
    imap(srv, changed).logout()
