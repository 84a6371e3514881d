"""Shared pieces of the interop tests: outside programs from Debian (mbsync, neomutt/mutt, Dovecot)
against a real `kepmta serve --dev` process, driven the way an administrator or a user would."""

from __future__ import annotations

import contextlib
import imaplib
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import kepclient
import pytest
from kepclient import DevServer, port_open, smtp

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf" / "dovecot"
TIMEOUT = 60.0


def cannot_run(reason: str) -> None:
    """Skip, except where KEPMTA_REQUIRE_INTEROP is set (.ci/run sets it): there a missing piece of
    the set-up is a failure, so CI can never pass by skipping these tests."""
    if os.environ.get("KEPMTA_REQUIRE_INTEROP"):
        pytest.fail(f"interop test cannot run: {reason}")
    pytest.skip(reason)


def need(*programs: str) -> None:
    """The test needs one of `programs` (CI installs them: .ci/run)."""
    if not any(shutil.which(p) for p in programs):
        cannot_run(f"{' or '.join(programs)} not installed (apt-get install it; .ci/run does)")


def subject(prefix: str = "interop") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def send(srv: DevServer, sender: int, to: list[str], msg: bytes) -> None:
    with smtp(srv, srv.account(sender)) as s:
        refused = s.sendmail(srv.account(sender)["address"], to, msg)
        assert refused == {}, refused


def uid_of(m: imaplib.IMAP4, subj: str) -> str:
    _, data = m.uid("SEARCH", None, "SUBJECT", f'"{subj}"')  # type: ignore[arg-type]
    uids = (data[0] or b"").split()
    assert len(uids) == 1, (subj, data)
    return str(uids[0].decode())


def flags_of(m: imaplib.IMAP4, uid: str) -> set[str]:
    _, data = m.uid("FETCH", uid, "(FLAGS)")
    found = re.search(rb"FLAGS \(([^)]*)\)", data[0] if isinstance(data[0], bytes) else b"")
    assert found, data
    return set(found.group(1).decode().split())


def peek(m: imaplib.IMAP4, uid: str) -> bytes:
    _, data = m.uid("FETCH", uid, "(BODY.PEEK[])")
    literals = [item[1] for item in data if isinstance(item, tuple)]
    assert len(literals) == 1, data
    return bytes(literals[0])


# --- a separate, unprivileged mail user ----------------------------------------------------------
# Dovecot refuses mail access as root (first_valid_uid), so when the tests run as root (CI), kepmta
# and Dovecot's mail processes both run as `nobody`, the way production runs both as `kepmta`.


@dataclass(frozen=True)
class MailUser:
    name: str
    uid: int
    gid: int

    @property
    def switch(self) -> list[str]:
        """Command prefix that runs a program as this user (nothing when we already are it)."""
        if os.geteuid() == self.uid:
            return []
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups", "--"]


def mail_user() -> MailUser:
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid())
        return MailUser(me.pw_name, me.pw_uid, me.pw_gid)
    nobody = pwd.getpwnam("nobody")
    return MailUser(nobody.pw_name, nobody.pw_uid, nobody.pw_gid)


@contextlib.contextmanager
def shared_folder(user: MailUser) -> Iterator[Path]:
    """A folder outside pytest's private tmp (0700, root's) that `user` owns."""
    path = Path(tempfile.mkdtemp(prefix="kepmta-interop-"))
    path.chmod(0o755)
    os.chown(path, user.uid, user.gid)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def need_runnable_as(user: MailUser) -> None:
    """`user` must be able to run this Python and import kepmta (a venv made from a Python under
    root's 0700 home cannot be; .ci/run makes it from Debian's /usr/bin/python3)."""
    probe = subprocess.run(
        [*user.switch, sys.executable, "-c", "import kepmta"], capture_output=True, text=True, timeout=60
    )
    if probe.returncode != 0:
        cannot_run(
            f"{user.name} cannot run {sys.executable} with kepmta ({probe.stderr.strip()[-200:]}); "
            "make the venv with /usr/bin/python3 in a folder others may enter, as .ci/run does"
        )


@contextlib.contextmanager
def kepmta_as(user: MailUser) -> Iterator[None]:
    """kepclient's helpers run `kepmta` as `user` meanwhile (they take the command from KEPMTA), so
    the files it makes stay the mail user's."""
    saved = kepclient.KEPMTA
    kepclient.KEPMTA = [*user.switch, sys.executable, "-m", "kepmta"]
    try:
        yield
    finally:
        kepclient.KEPMTA = saved


def start_dev_server(data: Path, user: MailUser) -> DevServer:
    need_runnable_as(user)
    with kepmta_as(user):
        return DevServer(data).start()


# --- Dovecot from conf/dovecot, rendered for a loopback test -------------------------------------


def render_dovecot_conf(
    data: Path, spool: Path, base: Path, port: int, user: MailUser, mail_root: Path | None = None
) -> str:
    """conf/dovecot/dovecot.conf with its site-specific values pointed at the dev provider (its
    Maildir, or `mail_root`), and settings for a private loopback instance appended (a later
    setting overrides an earlier one)."""
    text = (CONF / "dovecot.conf").read_text()
    site = {
        "/usr/local/bin/kepmta dovecot checkpassword --config /etc/kepmta/kepmta.toml": (
            f"{sys.executable} -m kepmta dovecot checkpassword --data {data}"
        ),
        "/var/lib/kepmta/mail/": f"{mail_root or data / 'mail'}/",
        "/var/lib/kepmta/dovecot-read": str(spool),
        "/etc/kepmta/tls.pem": str(data / "pki" / "tls.pem"),
        "/etc/kepmta/tls.key": str(data / "pki" / "tls.key"),
        "/etc/dovecot/kepmta-read-events.lua": str(CONF / "kepmta-read-events.lua"),
        "user = kepmta": f"user = {user.name}",
    }
    for production, here in site.items():
        assert production in text, f"conf/dovecot/dovecot.conf no longer contains {production!r}"
        text = text.replace(production, here)
    text += f"""
# --- loopback test instance ---
listen = 127.0.0.1
base_dir = {base}/run
state_dir = {base}/state
instance_name = kepmta-test-{port}
log_path = {base}/dovecot.log
first_valid_uid = 1
# the checkpassword helper must run the same kepmta as the test (PYTHONPATH, when set)
import_environment = TZ PYTHONPATH
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = {port}
  }}
}}
"""
    if os.geteuid() != 0:
        # An unprivileged master cannot change users or chroot: every service runs as us.
        text += f"""default_internal_user = {user.name}
default_login_user = {user.name}
service imap-login {{
  chroot =
}}
service anvil {{
  chroot =
}}
"""
    return text


@dataclass
class Dovecot:
    folder: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.folder / "dovecot.log"

    def start(self, conf: str) -> Dovecot:
        for sub in ("run", "state"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        path = self.folder / "dovecot.conf"
        path.write_text(conf)
        check = subprocess.run(["doveconf", "-c", str(path), "-n"], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        # -F: the master stays in the foreground, so its PID is the one we started and stop.
        self.proc = subprocess.Popen(
            ["dovecot", "-F", "-c", str(path)],
            stdout=(self.folder / "dovecot.out").open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + TIMEOUT
        while not port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"dovecot did not start: {self.output()}")
            time.sleep(0.1)
        return self

    def output(self) -> str:
        parts = [
            p.read_text(errors="replace")[-3000:]
            for p in (self.folder / "dovecot.out", self.log)
            if p.exists()
        ]
        return "\n".join(parts)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def imap_at(port: int, srv: DevServer, acct: dict[str, str]) -> imaplib.IMAP4_SSL:
    m = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=srv.tls(), timeout=TIMEOUT)
    m.login(acct["address"], acct["password"])
    return m
