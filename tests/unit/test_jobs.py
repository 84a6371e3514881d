"""The job queue on a real database, SQLite and PostgreSQL: jobs committed with the rows that cause
them, due in order, retried later, failed with their reason, and the operator's retry and drop."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from kepmta.config import RelayPolicy
from kepmta.db.engine import open_engine
from kepmta.db.runner import close
from kepmta.events import TIMESTAMP_JOB, MessageFacts, save_facts
from kepmta.evidence.ledger import Ledger
from kepmta.queue import jobs

MESSAGE = "20250301T090000Z.00112233aabbccdd@kep.test"
NOW = dt.datetime.now(dt.UTC)
LATER = NOW + dt.timedelta(days=1)
NODE = jobs.Node("test", dt.timedelta(minutes=1))


@pytest.fixture
async def ledger(database_url: str) -> AsyncIterator[Ledger]:
    engine = await open_engine(database_url)
    ledger = Ledger(engine)
    facts = MessageFacts(MESSAGE, "a@kep.test", ("b@kep.test", "c@peer.test"), "s", None, NOW, NOW, None)
    await ledger.transact(lambda w: save_facts(w, facts))
    yield ledger
    await close(engine)


async def _ids(engine: AsyncEngine, *kinds: str) -> list[int]:
    return [job.id for job in await jobs.due(engine, kinds or (jobs.DELIVER, jobs.RECEIPT), NODE)]


async def test_jobs_are_due_in_order_with_their_payload_and_only_once_their_time_has_come(
    ledger: Ledger,
) -> None:
    engine = ledger.engine
    payload = {"recipients": [[1, "b@kep.test"]], "note": "Türkçe ı"}
    await ledger.transact(lambda w: jobs.enqueue(w, jobs.DELIVER, MESSAGE, payload))
    await ledger.transact(lambda w: jobs.enqueue(w, jobs.RECEIPT, MESSAGE, {"n": 2}))
    await ledger.transact(lambda w: jobs.enqueue(w, jobs.DELIVER, MESSAGE, {"n": 3}, LATER))
    due = await jobs.due(engine, (jobs.DELIVER, jobs.RECEIPT), NODE)
    assert [(j.kind, j.payload) for j in due] == [(jobs.DELIVER, payload), (jobs.RECEIPT, {"n": 2})]
    assert due[0].id < due[1].id and due[0].attempts == 0
    assert due[0].node == "test" and not due[0].begun
    # Claimed: not handed out again while the claim holds.
    assert await jobs.due(engine, (jobs.RECEIPT,), NODE) == []

    await jobs.retry_later(engine, due[0], "disk full", schedule=(3600,))
    await ledger.transact(lambda w: jobs.complete(w, due[1]))
    assert await _ids(engine) == []
    waiting, later = await jobs.queued(engine, [jobs.PENDING], jobs.DELIVER)
    assert waiting.id == due[0].id and waiting.payload == payload and later.next_at == LATER
    assert waiting.attempts == 1 and waiting.last_error == "disk full" and waiting.next_at > NOW
    assert waiting.sender == "a@kep.test" and waiting.submitted_at == NOW


async def test_a_failed_job_keeps_its_reason_and_the_operator_retries_it(ledger: Ledger) -> None:
    engine = ledger.engine
    await ledger.transact(lambda w: jobs.enqueue(w, jobs.DELIVER, MESSAGE, {}))
    [job] = await jobs.due(engine, (jobs.DELIVER,), NODE)
    await ledger.transact(lambda w: jobs.fail(w, job, "mailbox gone"))
    [failed] = await jobs.queued(engine, [jobs.FAILED])
    assert (failed.id, failed.last_error) == (job.id, "mailbox gone")
    assert await _ids(engine) == []
    await jobs.retry(engine, job.id)
    assert await _ids(engine) == [job.id]
    await ledger.transact(lambda w: jobs.complete(w, job))
    with pytest.raises(jobs.QueueRefused, match="done"):
        await jobs.retry(engine, job.id)
    with pytest.raises(jobs.QueueRefused, match="no job"):
        await jobs.retry(engine, job.id + 100)


async def test_retry_all_reopens_and_advances_but_leaves_relay_timers(ledger: Ledger) -> None:
    engine = ledger.engine
    await ledger.transact(lambda w: jobs.enqueue(w, jobs.DELIVER, MESSAGE, {}, LATER))
    await ledger.transact(lambda w: jobs.enqueue(w, jobs.RECEIPT, MESSAGE, {}))
    [receipt] = await jobs.due(engine, (jobs.RECEIPT,), NODE)
    await ledger.transact(lambda w: jobs.fail(w, receipt, "x"))
    await ledger.transact(lambda w: jobs.enqueue(w, jobs.RELAY_WAIT, MESSAGE, {"stage": "warn"}, LATER))
    done = await jobs.retry_all(engine)
    assert done == jobs.Retried(reopened=1, advanced=1, timers=1)
    assert len(await _ids(engine)) == 2
    assert await jobs.due(engine, (jobs.RELAY_WAIT,), NODE) == []


async def test_dropping_a_relay_ends_it_and_makes_a_due_timer_in_one_transaction(ledger: Ledger) -> None:
    engine = ledger.engine
    recipients = ((2, "c@peer.test"),)
    policy = RelayPolicy(retry_schedule=(60,), warn_after=3600, fail_after=7200, refusal_wait=60)
    await ledger.transact(lambda w: jobs.enqueue_relay(w, MESSAGE, "peer.test", recipients, NOW, policy))
    [relay] = await jobs.due(engine, (jobs.RELAY,), NODE)
    assert relay.payload == {"domain": "peer.test", "recipients": [[2, "c@peer.test"]]}
    was, made = await jobs.drop_relay(engine, relay.id, "peer closed")
    assert was.id == relay.id and made > relay.id
    [timer] = await jobs.due(engine, (jobs.RELAY_WAIT,), NODE)
    assert timer.id == made and timer.payload["stage"] == "dropped" and timer.payload["note"] == "peer closed"
    with pytest.raises(jobs.QueueRefused, match="only a pending relay"):
        await jobs.drop_relay(engine, relay.id, "again")


async def test_one_failed_job_is_brought_forward_as_a_probe(ledger: Ledger) -> None:
    engine = ledger.engine
    assert not await jobs.bring_one_forward(engine, (TIMESTAMP_JOB,))  # none waits
    for n in range(3):
        await ledger.transact(lambda w, n=n: jobs.enqueue(w, TIMESTAMP_JOB, MESSAGE, {"n": n}))
    tried = await jobs.due(engine, (TIMESTAMP_JOB,), NODE)
    # Backed off for an hour, the second for the least time: it is the one brought forward.
    for job, seconds in zip(tried, (7200, 3600, 5400), strict=True):
        await jobs.retry_later(engine, job, "TSA away", schedule=(seconds,))
    assert await jobs.due(engine, (TIMESTAMP_JOB,), NODE) == []
    assert await jobs.bring_one_forward(engine, (TIMESTAMP_JOB,))
    assert [j.payload for j in await jobs.due(engine, (TIMESTAMP_JOB,), NODE)] == [{"n": 1}]
    # Other kinds are left alone.
    assert not await jobs.bring_one_forward(engine, (jobs.DELIVER,))
