"""neomutt reads a legal entity's mailbox as the entity's operator: `imap_login` is the person who
authenticates, `imap_user` the entity, sent as the SASL PLAIN authorisation identity (RFC 4616 §2).
The read's ContentHandover names the operator. (mbsync cannot: isync has no authorisation identity
setting; its `User` is both.)"""

from __future__ import annotations

import imaplib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from interop_fixtures import TIMEOUT, flags_of, need, send, subject, uid_of
from kepclient import DevServer, imap, openssl_verify, p7m, receipts, signed_by, wait_for
from test_mutt import run_on_terminal


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    need("neomutt")
    server = DevServer(tmp_path_factory.mktemp("kep") / "data").start()
    yield server
    server.stop()


def muttrc(srv: DevServer, entity: str, operator: dict[str, str], home: Path) -> Path:
    assert srv.info
    rc = home / "muttrc"
    rc.write_text(
        f"""set folder = "imaps://localhost:{srv.ports["imaps"]}/"
set spoolfile = "+INBOX"
set imap_user = "{entity}"
set imap_login = "{operator["address"]}"
set imap_pass = "{operator["password"]}"
set imap_authenticators = "plain"
set ssl_ca_certificates_file = "{srv.info["provider_ca"]}"
set certificate_file = "{home}/certificates"
set header_cache = ""
set message_cachedir = ""
set imap_check_subscribed = no
set mark_old = no
set move = no
set delete = no
set quit = yes
set wait_key = no
set sort = date
set pager_stop = yes
set help = no
"""
    )
    return rc


def test_neomutt_reads_the_entity_mailbox_as_its_operator(srv: DevServer, tmp_path: Path) -> None:
    assert srv.info
    ali = srv.account(0)
    entity = srv.info["entities"][0]
    kurum = entity["address"]
    mehmet = next(a for a in srv.info["accounts"] if a["address"] == entity["operators"][0])
    subj = subject("kurum-mutt")
    send(srv, 0, [kurum], signed_by(srv, 0, [kurum], subj, "Kuruma ihtar."))
    a = imap(srv, ali)
    assert wait_for(lambda: receipts(a, subj, "ContentConsignment"), TIMEOUT)

    program = shutil.which("neomutt")
    assert program
    keys = f"<limit>~s {subj}<enter><display-message><exit><quit>"
    code, screen = run_on_terminal(
        [
            program,
            "-n",
            "-F",
            str(muttrc(srv, kurum, mehmet, tmp_path)),
            "-f",
            "+INBOX",
            "-e",
            f'push "{keys}"',
        ],
        tmp_path,
        TIMEOUT * 2,
    )
    assert code == 0, screen[-3000:]

    found = wait_for(lambda: receipts(a, subj, "ContentHandover"), TIMEOUT)
    assert len(found) == 1, screen[-3000:]
    ok, content, _ = openssl_verify(p7m(found[0], "ContentHandover"), srv.info["provider_ca"], tmp_path)
    assert ok, content
    assert f"Read by {mehmet['address']}, authorised operator of {kurum}." in content
    a.logout()
    # The dispatch was read in the entity's mailbox, as the server sees it.
    m = imaplib.IMAP4_SSL("127.0.0.1", srv.ports["imaps"], ssl_context=srv.tls(), timeout=TIMEOUT)
    m.authenticate("PLAIN", lambda _: f"{kurum}\0{mehmet['address']}\0{mehmet['password']}".encode())
    m.select("INBOX", readonly=True)
    assert "\\Seen" in flags_of(m, uid_of(m, subj))
    m.logout()
