"""Messages/s relayed between two providers with all evidence on both sides, beside local delivery
in the same run.

Two `kepmta serve --dev` providers in fresh folders, A (kep-a.test) and B (kep-b.test). First the
local-delivery figure of bench/submission.py, measured with its own load and drain against A (one
A account writing to another). Then each provider is registered in the other's peer registry
(`kepmta peers add-dev`), one warm-up message is relayed, and for the same time the same number of
clients submit signed messages of the same size from A's accounts to B's accounts (client n as A
account n, to B account n, modulo the number of accounts). A message counts as relayed once it is
in the recipient's INBOX at B and its sender at A has its SubmissionAcceptance, RelayAcceptance
and ContentConsignment receipts in Kanıt: polled with IMAP STATUS, then checked per subject (each
subject as often in B's INBOX as each of the three receipts at A, and the totals equal to what was
sent). The local phase comes first because a relayed message leaves relay-wait timers (the 12 h
warning, the 24 h RelayFailure) pending at A, and bench/submission.py's drain waits for every
pending job but relays. Peak RSS is reset at the start of each phase (/proc/PID/clear_refs).

    .venv/bin/python bench/relay.py [--seconds 30] [--clients 4] [--size 10240]

Prints, for both phases, messages/s accepted at A, reply latency percentiles, the end-to-end rate,
the peak RSS of the servers summed with their worker processes (as bench/large_message.py does),
and the ratios relay / local.
"""

from __future__ import annotations

import argparse
import asyncio
import email
import email.policy
import imaplib
import re
import signal
import smtplib
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from common import bench_body, family, messages_of, raise_quotas, reset_peak, rss_mib
from kepclient import EVIDENCE_FOLDER, DevServer, imap, kepmta, signed_message, smtp, wait_for
from submission import Mail, describe, drain_seconds, load, login, sqlite_pending

RECEIPTS = ("SubmissionAcceptance", "RelayAcceptance", "ContentConsignment")
# No IMAP count moving for this long after the load means a message is stuck: give up, say where.
STALL_SECONDS = 120
# (A sender, B recipient, how many of the clients send as that sender)
Plan = list[tuple[dict[str, str], dict[str, str], int]]


def peaks(srv: DevServer) -> tuple[float, int]:
    """Summed peak RSS (MiB) of the server and its worker processes, and how many workers."""
    assert srv.proc
    processes = family(srv.proc.pid)
    return sum(rss_mib(p, "VmHWM") for p in processes), len(processes) - 1


def reset_peaks(*servers: DevServer) -> None:
    for srv in servers:
        assert srv.proc
        for pid in family(srv.proc.pid):
            reset_peak(pid)


def register_peers(a: DevServer, b: DevServer) -> None:
    for one, other in ((a, b), (b, a)):
        r = kepmta("peers", "add-dev", "--data", str(one.data), "--peer-data", str(other.data))
        assert r.returncode == 0, r.stderr
        assert one.proc
        one.proc.send_signal(signal.SIGHUP)  # re-read the registry now, not at the next poll


def count(m: imaplib.IMAP4, folder: str) -> int:
    typ, data = m.status(f'"{folder}"', "(MESSAGES)")
    found = re.search(rb"MESSAGES (\d+)", data[0] or b"") if typ == "OK" else None
    return int(found.group(1)) if found else 0


def subjects(m: imaplib.IMAP4, folder: str) -> Counter[str]:
    """How often each Subject occurs in `folder`, decoded."""
    out: Counter[str] = Counter()
    if count(m, folder) == 0:
        return out
    m.select(f'"{folder}"', readonly=True)
    _, data = m.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    for item in data:
        if isinstance(item, tuple):
            header = email.message_from_bytes(item[1], policy=email.policy.default)
            out[str(header["Subject"])] += 1
    return out


def pairs(a: DevServer, b: DevServer, clients: int) -> Plan:
    """Client n sends as A account n and writes to B account n, n modulo the number of accounts
    (both development providers have the same accounts, so each B INBOX has one A sender)."""
    senders = a.info["accounts"]  # type: ignore[index]
    recipients = b.info["accounts"]  # type: ignore[index]
    used = min(clients, len(senders), len(recipients))
    return [(senders[k], recipients[k], clients // used + (k < clients % used)) for k in range(used)]


def warm_up(a: DevServer, b: DevServer, body: str) -> None:
    """One message relayed with all its receipts: both registries are in force, both relays run."""
    sender, rcpt = a.account(0), b.account(0)
    msg = signed_message(sender["address"], [rcpt["address"]], "warm-up", body, sender["cert"], sender["key"])

    def submitted() -> bool:
        # Refused (RA05, not a KEP address) until A has read its new registry.
        with smtp(a, sender) as s:
            try:
                s.sendmail(sender["address"], [rcpt["address"]], msg)
            except smtplib.SMTPRecipientsRefused:
                return False
        return True

    m = imap(a, sender)
    try:
        before = count(m, EVIDENCE_FOLDER)
        assert wait_for(submitted, timeout=30, step=0.5), "A never took B's domain from its registry"
        done = wait_for(lambda: count(m, EVIDENCE_FOLDER) >= before + len(RECEIPTS), timeout=120)
        assert done, "the warm-up message was not relayed with its receipts within 120 s"
    finally:
        m.logout()


async def relay_load(a: DevServer, plan: Plan, body: str, seconds: float) -> tuple[list[int], list[float]]:
    """bench/submission.py's load once per A sender, with its share of the clients, all at once."""
    tls = a.tls()
    results = await asyncio.gather(
        *(
            load(
                [a.ports["submission"]],
                tls,
                (sender["address"], sender["password"]),
                Mail(
                    sender["address"],
                    rcpt["address"],
                    messages_of(sender, rcpt, body, f"relay {sender['address'].split('@')[0]}"),
                ),
                clients,
                seconds,
            )
            for sender, rcpt, clients in plan
        )
    )
    return [sent for sent, _ in results], [lat for _, latencies in results for lat in latencies]


class Mailboxes:
    """Each A sender's Kanıt and each B recipient's INBOX, with their counts before the load."""

    def __init__(self, a: DevServer, b: DevServer, plan: Plan) -> None:
        self.evidence = [imap(a, sender) for sender, _, _ in plan]
        self.inboxes = [imap(b, rcpt) for _, rcpt, _ in plan]
        self.before = self.counts()

    def counts(self) -> list[int]:
        return [count(m, EVIDENCE_FOLDER) for m in self.evidence] + [count(m, "INBOX") for m in self.inboxes]

    def drain(self, sent: list[int]) -> float:
        """Seconds until every Kanıt holds three receipts and every INBOX one dispatch per message
        sent; SystemExit when nothing moves for STALL_SECONDS."""
        started = time.monotonic()
        wanted = [len(RECEIPTS) * n for n in sent] + sent
        targets = [before + n for before, n in zip(self.before, wanted, strict=True)]
        last, moved = self.counts(), time.monotonic()
        while any(c < t for c, t in zip(last, targets, strict=True)):
            time.sleep(0.2)
            now = self.counts()
            if now != last:
                last, moved = now, time.monotonic()
            elif time.monotonic() - moved > STALL_SECONDS:
                raise SystemExit(f"stalled: Kanıt and INBOX counts {last}, expected {targets}")
        return time.monotonic() - started

    def check(self, sent: list[int]) -> str:
        """Per subject, as many dispatches in B's INBOXes as receipts of each kind at A."""
        receipts: dict[str, Counter[str]] = {event: Counter() for event in RECEIPTS}
        dispatches: Counter[str] = Counter()
        for m in self.evidence:
            for subject, n in subjects(m, EVIDENCE_FOLDER).items():
                found = re.fullmatch(r"REM (\w+): (relay .*)", subject)
                if found and found.group(1) in receipts:
                    receipts[found.group(1)][found.group(2)] += n
        for m in self.inboxes:
            for subject, n in subjects(m, "INBOX").items():
                found = re.fullmatch(r"REM Dispatch: (relay .*)", subject)
                if found:
                    dispatches[found.group(1)] += n
        problems = [
            f"{subject}: {dispatches[subject]} in INBOX, "
            + ", ".join(f"{receipts[e][subject]} {e}" for e in RECEIPTS)
            for subject in sorted(set(dispatches).union(*receipts.values()))
            if any(receipts[e][subject] != dispatches[subject] for e in RECEIPTS)
        ]
        if problems or dispatches.total() != sum(sent):
            raise SystemExit(f"{sum(sent)} sent, {dispatches.total()} delivered; " + "; ".join(problems[:5]))
        return f"{dispatches.total()} messages in B's INBOXes, each with its {', '.join(RECEIPTS)} at A"

    def close(self) -> None:
        for m in self.evidence + self.inboxes:
            m.logout()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--size", type=int, default=10240, help="approximate message size in bytes")
    args = ap.parse_args()
    body = bench_body(args.size)

    with tempfile.TemporaryDirectory() as tmp:
        a = DevServer(Path(tmp) / "A", domain="kep-a.test")
        b = DevServer(Path(tmp) / "B", domain="kep-b.test")
        try:
            a.start()
            b.start()
            for srv in (a, b):
                raise_quotas(srv)
            print(
                f"A {a.info['domain']}, B {b.info['domain']}: {args.clients} clients, "  # type: ignore[index]
                f"{args.seconds:g} s per phase, signed messages of about {args.size // 1024} KB"
            )

            ali, ayse = a.account(0), a.account(1)
            reset_peaks(a)
            mail = Mail(ali["address"], ayse["address"], messages_of(ali, ayse, body, "bench"))
            sent, lat = asyncio.run(
                load([a.ports["submission"]], a.tls(), login(a), mail, args.clients, args.seconds)
            )
            drained = drain_seconds(sqlite_pending(a.data / "kepmta.db"))
            local_rss, local_workers = peaks(a)
            local = describe("local A", sent, args.seconds, lat, local_rss)
            local_e2e = sent / (args.seconds + drained)
            print(
                f"{'':10s} every delivery and receipt done {drained:.1f} s after the load: "
                f"{local_e2e:.1f} msg/s end to end   (RSS: server + {local_workers} workers)"
            )

            register_peers(a, b)
            warm_up(a, b, body)
            plan = pairs(a, b, args.clients)
            boxes = Mailboxes(a, b, plan)
            try:
                reset_peaks(a, b)
                sents, lat = asyncio.run(relay_load(a, plan, body, args.seconds))
                drained = boxes.drain(sents)
                (a_rss, a_workers), (b_rss, b_workers) = peaks(a), peaks(b)
                relay = describe("relay A→B", sum(sents), args.seconds, lat, a_rss)
                relay_e2e = sum(sents) / (args.seconds + drained)
                print(
                    f"{'':10s} every message in B's INBOX with its three receipts at A {drained:.1f} s "
                    f"after the load: {relay_e2e:.1f} msg/s end to end"
                )
                print(
                    f"{'':10s} peak RSS A {a_rss:.1f} MiB (server + {a_workers} workers), "
                    f"B {b_rss:.1f} MiB (server + {b_workers} workers)"
                )
                print(f"{'':10s} checked: {boxes.check(sents)}")
            finally:
                boxes.close()
        finally:
            a.stop()
            b.stop()
    print(f"ratio relay / local: accepted {relay / local:.2f}, end to end {relay_e2e / local_e2e:.2f}")


if __name__ == "__main__":
    main()
