"""Two development providers on 127.0.0.1, each in the other's peer registry, with short relay
timers; and the pieces a test needs to pose as one of them towards the other."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import ssl
from dataclasses import dataclass
from pathlib import Path

import aiosmtplib
from kepclient import DevServer, free_port_base, kepmta, wait_for

from kepmta import devinit
from kepmta.config import DEFAULT_POLICY, Ports

# Short enough for a test, long enough that a busy machine still answers before the warning.
TIMERS = {"retry_schedule": "[1, 2]", "warn_after": "12", "fail_after": "30", "refusal_wait": "4"}


def short_policy(folder: Path) -> Path:
    text = DEFAULT_POLICY.read_text()
    for key, value in TIMERS.items():
        text = re.sub(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
    path = folder / "policy.toml"
    path.write_text(text)
    return path


def provider(folder: Path, domain: str) -> DevServer:
    """A development provider for `domain` whose relay timers are short."""
    base = free_port_base()
    devinit.create_identity(folder, Ports(base, base + 1, base + 2, base + 3, base + 4), domain)
    config = folder / devinit.CONFIG_NAME
    config.write_text(config.read_text() + f'\n[policy]\nfile = "{short_policy(folder)}"\n')
    return DevServer(folder, domain=domain)


def reloads(srv: DevServer) -> int:
    return srv.log.read_text().count("peer registry reloaded")


def reload_peers(srv: DevServer, before: int) -> None:
    """SIGHUP, and wait until the server has read its registry since it had `before` times (its
    file watch may have been first)."""
    assert srv.proc is not None
    os.kill(srv.proc.pid, signal.SIGHUP)
    assert wait_for(lambda: reloads(srv) > before, 20)


def register(srv: DevServer, peer: DevServer) -> None:
    before = reloads(srv)
    r = kepmta("peers", "add-dev", "--data", str(srv.data), "--peer-data", str(peer.data))
    assert r.returncode == 0, r.stderr
    reload_peers(srv, before)


@dataclass(frozen=True)
class Identity:
    """A provider's own files, for a test that speaks as that provider."""

    domain: str
    folder: Path

    @property
    def pki(self) -> Path:
        return self.folder / "pki"

    def client_tls(self, peer: DevServer) -> ssl.SSLContext:
        assert peer.info
        ctx = ssl.create_default_context(cafile=peer.info["provider_ca"])
        ctx.check_hostname = False
        ctx.load_cert_chain(self.pki / "relay.pem", self.pki / "relay.key")
        return ctx


def identity(srv: DevServer) -> Identity:
    assert srv.domain is not None
    return Identity(srv.domain, srv.data)


async def relay_as(
    who: Identity,
    peer: DevServer,
    sender: str,
    rcpts: list[str],
    message: bytes,
    *,
    tls: ssl.SSLContext | None = None,
) -> tuple[int, str]:
    """One SMTP transaction to `peer`'s relay port over mutual TLS as `who`: the final reply, or
    the first refusal."""
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=peer.ports["relay"], start_tls=False, timeout=60)
    await smtp.connect()
    try:
        await smtp.ehlo()
        await smtp.starttls(tls_context=tls or who.client_tls(peer))
        await smtp.ehlo()
        reply = await smtp.mail(sender)
        for rcpt in rcpts:
            reply = await smtp.rcpt(rcpt)
        reply = await smtp.data(message)
        return reply.code, reply.message
    except aiosmtplib.SMTPResponseException as e:
        return e.code, e.message
    finally:
        if smtp.is_connected:
            smtp.close()


def ledger_count(srv: DevServer) -> int:
    with sqlite3.connect(srv.data / "kepmta.db") as db:
        count: int = db.execute("select count(*) from ledger").fetchone()[0]
    return count


def spool_files(srv: DevServer) -> set[str]:
    spool = srv.data / "spool"
    return {str(p.relative_to(spool)) for p in spool.rglob("*") if p.is_file()}
