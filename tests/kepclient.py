"""Client side of the integration tests: a `kepmta serve --dev` process and the standard clients
(smtplib, imaplib, openssl) a user would point at it. Signing here uses `cryptography`'s own S/MIME
builder, never kepmta's code."""

from __future__ import annotations

import contextlib
import datetime as dt
import email
import email.policy
import email.utils
import imaplib
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
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kepmta import config, devinit
from kepmta.cli.serve import dev_info

KEPMTA = [sys.executable, "-m", "kepmta"]
T = TypeVar("T")


def _port_band() -> range:
    """The ports this test process hands out: below the kernel's ephemeral range, which it uses for
    port 0 and outgoing connections, and, under pytest-xdist, a band of its own per worker, so that a
    port probed free here cannot be taken by another worker before the server binds it."""
    try:
        ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 32768
    low = 10000
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    width = (ephemeral - low) // workers
    return range(low + worker * width, low + (worker + 1) * width)


_BAND = _port_band()
_next_port = _BAND.start + (os.getpid() * 7919) % len(_BAND)


def free_port_base(count: int = 7) -> int:
    """`count` consecutive free ports, by default the seven of a server (submission, submissions,
    imap, imaps, relay, api, metrics). Successive calls never return the same ports again until the
    band wraps round, so two servers started by one test do not meet."""
    global _next_port
    for _ in range(len(_BAND)):
        base = _next_port
        if base + count > _BAND.stop:
            base = _BAND.start
        _next_port = base + count
        if all(devinit.port_free(p) for p in range(base, base + count)):
            return base
    raise RuntimeError(f"no {count} free consecutive ports in {_BAND.start}..{_BAND.stop - 1}")


def free_port() -> int:
    return free_port_base(1)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class DevServer:
    data: Path
    proc: subprocess.Popen[bytes] | None = None
    info: dict[str, Any] | None = None
    domain: str | None = None  # a development provider for another domain than kep.test
    database: str | None = None  # the [database] url of a new folder, if not its SQLite file

    @property
    def log(self) -> Path:
        return self.data.parent / (self.data.name + ".log")

    def start(self, timeout: float = 90) -> DevServer:
        domain = ["--domain", self.domain] if self.domain else []
        ports = ["--port-base", str(free_port_base())]
        database = ["--database", self.database] if self.database else []
        self.proc = subprocess.Popen(
            [*KEPMTA, "serve", "--dev", "--data", str(self.data), *ports, *domain, *database],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        # What `kepmta dev-info` prints, read here once the folder is set up: running the command
        # at every poll cost a second of CPU each (importing kepmta), which the server starting
        # on two cores then lacked. Until then `info` stays the last start's: clients of a
        # restarted server keep its ports.
        fresh: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"kepmta exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}"
                )
            if fresh is None and devinit.is_initialised(self.data):
                with contextlib.suppress(config.ConfigError, OSError, ValueError):
                    fresh = dev_info(self.data)
            if fresh is not None and all(port_open(p) for p in fresh["ports"].values()):
                self.info = fresh
                return self
            time.sleep(0.05)
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


def children(pid: int) -> list[int]:
    """The child processes of `pid` (proc(5)); none once it is gone."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def parent(pid: int) -> int:
    """The parent process of `pid` (proc(5) stat: the field after the state)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def worker_processes(srv: DevServer) -> list[int]:
    """The server's worker processes: the children of its forker, its child running `-m
    kepmta.workers`."""
    assert srv.proc is not None
    forkers = [
        c for c in children(srv.proc.pid) if b"kepmta.workers" in Path(f"/proc/{c}/cmdline").read_bytes()
    ]
    return [w for f in forkers for w in children(f)]


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


def smtp_reply(sock: socket.socket) -> bytes:
    """One whole SMTP reply from a raw socket, every line of a multi-line one (RFC 5321 §4.2.1),
    read a byte at a time so that a pipelined next reply stays unread."""
    data = b""
    while not data.endswith(b"\r\n") or data.split(b"\r\n")[-2][3:4] != b" ":
        byte = sock.recv(1)
        assert byte, f"the server closed the connection after {data!r}"
        data += byte
    return data


def smtp(srv: DevServer, acct: dict[str, str] | None = None) -> smtplib.SMTP:
    s = smtplib.SMTP("127.0.0.1", srv.ports["submission"], timeout=60)
    s.ehlo("client.test")
    s.starttls(context=srv.tls())
    s.ehlo("client.test")
    if acct:
        s.login(acct["address"], acct["password"])
    return s


def submit(srv: DevServer, sender: int, to: list[str], msg: bytes) -> str:
    """Submit over STARTTLS as account `sender`, every step asserted 250; the final reply."""
    with smtp(srv, srv.account(sender)) as s:
        code, text = s.mail(srv.account(sender)["address"])
        assert code == 250, text
        for rcpt in to:
            code, text = s.rcpt(rcpt)
            assert code == 250, text
        code, text = s.data(msg)
        assert code == 250, text
        return text.decode()


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


def accounts_cli(data: str | Path, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    r = subprocess.run(
        [*KEPMTA, "accounts", *args, "--data", str(data)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return r.returncode, r.stdout.strip(), r.stderr.strip()


def issue_cert(
    data: str | Path,
    email: str | None,
    *,
    serial_number: str | None = None,
    not_after: dt.datetime | None = None,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
) -> tuple[Path, Path]:
    """A personal signing certificate from the development qualified CA of `data` (or `issuer`),
    made here with `cryptography`, independently of kepmta."""
    if issuer is None:
        pki_dir = Path(data) / "pki"
        ca = x509.load_pem_x509_certificate((pki_dir / "qualified-ca.pem").read_bytes())
        ca_key = serialization.load_pem_private_key((pki_dir / "qualified-ca.key").read_bytes(), None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        issuer = (ca, ca_key)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, email or "KEP test person")]
    if serial_number:
        attrs.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, serial_number))
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(issuer[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=60))
        .not_valid_after(not_after or now + dt.timedelta(days=30))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
    )
    if email:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
    cert = builder.sign(issuer[1], hashes.SHA256())
    out = Path(data).parent / "test-certs"
    out.mkdir(exist_ok=True)
    stem = uuid.uuid4().hex
    c, k = out / f"{stem}.pem", out / f"{stem}.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return c, k


def new_person(
    srv: DevServer, first: str, last: str, *extra: str, password: str = "uzun-bir-parola"
) -> dict[str, str]:
    """An account made with `kepmta accounts add person` (active unless told), with a certificate."""
    data = srv.info["data"]  # type: ignore[index]
    code, address, err = accounts_cli(
        data,
        "add",
        "person",
        "--first-name",
        first,
        "--last-name",
        last,
        "--password-stdin",
        *extra,
        stdin=password + "\n",
    )
    assert code == 0, err
    cert, key = issue_cert(data, address)
    return {"address": address, "password": password, "cert": str(cert), "key": str(key)}


def compose(
    from_: str,
    to: list[str],
    subject: str,
    body: str,
    cert: str | Path,
    key: str | Path,
    *,
    cc: list[str] | None = None,
    extra: str = "",
) -> bytes:
    """A signed message with the header fields given (the formal checks look at them)."""
    inner = f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n".encode()
    head = f"From: {from_}\r\nTo: {', '.join(to)}\r\n"
    if cc:
        head += f"Cc: {', '.join(cc)}\r\n"
    head += (
        f"Subject: {subject}\r\nDate: {email.utils.formatdate()}\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@client.test>\r\n{extra}"
    )
    return head.encode() + smime_sign(inner, cert, key)


def send_as(
    srv: DevServer,
    creds: dict[str, str],
    mail_from: str,
    rcpts: list[str],
    msg: bytes,
    options: list[str] | None = None,
) -> tuple[str, int, str]:
    """("MAIL"|"RCPT"|"DATA"|"done", code, text) of the first refusal, or of the acceptance."""
    with smtp(srv, creds) as s:
        code, text = s.mail(mail_from, options or [])
        if code != 250:
            return "MAIL", code, text.decode()
        for r in rcpts:
            code, text = s.rcpt(r)
            if code != 250:
                return "RCPT", code, text.decode()
        code, text = s.data(msg)
        return ("done" if code == 250 else "DATA"), code, text.decode()


def rejection_evidence(srv: DevServer, creds: dict[str, str], subject: str, needle: str, tmp: Path) -> str:
    """The content of the SubmissionRejection evidence filed for `creds` whose text has `needle`,
    after `openssl cms -verify` accepted it."""
    ca = srv.info["provider_ca"]  # type: ignore[index]
    m = imap(srv, creds)
    try:

        def matching() -> list[str]:
            found = []
            for r in receipts(m, subject, "SubmissionRejection"):
                ok, content, printed = openssl_verify(p7m(r, "SubmissionRejection"), ca, tmp)
                if ok and needle in content and "timeStampToken" in printed:
                    found.append(content)
            return found

        found = wait_for(matching)
        assert found, f"no verified SubmissionRejection evidence naming {needle!r}"
        return found[-1]
    finally:
        m.logout()
