"""Steady load on a development server, and what must hold after any crash.

`Load` runs client threads with smtplib and imaplib, as users would: two senders keep submitting
signed messages to one or two of the demo accounts, and every demo account keeps reading its INBOX
with non-PEEK FETCH BODY[]. Each client records only what the server told it: a submission answered
250 (with the provider id), refused with a definite reply, or unknown (the connection died before
the answer); a read whose FETCH was answered with the dispatch.

`problems` compares those records with what the server holds once its queue has drained: the
database, the ledger, every mailbox as IMAP shows it and as it lies on disk, the spool, and
`kepmta evidence audit`. It reads the database through a read-only SQLite connection and never
through kepmta's code.
"""

from __future__ import annotations

import email.parser
import email.policy
import imaplib
import random
import re
import smtplib
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from kepclient import EVIDENCE_FOLDER, DevServer, imap, kepmta, signed_by, smtp, wait_for

ACCEPTANCE = "SubmissionAcceptance"
CONSIGNMENT = "ContentConsignment"
HANDOVER = "ContentHandover"
DISPATCH_TYPE = "http://uri.etsi.org/19522/v1#/ERDMessageType/dispatch"
SENDERS = (0, 1)  # demo accounts that submit; all three read
_CONNECTION_LOST = (OSError, EOFError, smtplib.SMTPException, imaplib.IMAP4.error)


class Outcome(StrEnum):
    ACCEPTED = "accepted"  # 250 … accepted as <id>
    REFUSED = "refused"  # a definite reply other than 250: nothing was accepted
    UNKNOWN = "unknown"  # the connection died first: accepted whole, or not at all


@dataclass(frozen=True)
class Submission:
    sender: str
    recipients: tuple[str, ...]
    ua_id: str  # the Message-ID the client wrote, without <>
    outcome: Outcome
    provider_id: str | None  # from the 250 reply
    reply: str


class Load:
    """Submitting and reading client threads; `pause` parks them all between two operations."""

    def __init__(self, srv: DevServer, seed: int) -> None:
        self.srv = srv
        self.seed = seed
        self.submissions: list[Submission] = []
        self.reads: set[tuple[str, str]] = set()  # (reader, provider id): a FETCH BODY[] answered
        self.errors: list[BaseException] = []  # a client thread's own failure: a bug in this file
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._paused = False
        self._stopping = False
        self._parked = 0
        self._alive = 0
        targets: list[Callable[[random.Random], None]] = [
            *(lambda rng, i=i: self._submit(i, rng) for i in SENDERS),
            *(lambda rng, i=i: self._read(i, rng) for i in range(3)),
        ]
        self._threads = [
            threading.Thread(target=self._run, args=(t, random.Random(seed * 31 + n)), daemon=True)
            for n, t in enumerate(targets)
        ]

    def start(self) -> None:
        self._alive = len(self._threads)
        for t in self._threads:
            t.start()

    def pause(self, timeout: float = 180) -> bool:
        """True once every client is parked (or gone); it finishes the operation it is in first."""
        with self._cond:
            self._paused = True
            return self._cond.wait_for(lambda: self._parked == self._alive, timeout)

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
        self.resume()
        for t in self._threads:
            t.join(120)

    def snapshot(self) -> tuple[list[Submission], set[tuple[str, str]]]:
        with self._lock:
            return list(self.submissions), set(self.reads)

    def _run(self, target: Callable[[random.Random], None], rng: random.Random) -> None:
        try:
            target(rng)
        except BaseException as e:
            with self._lock:
                self.errors.append(e)
        finally:
            with self._cond:
                self._alive -= 1
                self._cond.notify_all()

    def _gate(self) -> bool:
        """Wait while paused; False once the load is stopping."""
        with self._cond:
            if self._paused and not self._stopping:
                self._parked += 1
                self._cond.notify_all()
                self._cond.wait_for(lambda: not self._paused)
                self._parked -= 1
            return not self._stopping

    def _submit(self, i: int, rng: random.Random) -> None:
        me = self.srv.account(i)["address"]
        others = [self.srv.account(j)["address"] for j in range(3) if j != i]
        conn: smtplib.SMTP | None = None
        n = 0
        while self._gate():
            if conn is None:
                try:
                    conn = smtp(self.srv, self.srv.account(i))
                except _CONNECTION_LOST:
                    time.sleep(0.1)  # the server is down or starting: try again
                    continue
            n += 1
            to = tuple(rng.sample(others, rng.choice((1, 2))))
            msg = signed_by(self.srv, i, list(to), f"crash {self.seed} {i}.{n}", f"Tur {n}.")
            found = re.search(rb"Message-ID: <([^>]+)>", msg)
            assert found
            outcome, provider_id, reply = Outcome.UNKNOWN, None, ""
            try:
                outcome, provider_id, reply = _transaction(conn, me, to, msg)
            except smtplib.SMTPResponseException as e:  # a definite refusal before the content went
                outcome, reply = Outcome.REFUSED, f"{e.smtp_code} {e.smtp_error!r}"
            except _CONNECTION_LOST as e:
                reply = repr(e)
                with suppress(*_CONNECTION_LOST):
                    conn.close()
                conn = None
            if outcome is Outcome.REFUSED and conn is not None:
                with suppress(*_CONNECTION_LOST):
                    conn.rset()
            with self._lock:
                self.submissions.append(
                    Submission(me, to, found.group(1).decode(), outcome, provider_id, reply)
                )
            time.sleep(rng.uniform(0, 0.2))  # steady, not a flood: each round checks all it sent
        if conn is not None:
            with suppress(*_CONNECTION_LOST):
                conn.quit()

    def _read(self, i: int, rng: random.Random) -> None:
        acct = self.srv.account(i)
        me = acct["address"]
        m: imaplib.IMAP4 | None = None
        ids: dict[int, str] = {}  # UID → provider id, for the UIDVALIDITY in `validity`
        validity: bytes | None = None
        while self._gate():
            try:
                if m is None:
                    m = imap(self.srv, acct)
                typ, _ = m.select("INBOX")
                assert typ == "OK"
                (now_validity,) = m.response("UIDVALIDITY")[1]
                if now_validity != validity:
                    validity, ids = now_validity, {}
                _, data = m.uid("SEARCH", None, "ALL")  # type: ignore[arg-type]
                uids = [int(u) for u in (data[0] or b"").split()]
                new = [u for u in uids if u not in ids]
                if new:
                    for uid, _flags, head in _headers(m, ",".join(map(str, new)), "MESSAGE-ID"):
                        if (pid := _header_id(head, "Message-ID")) is not None:
                            ids[uid] = pid
                with self._lock:
                    unread = [u for u in uids if u in ids and (me, ids[u]) not in self.reads]
                # A client opens what it has not seen the content of, \Seen or not: a read whose
                # answer never came is tried again, as a person would.
                for uid in rng.sample(unread, min(2, len(unread))):
                    typ, fetched = m.uid("FETCH", str(uid), "(BODY[])")
                    body = b"".join(part[1] for part in fetched if isinstance(part, tuple))
                    if typ == "OK" and f"Message-ID: <{ids[uid]}>".encode() in body:
                        with self._lock:
                            self.reads.add((me, ids[uid]))
            except _CONNECTION_LOST:
                if m is not None:
                    with suppress(*_CONNECTION_LOST):
                        m.shutdown()
                m = None
                time.sleep(0.1)
            time.sleep(rng.uniform(0.05, 0.3))
        if m is not None:
            with suppress(*_CONNECTION_LOST):
                m.logout()


def _transaction(
    conn: smtplib.SMTP, me: str, to: tuple[str, ...], msg: bytes
) -> tuple[Outcome, str | None, str]:
    code, text = conn.mail(me)
    if code != 250:
        return Outcome.REFUSED, None, f"MAIL {code} {text!r}"
    for r in to:
        code, text = conn.rcpt(r)
        if code != 250:
            return Outcome.REFUSED, None, f"RCPT {code} {text!r}"
    code, text = conn.data(msg)
    if code != 250:
        return Outcome.REFUSED, None, f"DATA {code} {text!r}"
    found = re.search(rb"accepted as <([^>]+)>", text)
    assert found, text
    return Outcome.ACCEPTED, found.group(1).decode(), text.decode()


def _headers(m: imaplib.IMAP4, uids: str, *fields: str) -> Iterator[tuple[int, frozenset[str], bytes]]:
    """(UID, flags, header block) of each message in `uids`, read with BODY.PEEK."""
    typ, data = m.uid("FETCH", uids, f"(UID FLAGS BODY.PEEK[HEADER.FIELDS ({' '.join(fields)})])")
    assert typ == "OK", data
    items: list[tuple[bytes, bytes]] = []
    for part in data:
        if isinstance(part, tuple):
            items.append((part[0], part[1]))
        elif part and items:  # what follows the literal: more of the same response
            items[-1] = (items[-1][0] + part, items[-1][1])
    for head, literal in items:
        uid = re.search(rb"UID (\d+)", head)
        flags = re.search(rb"FLAGS \(([^)]*)\)", head)
        assert uid and flags, head
        yield int(uid.group(1)), frozenset(flags.group(1).decode().split()), literal


def _header_id(head: bytes, name: str) -> str | None:
    parsed = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(head, headersonly=True)
    found = re.search(r"<?([^<>\s]+)>?", str(parsed.get(name, "")))
    return found.group(1) if found else None


@dataclass(frozen=True)
class Folder:
    """A folder as IMAP shows it: (UID, flags, header block) per message, and its files on disk."""

    messages: list[tuple[int, frozenset[str], bytes]]
    files_on_disk: int


def folder(srv: DevServer, i: int, name: str, *fields: str) -> Folder:
    acct = srv.account(i)
    m = imap(srv, acct)
    try:
        typ, data = m.select(f'"{name}"', readonly=True)
        assert typ == "OK", data
        exists = int(data[0] or 0)
        found = list(_headers(m, "1:*", *fields)) if exists else []
    finally:
        m.logout()
    local, domain = acct["address"].split("@")
    root = Path(srv.info["data"]) / "mail" / domain / local  # type: ignore[index]
    where = root if name == "INBOX" else root / f".{name}"
    on_disk = sum(1 for sub in ("new", "cur") if (where / sub).is_dir() for _ in (where / sub).iterdir())
    return Folder(found, on_disk)


@contextmanager
def database(data: Path) -> Iterator[sqlite3.Connection]:
    with closing(sqlite3.connect(f"file:{data / 'kepmta.db'}?mode=ro", uri=True, timeout=60)) as conn:
        yield conn


def pending_jobs(data: Path) -> list[tuple[int, str, str, str | None]]:
    with database(data) as db:
        return db.execute(
            "SELECT id, kind, message_id, last_error FROM jobs WHERE state != 'done' ORDER BY id"
        ).fetchall()


def drain(data: Path, timeout: float = 180) -> None:
    """Wait until every job is done, or `timeout` has passed: a generous bound, never a verdict
    (`problems` names any job left)."""
    wait_for(lambda: not pending_jobs(data), timeout, 0.1)


@dataclass(frozen=True)
class Server:
    """What the server holds, read once the load is paused and the queue drained."""

    data: Path
    messages: dict[str, tuple[str, str | None, str | None]]  # id → sender, UA Message-ID, original
    recipients: dict[str, list[str]]  # message id → addresses, by position
    evidence: dict[tuple[str, str, int | None], list[str]]  # (message, event, recipient) → ids
    versions: dict[str, Counter[str]]  # evidence id → ledger records of each kind
    handovers: set[tuple[str, int]]
    jobs: list[tuple[int, str, str, str, str | None]]  # not done

    @classmethod
    def read(cls, data: Path) -> Server:
        with database(data) as db:
            messages = {
                mid: (sender, ua, spool)
                for mid, sender, ua, spool in db.execute(
                    "SELECT id, sender, ua_message_id, spool_path FROM messages"
                )
            }
            recipients: dict[str, list[str]] = {}
            for mid, address in db.execute(
                "SELECT message_id, address FROM recipients ORDER BY message_id, position"
            ):
                recipients.setdefault(mid, []).append(address)
            evidence: dict[tuple[str, str, int | None], list[str]] = {}
            versions: dict[str, Counter[str]] = {}
            for kind, eid, mid, event, recipient in db.execute(
                "SELECT kind, evidence_id, message_id, event, recipient FROM ledger "
                "WHERE kind IN ('evidence', 'timestamp')"
            ):
                versions.setdefault(eid, Counter())[kind] += 1
                if kind == "evidence":
                    evidence.setdefault((mid, event, recipient), []).append(eid)
            handovers = set(db.execute("SELECT message_id, recipient FROM handovers"))
            jobs = db.execute(
                "SELECT id, kind, state, message_id, last_error FROM jobs WHERE state != 'done'"
            ).fetchall()
        return cls(data, messages, recipients, evidence, versions, handovers, jobs)

    @property
    def accepted(self) -> dict[str, str]:
        """Accepted messages (a refusal has no original): id → UA Message-ID."""
        return {mid: ua or "" for mid, (_, ua, spool) in self.messages.items() if spool is not None}

    def position(self, message_id: str, address: str) -> int | None:
        """EvidenceRefersToRecipient of `address` in the message, 1-based."""
        rcpts = self.recipients.get(message_id, [])
        return rcpts.index(address) + 1 if address in rcpts else None

    def handed_over(self) -> set[tuple[str, int | None]]:
        return {(mid, r) for mid, event, r in self.evidence if event == HANDOVER}


def problems(srv: DevServer, load: Load) -> list[str]:
    """Everything that contradicts what the clients were told, or that is lost, doubled or orphaned.
    Call with the load paused and the queue drained; `audit` checks the ledger's signatures."""
    server = Server.read(Path(srv.info["data"]))  # type: ignore[index]
    submissions, reads = load.snapshot()
    return [
        *_answers(server, submissions),
        *_evidence(server, reads),
        *(p for i in range(3) for p in _mailboxes(srv, server, i)),
        *_orphans(server),
    ]


def _answers(server: Server, submissions: list[Submission]) -> Iterator[str]:
    """A 250 is a message accepted whole, as submitted; a refusal is nothing; an unknown, either."""
    by_ua: dict[str, list[str]] = {}
    for mid, ua in server.accepted.items():
        by_ua.setdefault(ua, []).append(mid)
    for s in submissions:
        present = by_ua.get(s.ua_id, [])
        if s.outcome is Outcome.ACCEPTED:
            if present != [s.provider_id]:
                yield f"answered 250 as {s.provider_id}, but accepted messages with its id: {present}"
            elif (kept := server.recipients.get(present[0])) != list(s.recipients):
                yield f"{s.provider_id}: recipients {kept}, submitted {s.recipients}"
        elif s.outcome is Outcome.REFUSED and present:
            yield f"refused ({s.reply}) but accepted as {present}"
        elif len(present) > 1:
            yield f"one submission whose answer was lost accepted {len(present)} times: {present}"
    submitted = {s.ua_id for s in submissions}
    yield from (
        f"accepted {mid}, never submitted" for mid, ua in server.accepted.items() if ua not in submitted
    )


def _evidence(server: Server, reads: set[tuple[str, str]]) -> Iterator[str]:
    """One evidence per (message, event, recipient), its time-stamped version at most once; each
    accepted message accepted and consigned to every recipient; each answered read handed over."""
    for key, eids in server.evidence.items():
        if len(eids) != 1:
            yield f"{len(eids)} evidences for {key}: {eids}"
    for eid, kinds in server.versions.items():
        if kinds["evidence"] != 1 or kinds["timestamp"] > 1:
            yield f"evidence {eid} has ledger records {dict(kinds)}"
    events: dict[str, set[str]] = {}
    for mid, event, _ in server.evidence:
        events.setdefault(mid, set()).add(event)
    for mid in server.accepted:
        if (mid, ACCEPTANCE, None) not in server.evidence:
            yield f"{mid}: no {ACCEPTANCE}"
        for position, _ in enumerate(server.recipients.get(mid, []), start=1):
            if (mid, CONSIGNMENT, position) not in server.evidence:
                yield f"{mid}: no {CONSIGNMENT} for recipient {position}"
        if extra := events.get(mid, set()) - {ACCEPTANCE, CONSIGNMENT, HANDOVER}:
            yield f"{mid}: unexpected evidence {sorted(extra)}"
    handed = server.handed_over()
    if handed != server.handovers:
        yield f"{HANDOVER} evidence and handovers rows differ: {sorted(handed ^ server.handovers)}"
    for reader, mid in sorted(reads):
        if (mid, server.position(mid, reader)) not in handed:
            yield f"{reader} was given {mid} by FETCH BODY[] and there is no {HANDOVER}"


def _mailboxes(srv: DevServer, server: Server, i: int) -> Iterator[str]:
    """Each accepted message's dispatch in each recipient's INBOX once, nothing else there, a \\Seen
    one handed over (nothing else would ever make its evidence); every evidence about a sender's
    message filed as a receipt in the sender's evidence folder once; IMAP showing every file."""
    address = srv.account(i)["address"]
    inbox = folder(srv, i, "INBOX", "MESSAGE-ID", "REM-MESSAGETYPE")
    if inbox.files_on_disk != len(inbox.messages):
        yield f"{address}: INBOX shows {len(inbox.messages)} messages, {inbox.files_on_disk} files on disk"
    handed = server.handed_over()
    dispatches: Counter[str] = Counter()
    for _, flags, head in inbox.messages:
        pid = _header_id(head, "Message-ID")
        if DISPATCH_TYPE.encode() not in head or pid is None:
            yield f"{address}: INBOX holds something not a dispatch: {head!r}"
            continue
        dispatches[pid] += 1
        if "\\Seen" in flags and (pid, server.position(pid, address)) not in handed:
            yield f"{address}: {pid} is \\Seen and has no {HANDOVER}"
    owed = {mid for mid in server.accepted if address in server.recipients.get(mid, [])}
    for pid in sorted(owed | set(dispatches)):
        if dispatches[pid] != (pid in owed):
            yield f"{address}: {pid} is in INBOX {dispatches[pid]} times, expected {int(pid in owed)}"
    if i not in SENDERS:
        return
    kept = folder(srv, i, EVIDENCE_FOLDER, "REM-EVIDENCE-ID")
    if kept.files_on_disk != len(kept.messages):
        yield f"{address}: evidence folder shows {len(kept.messages)}, {kept.files_on_disk} files on disk"
    filed = Counter(_header_id(head, "REM-Evidence-ID") or "" for _, _, head in kept.messages)
    due = {eids[0] for (mid, _, _), eids in server.evidence.items() if server.messages[mid][0] == address}
    for eid in sorted(due | set(filed)):
        if filed[eid] != (eid in due):
            yield f"{address}: the receipt of {eid!r} is filed {filed[eid]} times, expected {int(eid in due)}"


def _orphans(server: Server) -> Iterator[str]:
    """No job left, no half-received file, no original without its message or message without it."""
    yield from (f"job not done: {job}" for job in server.jobs)
    spool = server.data / "spool"
    for sub in ("incoming", "relay-incoming"):
        yield from (f"left in spool/{sub}: {f.name}" for f in (spool / sub).iterdir())
    named = {original for _, _, original in server.messages.values() if original is not None}
    on_disk = {f.name for f in (spool / "originals").iterdir()}
    yield from (f"spool/originals/{name} belongs to no message" for name in sorted(on_disk - named))
    yield from (f"the original {name} of a message is gone" for name in sorted(named - on_disk))


def audit(srv: DevServer) -> str | None:
    """What `kepmta evidence audit` found wrong with the ledger, if anything."""
    r = kepmta("evidence", "audit", "--data", srv.info["data"])  # type: ignore[index]
    return None if r.returncode == 0 else r.stdout + r.stderr
