"""neomutt (or mutt) against kepmta's own IMAP server: a user opens a dispatch, flags it and quits.

Mutt has no batch mode for reading, so it runs on a pseudo-terminal with its keystrokes given in
advance (`-e 'push …'`), exactly as a user would type them; the test then checks on the server
(imaplib) that the flags arrived, and that the read made ContentHandover evidence for the sender.
"""

from __future__ import annotations

import fcntl
import os
import select
import shutil
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from interop_fixtures import TIMEOUT, flags_of, need, send, subject, uid_of
from kepclient import DevServer, imap, openssl_verify, p7m, receipts, signed_by, wait_for


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    need("neomutt", "mutt")
    server = DevServer(tmp_path_factory.mktemp("kep") / "data").start()
    yield server
    server.stop()


def muttrc(srv: DevServer, acct: dict[str, str], home: Path) -> Path:
    assert srv.info
    user = acct["address"].replace("@", "%40")
    rc = home / "muttrc"
    rc.write_text(
        f"""set folder = "imaps://{user}@localhost:{srv.ports["imaps"]}/"
set spoolfile = "+INBOX"
set imap_user = "{acct["address"]}"
set imap_pass = "{acct["password"]}"
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
set confirmappend = no
set sort = date
set pager_stop = yes
set help = no
"""
    )
    return rc


def run_on_terminal(argv: list[str], home: Path, timeout: float) -> tuple[int, bytes]:
    """Run a full-screen program on a pseudo-terminal until it exits; its status and screen output."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 132, 0, 0))
    env = {
        "HOME": str(home),
        "TERM": "xterm",
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
    }
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True)
    os.close(slave)
    screen = b""
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    screen += os.read(master, 65536)
                except OSError:  # EIO: the program closed the terminal
                    break
        proc.wait(max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"{argv[0]} did not finish; screen: {screen[-3000:]!r}") from None
    finally:
        os.close(master)
    return proc.returncode, screen


def test_mutt_reads_and_flags_a_dispatch(srv: DevServer, tmp_path: Path) -> None:
    ali, ayse = srv.account(0), srv.account(1)
    subj = subject("mutt")
    other = subject("mutt-other")
    for s in (subj, other):
        send(srv, 0, [ayse["address"]], signed_by(srv, 0, [ayse["address"]], s, "Ödeme ihtarı."))
    a = imap(srv, ali)
    for s in (subj, other):
        assert wait_for(lambda s=s: receipts(a, s, "ContentConsignment"), TIMEOUT)  # type: ignore[misc]

    program = shutil.which("neomutt") or shutil.which("mutt")
    assert program
    keys = f"<limit>~s {subj}<enter><display-message><exit><flag-message><sync-mailbox><quit>"
    code, screen = run_on_terminal(
        [program, "-n", "-F", str(muttrc(srv, ayse, tmp_path)), "-f", "+INBOX", "-e", f'push "{keys}"'],
        tmp_path,
        TIMEOUT * 2,
    )
    assert code == 0, screen[-3000:]

    server = imap(srv, ayse)
    server.select("INBOX", readonly=True)
    assert {"\\Seen", "\\Flagged"} <= flags_of(server, uid_of(server, subj))
    assert not {"\\Seen", "\\Flagged"} & flags_of(server, uid_of(server, other))
    found = wait_for(lambda: receipts(a, subj, "ContentHandover"), TIMEOUT)
    assert len(found) == 1
    ok, content, printed = openssl_verify(p7m(found[0], "ContentHandover"), srv.info["provider_ca"], tmp_path)  # type: ignore[index]
    assert ok, content
    assert "ContentHandover" in content and "timeStampToken" in printed
    assert receipts(a, other, "ContentHandover") == []
    server.logout()
    a.logout()
