"""IMAP operations per second under a mixed client load: kepmta's IMAP server beside Dovecot serving
a copy of the same Maildir, in the same run.

kepmta: `kepmta serve --dev` in a fresh folder; one account's INBOX is filled by APPEND with
--messages messages of 2–40 KB. Dovecot: Debian's dovecot-imapd with conf/dovecot/ (checkpassword,
the read-event Lua script), rendered as the interop tests do, over a copy of that Maildir.
Both get the same clients, each on its own implicit-TLS connection after LOGIN and SELECT, the same
seeded sequence of operations and the same duration:

    NOOP, STATUS, LIST, UID FETCH FLAGS, UID FETCH BODY.PEEK[HEADER], UID FETCH BODY.PEEK[],
    UID FETCH ENVELOPE of a range, UID SEARCH, UID STORE ±\\Flagged

(PEEK only, so no read evidence is made.) Needs `dovecot` on the PATH; as root, both servers run as
`nobody`, as in the interop tests.

    .venv/bin/python bench/imap.py [--seconds 20] [--clients 8] [--messages 300]

Prints operations/s and latency percentiles for both, and kepmta's figure as a share of Dovecot's.
A figure, not a pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import imaplib
import os
import random
import re
import shutil
import ssl
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent / p) for p in ("tests", "tests/interop")]
from interop_fixtures import (  # noqa: E402
    Dovecot,
    mail_user,
    render_dovecot_conf,
    shared_folder,
    start_dev_server,
)
from kepclient import (  # noqa: E402
    DevServer,
    free_port,
    plain_message,
)

OPERATIONS = (
    # (weight, name): a reading client's mix, dominated by flag and header fetches
    (10, "NOOP"),
    (5, "STATUS"),
    (3, "LIST"),
    (20, "FETCH FLAGS"),
    (20, "FETCH HEADER"),
    (15, "FETCH BODY"),
    (10, "FETCH ENVELOPE range"),
    (7, "SEARCH"),
    (10, "STORE"),
)


class Client:
    """A minimal IMAP client: one command in flight, literals read by their announced size."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.n = 0

    @classmethod
    async def connect(cls, port: int, tls: ssl.SSLContext) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls, limit=2**22)
        client = cls(reader, writer)
        await reader.readline()  # greeting
        return client

    async def command(self, text: str) -> bytes:
        self.n += 1
        tag = f"b{self.n}".encode()
        self.writer.write(tag + b" " + text.encode() + b"\r\n")
        await self.writer.drain()
        while True:
            line = await self.reader.readline()
            if not line:
                raise ConnectionError("server closed the connection")
            literal = re.search(rb"\{(\d+)\}\r\n$", line)
            if literal:
                await self.reader.readexactly(int(literal.group(1)))
                continue
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise RuntimeError(f"{text}: {line!r}")
                return line

    async def close(self) -> None:
        self.writer.write(b"z LOGOUT\r\n")
        await self.writer.drain()
        self.writer.close()


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    by_op: dict[str, list[float]] = field(default_factory=dict)


def command_for(op: str, rng: random.Random, uids: list[int]) -> str:
    uid = rng.choice(uids)
    if op == "NOOP":
        return "NOOP"
    if op == "STATUS":
        return "STATUS INBOX (MESSAGES UNSEEN UIDNEXT)"
    if op == "LIST":
        return 'LIST "" "*"'
    if op == "FETCH FLAGS":
        return f"UID FETCH {uid} (FLAGS)"
    if op == "FETCH HEADER":
        return f"UID FETCH {uid} (BODY.PEEK[HEADER])"
    if op == "FETCH BODY":
        return f"UID FETCH {uid} (BODY.PEEK[])"
    if op == "FETCH ENVELOPE range":
        return f"UID FETCH {uid}:{uid + 20} (UID FLAGS RFC822.SIZE ENVELOPE)"
    if op == "SEARCH":
        return f'UID SEARCH SUBJECT "bench {rng.randrange(len(uids))}"'
    return f"UID STORE {uid} {rng.choice('+-')}FLAGS.SILENT (\\Flagged)"


async def load(
    port: int, tls: ssl.SSLContext, login: tuple[str, str], clients: int, seconds: float
) -> Result:
    result = Result()
    weights = [w for w, _ in OPERATIONS]
    names = [n for _, n in OPERATIONS]
    sessions = []
    for _ in range(clients):
        c = await Client.connect(port, tls)
        await c.command(f'LOGIN "{login[0]}" "{login[1]}"')
        await c.command("SELECT INBOX")
        sessions.append(c)
    probe = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=tls)
    probe.login(*login)
    probe.select("INBOX", readonly=True)
    _, data = probe.uid("SEARCH", None, "ALL")  # type: ignore[arg-type]
    uids = [int(u) for u in (data[0] or b"").split()]
    probe.logout()
    deadline = time.monotonic() + seconds

    async def run(c: Client, seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < deadline:
            op = rng.choices(names, weights)[0]
            t0 = time.perf_counter()
            await c.command(command_for(op, rng, uids))
            elapsed = time.perf_counter() - t0
            result.latencies.append(elapsed)
            result.by_op.setdefault(op, []).append(elapsed)

    await asyncio.gather(*(run(c, i) for i, c in enumerate(sessions)))
    for c in sessions:
        await c.close()
    return result


def percentiles(lat: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(lat, n=100) if len(lat) > 1 else [lat[0]] * 99
    return q[49] * 1000, q[89] * 1000, q[98] * 1000


def describe(name: str, r: Result, seconds: float) -> float:
    rate = len(r.latencies) / seconds
    p50, p90, p99 = percentiles(r.latencies)
    print(
        f"{name:8s} {rate:8.1f} ops/s   latency p50 {p50:6.2f} ms  p90 {p90:6.2f} ms  p99 {p99:6.2f} ms"
        f"   ({len(r.latencies)} operations)"
    )
    for op, lat in sorted(r.by_op.items()):
        o50, _, o99 = percentiles(lat)
        print(f"           {op:22s} n={len(lat):6d}  p50 {o50:6.2f} ms  p99 {o99:6.2f} ms")
    return rate


def fill(srv: DevServer, acct: dict[str, str], count: int) -> None:
    rng = random.Random(1)
    m = imaplib.IMAP4_SSL("127.0.0.1", srv.ports["imaps"], ssl_context=srv.tls())
    m.login(acct["address"], acct["password"])
    for i in range(count):
        body = "\r\n".join(f"Bu bir ölçüm iletisidir; satır {j}." for j in range(rng.randrange(50, 1000)))
        msg = plain_message(acct["address"], [acct["address"]], f"bench {i}", body)
        m.append("INBOX", "(\\Seen)" if i % 3 else None, None, msg)
    m.logout()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--messages", type=int, default=300)
    args = ap.parse_args()
    if not shutil.which("dovecot"):
        sys.exit("bench/imap.py: needs dovecot (apt-get install dovecot-imapd)")

    user = mail_user()
    with shared_folder(user) as root:
        data, spool, copy = root / "data", root / "spool", root / "dovecot-mail"
        srv = start_dev_server(data, user)
        dovecot = Dovecot(root / "dovecot", free_port())
        try:
            acct = srv.account(1)
            fill(srv, acct, args.messages)
            shutil.copytree(data / "mail", copy)
            spool.mkdir()
            for path in [spool, copy, *copy.rglob("*")]:
                os.chown(path, user.uid, user.gid)
            dovecot.start(render_dovecot_conf(data, spool, root / "dovecot", dovecot.port, user, copy))
            tls = srv.tls()
            login = (acct["address"], acct["password"])
            print(
                f"{args.clients} clients, {args.seconds:.0f} s each, {args.messages} messages in INBOX; "
                f"CPU count {os.cpu_count()}"
            )
            results = {}
            for name, port in (("kepmta", srv.ports["imaps"]), ("dovecot", dovecot.port)):
                asyncio.run(load(port, tls, login, 1, 1.0))  # warm-up: indexes, caches
                results[name] = describe(
                    name, asyncio.run(load(port, tls, login, args.clients, args.seconds)), args.seconds
                )
            print(f"kepmta / dovecot: {results['kepmta'] / results['dovecot']:.2f} (goal: at least 0.5)")
        finally:
            dovecot.stop()
            srv.stop()


if __name__ == "__main__":
    main()
