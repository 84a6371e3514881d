"""Client side of the integration tests: a `kepmta serve --dev` process and the standard clients
(smtplib, imaplib, openssl) a user would point at it. Signing here uses `cryptography`'s own S/MIME
builder, never kepmta's code."""

from __future__ import annotations

import email
import email.policy
import email.utils
import imaplib
import json
import os
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7

KEPMTA = [sys.executable, "-m", "kepmta"]
T = TypeVar("T")


def free_port_base() -> int:
    """Four consecutive free ports."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base > 65000:
            continue
        ok = True
        for p in range(base, base + 4):
            with socket.socket() as t:
                try:
                    t.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
        if ok:
            return base


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class DevServer:
    data: Path
    proc: subprocess.Popen[bytes] | None = None
    info: dict[str, Any] | None = None

    @property
    def log(self) -> Path:
        return self.data.parent / (self.data.name + ".log")

    def start(self, timeout: float = 90) -> DevServer:
        self.proc = subprocess.Popen(
            [*KEPMTA, "serve", "--dev", "--data", str(self.data), "--port-base", str(free_port_base())],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"kepmta exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}"
                )
            r = kepmta("dev-info", "--data", str(self.data), "--json")
            if r.returncode == 0:
                self.info = json.loads(r.stdout)
                if all(port_open(p) for p in self.info["ports"].values()):
                    return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("kepmta serve --dev did not come up")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    @property
    def ports(self) -> dict[str, int]:
        assert self.info
        ports: dict[str, int] = self.info["ports"]
        return ports

    def account(self, i: int) -> dict[str, str]:
        assert self.info
        acct: dict[str, str] = self.info["accounts"][i]
        return acct

    def tls(self) -> ssl.SSLContext:
        assert self.info
        ctx = ssl.create_default_context(cafile=self.info["provider_ca"])
        ctx.check_hostname = False  # the dev certificate names localhost; we dial 127.0.0.1
        return ctx


def kepmta(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KEPMTA, *args], capture_output=True, text=True, timeout=120)


def smime_sign(inner: bytes, cert_path: str | Path, key_path: str | Path) -> bytes:
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    key = serialization.load_pem_private_key(Path(key_path).read_bytes(), None)
    out = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(inner)
        .add_signer(cert, key, hashes.SHA256())  # type: ignore[arg-type]
        .sign(serialization.Encoding.SMIME, [pkcs7.PKCS7Options.DetachedSignature])
    )
    return re.sub(rb"\r?\n", b"\r\n", out)


def headers(sender: str, to: list[str], subject: str) -> bytes:
    return (
        f"From: {sender}\r\nTo: {', '.join(to)}\r\nSubject: {subject}\r\n"
        f"Date: {email.utils.formatdate()}\r\nMessage-ID: <{uuid.uuid4().hex}@client.test>\r\n"
    ).encode()


def signed_message(
    sender: str, to: list[str], subject: str, body: str, cert: str | Path, key: str | Path
) -> bytes:
    inner = (
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        + body.replace("\n", "\r\n")
        + "\r\n"
    ).encode()
    return headers(sender, to, subject) + smime_sign(inner, cert, key)


def plain_message(sender: str, to: list[str], subject: str, body: str) -> bytes:
    return (
        headers(sender, to, subject) + f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n".encode()
    )


def signed_by(srv: DevServer, i: int, to: list[str], subject: str, body: str = "Merhaba.") -> bytes:
    a = srv.account(i)
    return signed_message(a["address"], to, subject, body, a["cert"], a["key"])


def smtp(srv: DevServer, acct: dict[str, str] | None = None) -> smtplib.SMTP:
    s = smtplib.SMTP("127.0.0.1", srv.ports["submission"], timeout=60)
    s.ehlo("client.test")
    s.starttls(context=srv.tls())
    s.ehlo("client.test")
    if acct:
        s.login(acct["address"], acct["password"])
    return s


def imap(srv: DevServer, acct: dict[str, str]) -> imaplib.IMAP4_SSL:
    m = imaplib.IMAP4_SSL("127.0.0.1", srv.ports["imaps"], ssl_context=srv.tls(), timeout=60)
    m.login(acct["address"], acct["password"])
    return m


def wait_for(fn: Callable[[], T], timeout: float = 30, step: float = 0.2) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def folder_messages(m: imaplib.IMAP4, folder: str, subject: str) -> list[bytes]:
    """Raw bytes (BODY.PEEK[]) of the messages in `folder` whose Subject contains `subject`."""
    typ, _ = m.select(f'"{folder}"', readonly=True)
    if typ != "OK":
        return []
    _, data = m.uid("SEARCH", None, "SUBJECT", f'"{subject}"')  # type: ignore[arg-type]
    found = []
    for uid in (data[0] or b"").split():
        _, fd = m.uid("FETCH", uid.decode(), "(BODY.PEEK[])")
        found += [item[1] for item in fd if isinstance(item, tuple)]
    return found


EVIDENCE_FOLDER = "Kan&ATE-t"  # "Kanıt" in modified UTF-7


def receipts(m: imaplib.IMAP4, subject: str, event: str) -> list[bytes]:
    return [
        r
        for r in folder_messages(m, EVIDENCE_FOLDER, subject)
        if re.search(rb"(?im)^Subject: REM " + event.encode() + rb":", r)
    ]


def p7m(raw: bytes, event: str) -> bytes:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    for part in msg.walk():
        if part.get_filename() == f"{event}.p7m":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            return payload
    raise AssertionError(f"no {event}.p7m in the receipt")


def openssl_verify(der: bytes, ca: str, tmp: Path) -> tuple[bool, str, str]:
    """`openssl cms -verify -inform DER -in F -CAfile CA` with no other option; the content and
    the printed structure."""
    f = tmp / f"{uuid.uuid4().hex}.p7m"
    f.write_bytes(der)
    out = tmp / f"{f.stem}.out"
    r = subprocess.run(
        ["openssl", "cms", "-verify", "-inform", "DER", "-in", str(f), "-CAfile", ca, "-out", str(out)],
        capture_output=True,
    )
    printed = subprocess.run(
        ["openssl", "cms", "-cmsout", "-print", "-inform", "DER", "-in", str(f)],
        capture_output=True,
        text=True,
    ).stdout
    content = out.read_text() if r.returncode == 0 else r.stderr.decode()
    return r.returncode == 0, content, printed
