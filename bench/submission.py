"""Accepted signed submissions per second, end to end, beside a bare aiosmtpd in the same run.

kepmta: `kepmta serve --dev` in a fresh folder; each message is a 10 KB S/MIME-signed message
submitted over STARTTLS with AUTH, and counts once its 250 arrives (original, evidence and delivery
jobs on disk). Reference: aiosmtpd with STARTTLS whose handler only writes each message to a file
and fsyncs it. Both get the same clients (aiosmtplib), the same messages and the same duration.

    .venv/bin/python bench/submission.py [--seconds 60] [--clients 4] [--size 10240]

Prints messages/s, reply latency percentiles and the server's peak RSS for both, and the ratio.
For kepmta it also waits, after the load, until every delivery and receipt job is done, and prints
the end-to-end rate: messages over load time plus that drain, each message then in the
recipient's INBOX with its ContentConsignment and both receipts filed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import ssl
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiosmtplib
from aiosmtpd.controller import Controller

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from common import bench_body, messages_of, raise_quotas
from kepclient import DevServer, free_port_base

from kepmta import pki


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def load(
    port: int,
    tls: ssl.SSLContext,
    login: tuple[str, str] | None,
    sender: str,
    rcpt: str,
    messages: list[bytes],
    clients: int,
    seconds: float,
) -> tuple[int, list[float]]:
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    sent = 0

    async def client(n: int) -> None:
        nonlocal sent
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, tls_context=tls, start_tls=True, timeout=120)
        await smtp.connect()
        if login:
            await smtp.login(*login)
        i = n
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            await smtp.sendmail(sender, [rcpt], messages[i % len(messages)])
            latencies.append(time.perf_counter() - t0)
            sent += 1
            i += clients
        await smtp.quit()

    await asyncio.gather(*(client(n) for n in range(clients)))
    return sent, latencies


def drain_seconds(database: Path) -> float:
    """Seconds until no delivery or receipt job is pending (the work behind the 250s is done)."""
    started = time.monotonic()
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        while db.execute("SELECT count(*) FROM jobs WHERE state = 'pending' AND kind != 'relay'").fetchone()[
            0
        ]:
            time.sleep(0.1)
    return time.monotonic() - started


def describe(name: str, sent: int, seconds: float, lat: list[float], rss: float) -> float:
    rate = sent / seconds
    q = statistics.quantiles(lat, n=100) if len(lat) > 1 else [lat[0]] * 99
    print(
        f"{name:10s} {rate:8.1f} msg/s   latency p50 {q[49] * 1000:7.1f} ms  p90 {q[89] * 1000:7.1f} ms  "
        f"p99 {q[98] * 1000:7.1f} ms   peak RSS {rss:6.1f} MiB   ({sent} messages)"
    )
    return rate


class FsyncHandler:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        path = self.folder / uuid.uuid4().hex
        with path.open("wb") as f:
            f.write(envelope.original_content)
            f.flush()
            os.fsync(f.fileno())
        return "250 OK"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--size", type=int, default=10240, help="approximate message size in bytes")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        srv = DevServer(Path(tmp) / "data").start()
        try:
            ali, ayse = srv.account(0), srv.account(1)
            raise_quotas(srv)
            messages = messages_of(ali, ayse, bench_body(args.size), "bench")
            tls = srv.tls()
            sent, lat = asyncio.run(
                load(
                    srv.ports["submission"],
                    tls,
                    (ali["address"], ali["password"]),
                    ali["address"],
                    ayse["address"],
                    messages,
                    args.clients,
                    args.seconds,
                )
            )
            assert srv.proc
            kep = describe("kepmta", sent, args.seconds, lat, peak_rss_mib(srv.proc.pid))
            drained = drain_seconds(srv.data / "kepmta.db")
            print(
                f"{'':10s} every delivery and receipt done {drained:.1f} s after the load: "
                f"{sent / (args.seconds + drained):.1f} msg/s end to end"
            )
        finally:
            srv.stop()

        ca = pki.issue("bench CA", pki.Role.CA)
        cert = pki.issue("localhost", pki.Role.TLS_SERVER, ca, dns_names=("localhost",))
        pki.save(cert, Path(tmp) / "tls.pem", Path(tmp) / "tls.key")
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(Path(tmp) / "tls.pem", Path(tmp) / "tls.key")
        client_ctx = ssl.create_default_context()
        client_ctx.check_hostname = False
        client_ctx.verify_mode = ssl.CERT_NONE
        out = Path(tmp) / "bare"
        out.mkdir()
        port = free_port_base()
        controller = Controller(
            FsyncHandler(out), hostname="127.0.0.1", port=port, tls_context=server_ctx, data_size_limit=None
        )
        controller.start()
        try:
            rss_before = peak_rss_mib(os.getpid())
            sent, lat = asyncio.run(
                load(
                    port,
                    client_ctx,
                    None,
                    ali["address"],
                    ayse["address"],
                    messages,
                    args.clients,
                    args.seconds,
                )
            )
        finally:
            controller.stop()
        # the reference runs in this process, so its figure includes the load generator
        bare = describe("aiosmtpd", sent, args.seconds, lat, max(rss_before, peak_rss_mib(os.getpid())))
    print(f"ratio kepmta / bare aiosmtpd: {kep / bare:.2f}")


if __name__ == "__main__":
    main()
