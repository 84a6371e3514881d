"""Durable local jobs (deliver a dispatch, file a receipt), committed with the rows that cause them.

Several server processes, on several machines, may share one database (nodes, `Node`). A node
claims each job it takes: in one transaction it picks due jobs no live claim holds (`FOR UPDATE
SKIP LOCKED` on PostgreSQL, so two nodes looking at once take different jobs) and writes its name
and a lease time into them. While it works, it renews the leases of the jobs in its hands; a node
that dies stops renewing, and once its leases have run out another node claims the jobs. A job is
finished (done, failed, or put back for a retry) only by the node whose name it holds: one that
lost its claim (it stalled past its lease and another node took the job) fails with its whole
transaction, so no job is done, and no evidence recorded, twice.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import datetime as dt
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, and_, bindparam, func, insert, not_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from kepmta.config import RelayPolicy
from kepmta.db import utc
from kepmta.db.runner import runner
from kepmta.db.schema import jobs, messages
from kepmta.evidence.ledger import Writes
from kepmta.outage import outage

log = logging.getLogger(__name__)

DELIVER = "deliver"
RECEIPT = "receipt"
# Relaying (kepmta.queue.relay): a dispatch to a peer provider, its timers, and our evidence for a
# peer's sender going back to that peer as a receipt.
RELAY = "relay"
RELAY_WAIT = "relay-wait"
PEER_RECEIPT = "peer-receipt"
# A peer's receipt for one of our senders, verified and kept, filed into the sender's folder.
FILE_RECEIVED = "file-received"
# A notice that a KEP reached a mailbox, an SMS or an e-mail to its holder (kepmta.notify).
NOTIFY = "notify"
# Retry after 5 s, 30 s, 2 min, 10 min, then every 30 min: a local failure (disk full, permissions)
# is fixed by an operator, and the job must still be there when it is.
_BACKOFF = (5, 30, 120, 600, 1800)


class JobLoop(abc.ABC):
    """A worker that does its due jobs when woken, or at least every few seconds."""

    _IDLE_POLL = 5.0  # seconds between looks at the job table when nobody wakes the worker

    def __init__(self) -> None:
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            try:
                busy = await self.run_once()
            except Exception as e:
                # The database or the disk failed outside a job (a job's own failure is kept with
                # it for a retry): the worker looks again later, it never stops for good.
                if (found := outage(e)) is not None:
                    log.error("%s: %s; trying again: %s", type(self).__name__, found.what, e)
                else:
                    log.exception("%s: the due jobs could not be run; trying again", type(self).__name__)
                busy = 0
            if not busy:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._IDLE_POLL)

    @abc.abstractmethod
    async def run_once(self) -> int:
        """Attempt every due job once; returns how many there were."""


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    message_id: str
    payload: dict[str, Any]
    attempts: int
    node: str  # the node whose claim holds the job: only it may finish the job
    # Claimed before this claim: an earlier attempt, maybe by a node that died before it could
    # record anything, may have done part of the work (a file already filed).
    begun: bool


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Node:
    """This server process among those sharing the database: its name, how long its claims hold
    without renewal, and the jobs it holds now (whose leases `keep_leases` renews)."""

    def __init__(self, name: str, lease: dt.timedelta) -> None:
        self.name = name
        self.lease = lease
        # The last batch each worker claimed, by the kinds it claims: a worker claims its next
        # batch only once it is done with the one before (JobLoop), so that one is out of hand.
        self._held: dict[tuple[str, ...], tuple[int, ...]] = {}

    def held(self) -> list[int]:
        return sorted({i for batch in self._held.values() for i in batch})

    async def keep_leases(self, engine: AsyncEngine) -> None:
        """Renew the leases of the jobs in hand, three times per lease, for as long as this runs."""
        while True:
            await asyncio.sleep(self.lease.total_seconds() / 3)
            held = self.held()
            if not held:
                continue
            params = {"ids": held, "node": self.name, "until": _now() + self.lease}
            try:
                await runner(engine).write(functools.partial(_renew, params=params))
            except Exception as e:
                # A lease not renewed now is renewed at the next turn, unless it has run out.
                log.warning("the leases of jobs %s were not renewed: %s", held, e)


# Built once: these run several times for every message, and building a statement costs more CPU
# than running it.
_ENQUEUE = insert(jobs)
# Only by the holder of the job's claim (Writes.require: otherwise the transaction fails).
_MINE = (jobs.c.id == bindparam("job_id"), jobs.c.claimed_by == bindparam("node"), jobs.c.state == "pending")
_COMPLETE = update(jobs).where(*_MINE).values(state="done", last_error=None, lease_until=None)
_FAIL = update(jobs).where(*_MINE).values(state="failed", last_error=bindparam("error"), lease_until=None)
_RENEW = (
    update(jobs)
    .where(
        jobs.c.id.in_(bindparam("ids", expanding=True)),
        jobs.c.claimed_by == bindparam("node"),
        jobs.c.state == "pending",
    )
    .values(lease_until=bindparam("until"))
)


def enqueue(
    w: Writes, kind: str, message_id: str, payload: dict[str, Any], at: dt.datetime | None = None
) -> None:
    w.add(
        _ENQUEUE,
        {
            "kind": kind,
            "message_id": message_id,
            "payload": payload,
            "state": "pending",
            "attempts": 0,
            "next_at": at or _now(),
        },
    )


def enqueue_relay(
    w: Writes,
    message_id: str,
    domain: str,
    recipients: Sequence[tuple[int, str]],
    accepted_at: dt.datetime,
    timers: RelayPolicy,
) -> None:
    """The relay of a message to one peer domain, and the two timers that watch it (KEP.md: a
    warning after 12 h, RelayFailure after 24 h without the peer's relay evidence)."""
    payload = {"domain": domain, "recipients": [list(r) for r in recipients]}
    enqueue(w, RELAY, message_id, payload)
    for stage, after in (("warn", timers.warn_after), ("fail", timers.fail_after)):
        at = accepted_at + dt.timedelta(seconds=after)
        enqueue(w, RELAY_WAIT, message_id, {**payload, "stage": stage}, at)


# Due and held by no claim. On PostgreSQL the rows picked are locked until the claim commits, and
# rows another node's claim has locked meanwhile are passed over rather than waited for; SQLite,
# whose writing transactions run one at a time, has no FOR UPDATE and needs none.
_CLAIMABLE = (
    select(jobs)
    .where(
        jobs.c.state == "pending",
        jobs.c.kind.in_(bindparam("kinds", expanding=True)),
        jobs.c.next_at <= bindparam("now"),
        or_(jobs.c.lease_until.is_(None), jobs.c.lease_until < bindparam("now")),
    )
    .order_by(jobs.c.id)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True)
)
_CLAIM = (
    update(jobs)
    .where(jobs.c.id.in_(bindparam("ids", expanding=True)))
    .values(claimed_by=bindparam("node"), lease_until=bindparam("until"))
)


def _renew(conn: Connection, params: dict[str, Any]) -> None:
    conn.execute(_RENEW, params)


async def due(engine: AsyncEngine, kinds: tuple[str, ...], node: Node, limit: int = 100) -> list[Job]:
    """Claim up to `limit` due jobs of `kinds` for `node`, oldest first. The caller does them all
    before it claims again for the same kinds: that is when the leases of these stop being renewed."""
    now = _now()
    params = {"kinds": list(kinds), "now": now, "limit": limit}

    def claim(conn: Connection) -> list[Row[Any]]:
        rows = conn.execute(_CLAIMABLE, params).all()
        if rows:
            conn.execute(_CLAIM, {"ids": [r.id for r in rows], "node": node.name, "until": now + node.lease})
        return list(rows)

    rows = await runner(engine).write(claim)
    node._held[kinds] = tuple(r.id for r in rows)
    return [
        Job(r.id, r.kind, r.message_id, r.payload, r.attempts, node.name, r.claimed_by is not None)
        for r in rows
    ]


async def take_over(engine: AsyncEngine, node: Node) -> int:
    """At start-up: end the claims an earlier life of this node left (it was killed or stopped
    mid-job), so its jobs are taken up now rather than once their leases run out. On SQLite every
    claim is one: a single server owns the file. Returns how many claims ended."""
    ended = update(jobs).where(jobs.c.state == PENDING, jobs.c.lease_until.is_not(None))
    if engine.dialect.name != "sqlite":
        ended = ended.where(jobs.c.claimed_by == node.name)
    statement = ended.values(lease_until=None)
    return await runner(engine).write(lambda conn: conn.execute(statement).rowcount)


def complete(w: Writes, job: Job) -> None:
    w.require(_COMPLETE, {"job_id": job.id, "node": job.node})


def fail(w: Writes, job: Job, error: str) -> None:
    """Given up, kept with its reason for `kepmta queue` and the operator."""
    w.require(_FAIL, {"job_id": job.id, "node": job.node, "error": error})


async def retry_later(engine: AsyncEngine, job: Job, error: str, schedule: Sequence[int] = _BACKOFF) -> None:
    """Put `job` back for another attempt after its back-off, if this node still holds it."""
    delay = schedule[min(job.attempts, len(schedule) - 1)]
    statement = (
        update(jobs)
        .where(jobs.c.id == job.id, jobs.c.claimed_by == job.node, jobs.c.state == PENDING)
        .values(
            attempts=job.attempts + 1,
            next_at=_now() + dt.timedelta(seconds=delay),
            last_error=error,
            lease_until=None,
        )
    )
    await runner(engine).write(lambda conn: conn.execute(statement))


async def bring_one_forward(engine: AsyncEngine, kinds: Sequence[str]) -> bool:
    """The failed pending job of `kinds` due soonest, due now: a probe of whether what they all
    wait for is back, without trying all of them against a service that may still be away.
    False when no job was waiting."""
    now = _now()
    first = (
        select(jobs.c.id)
        .where(jobs.c.state == PENDING, jobs.c.kind.in_(kinds), jobs.c.attempts > 0, jobs.c.next_at > now)
        .order_by(jobs.c.next_at, jobs.c.id)
        .limit(1)
        .scalar_subquery()
    )
    statement = update(jobs).where(jobs.c.id == first).values(next_at=now)
    changed: int = await runner(engine).write(lambda conn: conn.execute(statement).rowcount)
    return changed > 0


async def bring_forward(engine: AsyncEngine, kinds: Sequence[str]) -> None:
    """Pending jobs of `kinds` that failed before due now, not at their next back-off: what they
    waited for (disk space, the database, the TSA) is back."""
    now = _now()
    statement = (
        update(jobs)
        .where(jobs.c.state == PENDING, jobs.c.kind.in_(kinds), jobs.c.attempts > 0, jobs.c.next_at > now)
        .values(next_at=now)
    )
    await runner(engine).write(lambda conn: conn.execute(statement))


# --- the operator's view and hand (`kepmta queue`) ------------------------------------------------

PENDING = "pending"
DONE = "done"
FAILED = "failed"
DROPPED = "dropped by the operator"


@dataclass(frozen=True)
class QueuedJob:
    """A job as the operator sees it, with the message it serves."""

    id: int
    kind: str
    state: str
    message_id: str
    payload: dict[str, Any]
    attempts: int
    next_at: dt.datetime
    last_error: str | None
    sender: str
    subject: str
    submitted_at: dt.datetime

    def unfired_timer(self, now: dt.datetime) -> bool:
        """A relay timer whose moment has not come: it never ran, so there is nothing to retry,
        and running it early would warn the sender or record RelayFailure before its time."""
        return (
            self.kind == RELAY_WAIT
            and self.state == PENDING
            and self.attempts == 0
            and self.next_at > now
            and self.payload.get("stage") != "dropped"
        )


class QueueRefused(Exception):
    """An operator's request the queue does not take, said in one sentence."""


@dataclass(frozen=True)
class Retried:
    reopened: int  # failed jobs made pending again
    advanced: int  # pending jobs brought forward
    timers: int  # relay timers left at their moment


_QUEUED = select(jobs, messages.c.sender, messages.c.subject, messages.c.submitted_at).join(
    messages, messages.c.id == jobs.c.message_id
)


def _queued(row: Row[Any]) -> QueuedJob:
    return QueuedJob(
        row.id,
        row.kind,
        row.state,
        row.message_id,
        row.payload,
        row.attempts,
        utc(row.next_at),
        row.last_error,
        row.sender,
        row.subject,
        utc(row.submitted_at),
    )


async def queued(engine: AsyncEngine, states: Sequence[str], kind: str | None = None) -> list[QueuedJob]:
    """Jobs in `states` (and of `kind`, if given), oldest first."""
    statement = _QUEUED.where(jobs.c.state.in_(states)).order_by(jobs.c.id)
    if kind is not None:
        statement = statement.where(jobs.c.kind == kind)
    rows = await runner(engine).read(lambda conn: conn.execute(statement).all())
    return [_queued(r) for r in rows]


def _find(conn: Connection, job_id: int) -> QueuedJob:
    row = conn.execute(_QUEUED.where(jobs.c.id == job_id)).first()
    if row is None:
        raise QueueRefused(f"there is no job {job_id} in the queue")
    return _queued(row)


async def queued_job(engine: AsyncEngine, job_id: int) -> QueuedJob:
    return await runner(engine).read(lambda conn: _find(conn, job_id))


def _changed(conn: Connection, job: QueuedJob, **values: Any) -> None:
    # Only if its state is still the one decided on: a running server may end the job meanwhile.
    statement = update(jobs).where(jobs.c.id == job.id, jobs.c.state == job.state).values(**values)
    if conn.execute(statement).rowcount != 1:
        raise QueueRefused(f"job {job.id} changed while this ran (the server is working on it); look again")


async def retry(engine: AsyncEngine, job_id: int) -> QueuedJob:
    """Job `job_id` due now, a failed one pending again; its attempts stay as they are.
    Returns the job as it was."""
    now = _now()

    def change(conn: Connection) -> QueuedJob:
        job = _find(conn, job_id)
        if job.state == DONE:
            raise QueueRefused(f"job {job_id} is done: there is nothing left to retry")
        if job.unfired_timer(now):
            raise QueueRefused(
                f"job {job_id} is a relay timer ({job.payload.get('stage')}) set for "
                f"{job.next_at:%Y-%m-%d %H:%M:%S} UTC: it is not a retry, and running it now would "
                "act before its time"
            )
        _changed(conn, job, state=PENDING, next_at=now)
        return job

    return await runner(engine).write(change)


async def retry_all(engine: AsyncEngine) -> Retried:
    """Every failed job pending again and every pending job due now, except relay timers whose
    moment has not come (see `QueuedJob.unfired_timer`)."""
    now = _now()
    reopen = update(jobs).where(jobs.c.state == FAILED).values(state=PENDING, next_at=now)
    timer = and_(jobs.c.kind == RELAY_WAIT, jobs.c.attempts == 0)
    advance = (
        update(jobs).where(jobs.c.state == PENDING, jobs.c.next_at > now, not_(timer)).values(next_at=now)
    )
    waiting = (
        select(func.count()).select_from(jobs).where(jobs.c.state == PENDING, jobs.c.next_at > now, timer)
    )

    def change(conn: Connection) -> Retried:
        reopened = conn.execute(reopen).rowcount
        advanced = conn.execute(advance).rowcount
        return Retried(reopened, advanced, conn.execute(waiting).scalar_one())

    return await runner(engine).write(change)


_NOT_DROPPABLE = {
    DELIVER: "a delivery into one of our own mailboxes has no end but the delivery",
    RECEIPT: "it files a receipt the sender is owed for evidence already in the ledger",
    PEER_RECEIPT: "it carries our evidence, already in the ledger, back to the peer provider that is owed it",
    FILE_RECEIVED: "it files a peer's evidence, already in the ledger, for our sender",
    RELAY_WAIT: "a relay timer ends by itself, with the peer's evidence or our RelayFailure",
}


async def drop_relay(engine: AsyncEngine, job_id: int, note: str) -> tuple[QueuedJob, int]:
    """End pending relay job `job_id` without sending: in one transaction it is done and a
    `relay-wait` job of stage "dropped" is due now, whose RelayFailure evidence tells the sender
    (nothing is dropped silently). Returns the relay job and the id of the new job."""
    now = _now()

    def change(conn: Connection) -> tuple[QueuedJob, int]:
        job = _find(conn, job_id)
        if job.kind != RELAY:
            why = _NOT_DROPPABLE.get(job.kind, "it ends by itself once its work is done")
            raise QueueRefused(f"job {job_id} is a {job.kind} job, and only a relay can be dropped: {why}")
        if job.state != PENDING:
            raise QueueRefused(f"job {job_id} is {job.state}: only a pending relay can be dropped")
        _changed(conn, job, state=DONE, last_error=DROPPED)
        payload = {
            "domain": job.payload["domain"],
            "recipients": job.payload["recipients"],
            "stage": "dropped",
            "note": note,
        }
        values = {
            "kind": RELAY_WAIT,
            "message_id": job.message_id,
            "payload": payload,
            "state": PENDING,
            "attempts": 0,
            "next_at": now,
        }
        made = conn.execute(insert(jobs).values(**values)).inserted_primary_key
        assert made is not None
        return job, int(made[0])

    return await runner(engine).write(change)
