"""Durable local jobs (deliver a dispatch, file a receipt), committed with the rows that cause them."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from kepmta.db.runner import runner
from kepmta.db.schema import jobs
from kepmta.evidence.ledger import Writes

DELIVER = "deliver"
RECEIPT = "receipt"
RELAY = "relay"  # to a peer provider; kept for the relay worker of the peering work
# Retry after 5 s, 30 s, 2 min, 10 min, then every 30 min: a local failure (disk full, permissions)
# is fixed by an operator, and the job must still be there when it is.
_BACKOFF = (5, 30, 120, 600, 1800)


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    message_id: str
    payload: dict[str, Any]
    attempts: int


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# Built once: these run several times for every message, and building a statement costs more CPU
# than running it.
_ENQUEUE = insert(jobs)
_COMPLETE = update(jobs).where(jobs.c.id == bindparam("job_id")).values(state="done", last_error=None)


def enqueue(w: Writes, kind: str, message_id: str, payload: dict[str, Any]) -> None:
    w.add(
        _ENQUEUE,
        {
            "kind": kind,
            "message_id": message_id,
            "payload": payload,
            "state": "pending",
            "attempts": 0,
            "next_at": _now(),
        },
    )


_DUE = (
    select(jobs)
    .where(
        jobs.c.state == "pending",
        jobs.c.kind.in_(bindparam("kinds", expanding=True)),
        jobs.c.next_at <= bindparam("now"),
    )
    .order_by(jobs.c.id)
    .limit(bindparam("limit"))
)


async def due(engine: AsyncEngine, kinds: tuple[str, ...], limit: int = 100) -> list[Job]:
    params = {"kinds": list(kinds), "now": _now(), "limit": limit}
    rows = await runner(engine).read(lambda conn: conn.execute(_DUE, params).all())
    return [Job(r.id, r.kind, r.message_id, r.payload, r.attempts) for r in rows]


def complete(w: Writes, job_id: int) -> None:
    w.add(_COMPLETE, {"job_id": job_id})


async def retry_later(engine: AsyncEngine, job: Job, error: str) -> None:
    delay = _BACKOFF[min(job.attempts, len(_BACKOFF) - 1)]
    statement = (
        update(jobs)
        .where(jobs.c.id == job.id)
        .values(attempts=job.attempts + 1, next_at=_now() + dt.timedelta(seconds=delay), last_error=error)
    )
    await runner(engine).write(lambda conn: conn.execute(statement))
