"""Signed submissions per second, accepted and end to end, beside Postfix and a bare aiosmtpd.

    .venv/bin/python bench/submission.py [--seconds 30] [--clients 4] [--size 10240] [--fresh]
        [--runs 3] [--nodes 1] [--database sqlite|postgresql]

Each run takes three servers in turn, each for --seconds, with the same clients (aiosmtplib, over
STARTTLS) and the same messages: 64 S/MIME-signed messages of about --size bytes from one demo
account to another.

- kepmta: `kepmta serve --dev` in a fresh folder, the clients logging in (AUTH). A message counts
  once its 250 arrives (original, evidence and delivery jobs on disk); after the load the bench
  waits until no delivery or receipt job is pending, and the end-to-end rate is the messages over
  the load time plus that wait: each message then in the recipient's INBOX with its
  ContentConsignment and both receipts filed.
- Postfix: Debian's package, installed with apt-get if missing (debconf answer "No configuration",
  so the system's own instance is left unconfigured; needs root). A private instance in a fresh
  folder (configuration, queue, Maildirs; `postfix -c FOLDER start`, stopped at the end) on one
  port of 127.0.0.1, relaying for 127.0.0.0/8 without AUTH and delivering with virtual(8) to a
  Maildir; queue files are fsynced before the 250, as Postfix ships. End to end: the messages over
  the load time plus the wait until each is in the Maildir's new/ folder.
- aiosmtpd: a handler that only writes each message to a file and fsyncs it (accepted only).

Clients keep one session each unless --fresh gives every message a new connection, STARTTLS
handshake and, for kepmta, AUTH, as most mail clients do. Every run prints messages/s, reply
latency percentiles and peak RSS per server; the end prints the median of the --runs runs of each
figure with every run's value, then one summary line with the ratios kepmta/Postfix (end to end
and accepted) and kepmta/aiosmtpd (accepted).

With --database postgresql or --nodes N, the comparison is kepmta against itself instead, in one
run (no Postfix, no aiosmtpd, --runs ignored): SQLite with one node, then PostgreSQL with one node
and, if N > 1, PostgreSQL with N nodes, each end to end and as a ratio to SQLite. The PostgreSQL
server is the bench's own, started as the tests start theirs (tests/pgserver.py). Each setup is a
fresh development folder whose nodes run `kepmta serve --config` with a configuration of their own
(name and ports), as tests/nodes/test_two_nodes.py starts them, on one database and one data
folder; the clients are spread over the nodes' submission ports.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosmtplib
from aiosmtpd.controller import Controller

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "nodes"))
from common import bench_body, messages_of, raise_quotas, rss_mib
from kepclient import DevServer, free_port_base
from pgserver import PgServer
from pgserver import start as start_postgres
from postfix import Postfix
from postfix import install as install_postfix
from test_two_nodes import Node, node_config

from kepmta import pki


@dataclass
class Mail:
    """What every server of a run is sent: the messages of a fresh kepmta folder's demo accounts."""

    sender: str
    rcpt: str
    messages: list[bytes]

    @classmethod
    def of(cls, srv: DevServer, size: int) -> Mail:
        """64 signed messages of about `size` bytes from the folder's first demo account to its
        second, who have had their quotas raised."""
        raise_quotas(srv)
        ali, ayse = srv.account(0), srv.account(1)
        return cls(ali["address"], ayse["address"], messages_of(ali, ayse, bench_body(size), "bench"))


def login(srv: DevServer) -> tuple[str, str]:
    """AUTH of the sending demo account."""
    ali = srv.account(0)
    return ali["address"], ali["password"]


async def load(
    ports: list[int],
    tls: ssl.SSLContext,
    login: tuple[str, str] | None,
    mail: Mail,
    clients: int,
    seconds: float,
    *,
    fresh: bool = False,
) -> tuple[int, list[float]]:
    """Messages accepted and their latencies: from MAIL FROM to the 250 after DATA on a kept
    session, or from the connection to that 250 when each message has a `fresh` one."""
    messages = mail.messages
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    sent = 0

    async def session(port: int) -> aiosmtplib.SMTP:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, tls_context=tls, start_tls=True, timeout=120)
        await smtp.connect()
        if login:
            await smtp.login(*login)
        return smtp

    async def client(n: int) -> None:
        nonlocal sent
        # with several nodes, client n submits to node n mod N, as a load balancer would spread them
        port = ports[n % len(ports)]
        kept = None if fresh else await session(port)
        i = n
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            smtp = kept if kept is not None else await session(port)
            await smtp.sendmail(mail.sender, [mail.rcpt], messages[i % len(messages)])
            latencies.append(time.perf_counter() - t0)
            sent += 1
            i += clients
            if kept is None:
                await smtp.quit()
        if kept is not None:
            await kept.quit()

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
        mail = Mail.of(dev, args.size)
    finally:
        dev.stop()
    servers: list[Node] = []
    try:
        for i in range(nodes):
            servers.append(start_node(data, f"n{i}"))
        sent, lat = asyncio.run(
            load(
                [node.ports["submission"] for node in servers],
                dev.tls(),
                login(dev),
                mail,
                args.clients,
                args.seconds,
                fresh=args.fresh,
            )
        )
        rss = sum(rss_mib(node.proc.pid, "VmHWM") for node in servers if node.proc)
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
        "kepmta against itself (no Postfix or aiosmtpd reference with --database/--nodes; "
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


def run_kepmta(data: Path, args: argparse.Namespace) -> tuple[Mail, float, float]:
    """kepmta in the new folder `data`: its mail, messages/s accepted and end to end."""
    srv = DevServer(data).start()
    try:
        mail = Mail.of(srv, args.size)
        sent, lat = asyncio.run(
            load(
                [srv.ports["submission"]],
                srv.tls(),
                login(srv),
                mail,
                args.clients,
                args.seconds,
                fresh=args.fresh,
            )
        )
        assert srv.proc
        accepted = describe("kepmta", sent, args.seconds, lat, rss_mib(srv.proc.pid, "VmHWM"))
        drained = drain_seconds(sqlite_pending(srv.data / "kepmta.db"))
    finally:
        srv.stop()
    e2e = sent / (args.seconds + drained)
    print(
        f"{'':10s} every delivery and receipt done {drained:.1f} s after the load: {e2e:.1f} msg/s end to end"
    )
    return mail, accepted, e2e


def run_postfix(
    mail: Mail, tls: Path, client: ssl.SSLContext, args: argparse.Namespace
) -> tuple[float, float]:
    """A new private Postfix instance: messages/s accepted and end to end (in the Maildir)."""
    with tempfile.TemporaryDirectory(prefix="kepmta-bench-postfix-") as root:
        server = Postfix(Path(root), free_port_base(1), [mail.rcpt], tls / "tls.pem", tls / "tls.key")
        server.start()
        try:
            sent, lat = asyncio.run(
                load([server.port], client, None, mail, args.clients, args.seconds, fresh=args.fresh)
            )
            accepted = describe("postfix", sent, args.seconds, lat, server.peak_rss_mib())
            delivered = server.wait_delivered(sent)
        finally:
            server.stop()
    e2e = sent / (args.seconds + delivered)
    print(
        f"{'':10s} every message in the Maildir {delivered:.1f} s after the load: {e2e:.1f} msg/s end to end"
    )
    return accepted, e2e


def run_aiosmtpd(mail: Mail, out: Path, tls: Path, client: ssl.SSLContext, args: argparse.Namespace) -> float:
    """Bare aiosmtpd writing each message to a new file in `out`, fsynced: messages/s."""
    out.mkdir()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tls / "tls.pem", tls / "tls.key")
    port = free_port_base(1)
    controller = Controller(
        FsyncHandler(out), hostname="127.0.0.1", port=port, tls_context=server_ctx, data_size_limit=None
    )
    controller.start()
    try:
        rss_before = rss_mib(os.getpid(), "VmHWM")
        sent, lat = asyncio.run(
            load([port], client, None, mail, args.clients, args.seconds, fresh=args.fresh)
        )
    finally:
        controller.stop()
    # the reference runs in this process, so its figure includes the load generator
    return describe("aiosmtpd", sent, args.seconds, lat, max(rss_before, rss_mib(os.getpid(), "VmHWM")))


def compare_references(args: argparse.Namespace) -> None:
    """kepmta, Postfix and aiosmtpd, one after the other in each run, then the medians."""
    install_postfix()
    figures: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        ca = pki.issue("bench CA", pki.Role.CA)
        pki.save(ca, tmp / "ca.pem", tmp / "ca.key")
        cert = pki.issue("localhost", pki.Role.TLS_SERVER, ca, dns_names=("localhost",))
        pki.save(cert, tmp / "tls.pem", tmp / "tls.key")
        # verified as kepmta's clients verify its certificate, so that each handshake costs the same
        client = ssl.create_default_context(cafile=tmp / "ca.pem")
        client.check_hostname = False  # the certificate names localhost; the clients dial 127.0.0.1
        for run in range(args.runs):
            print(f"run {run + 1} of {args.runs}")
            mail, accepted, e2e = run_kepmta(tmp / f"kepmta{run}", args)
            figures.setdefault("kepmta accepted", []).append(accepted)
            figures.setdefault("kepmta end-to-end", []).append(e2e)
            accepted, e2e = run_postfix(mail, tmp, client, args)
            figures.setdefault("postfix accepted", []).append(accepted)
            figures.setdefault("postfix end-to-end", []).append(e2e)
            bare = run_aiosmtpd(mail, tmp / f"aiosmtpd{run}", tmp, client, args)
            figures.setdefault("aiosmtpd", []).append(bare)
    median = {label: statistics.median(values) for label, values in figures.items()}
    print(f"msg/s, median of {args.runs} run{'s' if args.runs > 1 else ''} (each run's figure in brackets):")
    for label, values in figures.items():
        print(f"  {label:20s} {median[label]:8.1f}  ({' '.join(f'{v:.1f}' for v in values)})")
    mode = "fresh" if args.fresh else "reuse"
    print(
        f"size {args.size} {mode}: kepmta accepted {median['kepmta accepted']:.1f} "
        f"end-to-end {median['kepmta end-to-end']:.1f} | postfix accepted {median['postfix accepted']:.1f} "
        f"end-to-end {median['postfix end-to-end']:.1f} | aiosmtpd {median['aiosmtpd']:.1f} | "
        f"kepmta/postfix e2e {median['kepmta end-to-end'] / median['postfix end-to-end']:.2f} "
        f"accepted {median['kepmta accepted'] / median['postfix accepted']:.2f} | "
        f"kepmta/aiosmtpd accepted {median['kepmta accepted'] / median['aiosmtpd']:.2f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30, help="load time of each server in each run")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--size", type=int, default=10240, help="approximate message size in bytes")
    ap.add_argument(
        "--fresh",
        action="store_true",
        help="a new connection, STARTTLS and (kepmta) AUTH per message, not one session per client",
    )
    ap.add_argument("--runs", type=int, default=3, help="runs whose median is printed")
    ap.add_argument("--nodes", type=int, default=1, help="kepmta processes on one database and data folder")
    ap.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    args = ap.parse_args()
    if args.nodes < 1:
        ap.error("--nodes must be at least 1")
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    if args.nodes > 1 and args.database == "sqlite":
        ap.error(
            "several nodes share a PostgreSQL database (README, Several nodes): add --database postgresql"
        )
    if args.nodes > 1 or args.database == "postgresql":
        compare_databases(args)
    else:
        compare_references(args)


if __name__ == "__main__":
    main()
