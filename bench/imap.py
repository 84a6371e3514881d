"""IMAP commands per second under a reading and a writing client load, and the first SELECT of a
large folder after a restart: kepmta's IMAP server beside Dovecot serving a copy of the same
Maildir, in the same run, both over implicit TLS.

Set-up. kepmta: `kepmta serve --dev` in a fresh folder, restarted on a copy of its policy with
[imap] connections_per_address and sessions_per_account raised to 1000 (the defaults, 100 and 20,
are below 100 clients of one account), and the accounts' quotas raised. The first account's INBOX
gets --messages messages of 2–40 KB by APPEND (LITERAL+), and folders W0, W1, ... (one per 5
clients of the largest count) get a copy of the first 30 each. Dovecot: Debian's dovecot-imapd with
conf/dovecot/ (checkpassword, the read-event Lua script), rendered as the interop tests do, over a
copy of that Maildir, with mail_max_userip_connections and the imap-login process limit raised to
1000 for the same reason. Needs `dovecot` on the PATH; as root, both servers run as `nobody`, as in
the interop tests (so run it with a venv made from Debian's Python, e.g. /opt/kepvenv).

Clients. Each server gets as many logged-in connections as the largest --clients count, opened
once; a run with fewer leaves the rest unselected. Every client behaves like Python's imaplib: one
command in flight, Nagle's algorithm left on (no TCP_NODELAY), and an APPEND sends its command line
with a synchronising literal `{N}`, waits for the `+` continuation, then writes the message and its
closing CRLF as two writes. Untagged EXISTS, EXPUNGE, FLAGS and FETCH responses keep each client's
view of its folder; a count that goes down without EXPUNGE (RFC 3501 §5.2), an EXPUNGE or FETCH of
a sequence number past the count, or a keyword in a FETCH before an untagged FLAGS named it
(RFC 3501 §7.2.6) is reported as a protocol problem, with the command and the response. A NO or BAD
is counted and reported the same way; the run goes on.

Both servers get the same seeded sequence of commands per client, for --seconds each:

  read mix, every client on INBOX (PEEK only, so no read evidence is made):
    NOOP 10, STATUS 5, LIST 3, UID FETCH FLAGS 20, UID FETCH BODY.PEEK[HEADER] 20,
    UID FETCH BODY.PEEK[] 15, UID FETCH ENVELOPE of 21 UIDs 10, UID SEARCH SUBJECT 7,
    UID STORE ±FLAGS.SILENT \\Flagged 10

  write mix, 5 clients per folder W<n>, each with the folder's 30 messages and those it appended:
    NOOP 15 (to see the others' changes), APPEND of a 2–20 KB message 10 (its UID from APPENDUID),
    UID STORE ±FLAGS \\Seen or \\Flagged 20, UID STORE ±FLAGS $Label1..$Label5 8,
    delete 5: UID STORE +FLAGS \\Deleted of 1–3 of the client's own messages, then EXPUNGE
    (an APPEND instead while it has none), UID FETCH <highest UID seen + 1>:* (UID FLAGS
    BODY.PEEK[HEADER]) 20 (new mail), UID FETCH BODY.PEEK[] 10,
    UID SEARCH UNSEEN / FLAGGED / KEYWORD / FROM / SUBJECT 10
    Each client expunges what it still holds after the run (untimed), so every run starts from the
    same folders.

For each client count, each mix runs on kepmta, then on Dovecot; each measured run follows a 1 s
warm-up with the same clients and other seeds. Printed per mix, client count and server:
commands/s, latency p50 and p99, the longest single command of any client ("stall") and how many
waited over 1 s, errors, the CPU used by the server's processes and by this client (in cores), the
server's CPU per command (ms), per command kind n and mean latency, and kepmta's commands/s, p99
and CPU per command as a share of Dovecot's; then a summary against issue 11's goals (≥ 1.0× the
commands/s, p99 ≤ 2× Dovecot's, no command over 1 s). The clients are one Python process on the
same machine.

--cold, after the mixes: each server CREATEs folder Cold, 3000 messages of 2–20 KB are written as
files straight into both Maildir copies of it, and each server SELECTs it once (building its index,
timed too); then, three times, each server is restarted and the first and a second SELECT of Cold
on one new connection are timed. Prints the index-building SELECT and the medians of the three.

    /opt/kepvenv/bin/python bench/imap.py [--seconds 20] [--mix read|write|both]
        [--clients 10,100] [--messages 300] [--cold]

Figures, not pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import socket
import ssl
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent / p) for p in ("tests", "tests/interop")]
from common import raise_quotas  # noqa: E402
from interop_fixtures import (  # noqa: E402
    Dovecot,
    MailUser,
    kepmta_as,
    mail_user,
    render_dovecot_conf,
    shared_folder,
    start_dev_server,
)
from kepclient import DevServer, free_port  # noqa: E402

POLICY = Path(__file__).resolve().parent.parent / "policies" / "kep-tr.toml"
RAISED = 1000  # connections per address and sessions per account, on both servers
PER_FOLDER = 5  # write-mix clients sharing one folder
SEED_MESSAGES = 30  # messages copied into each write-mix folder
COLD_MESSAGES = 3000
STALL = 1.0  # seconds: a command waiting longer counts as a stalled client (issue 11)

READ_MIX = (
    # (weight, kind): a reading client, dominated by flag and header fetches
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
WRITE_MIX = (
    # (weight, kind): a busy client on a shared folder, filing, flagging, deleting and polling
    (15, "NOOP"),
    (10, "APPEND"),
    (20, "STORE flags"),
    (8, "STORE keyword"),
    (5, "delete"),
    (20, "FETCH new"),
    (10, "FETCH body"),
    (10, "SEARCH"),
)
KEYWORDS = ("$Label1", "$Label2", "$Label3", "$Label4", "$Label5")

LITERAL = re.compile(rb"~?\{(\d+)\}\r\n$")
EXISTS = re.compile(rb"^\* (\d+) EXISTS\b", re.I)
EXPUNGE = re.compile(rb"^\* (\d+) EXPUNGE\b", re.I)
FETCH = re.compile(rb"^\* (\d+) FETCH \(", re.I)
FLAGS = re.compile(rb"^\* FLAGS \(([^)]*)\)", re.I)
FETCH_UID = re.compile(rb"\bUID (\d+)", re.I)
FETCH_FLAGS = re.compile(rb"\bFLAGS \(([^)]*)\)", re.I)
APPENDUID = re.compile(rb"\[APPENDUID \d+ (\d+)\]", re.I)


@dataclass(frozen=True)
class Reply:
    status: str  # OK, NO or BAD
    line: bytes  # the tagged response
    untagged: tuple[bytes, ...]  # each untagged response, its literals replaced by ""


@dataclass
class Client:
    """One connection, used the way imaplib uses one: one command in flight."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    n: int = 0
    selected: str | None = None
    exists: int = 0
    announced: set[str] = field(default_factory=set)  # keywords the last untagged FLAGS named
    problems: list[tuple[str, str]] = field(default_factory=list)  # (what, command and response)
    command_text: str = ""

    @classmethod
    async def connect(cls, port: int, tls: ssl.SSLContext) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls, limit=2**22)
        # asyncio turns Nagle's algorithm off; imaplib's socket keeps it, and so do most clients.
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
        client = cls(reader, writer)
        await client._response()  # greeting
        return client

    async def _response(self) -> bytes:
        """One whole response: its lines joined, each literal replaced by an empty string."""
        parts = []
        while True:
            line = await self.reader.readline()
            if not line.endswith(b"\n"):
                raise ConnectionError(f"server closed the connection during {self.command_text!r}")
            literal = LITERAL.search(line)
            if literal is None:
                parts.append(line.rstrip(b"\r\n"))
                return b"".join(parts)
            parts.append(line[: literal.start()] + b'""')
            await self.reader.readexactly(int(literal.group(1)))

    async def command(self, text: str, literal: bytes | None = None, *, plus: bool = False) -> Reply:
        """Send one command and read until its tagged response. With `literal`, the line ends in
        its size and the message follows: as imaplib sends it (wait for "+", then the message and
        the CRLF in two writes), or with `plus` as a LITERAL+ non-synchronising literal in one."""
        self.n += 1
        self.command_text = text
        tag = b"b%d" % self.n
        line = tag + b" " + text.encode()
        untagged: list[bytes] = []
        if literal is None:
            self.writer.write(line + b"\r\n")
        elif plus:
            self.writer.write(line + b" {%d+}\r\n" % len(literal) + literal + b"\r\n")  # RFC 7888
        else:
            self.writer.write(line + b" {%d}\r\n" % len(literal))
            await self.writer.drain()
            while True:
                resp = await self._response()
                if resp.startswith(b"+"):
                    break
                if resp.startswith(tag + b" "):  # refused before the literal was sent
                    return self._reply(resp, untagged)
                untagged.append(self._note(resp))
            self.writer.write(literal)
            await self.writer.drain()
            self.writer.write(b"\r\n")
        await self.writer.drain()
        while True:
            resp = await self._response()
            if resp.startswith(tag + b" "):
                return self._reply(resp, untagged)
            if resp.startswith(b"+"):
                self._problem("continuation after the command was sent", resp)
                continue
            untagged.append(self._note(resp))

    def _reply(self, line: bytes, untagged: list[bytes]) -> Reply:
        status = line.split(b" ", 2)[1].decode("ascii", "replace").upper()
        return Reply(status, line, tuple(untagged))

    def _note(self, resp: bytes) -> bytes:
        """Follow the folder's message count and flags through an untagged response, and note
        what breaks the rules a client relies on."""
        if m := EXISTS.match(resp):
            count = int(m.group(1))
            if count < self.exists:
                self._problem("EXISTS below the count known (RFC 3501 §5.2)", resp)
            self.exists = count
        elif m := EXPUNGE.match(resp):
            number = int(m.group(1))
            if not 1 <= number <= self.exists:
                self._problem("EXPUNGE of a message number past the count", resp)
            self.exists -= 1
        elif m := FLAGS.match(resp):
            self.announced = set(m.group(1).decode().split())
        elif m := FETCH.match(resp):
            if not 1 <= int(m.group(1)) <= self.exists:
                self._problem("FETCH of a message number past the count", resp)
            if flags := FETCH_FLAGS.search(resp):
                unnamed = {
                    f for f in flags.group(1).decode().split() if not f.startswith("\\")
                } - self.announced
                if unnamed:
                    self._problem(
                        "a keyword in FETCH before an untagged FLAGS named it (RFC 3501 §7.2.6)", resp
                    )
        return resp

    def _problem(self, what: str, resp: bytes) -> None:
        self.problems.append((what, f"{self.command_text!r} got {resp[:300]!r} (count {self.exists})"))

    async def select(self, folder: str) -> None:
        self.exists = 0
        reply = await self.command(f'SELECT "{folder}"')
        if reply.status != "OK":
            raise RuntimeError(f"SELECT {folder}: {reply.line!r}")
        self.selected = folder

    async def unselect(self) -> None:
        if self.selected is not None:
            await self.command("UNSELECT")
            self.selected = None

    async def close(self) -> None:
        self.writer.write(b"z LOGOUT\r\n")
        await self.writer.drain()
        self.writer.close()


async def logged_in(port: int, tls: ssl.SSLContext, login: tuple[str, str]) -> Client:
    c = await Client.connect(port, tls)
    reply = await c.command(f'LOGIN "{login[0]}" "{login[1]}"')
    if reply.status != "OK":
        raise RuntimeError(f"LOGIN: {reply.line!r}")
    return c


async def open_sessions(port: int, tls: ssl.SSLContext, login: tuple[str, str], count: int) -> list[Client]:
    gate = asyncio.Semaphore(8)  # Dovecot runs a checkpassword process per login

    async def one() -> Client:
        async with gate:
            return await logged_in(port, tls, login)

    return list(await asyncio.gather(*(one() for _ in range(count))))


# --- the mixes ----------------------------------------------------------------------------------------


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    by_kind: dict[str, list[float]] = field(default_factory=dict)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (kind and response, command)
    problems: list[tuple[str, str]] = field(default_factory=list)
    last: float = 0.0  # time.monotonic() at the end of the last timed command
    elapsed: float = 0.0
    server_cpu: float = 0.0  # cores
    client_cpu: float = 0.0

    def record(self, kind: str, elapsed: float) -> None:
        self.latencies.append(elapsed)
        self.by_kind.setdefault(kind, []).append(elapsed)


async def timed(c: Client, result: Result, kind: str, text: str, literal: bytes | None = None) -> Reply:
    t0 = time.perf_counter()
    reply = await c.command(text, literal)
    result.record(kind, time.perf_counter() - t0)
    result.last = time.monotonic()
    if reply.status != "OK":
        answer = reply.line.split(b" ", 1)[1][:300].decode("utf-8", "replace")
        result.errors.append(
            (f"{kind} got {answer!r}", f"{text!r} after {[u[:120] for u in reply.untagged[:4]]}")
        )
    return reply


def read_command(kind: str, rng: random.Random, uids: list[int]) -> str:
    uid = rng.choice(uids)
    if kind == "NOOP":
        return "NOOP"
    if kind == "STATUS":
        return "STATUS INBOX (MESSAGES UNSEEN UIDNEXT)"
    if kind == "LIST":
        return 'LIST "" "*"'
    if kind == "FETCH FLAGS":
        return f"UID FETCH {uid} (FLAGS)"
    if kind == "FETCH HEADER":
        return f"UID FETCH {uid} (BODY.PEEK[HEADER])"
    if kind == "FETCH BODY":
        return f"UID FETCH {uid} (BODY.PEEK[])"
    if kind == "FETCH ENVELOPE range":
        return f"UID FETCH {uid}:{uid + 20} (UID FLAGS RFC822.SIZE ENVELOPE)"
    if kind == "SEARCH":
        return f'UID SEARCH SUBJECT "bench {rng.randrange(len(uids))}"'
    return f"UID STORE {uid} {rng.choice('+-')}FLAGS.SILENT (\\Flagged)"


async def all_uids(c: Client) -> list[int]:
    reply = await c.command("UID SEARCH ALL")
    return sorted(int(u) for r in reply.untagged if r.upper().startswith(b"* SEARCH") for u in r.split()[2:])


async def reader_client(c: Client, uids: list[int], seed: int, deadline: float, result: Result) -> None:
    rng = random.Random(seed)
    kinds, weights = [k for _, k in READ_MIX], [w for w, _ in READ_MIX]
    while time.monotonic() < deadline:
        kind = rng.choices(kinds, weights)[0]
        await timed(c, result, kind, read_command(kind, rng, uids))


def message(rng: random.Random, sender: str, subject: str) -> bytes:
    """A plain-text message of 2–20 KB, the same for the same seed."""
    size = rng.randrange(2000, 20000)
    head = (
        f"From: {sender}\r\nTo: {sender}\r\nSubject: {subject}\r\n"
        f"Date: Thu, 03 Dec 2026 10:{rng.randrange(60):02d}:00 +0300\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}.{rng.getrandbits(32):x}@bench.kep.test>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n"
    ).encode()
    line = "Bu bir ölçüm iletisidir; satırlar kısa tutulur.\r\n".encode()
    return head + line * (size // len(line))


class Writer:
    """A write-mix client: its folder's first messages, the UIDs it appended and still holds, and
    the highest UID it has seen (new mail is what lies above it)."""

    def __init__(self, c: Client, seed: int, name: str, sender: str, result: Result) -> None:
        self.c, self.rng, self.name, self.sender, self.result = c, random.Random(seed), name, sender, result
        self.base: list[int] = []
        self.own: list[int] = []
        self.highest = 0
        self.appended = 0

    def _see(self, reply: Reply) -> None:
        for r in reply.untagged:
            if FETCH.match(r) and (uid := FETCH_UID.search(r)):
                self.highest = max(self.highest, int(uid.group(1)))

    def _pick(self) -> int:
        i = self.rng.randrange(len(self.base) + len(self.own))
        return self.base[i] if i < len(self.base) else self.own[i - len(self.base)]

    def start(self, found: list[int]) -> None:
        """What the folder held at the start: UID SEARCH ALL's answer."""
        self.base, self.highest = found[:SEED_MESSAGES], max(found, default=0)

    async def run(self, deadline: float) -> None:
        kinds, weights = [k for _, k in WRITE_MIX], [w for w, _ in WRITE_MIX]
        while time.monotonic() < deadline:
            kind = self.rng.choices(kinds, weights)[0]
            if kind == "delete" and not self.own:
                kind = "APPEND"
            await self.step(kind)
        if self.own:  # untimed: the folder goes back to its first messages for the next run
            uids = ",".join(map(str, self.own))
            await self.c.command(f"UID STORE {uids} +FLAGS.SILENT (\\Deleted)")
            await self.c.command(f"UID EXPUNGE {uids}")

    async def step(self, kind: str) -> None:
        c, rng, result = self.c, self.rng, self.result
        if kind == "NOOP":
            await timed(c, result, kind, "NOOP")
        elif kind == "APPEND":
            self.appended += 1
            msg = message(rng, self.sender, f"write {self.name}-{self.appended}")
            flags = rng.choice(("", " (\\Seen)"))
            reply = await timed(c, result, kind, f'APPEND "{c.selected}"{flags}', msg)
            if reply.status == "OK":
                uid = APPENDUID.search(reply.line)
                if uid is None:
                    c._problem("APPEND without APPENDUID (RFC 4315 §3)", reply.line)
                else:
                    self.own.append(int(uid.group(1)))
        elif kind in ("STORE flags", "STORE keyword"):
            flag = rng.choice(("\\Seen", "\\Flagged") if kind == "STORE flags" else KEYWORDS)
            reply = await timed(c, result, kind, f"UID STORE {self._pick()} {rng.choice('+-')}FLAGS ({flag})")
            self._see(reply)
        elif kind == "delete":
            chosen = sorted(rng.sample(range(len(self.own)), min(len(self.own), rng.randint(1, 3))))
            uids = ",".join(str(self.own[i]) for i in chosen)
            self.own = [u for i, u in enumerate(self.own) if i not in chosen]
            await timed(c, result, "STORE \\Deleted", f"UID STORE {uids} +FLAGS (\\Deleted)")
            await timed(c, result, "EXPUNGE", "EXPUNGE")
        elif kind == "FETCH new":
            reply = await timed(
                c, result, kind, f"UID FETCH {self.highest + 1}:* (UID FLAGS BODY.PEEK[HEADER])"
            )
            self._see(reply)
        elif kind == "FETCH body":
            await timed(c, result, kind, f"UID FETCH {self._pick()} (BODY.PEEK[])")
        else:
            criterion = rng.choice(
                (
                    "UNSEEN",
                    "FLAGGED",
                    f"KEYWORD {rng.choice(KEYWORDS)}",
                    f'FROM "{self.sender.split("@")[0]}"',
                    f'SUBJECT "write {self.name}-{rng.randrange(1, 50)}"',
                )
            )
            await timed(c, result, "SEARCH", f"UID SEARCH {criterion}")


def cpu_seconds(root: int) -> float:
    """User and system CPU of process `root` and all its descendants now alive (proc(5) stat)."""
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo += [int(p) for p in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
    return total


def folder_of(mix: str, i: int) -> str:
    return "INBOX" if mix == "read" else f"W{i // PER_FOLDER}"


async def run_mix(
    sessions: list[Client], mix: str, clients: int, seconds: float, sender: str, pid: int, seed: int
) -> Result:
    active = sessions[:clients]
    for c in sessions[clients:]:
        await c.unselect()
    for i, c in enumerate(active):
        await c.select(folder_of(mix, i))
        c.problems.clear()
    result = Result()
    found = await asyncio.gather(*(all_uids(c) for c in active))
    writers = []
    if mix == "write":
        writers = [Writer(c, seed + i, f"{seed}.{i}", sender, result) for i, c in enumerate(active)]
        for w, uids in zip(writers, found, strict=True):
            w.start(uids)
    cpu0, own0, t0 = cpu_seconds(pid), time.process_time(), time.monotonic()
    deadline = t0 + seconds
    if mix == "read":
        jobs = [reader_client(c, found[i], seed + i, deadline, result) for i, c in enumerate(active)]
    else:
        jobs = [w.run(deadline) for w in writers]
    outcomes = await asyncio.gather(*jobs, return_exceptions=True)
    # Commands that ran in the time; the write mix's clean-up after it is left out.
    result.elapsed = result.last - t0
    result.server_cpu = (cpu_seconds(pid) - cpu0) / result.elapsed
    result.client_cpu = (time.process_time() - own0) / result.elapsed
    for i, outcome in enumerate(outcomes):
        if isinstance(outcome, BaseException):
            raise RuntimeError(f"client {i} failed: {outcome!r}") from outcome
    for c in active:
        result.problems += c.problems
    return result


# --- printing ---------------------------------------------------------------------------------------


def pct(lat: Sequence[float], q: int) -> float:
    return (statistics.quantiles(lat, n=100)[q - 1] if len(lat) > 1 else lat[0]) * 1000


def rate(r: Result) -> float:
    return len(r.latencies) / r.elapsed


def cpu_per_command(r: Result) -> float:
    """Milliseconds of the server's CPU per command: steadier than commands/s from run to run on a
    shared machine, and what one core's worth of commands/s comes down to."""
    return r.server_cpu * 1000 / rate(r)


def describe_run(title: str, results: dict[str, Result]) -> tuple[float, float, float]:
    print(f"\n== {title} ==")
    print(
        f"{'':16s}{'commands/s':>11s}{'p50 ms':>9s}{'p99 ms':>9s}{'stall ms':>10s}{'>1 s':>6s}"
        f"{'errors':>8s}{'server cores':>14s}{'client cores':>14s}{'CPU ms/cmd':>12s}"
    )
    for name, r in results.items():
        over = sum(1 for x in r.latencies if x > STALL)
        print(
            f"{name:16s}{rate(r):11.1f}{pct(r.latencies, 50):9.2f}{pct(r.latencies, 99):9.2f}"
            f"{max(r.latencies) * 1000:10.1f}{over:6d}{len(r.errors):8d}"
            f"{r.server_cpu:14.2f}{r.client_cpu:14.2f}{cpu_per_command(r):12.3f}"
        )
    kep, dov = results["kepmta"], results["dovecot"]
    speed, p99 = rate(kep) / rate(dov), pct(kep.latencies, 99) / pct(dov.latencies, 99)
    cpu = cpu_per_command(kep) / cpu_per_command(dov)
    between = 10 + 6 + 8 + 14 + 14  # the columns from "stall ms" to "client cores"
    print(f"{'kepmta/dovecot':16s}{speed:11.2f}{'':9s}{p99:9.2f}{'':{between}s}{cpu:12.2f}")
    print(f"  {'mean ms (n)':22s}{'kepmta':>18s}{'dovecot':>18s}{'ratio':>8s}")
    for kind in sorted(set(kep.by_kind) | set(dov.by_kind)):
        k, d = kep.by_kind.get(kind, []), dov.by_kind.get(kind, [])
        mk = statistics.fmean(k) * 1000 if k else float("nan")
        md = statistics.fmean(d) * 1000 if d else float("nan")
        print(f"  {kind:22s}{mk:10.2f} ({len(k):5d}){md:10.2f} ({len(d):5d}){mk / md:8.2f}")
    for name, r in results.items():
        for label, items in (("error", r.errors), ("protocol problem", r.problems)):
            first: dict[str, str] = {}
            counts: dict[str, int] = {}
            for what, example in items:
                first.setdefault(what, example)
                counts[what] = counts.get(what, 0) + 1
            for what, example in first.items():
                print(f"  {name} {label} x{counts[what]}: {what}; first: {example}")
    return speed, p99, max(kep.latencies)


# --- set-up -----------------------------------------------------------------------------------------


def raise_kepmta_limits(srv: DevServer, user: MailUser) -> None:
    """A copy of the policy with [imap]'s per-address and per-account limits raised, named in the
    development folder's kepmta.toml; in force from the restart that follows."""
    text = POLICY.read_text()
    head, rest = text.split("\n[imap]\n", 1)
    imap, tail = rest.split("\n[", 1)
    imap, n = re.subn(
        r"^(connections_per_address|sessions_per_account) = \d+", rf"\1 = {RAISED}", imap, flags=re.M
    )
    assert n == 2, "policies/kep-tr.toml [imap] no longer has both limits"
    policy = srv.data / "bench-policy.toml"
    policy.write_text(f"{head}\n[imap]\n{imap}\n[{tail}")
    config = srv.data / "kepmta.toml"
    config.write_text(config.read_text() + '\n[policy]\nfile = "bench-policy.toml"\n')
    for path in (policy, config):
        os.chown(path, user.uid, user.gid)
    srv.stop()
    with kepmta_as(user):
        srv.start()


DOVECOT_LIMITS = f"""
# --- bench/imap.py: room for its clients, all one user at one address ---
mail_max_userip_connections = {RAISED}
service imap-login {{
  process_limit = {RAISED}
}}
"""


async def fill(port: int, tls: ssl.SSLContext, login: tuple[str, str], messages: int, folders: int) -> None:
    """INBOX: `messages` messages of 2–40 KB, a third unseen; W0..W<folders-1>: a copy of the
    first SEED_MESSAGES each."""
    rng = random.Random(1)
    c = await logged_in(port, tls, login)
    line = "Bu bir ölçüm iletisidir; satır {}.\r\n"
    for i in range(messages):
        body = "".join(line.format(j) for j in range(rng.randrange(50, 1000)))
        msg = (
            f"From: {login[0]}\r\nTo: {login[0]}\r\nSubject: bench {i}\r\n"
            f"Date: Thu, 03 Dec 2026 09:00:00 +0300\r\nMessage-ID: <bench.{i}@bench.kep.test>\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}"
        ).encode()
        reply = await c.command("APPEND INBOX" + (" (\\Seen)" if i % 3 else ""), msg, plus=True)
        assert reply.status == "OK", reply.line
    await c.select("INBOX")
    for f in range(folders):
        for text in (f"CREATE W{f}", f"UID COPY 1:{SEED_MESSAGES} W{f}"):
            reply = await c.command(text)
            assert reply.status == "OK", (text, reply.line)
    await c.close()


# --- cold start -------------------------------------------------------------------------------------


def write_cold(maildirs: list[Path], user: MailUser) -> None:
    """COLD_MESSAGES files in folder Cold of each Maildir, named as Maildir++ names them (with the
    S= size Dovecot trusts); two in three seen."""
    rng = random.Random(3)
    stamp = int(time.time()) - 86400
    for i in range(COLD_MESSAGES):
        msg = message(rng, "cold@kep.test", f"cold {i}")
        for root in maildirs:
            cur = root / ".Cold" / "cur"
            name = f"{stamp + i}.M{i}P{os.getpid()}.bench,S={len(msg)}:2,{'S' if i % 3 else ''}"
            (cur / name).write_bytes(msg)
            os.chown(cur / name, user.uid, user.gid)


async def timed_selects(port: int, tls: ssl.SSLContext, login: tuple[str, str], times: int) -> list[float]:
    c = await logged_in(port, tls, login)
    out = []
    for _ in range(times):
        t0 = time.perf_counter()
        await c.select("Cold")
        out.append((time.perf_counter() - t0) * 1000)
        if c.exists != COLD_MESSAGES:
            raise RuntimeError(f"SELECT Cold found {c.exists} messages, not {COLD_MESSAGES}")
    await c.close()
    return out


def cold_start(
    srv: DevServer, dovecot: Dovecot, conf: str, user: MailUser, login: tuple[str, str], maildirs: list[Path]
) -> None:
    tls = srv.tls()
    for port in (srv.ports["imaps"], dovecot.port):
        asyncio.run(create_folder(port, tls, login, "Cold"))
    write_cold(maildirs, user)
    print(f"\n== cold start: SELECT of a {COLD_MESSAGES}-message folder (ms) ==")
    first = {
        "kepmta": asyncio.run(timed_selects(srv.ports["imaps"], tls, login, 1))[0],
        "dovecot": asyncio.run(timed_selects(dovecot.port, tls, login, 1))[0],
    }
    rounds: dict[str, list[list[float]]] = {"kepmta": [], "dovecot": []}
    for _ in range(3):
        srv.stop()
        with kepmta_as(user):
            srv.start()
        rounds["kepmta"].append(asyncio.run(timed_selects(srv.ports["imaps"], tls, login, 2)))
        dovecot.stop()
        dovecot.start(conf)
        rounds["dovecot"].append(asyncio.run(timed_selects(dovecot.port, tls, login, 2)))
    print(f"{'':16s}{'files, first SELECT':>21s}{'after restart: 1st':>20s}{'2nd':>8s}   (each of 3)")
    for name in ("kepmta", "dovecot"):
        a, b = (statistics.median(r[k] for r in rounds[name]) for k in (0, 1))
        each = " ".join(f"{r[0]:.1f}/{r[1]:.1f}" for r in rounds[name])
        print(f"{name:16s}{first[name]:21.1f}{a:20.1f}{b:8.1f}   ({each})")


async def create_folder(port: int, tls: ssl.SSLContext, login: tuple[str, str], name: str) -> None:
    c = await logged_in(port, tls, login)
    reply = await c.command(f"CREATE {name}")
    assert reply.status == "OK", reply.line
    await c.close()


# --- main -------------------------------------------------------------------------------------------


async def measure(
    ports: dict[str, int],
    pids: dict[str, int],
    tls: ssl.SSLContext,
    login: tuple[str, str],
    mixes: list[str],
    counts: list[int],
    seconds: float,
) -> list[tuple[str, float, float, float]]:
    pools = {name: await open_sessions(port, tls, login, max(counts)) for name, port in ports.items()}
    summary = []
    for count in counts:
        for mix in mixes:
            results = {}
            for name in ports:
                seed = 1000 * count + (0 if mix == "read" else 500)
                await run_mix(pools[name], mix, count, 1.0, login[0], pids[name], seed + 10_000)  # warm-up
                results[name] = await run_mix(pools[name], mix, count, seconds, login[0], pids[name], seed)
            sharing = "all on INBOX" if mix == "read" else f"{PER_FOLDER} per folder"
            speed, p99, stall = describe_run(
                f"{mix} mix, {count} clients ({sharing}), {seconds:.0f} s", results
            )
            summary.append((f"{mix} mix, {count} clients", speed, p99, stall))
    for pool in pools.values():
        for c in pool:
            await c.close()
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--mix", choices=("read", "write", "both"), default="both")
    ap.add_argument("--clients", default="10,100", help="client counts, run in turn (default 10,100)")
    ap.add_argument("--messages", type=int, default=300, help="messages in INBOX (default 300)")
    ap.add_argument("--cold", action="store_true", help="also time SELECT of a large folder after restarts")
    args = ap.parse_args()
    counts = [int(n) for n in args.clients.split(",")]
    mixes = ["read", "write"] if args.mix == "both" else [args.mix]
    if not shutil.which("dovecot"):
        sys.exit("bench/imap.py: needs dovecot (apt-get install dovecot-imapd)")

    user = mail_user()
    with shared_folder(user) as root:
        data, spool, copy = root / "data", root / "spool", root / "dovecot-mail"
        srv = start_dev_server(data, user)
        dovecot = Dovecot(root / "dovecot", free_port())
        try:
            acct = srv.account(0)
            login = (acct["address"], acct["password"])
            raise_kepmta_limits(srv, user)
            with kepmta_as(user):
                raise_quotas(srv)
            tls = srv.tls()
            folders = -(-max(counts) // PER_FOLDER)
            asyncio.run(fill(srv.ports["imaps"], tls, login, args.messages, folders))
            shutil.copytree(data / "mail", copy)
            spool.mkdir()
            for path in [spool, copy, *copy.rglob("*")]:
                os.chown(path, user.uid, user.gid)
            conf = (
                render_dovecot_conf(data, spool, root / "dovecot", dovecot.port, user, copy) + DOVECOT_LIMITS
            )
            dovecot.start(conf)
            assert dovecot.proc is not None and srv.proc is not None
            print(
                f"{args.seconds:.0f} s per run, {args.messages} messages in INBOX, {SEED_MESSAGES} in each "
                f"write folder; CPU count {os.cpu_count()}, load average {os.getloadavg()[0]:.2f} "
                f"{os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}"
            )
            summary = asyncio.run(
                measure(
                    {"kepmta": srv.ports["imaps"], "dovecot": dovecot.port},
                    {"kepmta": srv.proc.pid, "dovecot": dovecot.proc.pid},
                    tls,
                    login,
                    mixes,
                    counts,
                    args.seconds,
                )
            )
            print("\n== kepmta against issue 11's goals ==")
            for what, speed, p99, stall in summary:
                print(
                    f"{what:24s} commands/s {speed:5.2f}x (goal >= 1.0)   p99 {p99:5.2f}x (goal <= 2.0)   "
                    f"longest command {stall * 1000:7.1f} ms (goal < {STALL * 1000:.0f})"
                )
            if args.cold:
                mailbox = Path(*acct["address"].split("@")[::-1])
                cold_start(srv, dovecot, conf, user, login, [data / "mail" / mailbox, copy / mailbox])
            print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        finally:
            dovecot.stop()
            srv.stop()


if __name__ == "__main__":
    main()
