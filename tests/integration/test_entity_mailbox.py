"""A legal entity's mailbox, read and sent from by its operator over IMAP and SMTP with a SASL
authorisation identity (RFC 4616 §2), against a real `kepmta serve --dev`: imaplib (AUTHENTICATE
PLAIN without an initial response), aioimaplib (with one, RFC 4959) and smtplib (AUTH PLAIN, RFC
4954). Anyone else asking for the entity is answered as for a wrong password."""

from __future__ import annotations

import asyncio
import base64
import imaplib
import re
import smtplib
import uuid
from pathlib import Path

import aioimaplib  # type: ignore[import-untyped]
import pytest
from kepclient import (
    DevServer,
    compose,
    folder_messages,
    imap,
    openssl_verify,
    p7m,
    receipts,
    signed_by,
    smtp,
    submit,
    wait_for,
)


def subject() -> str:
    return "kurum-" + uuid.uuid4().hex[:10]


def entity(srv: DevServer) -> str:
    address: str = srv.info["entities"][0]["address"]  # type: ignore[index]
    return address


def operator(srv: DevServer) -> dict[str, str]:
    """Mehmet, the entity's authorised operator in the development data."""
    wanted = srv.info["entities"][0]["operators"][0]  # type: ignore[index]
    return next(a for a in srv.info["accounts"] if a["address"] == wanted)  # type: ignore[index]


def plain(authzid: str, authcid: str, password: str) -> bytes:
    return f"{authzid}\0{authcid}\0{password}".encode()


def imap_for(srv: DevServer, authzid: str, authcid: str, password: str) -> imaplib.IMAP4_SSL:
    m = imaplib.IMAP4_SSL("127.0.0.1", srv.ports["imaps"], ssl_context=srv.tls(), timeout=60)
    # imaplib waits for the "+" continuation and sends the response on its own line.
    m.authenticate("PLAIN", lambda _challenge: plain(authzid, authcid, password))
    return m


def imap_refusal(srv: DevServer, authzid: str, authcid: str, password: str) -> str:
    with pytest.raises(imaplib.IMAP4.error) as refused:
        imap_for(srv, authzid, authcid, password)
    return str(refused.value)


def test_an_operator_reads_the_entity_mailbox_and_the_handover_names_them(
    srv: DevServer, tmp_path: Path
) -> None:
    ali, mehmet, kurum = srv.account(0), operator(srv), entity(srv)
    subj = subject()
    reply = submit(srv, 0, [kurum], signed_by(srv, 0, [kurum], subj, "Kuruma resmi bildirim."))
    found_id = re.search(r"<([^>]+)>", reply)
    assert found_id

    m = imap_for(srv, kurum, mehmet["address"], mehmet["password"])
    assert wait_for(lambda: folder_messages(m, "INBOX", subj))
    m.select("INBOX")
    _, data = m.uid("SEARCH", None, "SUBJECT", f'"{subj}"')  # type: ignore[arg-type]
    uid = data[0].split()[0].decode()
    typ, _ = m.uid("FETCH", uid, "(BODY[])")
    assert typ == "OK"
    m.logout()

    # The person's own mailbox is not the entity's: the dispatch is not in Mehmet's INBOX.
    own = imap(srv, mehmet)
    assert folder_messages(own, "INBOX", subj) == []
    own.logout()

    a = imap(srv, ali)
    handover = wait_for(lambda: receipts(a, subj, "ContentHandover"))
    a.logout()
    assert len(handover) == 1
    ok, content, printed = openssl_verify(
        p7m(handover[0], "ContentHandover"), srv.info["provider_ca"], tmp_path
    )  # type: ignore[index]
    assert ok, content
    assert f"Read by {mehmet['address']}, authorised operator of {kurum}." in content
    assert "timeStampToken" in printed


def test_anyone_else_is_answered_as_a_wrong_password_over_imap(srv: DevServer) -> None:
    ali, ayse, mehmet, kurum = srv.account(0), srv.account(1), operator(srv), entity(srv)
    wrong_password = imap_refusal(srv, "", ali["address"], "yanlis-parola")
    assert "AUTHENTICATIONFAILED" in wrong_password
    # Ali's own password is right; the identities asked for are not his to take.
    for authzid in (kurum, ayse["address"], "yok@kep.test"):
        assert imap_refusal(srv, authzid, ali["address"], ali["password"]) == wrong_password
    assert imap_refusal(srv, kurum, mehmet["address"], "yanlis-parola") == wrong_password
    # An authzid that names the login itself is a plain login.
    m = imap_for(srv, ali["address"].upper(), ali["address"], ali["password"])
    typ, _ = m.select("INBOX", readonly=True)
    assert typ == "OK"
    m.logout()


async def _aioimaplib_reads(srv: DevServer, authzid: str, authcid: str, password: str, subj: str) -> str:
    client = aioimaplib.IMAP4_SSL(
        host="127.0.0.1", port=srv.ports["imaps"], ssl_context=srv.tls(), timeout=60
    )
    await client.wait_hello_from_server()
    protocol = client.protocol
    # RFC 4959: the response in the command itself (SASL-IR), as aioimaplib's own XOAUTH2 sends it.
    initial = base64.b64encode(plain(authzid, authcid, password)).decode()
    command = aioimaplib.Command("AUTHENTICATE", protocol.new_tag(), "PLAIN", initial, loop=protocol.loop)
    response = await protocol.execute(command)
    if response.result != "OK":
        return str(response.result)
    protocol.state = aioimaplib.AUTH
    assert (await client.select("INBOX")).result == "OK"
    found = await client.uid_search("SUBJECT", f'"{subj}"', charset=None)
    await client.logout()
    return "OK " + found.lines[0].decode()


def test_aioimaplib_logs_in_for_the_entity_with_an_initial_response(srv: DevServer) -> None:
    ali, mehmet, kurum = srv.account(0), operator(srv), entity(srv)
    subj = subject()
    submit(srv, 0, [kurum], signed_by(srv, 0, [kurum], subj))
    b = imap_for(srv, kurum, mehmet["address"], mehmet["password"])
    assert wait_for(lambda: folder_messages(b, "INBOX", subj))
    b.logout()
    answer = asyncio.run(_aioimaplib_reads(srv, kurum, mehmet["address"], mehmet["password"], subj))
    assert re.fullmatch(r"OK \d+", answer), answer
    refused = asyncio.run(_aioimaplib_reads(srv, kurum, ali["address"], ali["password"], subj))
    assert refused == "NO"


def smtp_login(srv: DevServer, authzid: str, authcid: str, password: str, *, initial: bool) -> smtplib.SMTP:
    s = smtp(srv)
    s.auth(
        "PLAIN",
        lambda challenge=None: plain(authzid, authcid, password).decode(),
        initial_response_ok=initial,
    )
    return s


def test_an_operator_sends_as_the_entity_over_smtp(srv: DevServer) -> None:
    ayse, mehmet, kurum = srv.account(1), operator(srv), entity(srv)
    subj = subject()
    msg = compose(kurum, [ayse["address"]], subj, "Kurum adına.", mehmet["cert"], mehmet["key"])
    for initial in (True, False):  # AUTH PLAIN with the response, and after the 334 (RFC 4954 §4)
        with smtp_login(srv, kurum, mehmet["address"], mehmet["password"], initial=initial) as s:
            code, text = s.mail(kurum)
            assert code == 250, text
            code, text = s.rcpt(ayse["address"])
            assert code == 250, text
            code, text = s.data(msg)
            assert code == 250, text
    b = imap(srv, ayse)
    got = wait_for(lambda: folder_messages(b, "INBOX", subj))
    b.logout()
    assert len(got) == 2
    assert re.search(rb"(?im)^From: " + re.escape(kurum.encode()), got[0])


def test_anyone_else_is_answered_as_a_wrong_password_over_smtp(srv: DevServer) -> None:
    ali, kurum = srv.account(0), entity(srv)

    def refusal(authzid: str, password: str) -> tuple[int, bytes]:
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            smtp_login(srv, authzid, ali["address"], password, initial=True)
        return refused.value.smtp_code, refused.value.smtp_error

    wrong_password = refusal("", "yanlis-parola")
    assert wrong_password[0] == 535 and wrong_password[1].startswith(b"5.7.8")
    assert refusal(kurum, ali["password"]) == wrong_password
    assert refusal(srv.account(1)["address"], ali["password"]) == wrong_password
