"""A private Postfix instance for the benchmarks, beside a system one without touching it.

Everything lives under one folder: configuration (main.cf, master.cf, the mailbox list), queue,
data (master.lock), log and the Maildirs that virtual(8) delivers to. The instance listens on one
port of 127.0.0.1 only, offers STARTTLS, relays for 127.0.0.0/8 and delivers its one virtual domain
to Maildirs. Debian's package is installed when missing, without configuring the system's own
instance ("No configuration"): `postfix -c FOLDER` is all that runs.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from common import family, rss_mib
from kepclient import port_open

POSTFIX = "/usr/sbin/postfix"

# chroot is off throughout ("n"), so that no libraries or /etc files need copying into the queue
# folder; only the services a relayed, virtually delivered message passes through.
MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
cleanup   unix n - n - 0 cleanup
qmgr      unix n - n 300 1 qmgr
tlsmgr    unix - - n 1000? 1 tlsmgr
rewrite   unix - - n - - trivial-rewrite
bounce    unix - - n - 0 bounce
defer     unix - - n - 0 bounce
trace     unix - - n - 0 bounce
verify    unix - - n - 1 verify
flush     unix n - n 1000? 0 flush
proxymap  unix - - n - - proxymap
anvil     unix - - n - 1 anvil
scache    unix - - n - 1 scache
error     unix - - n - - error
retry     unix - - n - - error
virtual   unix - n n - - virtual
postlog   unix-dgram n - n - 1 postlogd
"""

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench.test
mydestination =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_tls_security_level = may
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
virtual_mailbox_domains = {domain}
virtual_mailbox_base = {mail}
virtual_mailbox_maps = texthash:{config}/vmailbox
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
"""


def install() -> None:
    """Debian's postfix package, unless it is there already."""
    if Path(POSTFIX).exists():
        return
    if os.geteuid() != 0:
        raise SystemExit("Postfix, the reference, is not installed: run as root to have it installed")
    print("installing Debian's postfix package (apt-get)", flush=True)
    # Without this answer debconf asks, and any other answer writes /etc/postfix/main.cf and sets
    # up the system's own instance, which the bench must leave alone.
    subprocess.run(
        ["debconf-set-selections"],
        input="postfix postfix/main_mailer_type select No configuration\n",
        text=True,
        check=True,
    )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "postfix"]
    if subprocess.run(command, env=env, capture_output=True).returncode != 0:
        # a fresh container has no package lists, an old one stale ones
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=True)
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"apt-get install postfix failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")


def postfix(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([POSTFIX, *args], capture_output=True, text=True, timeout=120)


@dataclass
class Postfix:
    """An instance in `root` (a new, empty folder) on 127.0.0.1:`port` for the `recipients` of one
    domain, its TLS certificate and key in `cert` and `key`."""

    root: Path
    port: int
    recipients: list[str]
    cert: Path
    key: Path
    master: int | None = field(default=None, init=False)

    @property
    def config(self) -> Path:
        return self.root / "config"

    @property
    def mail(self) -> Path:
        return self.root / "mail"

    @property
    def log(self) -> Path:
        return self.root / "maillog"

    def start(self, timeout: float = 60) -> Postfix:
        domains = {r.rsplit("@", 1)[1] for r in self.recipients}
        assert len(domains) == 1, "one virtual domain"
        nobody = pwd.getpwnam("nobody")
        # Postfix's daemons run as `postfix` and virtual(8) as nobody: both walk down to their folders.
        self.root.chmod(0o755)
        for parent in self.root.parents:
            if parent.stat().st_mode & 0o001 == 0:
                raise RuntimeError(f"{parent} is not searchable by Postfix's users")
        self.config.mkdir()
        self.mail.mkdir()
        os.chown(self.mail, nobody.pw_uid, nobody.pw_gid)
        # the queue folder is root's; `postfix check` makes its subfolders and the data folder
        (self.root / "queue").mkdir()
        # virtual(8) refuses $1 substitution from a regexp table (a security hole, its manual says),
        # so each recipient is listed; the final "/" makes the mailbox a Maildir
        (self.config / "vmailbox").write_text(
            "".join(f"{r} {r.rsplit('@', 1)[1]}/{r.split('@', 1)[0]}/\n" for r in self.recipients)
        )
        (self.config / "master.cf").write_text(MASTER_CF.format(port=self.port))
        (self.config / "main.cf").write_text(
            MAIN_CF.format(
                root=self.root,
                config=self.config,
                queue=self.root / "queue",
                data=self.root / "data",
                mail=self.mail,
                domain=domains.pop(),
                uid=nobody.pw_uid,
                gid=nobody.pw_gid,
                cert=self.cert,
                key=self.key,
            )
        )
        for step in ("check", "start"):
            done = postfix("-c", str(self.config), step)
            if done.returncode != 0:
                self.stop()
                raise RuntimeError(f"postfix {step} failed: {done.stdout}{done.stderr}{self.log_tail()}")
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Postfix did not listen on {self.port}: {self.log_tail()}")
            time.sleep(0.1)
        self.master = int((self.root / "queue" / "pid" / "master.pid").read_text())
        return self

    def stop(self) -> None:
        pid_file = self.root / "queue" / "pid" / "master.pid"
        master = int(pid_file.read_text()) if pid_file.exists() else None
        postfix("-c", str(self.config), "stop")
        self.master = None
        if master is None:
            return
        # `postfix stop` only signals the master; its folder is about to be removed, so wait.
        deadline = time.monotonic() + 20
        while Path(f"/proc/{master}").exists():
            if time.monotonic() > deadline:
                os.kill(master, signal.SIGKILL)
                break
            time.sleep(0.1)

    def delivered(self) -> int:
        return sum(len(os.listdir(box / "new")) for box in self.mail.glob("*/*") if (box / "new").is_dir())

    def wait_delivered(self, count: int, stall: float = 60) -> float:
        """Seconds until `count` messages are in the Maildirs; an error when none arrives for
        `stall` seconds (a deferred delivery is retried only minutes later)."""
        started = progress = time.monotonic()
        seen = self.delivered()
        while seen < count:
            time.sleep(0.1)
            now = self.delivered()
            if now > seen:
                seen, progress = now, time.monotonic()
            elif time.monotonic() - progress > stall:
                raise RuntimeError(f"Postfix delivered {seen} of {count}: {self.log_tail()}")
        return time.monotonic() - started

    def peak_rss_mib(self) -> float:
        """Peak RSS of the master and its processes now alive, summed (shared pages in each)."""
        assert self.master
        total = 0.0
        for pid in family(self.master):
            with contextlib.suppress(FileNotFoundError):  # idle daemons end meanwhile
                total += rss_mib(pid, "VmHWM")
        return total

    def log_tail(self) -> str:
        return f"\n{self.log.read_text()[-3000:]}" if self.log.exists() else ""
