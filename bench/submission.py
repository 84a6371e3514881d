"""Accepted signed submissions per second, end to end, beside a bare aiosmtpd in the same run.

kepmta: `kepmta serve --dev` in a fresh folder; each message is a 10 KB S/MIME-signed message
submitted over STARTTLS with AUTH, and counts once its 250 arrives (original, evidence and delivery
jobs on disk). Reference: aiosmtpd with STARTTLS whose handler only writes each message to a file
and fsyncs it. Both get the same clients (aiosmtplib), the same messages and the same duration.

    .venv/bin/python bench/submission.py [--seconds 60] [--clients 4] [--size 10240]
        [--nodes 1] [--database sqlite|postgresql]

Prints messages/s, reply latency percentiles and the server's peak RSS for both, and the ratio.
For kepmta it also waits, after the load, until every delivery and receipt job is done, and prints
the end-to-end rate: messages over load time plus that drain, each message then in the
recipient's INBOX with its ContentConsignment and both receipts filed.

With --database postgresql or --nodes N, the comparison is kepmta against itself instead, in one
run: SQLite with one node, then PostgreSQL with one node and, if N > 1, PostgreSQL with N nodes,
each end to end and as a ratio to SQLite. The PostgreSQL server is the bench's own, started as the
tests start theirs (tests/pgserver.py). Each setup is a fresh development folder whose nodes run
`kepmta serve --config` with a configuration of their own (name and ports), as
tests/nodes/test_two_nodes.py starts them, on one database and one data folder; the clients are
spread over the nodes' submission ports.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiosmtplib
from aiosmtpd.controller import Controller

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "nodes"))
from common import bench_body, messages_of, raise_quotas
from kepclient import DevServer, free_port_base
from pgserver import PgServer
from pgserver import start as start_postgres
from test_two_nodes import Node, node_config

from kepmta import pki


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def load(
    ports: list[int],
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
        # with several nodes, client n submits to node n mod N, as a load balancer would spread them
        port = ports[n % len(ports)]
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


PENDING = "SELECT count(*) FROM jobs WHERE state = 'pending' AND kind != 'relay'"


def drain_seconds(pending: Callable[[], int]) -> float:
    """Seconds until no delivery or receipt job is pending (the work behind the 250s is done)."""
    started = time.monotonic()
    while pending():
        time.sleep(0.1)
    return time.monotonic() - started


def sqlite_pending(database: Path) -> Callable[[], int]:
    def count() -> int:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
            pending: int = db.execute(PENDING).fetchone()[0]
        return pending

    return count


def postgres_pending(pg: PgServer, url: str) -> Callable[[], int]:
    database = url.rsplit("/", 1)[1]
    return lambda: int(pg.sql(PENDING, database))


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


def start_node(data: Path, name: str) -> Node:
    """Node `name` of the folder, started. Its ports are chosen free, but the nodes already up open
    connections from ephemeral ports meanwhile, which may take one of them: then new ports."""
    tries = 3
    while True:
        node = node_config(data, name)
        try:
            node.start()
            return node
        except AssertionError as e:
            node.stop()
            tries -= 1
            if "address already in use" not in str(e) or not tries:
                raise


def end_to_end(tmp: Path, pg: PgServer | None, nodes: int, args: argparse.Namespace, label: str) -> float:
    """One setup's end-to-end messages/s: a development folder on SQLite (`pg` None) or on a new
    database of `pg`, served by `nodes` kepmta processes, under the load of `args`."""
    data = tmp / label.replace(" ", "-")
    url = pg.new_database() if pg else None
    # The folder (PKI, demo accounts, kepmta.toml) is made by `serve --dev`, then served by the nodes.
    dev = DevServer(data, database=url).start()
    try:
        raise_quotas(dev)
    finally:
        dev.stop()
    ali, ayse = dev.account(0), dev.account(1)
    messages = messages_of(ali, ayse, bench_body(args.size), "bench")
    servers: list[Node] = []
    try:
        for i in range(nodes):
            servers.append(start_node(data, f"n{i}"))
        sent, lat = asyncio.run(
            load(
                [node.ports["submission"] for node in servers],
                dev.tls(),
                (ali["address"], ali["password"]),
                ali["address"],
                ayse["address"],
                messages,
                args.clients,
                args.seconds,
            )
        )
        rss = sum(peak_rss_mib(node.proc.pid) for node in servers if node.proc)
        describe(label, sent, args.seconds, lat, rss)
        pending = postgres_pending(pg, url) if pg and url else sqlite_pending(data / "kepmta.db")
        drained = drain_seconds(pending)
    finally:
        for node in servers:
            node.stop()
    rate: float = sent / (args.seconds + drained)
    done = f"every delivery and receipt done {drained:.1f} s after the load"
    print(f"{'':{len(label)}s} {done}: {rate:.1f} msg/s end to end")
    return rate


def compare_databases(args: argparse.Namespace) -> None:
    """SQLite one node, PostgreSQL one node and PostgreSQL N nodes, end to end, in one run."""
    print(
        "kepmta against itself (no bare aiosmtpd reference with --database/--nodes; "
        "run without them for it); peak RSS is the nodes' main processes summed"
    )
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        rates = {"sqlite, 1 node": end_to_end(tmp, None, 1, args, "sqlite, 1 node")}
        pg = start_postgres()
        try:
            setups = [1] if args.nodes == 1 else [1, args.nodes]
            for nodes in setups:
                label = f"postgresql, {nodes} node{'s' if nodes > 1 else ''}"
                rates[label] = end_to_end(tmp, pg, nodes, args, label)
        finally:
            pg.stop()
    base = rates["sqlite, 1 node"]
    print(
        "end to end, relative to sqlite, 1 node: "
        + "; ".join(f"{label} {rate:.1f} msg/s ({rate / base:.2f})" for label, rate in rates.items())
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--size", type=int, default=10240, help="approximate message size in bytes")
    ap.add_argument("--nodes", type=int, default=1, help="kepmta processes on one database and data folder")
    ap.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    args = ap.parse_args()
    if args.nodes < 1:
        ap.error("--nodes must be at least 1")
    if args.nodes > 1 and args.database == "sqlite":
        ap.error(
            "several nodes share a PostgreSQL database (README, Several nodes): add --database postgresql"
        )
    if args.nodes > 1 or args.database == "postgresql":
        compare_databases(args)
        return

    with tempfile.TemporaryDirectory() as tmp:
        srv = DevServer(Path(tmp) / "data").start()
        try:
            ali, ayse = srv.account(0), srv.account(1)
            raise_quotas(srv)
            messages = messages_of(ali, ayse, bench_body(args.size), "bench")
            tls = srv.tls()
            sent, lat = asyncio.run(
                load(
                    [srv.ports["submission"]],
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
            drained = drain_seconds(sqlite_pending(srv.data / "kepmta.db"))
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
                    [port],
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
