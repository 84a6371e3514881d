"""Two `kepmta serve` nodes on one PostgreSQL database and one data folder share the work.

Clients submit to both nodes at once; node b is killed with SIGKILL (its whole process group)
while it works. Node a goes on alone and, once b's leases have run out, takes up the jobs b had
claimed. Node b is then started again under its name, removes its spool leftovers, and both nodes
serve reads. Then: every message answered 250 is delivered exactly once to each recipient, every
event has exactly one evidence and one receipt, every read exactly one ContentHandover, `kepmta
evidence audit` is clean, and no job, spool file or original is left over.

Nothing here waits a fixed time: each step polls for the state it needs, up to a deadline.
"""

from __future__ import annotations

import email.message
import email.parser
import email.policy
import imaplib
import os
import re
import signal
import smtplib
import ssl
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kepclient import KEPMTA, DevServer, free_port_base, kepmta, port_open, signed_message
from pgserver import PgServer

LEASE = 15  # seconds: the shortest [server] job_lease, so a dead node's jobs are taken up soon
SUBMISSION_ACCEPTANCE = "SubmissionAcceptance"
CONTENT_CONSIGNMENT = "ContentConsignment"
CONTENT_HANDOVER = "ContentHandover"
# b is killed once it has accepted this many; a then goes on until the total reaches ENOUGH.
BEFORE_KILL = 6
ENOUGH = 30


@dataclass
class Node:
    """One `kepmta serve --config` process of the pair."""

    name: str
    config: Path
    ports: dict[str, int]
    proc: subprocess.Popen[bytes] | None = None
    # Set just before the kill: a client's failure from then on is the kill's doing.
    killed: threading.Event = field(default_factory=threading.Event)

    def start(self, timeout: float = 90) -> None:
        log = self.config.with_suffix(".log").open("ab")
        self.proc = subprocess.Popen(
            [*KEPMTA, "serve", "--config", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while not all(port_open(p) for p in self.ports.values()):
            assert self.proc.poll() is None, self.config.with_suffix(".log").read_text()[-3000:]
            assert time.monotonic() < deadline, f"node {self.name} did not come up"
            time.sleep(0.2)

    def kill(self) -> None:
        assert self.proc is not None
        self.killed.set()
        os.killpg(self.proc.pid, signal.SIGKILL)  # the worker processes die with it
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


def node_config(data: Path, name: str) -> Node:
    """A kepmta.toml of its own for node `name` beside the folder's: its name, its ports, a short lease."""
    text = (data / "kepmta.toml").read_text()
    base = free_port_base()
    ports = {"submission": base, "submissions": base + 1, "imap": base + 2, "imaps": base + 3}
    text = text.replace("[server]\n", f'[server]\nnode = "{name}"\njob_lease = {LEASE}\n', 1)
    # No relay listener, API nor metrics: one port of each per machine, and this test needs none.
    text = re.sub(r"(?m)^(relay|api|metrics) = \d+\n", "", text)
    for key, port in ports.items():
        text = re.sub(rf"(?m)^{key} = \d+$", f"{key} = {port}", text)
    config = data / f"kepmta-{name}.toml"
    config.write_text(text)
    return Node(name, config, ports)


@dataclass
class Sent:
    node: str
    sender: int
    recipients: tuple[int, ...]
    ua_id: str
    accepted: bool


@dataclass
class Load:
    """Client threads, each submitting signed messages to one node as one sender, until told to stop."""

    info: dict[str, Any]
    tls: ssl.SSLContext
    sent: list[Sent] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def accepted(self, node: str | None = None) -> int:
        with self.lock:
            return sum(s.accepted and node in (None, s.node) for s in self.sent)

    def run(self, node: Node, sender: int) -> threading.Thread:
        thread = threading.Thread(target=self._submit, args=(node, sender), daemon=True)
        thread.start()
        return thread

    def _submit(self, node: Node, sender: int) -> None:
        acct = self.info["accounts"][sender]
        n = 0
        while not self.stop.is_set():
            n += 1
            rcpts = (0, 1, 2) if n % 3 == 0 else ((sender + 1) % 3, (sender + 2) % 3)
            to = [self.info["accounts"][r]["address"] for r in rcpts]
            raw = signed_message(
                acct["address"], to, f"{node.name}-{sender}-{n}", "Merhaba.", acct["cert"], acct["key"]
            )
            ua_id = re.search(rb"Message-ID: <([^>]+)>", raw).group(1).decode()  # type: ignore[union-attr]
            try:
                with smtplib.SMTP("127.0.0.1", node.ports["submission"], timeout=60) as s:
                    s.starttls(context=self.tls)
                    s.login(acct["address"], acct["password"])
                    s.sendmail(acct["address"], to, raw)
                accepted = True
            except (OSError, smtplib.SMTPException):
                # The node died under it (or before it): no 250, nothing promised.
                accepted = False
            with self.lock:
                self.sent.append(Sent(node.name, sender, rcpts, ua_id, accepted))
            if not accepted:
                if not node.killed.is_set():
                    self.errors.append(f"{node.name}: submission {ua_id} failed while the node ran")
                return  # the node is gone: this client stops


def poll(what: str, fn: Any, timeout: float = 150) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.3)


def rows(pg: PgServer, database: str, statement: str) -> list[list[str]]:
    out = pg.sql(statement, database)
    return [line.split("|") for line in out.splitlines() if line]


def mail_files(data: Path, address: str) -> list[Path]:
    local, _, domain = address.partition("@")
    root = data / "mail" / domain / local
    return [f for sub in root.rglob("*") if sub.name in ("new", "cur") for f in sub.iterdir()]


def headers_of(path: Path) -> email.message.Message:
    with path.open("rb") as f:
        return email.parser.BytesParser(policy=email.policy.compat32).parse(f, headersonly=True)


def read_all(node: Node, acct: dict[str, str], tls: ssl.SSLContext) -> int:
    """Open every message in INBOX (a non-PEEK FETCH, which sets \\Seen); how many there were."""
    m = imaplib.IMAP4_SSL("127.0.0.1", node.ports["imaps"], ssl_context=tls, timeout=60)
    try:
        m.login(acct["address"], acct["password"])
        m.select("INBOX")
        _, data = m.uid("SEARCH", None, "ALL")  # type: ignore[arg-type]
        uids = (data[0] or b"").split()
        for uid in uids:
            typ, _ = m.uid("FETCH", uid.decode(), "(BODY[])")
            assert typ == "OK"
        return len(uids)
    finally:
        m.logout()


def test_two_nodes_share_the_work_and_a_killed_node_loses_and_doubles_nothing(
    tmp_path: Path, postgres: PgServer
) -> None:
    url = postgres.new_database()
    database = url.rsplit("/", 1)[1]
    data = tmp_path / "data"
    # The development folder (PKI, demo accounts, kepmta.toml) on the shared database; then two
    # nodes serve it with configurations of their own.
    first = DevServer(data, database=url).start()
    first.stop()
    info = first.info
    assert info is not None
    tls = ssl.create_default_context(cafile=info["provider_ca"])
    tls.check_hostname = False
    a, b = node_config(data, "a"), node_config(data, "b")
    a.start()
    b.start()
    load = Load(info, tls)
    try:
        threads = [load.run(a, 0), load.run(b, 1), load.run(a, 2), load.run(b, 0)]
        poll("node b accepting messages", lambda: load.accepted("b") >= BEFORE_KILL)
        b.kill()
        held = rows(postgres, database, "SELECT id FROM jobs WHERE claimed_by = 'b' AND state = 'pending'")
        print(f"node b killed after {load.accepted('b')} acceptances, holding jobs {held}")
        poll("node a accepting alone", lambda: load.accepted() >= ENOUGH)
        load.stop.set()
        for thread in threads:
            thread.join(120)
        assert not load.errors, load.errors

        # a takes up what b had claimed, once b's leases have run out; b is still down.
        poll(
            "every job done by node a",
            lambda: rows(postgres, database, "SELECT count(*) FROM jobs WHERE state <> 'done'") == [["0"]],
        )
        for (job,) in held:
            [[by]] = rows(postgres, database, f"SELECT claimed_by FROM jobs WHERE id = {job}")
            assert by == "a", f"job {job}, claimed by b when it was killed, was finished by {by}"

        # b again, under its name: it removes what it left in the spool. Then reads on both.
        b.start()
        opened = read_all(a, info["accounts"][2], tls) + read_all(b, info["accounts"][1], tls)
        assert opened
        poll(
            "the read evidence and its receipts",
            lambda: rows(postgres, database, "SELECT count(*) FROM jobs WHERE state <> 'done'") == [["0"]],
        )
    finally:
        load.stop.set()
        a.stop()
        b.stop()

    accepted = [s for s in load.sent if s.accepted]
    assert sum(s.node == "b" for s in accepted) >= BEFORE_KILL and len(accepted) >= ENOUGH
    addresses = [acct["address"] for acct in info["accounts"]]
    messages = {
        ua: (mid, original)
        for mid, ua, original in rows(
            postgres, database, "SELECT id, ua_message_id, spool_path FROM messages"
        )
    }
    recipients: dict[str, list[str]] = {}
    for mid, address in rows(
        postgres, database, "SELECT message_id, address FROM recipients ORDER BY position"
    ):
        recipients.setdefault(mid, []).append(address)
    # Every 250 is a message in the database, with the recipients it was sent to.
    for s in accepted:
        assert s.ua_id in messages, f"{s.ua_id} was answered 250 by node {s.node} and is not in the database"
        assert recipients[messages[s.ua_id][0]] == [addresses[r] for r in s.recipients]

    # Each message in the database (a 250 the client may not have heard, too) is in each
    # recipient's INBOX exactly once, and nowhere else.
    delivered: Counter[tuple[str, str]] = Counter()
    receipts: Counter[tuple[str, str]] = Counter()
    for address in addresses:
        for path in mail_files(data, address):
            h = headers_of(path)
            if h.get("REM-MessageType", "").strip().endswith("/dispatch"):
                delivered[(address, str(h["Message-ID"]).strip().strip("<>"))] += 1
            elif h.get("REM-Evidence-ID"):
                receipts[(address, str(h["REM-Evidence-ID"]).strip().strip("<>"))] += 1
    owed = Counter((address, mid) for mid, rcpts in recipients.items() for address in rcpts)
    assert delivered == owed

    # One evidence per event, message and recipient, whichever node made it; each filed once as a
    # receipt in its sender's evidence folder.
    evidence = rows(
        postgres,
        database,
        "SELECT l.evidence_id, l.message_id, l.event, coalesce(l.recipient, 0), m.sender FROM ledger l "
        "JOIN messages m ON m.id = l.message_id WHERE l.kind = 'evidence'",
    )
    events = Counter((mid, event, int(r)) for _, mid, event, r, _ in evidence)
    assert [k for k, n in events.items() if n != 1] == []
    for mid, rcpts in recipients.items():
        assert events[(mid, SUBMISSION_ACCEPTANCE, 0)] == 1
        assert all(events[(mid, CONTENT_CONSIGNMENT, i)] == 1 for i in range(1, len(rcpts) + 1))
    handed = {(mid, int(r)) for _, mid, event, r, _ in evidence if event == CONTENT_HANDOVER}
    read = {
        (mid, rcpts.index(reader) + 1)
        for mid, rcpts in recipients.items()
        for reader in (addresses[2], addresses[1])
        if reader in rcpts
    }
    assert handed == read
    assert receipts == Counter((sender, eid) for eid, _, _, _, sender in evidence)

    # The chain is whole and gapless, every signature holds.
    audit = kepmta("evidence", "audit", "--config", str(a.config))
    assert audit.returncode == 0, audit.stdout + audit.stderr

    # Nothing left over: no job, no half-received file, no original without its message.
    assert rows(postgres, database, "SELECT id FROM jobs WHERE state <> 'done'") == []
    spool = data / "spool"
    assert [p.name for sub in ("incoming", "relay-incoming") for p in (spool / sub).iterdir()] == []
    named = {original for _, original in messages.values() if original}
    assert {p.name for p in (spool / "originals").iterdir()} == named
