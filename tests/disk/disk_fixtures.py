"""A development server on a small filesystem, a database lock held from outside, and a time-stamp
authority that can hang, talk nonsense or answer, for the tests of this folder.

The small filesystem is a tmpfs of a few megabytes mounted on the server's data folder. Where this
process may not mount (not root), conftest.py runs the test again inside a user and mount namespace
(`unshare --user --map-root-user --mount`), where it may; KEPMTA_DISK_UNSHARE=1 takes that path
even as root, to try it.

What must hold after every outage is what tests/crash checks after every crash (crash_fixtures):
each 250 delivered once and nothing else, one evidence per event, each receipt filed once, no job,
spool file or original left over, and `kepmta evidence audit` clean.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import imaplib
import os
import re
import shutil
import smtplib
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from crash.crash_fixtures import Load, Outcome, Submission
from kepclient import DevServer, signed_by, smtp

from kepmta import pki
from kepmta.evidence.tsa import BuiltinTsa

NAMESPACE_ENV = "KEPMTA_DISK_NAMESPACE"  # set inside the namespace conftest.py runs a test in
FORCE_UNSHARE_ENV = "KEPMTA_DISK_UNSHARE"
FILLER = "filler"  # in the data folder, the mount point


class MountRefused(Exception):
    """This process may not mount a tmpfs."""


@dataclass(frozen=True)
class SmallDisk:
    """A tmpfs mounted at `root`; `fill` takes its free space, `free` gives it back."""

    root: Path

    @property
    def available(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def fill(self, leave: int = 0) -> None:
        """Take every free byte, then give `leave` bytes back (to the page)."""
        fd = os.open(self.root / FILLER, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for block in (1 << 20, 1 << 12, 1):
                try:
                    while os.write(fd, bytes(block)):
                        pass
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
        finally:
            os.close(fd)
        if leave:
            os.truncate(self.root / FILLER, max(0, (self.root / FILLER).stat().st_size - leave))

    def free(self) -> None:
        (self.root / FILLER).unlink(missing_ok=True)


@contextlib.contextmanager
def small_disk(root: Path, megabytes: int) -> Iterator[SmallDisk]:
    """A tmpfs of `megabytes` at `root` (made, and left empty: a development folder is made in
    it); raises MountRefused where this process may not mount."""
    if os.environ.get(FORCE_UNSHARE_ENV) and not os.environ.get(NAMESPACE_ENV):
        raise MountRefused(f"{FORCE_UNSHARE_ENV} is set: through the namespace")
    root.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m,mode=0700", "tmpfs", str(root)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        raise MountRefused(r.stderr.strip() or f"mount exited with {r.returncode}")
    try:
        yield SmallDisk(root)
    finally:
        subprocess.run(["umount", "--lazy", str(root)], check=False)


def in_namespace(nodeid: str, rootdir: Path) -> subprocess.CompletedProcess[str]:
    """Run the test `nodeid` again, in pytest, as root of a new user and mount namespace."""
    env = {**os.environ, NAMESPACE_ENV: "1"}
    return subprocess.run(
        [
            "unshare",
            "--user",
            "--map-root-user",
            "--mount",
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            nodeid,
        ],
        cwd=rootdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


# --- what a client sees ---------------------------------------------------------------------------


def submission(conn: smtplib.SMTP, load: Load, sender: str, to: list[str], msg: bytes) -> tuple[int, str]:
    """One transaction on `conn`; the reply to DATA (or to the step refused), recorded in `load`
    as the crash tests record theirs. No RSET after a refusal: a reply to DATA ends the
    transaction by itself (RFC 5321 §4.1.1.4), and the next MAIL shows it did."""
    found = re.search(rb"Message-ID: <([^>]+)>", msg)
    assert found
    ua = found.group(1).decode()
    code, text = conn.mail(sender)
    if code == 250:
        for r in to:
            code, text = conn.rcpt(r)
            if code != 250:
                break
        else:
            code, text = conn.data(msg)
    reply = text.decode()
    accepted = re.search(r"accepted as <([^>]+)>", reply) if code == 250 else None
    outcome = Outcome.ACCEPTED if accepted else Outcome.REFUSED
    load.submissions.append(
        Submission(sender, tuple(to), ua, outcome, accepted.group(1) if accepted else None, reply)
    )
    return code, reply


def submit(
    srv: DevServer, load: Load, sender: int, to: list[int], subject: str, body: str = "x"
) -> tuple[int, str]:
    """A signed message from demo account `sender` to demo accounts `to`, on a new connection."""
    addresses = [srv.account(i)["address"] for i in to]
    msg = signed_by(srv, sender, addresses, subject, body)
    with smtp(srv, srv.account(sender)) as conn:
        return submission(conn, load, srv.account(sender)["address"], addresses, msg)


def imap_reply(m: imaplib.IMAP4, *command: str | bytes) -> tuple[str, str]:
    """The tagged status and text of `command`, as the server sent them (NO is not an error here)."""
    tag = m._new_tag()
    m.send(tag + b" " + b" ".join(c if isinstance(c, bytes) else c.encode() for c in command) + b"\r\n")
    while True:
        line = m.readline()
        if line.startswith(b"+"):
            raise AssertionError(f"unexpected continuation: {line!r}")
        if line.startswith(tag + b" "):
            status, _, text = line[len(tag) + 1 :].decode().strip().partition(" ")
            return status, text
        if re.search(rb"\{(\d+)\}\r\n$", line):
            size = int(re.search(rb"\{(\d+)\}\r\n$", line).group(1))  # type: ignore[union-attr]
            m.read(size)


def append(m: imaplib.IMAP4, folder: str, message: bytes) -> tuple[str, str]:
    """APPEND with a synchronising literal: (status, text) of its tagged reply."""
    tag = m._new_tag()
    m.send(tag + f' APPEND "{folder}" {{{len(message)}}}\r\n'.encode())
    line = m.readline()
    if not line.startswith(b"+"):  # refused before the literal (quota, folder)
        status, _, text = line[len(tag) + 1 :].decode().strip().partition(" ")
        return status, text
    m.send(message + b"\r\n")
    while True:
        line = m.readline()
        if line.startswith(tag + b" "):
            status, _, text = line[len(tag) + 1 :].decode().strip().partition(" ")
            return status, text


def message(size: int) -> bytes:
    lines = "".join(f"{i:07d} {'y' * 70}\r\n" for i in range(size // 80 + 1))
    return f"From: a@kep.test\r\nSubject: taslak\r\n\r\n{lines}".encode()


# --- what the server holds ------------------------------------------------------------------------


def mail_root(srv: DevServer, i: int) -> Path:
    """The Maildir++ root of demo account `i` (its INBOX)."""
    local, domain = srv.account(i)["address"].split("@")
    return Path(srv.info["data"]) / "mail" / domain / local  # type: ignore[index]


def half_written(srv: DevServer, *accounts: int) -> list[str]:
    """Files a refused or failed write left behind: in the spool's incoming folder, and in the
    tmp/ of `accounts` (the folder an APPEND streams to), or of every folder of every account when
    none is named (only once the queue is drained: a delivery being written is there meanwhile)."""
    data = Path(srv.info["data"])  # type: ignore[index]
    left = [f"spool/incoming/{f.name}" for f in (data / "spool" / "incoming").iterdir()]
    if accounts:
        roots = [mail_root(srv, i) for i in accounts]
        tmp = [f for root in roots if (root / "tmp").is_dir() for f in (root / "tmp").iterdir()]
    else:
        tmp = list((data / "mail").glob("**/tmp/*"))
    return left + [str(f.relative_to(data)) for f in tmp]


def database_elsewhere(srv: DevServer, where: Path) -> None:
    """Move the (stopped) server's database to `where`, off the small disk, as a provider might
    keep it on a disk of its own; a symbolic link stays in its place for the readers here."""
    where.mkdir(parents=True, exist_ok=True)
    for f in Path(srv.data).glob("kepmta.db*"):
        shutil.move(f, where / f.name)
    (Path(srv.data) / "kepmta.db").symlink_to(where / "kepmta.db")
    config = Path(srv.data) / "kepmta.toml"
    text = config.read_text()
    assert 'url = "sqlite+aiosqlite:///kepmta.db"' in text
    config.write_text(text.replace("sqlite+aiosqlite:///kepmta.db", f"sqlite+aiosqlite:///{where}/kepmta.db"))


@contextlib.contextmanager
def database_lock(srv: DevServer) -> Iterator[None]:
    """An exclusive lock on the server's SQLite database, held by this process (WAL: readers go
    on, no writer does)."""
    conn = lock_database(srv)
    try:
        yield
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def lock_database(srv: DevServer) -> sqlite3.Connection:
    """A connection holding that lock, which any thread may release (ROLLBACK)."""
    db = Path(srv.info["data"]) / "kepmta.db"  # type: ignore[index]
    conn = sqlite3.connect(db, isolation_level=None, timeout=60, check_same_thread=False)
    try:
        conn.execute("BEGIN EXCLUSIVE")
    except BaseException:
        conn.close()
        raise
    return conn


def log_size(srv: DevServer) -> int:
    return srv.log.stat().st_size


def logged(srv: DevServer, since: int, *texts: str) -> bool:
    """Whether the server's log, from byte `since` on, has any of `texts`."""
    with srv.log.open("rb") as f:
        f.seek(since)
        written = f.read().decode(errors="replace")
    return any(t in written for t in texts)


# --- an external time-stamp authority -------------------------------------------------------------


class Tsa:
    """An RFC 3161 TSA over HTTP on 127.0.0.1 (RFC 3161 §3.4) answering with the development
    folder's own TSA key, or not: `mode` is "ok", "hang" (the connection accepted, never an
    answer) or "garbage" (HTTP 200 with a body that is no TimeStampResp)."""

    def __init__(self, pki_dir: Path) -> None:
        self._tsa = BuiltinTsa(
            pki.load_pair(pki_dir / "tsa.pem", pki_dir / "tsa.key"), pki.load_certs(pki_dir / "tsa.pem")[1:]
        )
        self.mode = "hang"
        self.requests = 0
        # Called once, in the thread serving the next request, before it is answered (or held).
        self.on_next_request: Callable[[], None] | None = None
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def configure(self, srv: DevServer) -> None:
        """Point the (stopped) development server at this TSA: one second per request, no retry,
        so that a hanging TSA costs each evidence a second (kepmta.config TsaConfig)."""
        config = Path(srv.data) / "kepmta.toml"
        config.write_text(
            config.read_text()
            + f'\n[tsa]\nurl = "http://127.0.0.1:{self.port}/tsa"\nca = "pki/provider-ca.pem"\n'
            "timeout = 1\nretries = 0\n"
        )

    def set(self, mode: str) -> None:
        with self._lock:
            self.mode = mode
            held, self._held = self._held, []
        for conn in held:
            conn.close()

    def close(self) -> None:
        self.set("hang")
        self._sock.close()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self._sock.accept()
                threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with self._lock:
            hook, self.on_next_request = self.on_next_request, None
        if hook is not None:
            hook()
        with self._lock:
            self.requests += 1
            mode = self.mode
            if mode == "hang":
                self._held.append(conn)
                return
        with contextlib.closing(conn), conn.makefile("rb") as f:
            f.readline()
            length = 0
            while line := f.readline().strip():
                name, _, value = line.decode().partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            body = f.read(length)
            reply = self._tsa.respond(body) if mode == "ok" else b"\x30\x82\x10\x00 not a TimeStampResp"
            head = (
                "HTTP/1.1 200 OK\r\nContent-Type: application/timestamp-reply\r\n"
                f"Content-Length: {len(reply)}\r\nConnection: close\r\n\r\n"
            )
            conn.sendall(head.encode() + reply)


def next_try(srv: DevServer, kind: str) -> dt.datetime:
    """When the first pending job of `kind` is due next (UTC)."""
    data = Path(srv.info["data"])  # type: ignore[index]
    uri = f"file:{data / 'kepmta.db'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=60)) as db:
        (due,) = db.execute(
            "SELECT min(next_at) FROM jobs WHERE kind = ? AND state = 'pending'", (kind,)
        ).fetchone()
    return dt.datetime.fromisoformat(due).replace(tzinfo=dt.UTC)


def jobs(srv: DevServer, kind: str) -> list[tuple[int, str, int, str | None]]:
    """(id, state, attempts, last_error) of the server's jobs of `kind`."""
    data = Path(srv.info["data"])  # type: ignore[index]
    uri = f"file:{data / 'kepmta.db'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=60)) as db:
        return db.execute(
            "SELECT id, state, attempts, last_error FROM jobs WHERE kind = ? ORDER BY id", (kind,)
        ).fetchall()
