"""SIGHUP over real sockets: sessions opened before a reload keep working, new connections see the
new certificate, a policy change reaches the next transaction, a broken policy is refused with its
one line while the old values stay; and systemd's notify socket hears READY=1 once every listener
is open, RELOADING=1 and READY=1 around each reload, and STOPPING=1 at SIGTERM."""

from __future__ import annotations

import hashlib
import imaplib
import json
import os
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from kepclient import KEPMTA, DevServer, free_port_base, kepmta, port_open, smtp

from kepmta import config, devinit, pki

POLICY = "policy.toml"


class Notified:
    """The socket systemd would listen on (sd_notify(3)): one datagram per state change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        # Only a bound on a server that hangs; nothing here depends on how fast it is.
        self.sock.settimeout(120)

    def next(self) -> list[str]:
        return self.sock.recv(4096).decode().split("\n")


@pytest.fixture(scope="module")
def notified(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Notified]:
    n = Notified(tmp_path_factory.mktemp("notify") / "notify")
    yield n
    n.sock.close()


@dataclass(frozen=True)
class Started:
    srv: DevServer
    ready: list[str]  # the first datagram
    open_at_ready: dict[str, bool]  # each listener, open when it came


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory, notified: Notified) -> Iterator[Started]:
    data = tmp_path_factory.mktemp("reload") / "data"
    server = DevServer(data)
    # The policy in a file of the folder's own, so the tests can change it.
    devinit.create_identity(data, devinit.choose_ports(free_port_base()))
    shutil.copy(config.DEFAULT_POLICY, data / POLICY)
    conf = data / devinit.CONFIG_NAME
    conf.write_text(conf.read_text() + f'\n[policy]\nfile = "{POLICY}"\n')
    server.proc = subprocess.Popen(
        [*KEPMTA, "serve", "--dev", "--data", str(data)],
        stdout=server.log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "NOTIFY_SOCKET": str(notified.path)},
    )
    try:
        ready = notified.next()
        server.info = json.loads(kepmta("dev-info", "--data", str(data), "--json").stdout)
        yield Started(server, ready, {name: port_open(p) for name, p in server.ports.items()})
    finally:
        server.stop()


@pytest.fixture
def srv(started: Started) -> DevServer:
    return started.srv


def reload(srv: DevServer, notified: Notified) -> str:
    """SIGHUP, and the log the reload wrote, once systemd would have heard it is over."""
    assert srv.proc is not None
    before = len(srv.log.read_text())
    os.kill(srv.proc.pid, signal.SIGHUP)
    assert notified.next()[0] == "RELOADING=1"
    assert notified.next()[0] == "READY=1"
    return srv.log.read_text()[before:]


def fingerprint(der: bytes | None) -> str:
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def seen_certificates(srv: DevServer) -> dict[str, str]:
    """SHA-256 of the certificate a new connection to each TLS listener is shown."""
    ctx = srv.tls()
    seen = {}
    for name in ("submissions", "imaps", "api"):
        with (
            socket.create_connection(("127.0.0.1", srv.ports[name]), timeout=30) as raw,
            ctx.wrap_socket(raw) as tls,
        ):
            seen[name] = fingerprint(tls.getpeercert(binary_form=True))
    for name in ("submission", "relay"):
        with smtplib.SMTP("127.0.0.1", srv.ports[name], timeout=30) as s:
            s.starttls(context=ctx)
            assert isinstance(s.sock, ssl.SSLSocket)
            seen[name] = fingerprint(s.sock.getpeercert(binary_form=True))
    imap = imaplib.IMAP4("127.0.0.1", srv.ports["imap"], timeout=30)
    try:
        imap.starttls(ssl_context=ctx)
        assert isinstance(imap.sock, ssl.SSLSocket)
        seen["imap"] = fingerprint(imap.sock.getpeercert(binary_form=True))
    finally:
        imap.logout()
    return seen


def announced_size(srv: DevServer) -> int:
    with smtp(srv) as s:
        return int(s.esmtp_features["size"])


def write_policy(srv: DevServer, **values: int) -> Path:
    text = config.DEFAULT_POLICY.read_text()
    for key, value in values.items():
        lines = [line for line in text.splitlines() if line.startswith(f"{key} = ")]
        assert len(lines) == 1, key
        text = text.replace(lines[0], f"{key} = {value}")
    path = srv.data / POLICY
    path.write_text(text)
    return path


def test_ready_once_every_listener_is_open(started: Started) -> None:
    assert started.ready[0] == "READY=1"
    assert started.open_at_ready == dict.fromkeys(started.srv.ports, True)


def test_open_sessions_survive_and_new_connections_get_the_new_certificate(
    srv: DevServer, notified: Notified
) -> None:
    acct = srv.account(0)
    imap = imaplib.IMAP4_SSL("127.0.0.1", srv.ports["imaps"], ssl_context=srv.tls(), timeout=30)
    imap.login(acct["address"], acct["password"])
    assert imap.select("INBOX")[0] == "OK"
    session = smtp(srv, acct)
    old = pki.load_certs(srv.data / "pki" / "tls.pem")[0]
    assert set(seen_certificates(srv).values()) == {fingerprint(old.public_bytes(Encoding.DER))}

    ca = pki.load_pair(srv.data / "pki" / "provider-ca.pem", srv.data / "pki" / "provider-ca.key")
    new = pki.issue("localhost", pki.Role.TLS_SERVER, ca, dns_names=("localhost",))
    pki.save(new, srv.data / "pki" / "tls.pem", srv.data / "pki" / "tls.key", chain=(ca.cert,))
    log = reload(srv, notified)
    assert "reloaded" in log and "not reloaded" not in log

    wanted = fingerprint(new.cert.public_bytes(Encoding.DER))
    seen = seen_certificates(srv)
    assert len(seen) == 6 and set(seen.values()) == {wanted}
    # The sessions from before go on, over the TLS they began with.
    assert imap.noop()[0] == "OK"
    assert imap.select("INBOX")[0] == "OK"
    assert imap.logout()[0] == "BYE"
    assert session.noop()[0] == 250
    assert session.mail(acct["address"])[0] == 250
    assert session.rset()[0] == 250
    session.quit()


def test_a_policy_change_reaches_the_next_transaction(srv: DevServer, notified: Notified) -> None:
    acct = srv.account(0)
    write_policy(srv, local_max=100 * 1024 * 1024)
    reload(srv, notified)
    assert announced_size(srv) == 100 * 1024 * 1024
    before = smtp(srv, acct)  # a session opened under the old policy
    assert before.docmd("MAIL", f"FROM:<{acct['address']}> SIZE={60 * 1024 * 1024}")[0] == 250
    assert before.rset()[0] == 250

    write_policy(srv, local_max=50 * 1024 * 1024, max_refused_recipients=1)
    log = reload(srv, notified)
    assert "not reloaded" not in log
    # A new session is told the new limit, and the open one's next transaction is held to it.
    assert announced_size(srv) == 50 * 1024 * 1024
    code, text = before.docmd("MAIL", f"FROM:<{acct['address']}> SIZE={60 * 1024 * 1024}")
    assert code == 552, text
    assert before.mail(acct["address"])[0] == 250
    # [submission] max_refused_recipients = 1: the second refused recipient ends the session.
    assert before.rcpt("nobody-1@kep.test")[0] == 550
    assert before.rcpt("nobody-2@kep.test")[0] == 421
    before.close()


def test_a_broken_policy_is_refused_and_the_old_one_stays(srv: DevServer, notified: Notified) -> None:
    in_force = announced_size(srv)
    path = write_policy(srv, local_max=40 * 1024 * 1024, max_refused_recipients=0)
    log = reload(srv, notified)
    line = f"{path}: submission.max_refused_recipients must be an integer from 1 to 10000"
    assert f"configuration not reloaded, the one in force stays: {line}" in log
    assert announced_size(srv) == in_force != 40 * 1024 * 1024
    write_policy(srv)
    assert "not reloaded" not in reload(srv, notified)
    assert announced_size(srv) == 100 * 1024 * 1024


def test_a_change_that_needs_a_restart_is_said_once(srv: DevServer, notified: Notified) -> None:
    conf = srv.data / devinit.CONFIG_NAME
    text = conf.read_text()
    port = srv.ports["imap"]
    conf.write_text(text.replace(f"imap = {port}\n", f"imap = {port + 1000}\n"))
    try:
        log = reload(srv, notified)
    finally:
        conf.write_text(text)
    said = [line for line in log.splitlines() if "kept until a restart" in line]
    assert len(said) == 1 and said[0].endswith(f"changed in {conf} but kept until a restart: ports")
    assert port_open(port)  # still served where it was


def test_stopping_at_sigterm(srv: DevServer, notified: Notified) -> None:
    assert srv.proc is not None
    os.kill(srv.proc.pid, signal.SIGTERM)
    assert notified.next() == ["STOPPING=1"]
    assert srv.proc.wait(60) == 0
