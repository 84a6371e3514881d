"""What lets several nodes share one database, each piece on a real PostgreSQL (and SQLite where the
one-node behaviour differs): job claims and their leases, the finish refused to a node that lost its
claim, a node taking up its own claims when it starts again, lease renewal, one checkpoint maker at a
time, and read evidence made once when two nodes see the same first read."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pgserver import PgServer
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from kepmta import pki
from kepmta.db import Turn, alone
from kepmta.db.engine import open_engine
from kepmta.db.runner import close
from kepmta.db.schema import handovers
from kepmta.db.schema import jobs as jobs_table
from kepmta.db.schema import ledger as ledger_table
from kepmta.events import EventRecorder, Issuer, MessageFacts, save_facts
from kepmta.evidence.ledger import Kind, Ledger, NewRecord, StaleWrite, Writes
from kepmta.evidence.signer import EvidenceSigner
from kepmta.evidence.tsa import BuiltinTsa
from kepmta.hooks.read import DISPATCH_TYPE, ReadHook
from kepmta.queue import jobs

MESSAGE = "20250301T090000Z.00112233aabbccdd@kep.test"
NOW = dt.datetime.now(dt.UTC)
MINUTE = dt.timedelta(minutes=1)


async def _with_message(url: str) -> Ledger:
    engine = await open_engine(url)
    ledger = Ledger(engine)
    facts = MessageFacts(MESSAGE, "a@kep.test", ("b@kep.test",), "s", None, NOW, NOW, None)
    await ledger.transact(lambda w: save_facts(w, facts))
    return ledger


@pytest.fixture
async def two(postgres: PgServer) -> AsyncIterator[tuple[Ledger, Ledger]]:
    """Two nodes' views of one new PostgreSQL database: an engine and a ledger each."""
    url = postgres.new_database()
    first = await _with_message(url)
    second = Ledger(await open_engine(url))
    yield first, second
    await close(first.engine)
    await close(second.engine)


async def _enqueue(ledger: Ledger, n: int) -> None:
    def unit(w: Writes) -> None:
        for i in range(n):
            jobs.enqueue(w, jobs.DELIVER, MESSAGE, {"n": i})

    await ledger.transact(unit)


async def _expire(engine: AsyncEngine) -> None:
    """What the passing of the lease time does: every claim has run out."""
    async with engine.begin() as conn:
        await conn.execute(
            update(jobs_table).where(jobs_table.c.lease_until.is_not(None)).values(lease_until=NOW - MINUTE)
        )


async def _claimed_by(engine: AsyncEngine, job_id: int) -> tuple[str | None, int, str]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(jobs_table.c.claimed_by, jobs_table.c.attempts, jobs_table.c.state).where(
                    jobs_table.c.id == job_id
                )
            )
        ).one()
    return row.claimed_by, row.attempts, row.state


async def test_nodes_claiming_at_the_same_moment_take_each_job_exactly_once(
    two: tuple[Ledger, Ledger],
) -> None:
    first, second = two
    await _enqueue(first, 60)
    a, b = jobs.Node("a", MINUTE), jobs.Node("b", MINUTE)
    # Many small claims from both nodes at once, each kind of claim on its own connection.
    kinds = [(jobs.DELIVER,), (jobs.DELIVER, jobs.RECEIPT), (jobs.DELIVER, jobs.RELAY)]
    claims = await asyncio.gather(
        *(jobs.due(first.engine, k, a, limit=7) for k in kinds),
        *(jobs.due(second.engine, k, b, limit=7) for k in kinds),
    )
    while any(claims[-6:]):
        claims += await asyncio.gather(
            *(jobs.due(first.engine, k, a, limit=7) for k in kinds),
            *(jobs.due(second.engine, k, b, limit=7) for k in kinds),
        )
    taken = [job.id for batch in claims for job in batch]
    assert len(taken) == len(set(taken)) == 60
    by = {job.node for batch in claims for job in batch}
    assert by == {"a", "b"}
    for batch in claims:
        for job in batch:
            assert (await _claimed_by(first.engine, job.id))[0] == job.node and not job.begun


async def test_a_node_that_lost_its_claim_can_neither_finish_nor_put_back_the_job(
    two: tuple[Ledger, Ledger],
) -> None:
    first, second = two
    await _enqueue(first, 1)
    a, b = jobs.Node("a", MINUTE), jobs.Node("b", MINUTE)
    [mine] = await jobs.due(first.engine, (jobs.DELIVER,), a)
    assert mine.node == "a" and not mine.begun
    assert await jobs.due(second.engine, (jobs.DELIVER,), b) == []  # held by a's lease
    await _expire(first.engine)
    [taken] = await jobs.due(second.engine, (jobs.DELIVER,), b)
    assert taken.id == mine.id and taken.node == "b" and taken.begun  # a may have begun it

    # a comes back from its stall: its evidence and its finish fail together.
    head = await first.head()
    record = NewRecord(kind=Kind.CHECKPOINT, evidence_id="stalled", created_at=NOW, der=b"x")

    def finish(w: Writes) -> None:
        w.append(record)
        jobs.complete(w, mine)

    with pytest.raises(StaleWrite):
        await first.transact(finish)
    assert await first.head() == head
    with pytest.raises(StaleWrite):
        await first.transact(lambda w: jobs.fail(w, mine, "given up"))
    await jobs.retry_later(first.engine, mine, "failed", schedule=(3600,))
    assert await _claimed_by(first.engine, mine.id) == ("b", 0, jobs.PENDING)

    # The holder finishes it, once.
    await second.transact(lambda w: jobs.complete(w, taken))
    assert await _claimed_by(first.engine, mine.id) == ("b", 0, jobs.DONE)
    with pytest.raises(StaleWrite):
        await second.transact(lambda w: jobs.complete(w, taken))


async def test_a_job_put_back_for_a_retry_is_free_to_any_node_and_counted_as_begun(
    two: tuple[Ledger, Ledger],
) -> None:
    first, second = two
    await _enqueue(first, 1)
    [job] = await jobs.due(first.engine, (jobs.DELIVER,), jobs.Node("a", MINUTE))
    await jobs.retry_later(first.engine, job, "disk full", schedule=(0,))
    [again] = await jobs.due(second.engine, (jobs.DELIVER,), jobs.Node("b", MINUTE))
    assert again.id == job.id and again.attempts == 1 and again.begun


async def test_a_node_starting_again_takes_up_its_own_claims_only(database_url: str) -> None:
    ledger = await _with_message(database_url)
    engine = ledger.engine
    try:
        await _enqueue(ledger, 2)
        a, b = jobs.Node("a", MINUTE), jobs.Node("b", MINUTE)
        [of_a] = await jobs.due(engine, (jobs.DELIVER,), a, limit=1)
        [of_b] = await jobs.due(engine, (jobs.DELIVER,), b, limit=1)
        # a is killed and starts again, under its name, while b still works.
        again = jobs.Node("a", MINUTE)
        if engine.dialect.name == "sqlite":
            # One server owns a SQLite file: every claim is an earlier life's.
            assert await jobs.take_over(engine, again) == 2
            assert {j.id for j in await jobs.due(engine, (jobs.DELIVER,), again)} == {of_a.id, of_b.id}
        else:
            assert await jobs.take_over(engine, again) == 1
            [back] = await jobs.due(engine, (jobs.DELIVER,), again)
            assert back.id == of_a.id and back.begun
            assert (await _claimed_by(engine, of_b.id))[0] == "b"
    finally:
        await close(engine)


async def test_the_leases_of_jobs_in_hand_are_renewed_until_the_next_claim(
    two: tuple[Ledger, Ledger],
) -> None:
    first, _ = two
    engine = first.engine
    await _enqueue(first, 1)
    node = jobs.Node("a", dt.timedelta(seconds=0.3))
    [job] = await jobs.due(engine, (jobs.DELIVER,), node)

    async def lease() -> dt.datetime:
        async with engine.connect() as conn:
            found = await conn.execute(select(jobs_table.c.lease_until).where(jobs_table.c.id == job.id))
            return found.scalar_one()  # type: ignore[no-any-return]

    claimed = await lease()
    keeper = asyncio.create_task(node.keep_leases(engine))
    try:
        while await lease() <= claimed:
            await asyncio.sleep(0.05)
        # The worker claims again (its batch is over): the job is no longer in hand.
        assert node.held() == [job.id]
        await jobs.due(engine, (jobs.DELIVER,), node)
        assert node.held() == []
    finally:
        keeper.cancel()


async def test_one_node_at_a_time_holds_the_checkpoint_turn(two: tuple[Ledger, Ledger]) -> None:
    first, second = two
    async with (
        alone(first.engine, Turn.CHECKPOINTS) as mine,
        alone(second.engine, Turn.CHECKPOINTS) as theirs,
    ):
        assert mine and not theirs
    # Released at the end of the block: the other node has it now.
    async with alone(second.engine, Turn.CHECKPOINTS) as theirs:
        assert theirs


async def test_two_nodes_seeing_the_same_first_read_make_one_content_handover(
    two: tuple[Ledger, Ledger], tmp_path: Path
) -> None:
    ca = pki.issue("Test KEP Provider CA", pki.Role.CA)
    evidence, tsa = pki.issue("Test KEP", pki.Role.EVIDENCE, ca), pki.issue("Test TSA", pki.Role.TSA, ca)
    issuer = Issuer("Test KEP", "kep.test", ("urn:x",), "standart")
    hooks = [
        ReadHook(EventRecorder(issuer, EvidenceSigner(evidence, [], BuiltinTsa(tsa)), ledger), lambda: None)
        for ledger in two
    ]
    dispatch = tmp_path / "dispatch.eml"
    dispatch.write_bytes(
        f"Message-ID: <{MESSAGE}>\r\nREM-MessageType: {DISPATCH_TYPE}\r\nSubject: s\r\n\r\nbody\r\n".encode()
    )
    # The recipient's two devices, on two nodes, open it at the same moment, several times.
    await asyncio.gather(*(hook.opened("b@kep.test", dispatch) for hook in hooks * 3))
    engine = two[0].engine
    async with engine.connect() as conn:
        made = (
            await conn.execute(
                select(func.count()).where(
                    ledger_table.c.event == "ContentHandover", ledger_table.c.kind == "evidence"
                )
            )
        ).scalar_one()
        rows = (await conn.execute(select(func.count()).select_from(handovers))).scalar_one()
    assert (made, rows) == (1, 1)
