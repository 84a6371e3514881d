"""Dovecot as the IMAP front end, end to end: Debian's dovecot-imapd with conf/dovecot/ serving the
dev provider's Maildir, passwords checked by `kepmta dovecot checkpassword`, and reads reported by
the Lua script to kepmta, which makes ContentHandover evidence exactly as its own IMAP server does."""

from __future__ import annotations

import imaplib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from interop_fixtures import (
    TIMEOUT,
    Dovecot,
    flags_of,
    imap_at,
    kepmta_as,
    mail_user,
    need,
    peek,
    render_dovecot_conf,
    send,
    shared_folder,
    start_dev_server,
    subject,
    uid_of,
)
from kepclient import (
    DevServer,
    accounts_cli,
    folder_messages,
    free_port,
    imap,
    openssl_verify,
    p7m,
    receipts,
    signed_by,
    wait_for,
)


@dataclass
class Setup:
    srv: DevServer
    dovecot: Dovecot
    spool: Path


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    need("dovecot")
    user = mail_user()
    with shared_folder(user) as root:
        data, spool = root / "data", root / "spool"
        # First start creates the dev provider; then its kepmta.toml gets the [dovecot] table.
        start_dev_server(data, user).stop()
        with (data / "kepmta.toml").open("a") as f:
            f.write(f'\n[dovecot]\nread_spool = "{spool}"\n')
        spool.mkdir()
        os.chown(spool, user.uid, user.gid)
        srv = start_dev_server(data, user)
        port = free_port()
        dovecot = Dovecot(root / "dovecot", port)
        try:
            dovecot.start(render_dovecot_conf(data, spool, root / "dovecot", port, user))
            yield Setup(srv, dovecot, spool)
        finally:
            dovecot.stop()
            srv.stop()


def spool_drained(spool: Path) -> bool:
    """kepmta has consumed every line the Lua script wrote."""
    for events in spool.glob("*.events"):
        offset = events.with_suffix(".offset")
        if not offset.exists() or int(offset.read_text()) != events.stat().st_size:
            return False
    return True


def reads_of(spool: Path, uid: str) -> list[str]:
    """The spool lines for Ayşe's INBOX message `uid`."""
    lines = [line for f in sorted(spool.glob("*.events")) for line in f.read_text().splitlines()]
    return [line for line in lines if re.fullmatch(rf"ayse\.kaya@kep\.test\tINBOX\t\d+\t{uid}", line)]


def deliver_dispatch(s: Setup, subj: str) -> imaplib.IMAP4_SSL:
    """Ali sends Ayşe a dispatch; returns Ali's kepmta IMAP session once the consignment receipt
    (the last evidence before a read can happen) is there."""
    ayse = s.srv.account(1)
    send(s.srv, 0, [ayse["address"]], signed_by(s.srv, 0, [ayse["address"]], subj))
    a = imap(s.srv, s.srv.account(0))
    assert wait_for(lambda: receipts(a, subj, "ContentConsignment"), TIMEOUT)
    return a


def test_passwords_are_checked_against_kepmta_accounts(setup: Setup) -> None:
    ayse = setup.srv.account(1)
    m = imap_at(setup.dovecot.port, setup.srv, ayse)
    assert m.select("INBOX")[0] == "OK"
    m.logout()
    with pytest.raises(imaplib.IMAP4.error, match=r"\[AUTHENTICATIONFAILED\]"):
        imap_at(setup.dovecot.port, setup.srv, {**ayse, "password": ayse["password"] + "x"})
    with pytest.raises(imaplib.IMAP4.error, match=r"\[AUTHENTICATIONFAILED\]"):
        imap_at(setup.dovecot.port, setup.srv, {**ayse, "address": "nobody.here@kep.test"})
    # A blocked account may not log in, whatever its password.
    mehmet = setup.srv.account(2)
    imap_at(setup.dovecot.port, setup.srv, mehmet).logout()
    with kepmta_as(mail_user()):
        code, out, err = accounts_cli(setup.srv.data, "block", mehmet["address"])
    assert code == 0, out + err
    with pytest.raises(imaplib.IMAP4.error, match=r"\[AUTHENTICATIONFAILED\]"):
        imap_at(setup.dovecot.port, setup.srv, mehmet)
    # checkpassword answers with the canonical address, so any spelling opens the same Maildir.
    subj = subject("case")
    deliver_dispatch(setup, subj).logout()
    upper = imap_at(setup.dovecot.port, setup.srv, {**ayse, "address": ayse["address"].upper()})
    assert len(folder_messages(upper, "INBOX", subj)) == 1
    upper.logout()


def test_read_through_dovecot_makes_content_handover_once(setup: Setup, tmp_path: Path) -> None:
    subj = subject("dovecot-read")
    a = deliver_dispatch(setup, subj)
    kep = imap(setup.srv, setup.srv.account(1))
    kep.select("INBOX", readonly=True)
    kep_uid = uid_of(kep, subj)
    on_kepmta = peek(kep, kep_uid)

    m = imap_at(setup.dovecot.port, setup.srv, setup.srv.account(1))
    m.select("INBOX")
    uid = uid_of(m, subj)
    # The same file, byte for byte, through either server.
    assert peek(m, uid) == on_kepmta
    assert "\\Seen" not in flags_of(m, uid)
    # BODY.PEEK[] is no read: Dovecot reports nothing, so there is nothing to make evidence of.
    assert reads_of(setup.spool, uid) == []
    assert receipts(a, subj, "ContentHandover") == []

    typ, data = m.uid("FETCH", uid, "(BODY[])")
    assert typ == "OK" and isinstance(data[0], tuple) and b"\\Seen" in data[0][0]
    found = wait_for(lambda: receipts(a, subj, "ContentHandover"), TIMEOUT)
    assert len(found) == 1
    ok, content, printed = openssl_verify(
        p7m(found[0], "ContentHandover"),
        setup.srv.info["provider_ca"],  # type: ignore[index]
        tmp_path,
    )
    assert ok, content
    assert "http://uri.etsi.org/19522/Event/ContentHandover" in content
    assert "ayse.kaya@kep.test" in content and "timeStampToken" in printed
    # Dovecot set \Seen in the file name, which kepmta's own IMAP server shows too.
    kep.select("INBOX", readonly=True)
    assert "\\Seen" in flags_of(kep, kep_uid)

    # Read again, unseen and seen again (Dovecot reports that second read): still one evidence.
    m.uid("FETCH", uid, "(BODY[])")
    m.uid("STORE", uid, "-FLAGS", "(\\Seen)")
    m.uid("FETCH", uid, "(BODY[TEXT])")
    assert len(reads_of(setup.spool, uid)) == 2
    assert wait_for(lambda: spool_drained(setup.spool), TIMEOUT)
    assert len(receipts(a, subj, "ContentHandover")) == 1
    for session in (m, kep, a):
        session.logout()


def test_store_seen_through_dovecot_makes_content_handover(setup: Setup) -> None:
    subj = subject("dovecot-store")
    a = deliver_dispatch(setup, subj)
    m = imap_at(setup.dovecot.port, setup.srv, setup.srv.account(1))
    m.select("INBOX")
    uid = uid_of(m, subj)
    assert m.uid("STORE", uid, "+FLAGS", "(\\Seen)")[0] == "OK"
    assert len(wait_for(lambda: receipts(a, subj, "ContentHandover"), TIMEOUT)) == 1
    m.logout()
    a.logout()


def _subscribed(m: imaplib.IMAP4, pattern: str) -> set[bytes]:
    typ, data = m.lsub('""', pattern)
    assert typ == "OK", data
    return {line.rsplit(b" ", 1)[1].strip(b'"') for line in data if isinstance(line, bytes)}


def test_subscriptions_are_shared_with_dovecot(setup: Setup) -> None:
    """Both servers keep an account's subscriptions in its Maildir's `subscriptions` file (RFC 3501
    §6.3.6): what a client subscribes through one, the other lists in LSUB."""
    ali = setup.srv.account(0)
    kep = imap(setup.srv, ali)
    assert kep.create('"Paylasim.Ar&AV8-iv"')[0] == "OK"
    assert kep.subscribe('"Paylasim.Ar&AV8-iv"')[0] == "OK"
    dove = imap_at(setup.dovecot.port, setup.srv, ali)
    # The folders kepmta's first login subscribed, and the new one, in kepmta's spelling.
    assert {b"INBOX", b"Sent", b"Paylasim.Ar&AV8-iv"} <= _subscribed(dove, "*")
    assert dove.subscribe('"Paylasim"')[0] == "OK"
    assert dove.unsubscribe('"Sent"')[0] == "OK"
    found = _subscribed(kep, "*")
    assert b"Paylasim" in found and b"Sent" not in found
    assert kep.unsubscribe('"Paylasim.Ar&AV8-iv"')[0] == "OK"
    assert b"Paylasim.Ar&AV8-iv" not in _subscribed(dove, "*")
    dove.logout()
    kep.logout()
