"""Submission and IMAP clients together against one `kepmta serve --dev`: throughput, latency, and
the memory of the server and its workers as the messages handled add up.

kepmta: `kepmta serve --dev` in a fresh folder, the demo quotas raised. For --seconds, at once:

- N submission clients (smtplib, STARTTLS, AUTH), client n sending as demo account n to account
  n+1 (modulo the three accounts) S/MIME-signed messages of about --size bytes, one after the other;
  a transaction is MAIL, RCPT and DATA up to the 250.
- M IMAP clients (imaplib over implicit TLS), client m logged in as demo account m+1, so they read
  the INBOXes the mail arrives in, with a seeded mix of commands: NOOP polls, FETCH of the flags
  and headers of new messages, FETCH BODY[] of an unseen one (a MessageRead evidence and its
  receipt), UID SEARCH UNSEEN, STORE ±\\Flagged, LIST, STATUS of the evidence folder, and now and
  then SELECT or EXAMINE INBOX again. Past --keep messages in an INBOX the oldest are marked
  \\Deleted and EXPUNGEd, as a user clears old mail, so what the IMAP server holds for a selected
  folder stays the same size (--keep 0 keeps every message).

Every client is a thread of this process, connected and logged in before the clock starts. Once a
second the RSS of the server and of its descendants in /proc (the forker and the worker processes)
is sampled beside the count of messages submitted so far. Past --warmup the least-squares slope of RSS against
that count is printed, in KiB per 1000 messages, with its standard error, for the whole window and
for its second half: memory that grows with the messages handled shows as a slope well above its
error, while bounded caches that are still filling show as a slope that falls in longer runs.

    .venv/bin/python bench/load.py [--seconds 120] [--smtp-clients 4] [--imap-clients 4]
        [--size 10240] [--warmup 20] [--keep 200]

Prints messages/s and IMAP commands/s, p50/p95/p99 of SMTP transactions and of IMAP commands (each
kind apart too, with any refusals), peak and final RSS of every process and their sum, the slopes,
and the summed RSS at every tenth of the run. A figure, not a pass/fail.
"""

from __future__ import annotations

import argparse
import functools
import math
import random
import re
import smtplib
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from common import bench_body, family, messages_of, raise_quotas, rss_mib
from kepclient import EVIDENCE_FOLDER, DevServer, imap, smtp

OPERATIONS = (
    # (weight, name): a mail client's background work while mail arrives, mostly polling
    (20, "NOOP"),
    (15, "FETCH new headers"),
    (10, "FETCH BODY[]"),
    (10, "SEARCH UNSEEN"),
    (10, "STORE"),
    (5, "LIST"),
    (5, "STATUS"),
    (3, "SELECT/EXAMINE"),
)
SAMPLE_SECONDS = 1.0
Reply = tuple[str, list[Any]]  # imaplib's (typ, data)


@dataclass
class Tally:
    """What the client threads measured; list.append is atomic, `submitted` is under `lock`."""

    smtp: list[float] = field(default_factory=list)
    imap: dict[str, list[float]] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)  # the last refusal's text, by command
    submitted: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self) -> int:
        with self.lock:
            return self.submitted

    def add_submitted(self) -> None:
        with self.lock:
            self.submitted += 1

    def add_refused(self, what: str, reason: object) -> None:
        with self.lock:
            self.refused[what] = self.refused.get(what, 0) + 1
            if isinstance(reason, bytes | str):
                self.reasons[what] = reason.decode(errors="replace") if isinstance(reason, bytes) else reason


@dataclass(frozen=True)
class Run:
    """The clients' common start (all connected and logged in), end, and tally."""

    tally: Tally
    start: threading.Barrier
    stop: threading.Event


@dataclass(frozen=True)
class Sample:
    at: float
    submitted: int
    rss_kib: dict[int, int]


def submitter(
    srv: DevServer, route: tuple[dict[str, str], dict[str, str]], messages: list[bytes], run: Run
) -> None:
    sender, rcpt = route
    with smtp(srv, sender) as s:
        run.start.wait()
        i = 0
        while not run.stop.is_set():
            t0 = time.perf_counter()
            refused: tuple[str, bytes | str] | None = None
            try:
                s.sendmail(sender["address"], [rcpt["address"]], messages[i % len(messages)])
            except smtplib.SMTPRecipientsRefused as e:
                refused = ("RCPT", e.recipients[rcpt["address"]][1])
            except smtplib.SMTPResponseException as e:
                refused = (f"SMTP {e.smtp_code}", e.smtp_error)
            if run.stop.is_set():
                break  # finished after the time: not counted
            run.tally.smtp.append(time.perf_counter() - t0)
            if refused:
                run.tally.add_refused(*refused)
            else:
                run.tally.add_submitted()
            i += 1


def uids_in(data: list[object]) -> list[int]:
    found = []
    for item in data:
        head = item[0] if isinstance(item, tuple) else item
        if isinstance(head, bytes) and (m := re.search(rb"\bUID (\d+)", head)):
            found.append(int(m.group(1)))
    return found


class Reader:
    """One IMAP client on one INBOX: what it knows of the folder, and one method per command kind."""

    def __init__(self, srv: DevServer, acct: dict[str, str], keep: int, seed: int, run: Run) -> None:
        self.m = imap(srv, acct)
        self.keep, self.rng, self.run = keep, random.Random(seed), run
        self.known: list[int] = []  # UIDs fetched from this INBOX, ascending, expunged ones dropped
        self.unseen: list[int] = []
        self.readonly = False
        self.commands: dict[str, Callable[[], Reply]] = {
            "NOOP": self.m.noop,
            "FETCH new headers": self.fetch_new,
            "FETCH BODY[]": self.read_one,
            "SEARCH UNSEEN": self.search_unseen,
            "STORE": self.flag,
            "LIST": lambda: self.m.list('""', "*"),
            "STATUS": lambda: self.m.status(f'"{EVIDENCE_FOLDER}"', "(MESSAGES UNSEEN UIDNEXT)"),
            "SELECT/EXAMINE": self.reopen,
        }

    def timed(self, name: str, command: Callable[[], Reply]) -> None:
        t0 = time.perf_counter()
        typ, data = command()
        if self.run.stop.is_set():
            return  # finished after the time: not counted
        tally = self.run.tally
        tally.imap.setdefault(name, []).append(time.perf_counter() - t0)
        if typ != "OK":
            tally.add_refused(name, data[-1] if data else None)
        # imaplib files unsolicited EXISTS, RECENT, EXPUNGE and FETCH replies until asked for them
        self.m.untagged_responses.clear()

    def step(self, name: str) -> None:
        if self.readonly and name in ("FETCH BODY[]", "STORE"):
            # a client that opened the folder read-only selects it before changing anything
            self.readonly = False
            self.timed("SELECT/EXAMINE", lambda: self.m.select("INBOX"))
        self.timed(name, self.commands[name])
        if not self.readonly and self.keep and len(self.known) > self.keep + self.keep // 4:
            self.clean_up()

    def reopen(self) -> Reply:
        self.readonly = self.rng.random() < 0.5
        return self.m.select("INBOX", readonly=self.readonly)

    def fetch_new(self) -> Reply:
        last = self.known[-1] if self.known else 0
        typ, data = self.m.uid("FETCH", f"{last + 1}:*", "(UID FLAGS BODY.PEEK[HEADER])")
        new = sorted({u for u in uids_in(data) if u > last})  # n:* names the last message if none is new
        self.known += new
        self.unseen += new
        return typ, data

    def read_one(self) -> Reply:
        uid = self.unseen.pop() if self.unseen else self.rng.choice(self.known or [1])
        return self.m.uid("FETCH", str(uid), "(BODY[])")

    def search_unseen(self) -> Reply:
        typ, data = self.m.uid("SEARCH", None, "UNSEEN")  # type: ignore[arg-type]
        self.unseen = [int(u) for u in (data[0] or b"").split()][-50:]
        return typ, data

    def flag(self) -> Reply:
        uid = self.rng.choice(self.known or [1])
        return self.m.uid("STORE", str(uid), f"{self.rng.choice('+-')}FLAGS.SILENT", "(\\Flagged)")

    def clean_up(self) -> None:
        """The oldest messages past `keep` are deleted and expunged, as a user clears old mail."""
        old, self.known = self.known[: -self.keep], self.known[-self.keep :]
        deleted = f"{old[0]}:{old[-1]}"
        self.timed("STORE \\Deleted", lambda: self.m.uid("STORE", deleted, "+FLAGS.SILENT", "(\\Deleted)"))
        self.timed("EXPUNGE", self.m.expunge)
        self.unseen = [u for u in self.unseen if u > old[-1]]


def reader(srv: DevServer, acct: dict[str, str], keep: int, seed: int, run: Run) -> None:
    r = Reader(srv, acct, keep, seed, run)
    names = [name for _, name in OPERATIONS]
    weights = [w for w, _ in OPERATIONS]
    r.m.select("INBOX")
    run.start.wait()
    try:
        while not run.stop.is_set():
            r.step(r.rng.choices(names, weights)[0])
    finally:
        r.m.logout()


def rss_kib(pids: list[int]) -> dict[int, int]:
    out = {}
    for pid in pids:
        try:
            out[pid] = round(rss_mib(pid, "VmRSS") * 1024)
        except FileNotFoundError:  # a worker replaced between listing and reading
            continue
    return out


def sampler(pid: int, run: Run, samples: list[Sample]) -> None:
    started = time.monotonic()
    while not run.stop.wait(SAMPLE_SECONDS):
        samples.append(Sample(time.monotonic() - started, run.tally.count(), rss_kib(family(pid))))


def percentiles(lat: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(lat, n=100) if len(lat) > 1 else [lat[0]] * 99
    return q[49] * 1000, q[94] * 1000, q[98] * 1000


def slope(points: list[tuple[int, int]]) -> tuple[float, float]:
    """Least-squares slope of y against x, in y per 1000 x, and its standard error."""
    xs, ys = [float(x) for x, _ in points], [float(y) for _, y in points]
    if len(set(xs)) < 3:  # no messages went through in the window: no slope to fit
        return math.nan, math.nan
    fit = statistics.linear_regression(xs, ys)
    mean = statistics.fmean(xs)
    sxx = sum((x - mean) ** 2 for x in xs)
    residuals = sum((y - (fit.slope * x + fit.intercept)) ** 2 for x, y in zip(xs, ys, strict=True))
    error = (residuals / (len(xs) - 2) / sxx) ** 0.5
    return fit.slope * 1000, error * 1000


def rss_of(pid: int, sample: Sample) -> int | None:
    return sample.rss_kib.get(pid)


def report(args: argparse.Namespace, tally: Tally, samples: list[Sample], peaks: dict[int, float]) -> None:
    seconds = args.seconds
    commands = [x for lat in tally.imap.values() for x in lat]
    print(
        f"{args.smtp_clients} submission and {args.imap_clients} IMAP clients, {seconds:g} s, "
        f"signed messages of about {args.size // 1024} KB, INBOXes kept to "
        f"{args.keep or 'every'} messages"
    )
    p50, p95, p99 = percentiles(tally.smtp)
    print(
        f"SMTP {tally.submitted / seconds:8.1f} msg/s        transaction p50 {p50:7.1f} ms  "
        f"p95 {p95:7.1f} ms  p99 {p99:7.1f} ms   ({tally.submitted} messages)"
    )
    p50, p95, p99 = percentiles(commands)
    print(
        f"IMAP {len(commands) / seconds:8.1f} commands/s   command     p50 {p50:7.1f} ms  "
        f"p95 {p95:7.1f} ms  p99 {p99:7.1f} ms   ({len(commands)} commands)"
    )
    for name, lat in sorted(tally.imap.items()):
        o50, o95, o99 = percentiles(lat)
        print(f"     {name:18s} n={len(lat):6d}   p50 {o50:7.1f} ms  p95 {o95:7.1f} ms  p99 {o99:7.1f} ms")
    for name, n in sorted(tally.refused.items()):
        print(f"     refused: {name} {n} times, last {tally.reasons.get(name, '')!r}")

    last = samples[-1].rss_kib
    fitted = [s for s in samples if s.at >= args.warmup]
    late = fitted[len(fitted) // 2 :]
    print(
        f"RSS in MiB; slope of RSS against messages submitted, in KiB per 1000 messages, after the "
        f"{args.warmup:g} s warm-up ({fitted[0].submitted}..{fitted[-1].submitted} messages) and over "
        f"its second half ({late[0].submitted}..):"
    )

    def slopes(rss: Callable[[Sample], int | None]) -> str:
        out = []
        for window in (fitted, late):
            k, err = slope([(s.submitted, y) for s in window if (y := rss(s)) is not None])
            out.append(f"{k:+8.1f} ± {err:5.1f}")
        return "   ".join(out)

    for i, pid in enumerate(last):
        # common.family lists the server, then its one child, the forker, then the workers.
        label = "server" if i == 0 else "forker" if i == 1 else f"worker {i - 1}"
        print(
            f"  {label:9s} pid {pid:7d}  peak {peaks[pid]:7.1f}  final {last[pid] / 1024:7.1f}  "
            f"slope {slopes(functools.partial(rss_of, pid))}"
        )
    print(
        f"  {'sum':9s} {'':11s}  peak {sum(peaks.values()):7.1f}  final {sum(last.values()) / 1024:7.1f}  "
        f"slope {slopes(lambda s: sum(s.rss_kib.values()))}"
    )
    tenths = [samples[round(i * (len(samples) - 1) / 10)] for i in range(11)]
    print(
        "  sum over time: "
        + ", ".join(f"{s.at:.0f} s {sum(s.rss_kib.values()) / 1024:.0f} ({s.submitted})" for s in tenths)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--smtp-clients", type=int, default=4)
    ap.add_argument("--imap-clients", type=int, default=4)
    ap.add_argument("--size", type=int, default=10240, help="approximate message size in bytes")
    ap.add_argument("--warmup", type=float, default=20, help="seconds left out of the slope")
    ap.add_argument("--keep", type=int, default=200, help="messages kept in each INBOX (0: all)")
    args = ap.parse_args()
    if args.warmup + 10 * SAMPLE_SECONDS > args.seconds:
        sys.exit("bench/load.py: --seconds must leave at least 10 samples after --warmup")

    with tempfile.TemporaryDirectory() as tmp:
        srv = DevServer(Path(tmp) / "data").start()
        try:
            assert srv.proc
            raise_quotas(srv)
            body = bench_body(args.size)
            accounts = srv.info["accounts"]  # type: ignore[index]
            # client n sends as account n to account n+1; IMAP client n reads account n+1's INBOX
            k = len(accounts)
            routes = [(accounts[n], accounts[(n + 1) % k]) for n in range(k)]
            mail = [messages_of(sender, rcpt, body, f"load {n}") for n, (sender, rcpt) in enumerate(routes)]
            # a client that cannot log in breaks the barrier instead of leaving the others waiting
            clients = args.smtp_clients + args.imap_clients
            run = Run(Tally(), threading.Barrier(clients + 1, timeout=120), threading.Event())
            threads = [
                threading.Thread(target=submitter, args=(srv, routes[n % k], mail[n % k], run))
                for n in range(args.smtp_clients)
            ] + [
                threading.Thread(target=reader, args=(srv, routes[n % k][1], args.keep, n, run))
                for n in range(args.imap_clients)
            ]
            samples: list[Sample] = []
            watch = threading.Thread(target=sampler, args=(srv.proc.pid, run, samples))
            for t in threads:
                t.start()
            run.start.wait()  # every client connected and logged in
            watch.start()
            time.sleep(args.seconds)
            run.stop.set()
            for t in [*threads, watch]:
                t.join()
            peaks = {pid: rss_mib(pid, "VmHWM") for pid in family(srv.proc.pid)}
            samples.append(Sample(args.seconds, run.tally.count(), rss_kib(list(peaks))))
        finally:
            srv.stop()
        report(args, run.tally, samples, peaks)  # before the folder, with every message, is removed


if __name__ == "__main__":
    main()
