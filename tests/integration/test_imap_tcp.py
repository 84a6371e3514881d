"""What kepmta's IMAP server does at the TCP level: it acknowledges a literal at once, so a client
that writes the literal and its closing CRLF separately (imaplib) is not held by Nagle's algorithm,
and it closes the connection after LOGOUT over TLS instead of waiting for the client's close_notify.

The first is counted, not timed: the test runs a server and a client in a network namespace of
their own, where the kernel's count of delayed ACKs (TcpExt DelayedACKs in /proc/net/netstat) is
theirs alone.
"""

from __future__ import annotations

import imaplib
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from kepclient import DevServer, plain_message

APPENDS = 20


def delayed_acks() -> int:
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for head, values in zip(lines[::2], lines[1::2], strict=True):
        if head.startswith("TcpExt:"):
            return dict(zip(head.split()[1:], map(int, values.split()[1:]), strict=True))["DelayedACKs"]
    raise RuntimeError("no TcpExt line in /proc/net/netstat")


def count_acks_of_appends() -> dict[str, int]:
    """In the namespace: APPENDs from imaplib against a dev server, and the delayed ACKs meanwhile."""
    with tempfile.TemporaryDirectory() as tmp:
        srv = DevServer(Path(tmp) / "data").start()
        try:
            acct = srv.account(0)
            m = imaplib.IMAP4_SSL("127.0.0.1", srv.ports["imaps"], ssl_context=srv.tls())
            m.login(acct["address"], acct["password"])
            msg = plain_message(acct["address"], [acct["address"]], "ack", "x" * 2000)
            m.append("INBOX", None, None, msg)
            before = delayed_acks()
            for _ in range(APPENDS):
                typ, _data = m.append("INBOX", None, None, msg)
                assert typ == "OK"
            after = delayed_acks()
            m.logout()
            return {"appends": APPENDS, "delayed_acks": after - before}
        finally:
            srv.stop()


def test_a_literal_is_acknowledged_at_once() -> None:
    # As root a network namespace is ours to make; otherwise a user namespace makes us its root.
    unshare = ["unshare", "--net"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--net"]
    inner = f"ip link set lo up && exec {sys.executable} {__file__}"
    r = subprocess.run([*unshare, "sh", "-c", inner], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"could not run in a network namespace:\n{r.stdout}\n{r.stderr[-4000:]}"
    counted = json.loads(r.stdout.strip().splitlines()[-1])
    assert counted["appends"] == APPENDS
    # Before the server asked for a quick ACK after its continuation, every literal's ACK was
    # delayed (20 of 20), and imaplib's CRLF waited up to 40 ms for it.
    assert counted["delayed_acks"] <= 2, counted


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    srv = DevServer(tmp_path_factory.mktemp("tcp") / "data").start()
    yield srv
    srv.stop()


def test_logout_over_tls_ends_the_tcp_connection(server: DevServer) -> None:
    """A client that neither sends close_notify nor closes its side after LOGOUT sees the
    server's FIN, not a connection held open for asyncio's 30 s TLS shutdown timeout."""
    acct = server.account(0)
    raw = socket.create_connection(("127.0.0.1", server.ports["imaps"]))
    raw.settimeout(10)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = server.tls().wrap_bio(incoming, outgoing)

    def pump_out() -> None:
        if data := outgoing.read():
            raw.sendall(data)

    def read_tls() -> bytes:
        """Decrypted octets, b"" at the server's close_notify."""
        while True:
            try:
                return tls.read(65536)
            except ssl.SSLWantReadError:
                pump_out()
                data = raw.recv(65536)
                if not data:
                    return b""
                incoming.write(data)
            except ssl.SSLZeroReturnError:
                return b""

    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            pump_out()
            incoming.write(raw.recv(65536))
    pump_out()

    said = b""
    for command in (f'a LOGIN "{acct["address"]}" "{acct["password"]}"', "b LOGOUT"):
        tls.write(command.encode() + b"\r\n")
        pump_out()
        tag = command.split()[0].encode()
        while b"\r\n" + tag + b" OK" not in b"\r\n" + said:
            chunk = read_tls()
            assert chunk, said
            said += chunk
    assert b"* BYE" in said
    assert read_tls() == b""  # the server's close_notify
    # Then its FIN, while we keep our side open and silent; before, recv timed out here.
    rest = b""
    while chunk := raw.recv(65536):
        rest += chunk
    assert rest == b""
    raw.close()


if __name__ == "__main__":
    print(json.dumps(count_acks_of_appends()))
