"""The hash-chained ledger and its audit: any altered, removed, inserted or reordered record is
found, with its position; checkpoints seal the head. Real SQLite and PostgreSQL, real signatures."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from evidence_fixtures import Pki, make_pki, sample_evidence
from hypothesis import given, settings
from hypothesis import strategies as st
from pgserver import PgServer
from sqlalchemy import delete, event, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from kepmta.db import Turn, take_turn
from kepmta.db.engine import open_engine
from kepmta.db.runner import close
from kepmta.db.schema import ledger as ledger_table
from kepmta.db.schema import messages
from kepmta.events import MessageFacts, save_facts
from kepmta.evidence.checkpoint import Checkpointer, audit, read_statement
from kepmta.evidence.ledger import (
    ChainAudit,
    Kind,
    Ledger,
    LedgerRecord,
    NewRecord,
    Writes,
    chain_hash,
    evidence_record,
)
from kepmta.evidence.model import Evidence
from kepmta.evidence.signer import EvidenceSigner
from kepmta.evidence.tsa import BuiltinTsa
from kepmta.smime import cms

MESSAGE = "20240502101530.abc123@hs01.kep.tr"


@pytest.fixture
def p(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = await open_engine(database_url)
    async with eng.begin() as conn:
        # The second message lets a test point a record at another message (a foreign key).
        for mid in (MESSAGE, MESSAGE + "x"):
            await conn.execute(
                insert(messages).values(
                    id=mid, sender="a@hs01.kep.tr", subject="s", submitted_at=dt.datetime.now(dt.UTC)
                )
            )
    yield eng
    await eng.dispose()


def _signer(p: Pki) -> EvidenceSigner:
    return EvidenceSigner(p.evidence, [], BuiltinTsa(p.tsa))


def _evidence(evidence_id: str) -> Evidence:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    return sample_evidence(evidence_id=evidence_id, message_id=MESSAGE, event_time=now)


async def _fill(p: Pki, ledger: Ledger, n: int) -> None:
    signer = _signer(p)
    for i in range(n):
        signed = await signer.sign(_evidence(f"ev-{i}@hs01.kep.tr"))
        await ledger.transact(lambda w, signed=signed: w.append(evidence_record(signed)))


async def _audit_lines(ledger: Ledger, p: Pki) -> list[str]:
    result = await audit(ledger, [p.provider_ca.cert], [p.tsa_ca.cert])
    return [str(x) for x in result.problems]


async def test_an_intact_ledger_audits_clean_and_chains_every_record(p: Pki, engine: AsyncEngine) -> None:
    ledger = Ledger(engine)
    await _fill(p, ledger, 4)
    result = await audit(ledger, [p.provider_ca.cert], [p.tsa_ca.cert])
    assert result.ok, result.problems
    assert result.records == 4
    prev = bytes(32)
    async for rec in ledger.walk():
        assert rec.prev_hash == prev
        assert rec.hash == chain_hash(prev, rec.content())
        prev = rec.hash


# Every column a writer supplies, and the stored hashes: changing any one must be found.
_COLUMNS = ["kind", "evidence_id", "message_id", "event", "reason", "recipient", "created_at", "xml", "der"]


@pytest.mark.parametrize("column", [*_COLUMNS, "prev_hash", "hash"])
async def test_altering_any_column_of_any_row_is_found_at_that_row(
    p: Pki, engine: AsyncEngine, column: str
) -> None:
    ledger = Ledger(engine)
    await _fill(p, ledger, 3)
    for seq in (1, 2, 3):
        rec = await ledger.get(seq)
        old = getattr(rec, column)
        new: object
        if isinstance(old, bytes):
            new = old[:-1] + bytes([old[-1] ^ 1])
        elif isinstance(old, dt.datetime):
            new = old + dt.timedelta(microseconds=1)
        elif isinstance(old, int):
            new = old + 1
        elif column == "kind":
            new = Kind.TIMESTAMP.value
        else:
            new = str(old) + "x"
        async with engine.begin() as conn:
            await conn.execute(update(ledger_table).where(ledger_table.c.seq == seq).values({column: new}))
        lines = await _audit_lines(ledger, p)
        assert lines, f"{column} of seq {seq} changed unnoticed"
        # Where the change is, or (a changed stored hash) at the link of the record after it.
        assert any(line.startswith((f"seq {seq}:", f"seq {seq + 1}:")) for line in lines), lines
        async with engine.begin() as conn:
            await conn.execute(update(ledger_table).where(ledger_table.c.seq == seq).values({column: old}))
        assert await _audit_lines(ledger, p) == []


async def test_every_byte_of_a_stored_evidence_is_covered(p: Pki, engine: AsyncEngine) -> None:
    ledger = Ledger(engine)
    await _fill(p, ledger, 1)
    rec = await ledger.get(1)
    for i in range(len(rec.der)):
        der = rec.der[:i] + bytes([rec.der[i] ^ 0x01]) + rec.der[i + 1 :]
        tampered = dataclasses.replace(rec, der=der)
        assert ChainAudit().feed(tampered), f"byte {i} of the evidence changed unnoticed"


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(min_value=2, max_value=8),
    data=st.data(),
)
def test_removing_inserting_or_reordering_is_found_with_its_position(n: int, data: st.DataObject) -> None:
    records: list[LedgerRecord] = []
    prev = bytes(32)
    for i in range(n):
        new = NewRecord(Kind.CHECKPOINT, f"r{i}", dt.datetime(2024, 1, 1, tzinfo=dt.UTC), der=bytes([i]) * 8)
        h = chain_hash(prev, new)
        records.append(
            LedgerRecord(
                i + 1,
                new.kind,
                new.evidence_id,
                None,
                None,
                None,
                None,
                new.created_at,
                None,
                new.der,
                prev,
                h,
            )
        )
        prev = h
    action = data.draw(st.sampled_from(["remove", "swap", "insert"]))
    i = data.draw(st.integers(min_value=0, max_value=n - 2))
    rows = list(records)
    if action == "remove":
        del rows[i]  # seq numbers keep their gap
        expect = rows[i].seq
    elif action == "swap":
        a, b = rows[i], rows[i + 1]
        rows[i] = dataclasses.replace(b, seq=a.seq)
        rows[i + 1] = dataclasses.replace(a, seq=b.seq)
        expect = rows[i].seq
    else:
        extra = NewRecord(Kind.CHECKPOINT, "forged", dt.datetime(2024, 1, 1, tzinfo=dt.UTC), der=b"forged")
        forged_prev = rows[i].hash
        forged = LedgerRecord(
            rows[i].seq + 1, extra.kind, extra.evidence_id, None, None, None, None, extra.created_at, None,
            extra.der, forged_prev, chain_hash(forged_prev, extra),
        )  # fmt: skip
        rows = [*rows[: i + 1], forged, *(dataclasses.replace(r, seq=r.seq + 1) for r in rows[i + 1 :])]
        expect = rows[i + 2].seq
    audit_ = ChainAudit()
    found = [pr for r in rows for pr in audit_.feed(r)]
    assert found and found[0].seq == expect, (action, i, found)
    if action == "remove":
        assert "removed" in found[0].what
    else:
        assert "reordered" in found[0].what


async def test_a_deleted_row_is_reported_as_removed(p: Pki, engine: AsyncEngine) -> None:
    ledger = Ledger(engine)
    await _fill(p, ledger, 4)
    async with engine.begin() as conn:
        await conn.execute(delete(ledger_table).where(ledger_table.c.seq == 2))
    lines = await _audit_lines(ledger, p)
    assert lines == ["seq 3: records removed: seq 2 missing before this one"]


async def test_checkpoints_seal_the_head_and_find_a_rewritten_history(p: Pki, engine: AsyncEngine) -> None:
    ledger = Ledger(engine)
    cp = Checkpointer(ledger, _signer(p), "hs01.kep.tr", every_records=3, every=dt.timedelta(hours=1))
    ledger.on_append = cp.appended
    await _fill(p, ledger, 2)
    assert await cp.due() is None  # 2 records, 3 wanted, and not an hour yet
    await _fill(p, ledger, 1)
    head = await cp.due()
    assert head is not None and head.seq == 3
    rec = await cp.make(head)
    assert rec.kind is Kind.CHECKPOINT and rec.seq == 4
    content = cms.encapsulated_content(cms.load(rec.der))
    assert content is not None and read_statement(content) == (3, head.hash)
    assert await cp.due() is None  # nothing after the checkpoint
    result = await audit(ledger, [p.provider_ca.cert], [p.tsa_ca.cert])
    assert result.ok and result.checkpoints == 1

    # Someone with the database but not the key rewrites seq 2 and rebuilds every hash after it.
    other = await _signer(p).sign(_evidence("forged@hs01.kep.tr"))
    async with engine.begin() as conn:
        rows = (await conn.execute(select(ledger_table).order_by(ledger_table.c.seq))).all()
        prev = rows[0].hash
        for row in rows[1:3]:
            values = dict(row._mapping)
            if row.seq == 2:
                values.update(evidence_id="forged@hs01.kep.tr", der=other.der, xml=other.xml)
            rec2 = LedgerRecord(**{**values, "kind": Kind(values["kind"]), "prev_hash": prev})
            new_hash = chain_hash(prev, rec2.content())
            await conn.execute(
                update(ledger_table)
                .where(ledger_table.c.seq == row.seq)
                .values(
                    evidence_id=values["evidence_id"],
                    der=values["der"],
                    xml=values["xml"],
                    prev_hash=prev,
                    hash=new_hash,
                )
            )
            prev = new_hash
        await conn.execute(update(ledger_table).where(ledger_table.c.seq == 4).values(prev_hash=prev))
    # The chain itself now looks whole except at the checkpoint's own hash; the checkpoint says why.
    lines = await _audit_lines(ledger, p)
    assert any(line.startswith("seq 4:") and "rewritten" in line for line in lines), lines


async def test_time_based_checkpoint_is_due_after_the_interval(p: Pki, engine: AsyncEngine) -> None:
    ledger = Ledger(engine)
    cp = Checkpointer(ledger, _signer(p), "hs01.kep.tr", every_records=1000, every=dt.timedelta(0))
    assert await cp.due() is None  # an empty ledger has nothing to seal
    await _fill(p, ledger, 1)
    assert (await cp.due()) is not None


async def test_two_writers_on_one_database_keep_one_linear_chain(p: Pki, engine: AsyncEngine) -> None:
    """Each Ledger remembers its last append; when another process appended meanwhile, the next
    append must notice, take the real head, and still chain after it (never fork, never reuse a seq)."""
    first, second = Ledger(engine), Ledger(engine)
    signer = _signer(p)
    order = [first, first, second, first, second, second, first]
    for i, writer in enumerate(order):
        signed = await signer.sign(_evidence(f"two-{i}@hs01.kep.tr"))

        assert await writer.transact(lambda w, signed=signed: w.append(evidence_record(signed)).seq) == i + 1
    seqs, prev = [], bytes(32)
    async for rec in first.walk():
        seqs.append(rec.seq)
    async with engine.connect() as conn:
        rows = (await conn.execute(select(ledger_table).order_by(ledger_table.c.seq))).all()
    assert [r.seq for r in rows] == list(range(1, len(order) + 1)) == seqs
    for row in rows:
        assert row.prev_hash == prev
        prev = row.hash
    assert await _audit_lines(first, p) == []


def _record(evidence_id: str, message_id: str | None = None) -> NewRecord:
    return NewRecord(Kind.REVOCATION, evidence_id, dt.datetime.now(dt.UTC), b"der", message_id=message_id)


async def _chain_problems(ledger: Ledger) -> list[str]:
    chain = ChainAudit()
    return [str(problem) async for rec in ledger.walk() for problem in chain.feed(rec)]


def _commits(ledger: Ledger) -> list[int]:
    """Every COMMIT the ledger's writer sends from now on, so a test can see units share one."""
    commits: list[int] = []
    # SQLite: the runner's writer engine; PostgreSQL: the async engine's own.
    sqlite = ledger._db._sqlite.get("write")
    engine = sqlite[0] if sqlite is not None else ledger.engine.sync_engine
    event.listen(engine, "commit", lambda _conn: commits.append(1))
    return commits


async def test_concurrent_units_share_transactions_and_keep_one_chain(engine: AsyncEngine) -> None:
    ledger = Ledger(engine)
    commits = _commits(ledger)
    seqs = await asyncio.gather(
        *(ledger.transact(lambda w, i=i: w.append(_record(f"group-{i}")).seq) for i in range(40))
    )
    assert sorted(seqs) == list(range(1, 41))
    # All forty were queued before the first transaction began: they share it.
    assert len(commits) == 1, commits
    assert await _chain_problems(ledger) == []


async def test_a_failing_unit_fails_alone_and_its_rows_are_not_kept(engine: AsyncEngine) -> None:
    ledger = Ledger(engine)

    def good(w: Writes, i: int) -> str:
        w.append(_record(f"good-{i}"))
        return f"good-{i}"

    def refused(w: Writes) -> str:
        w.append(_record("refused"))
        # A foreign key to no message: the database refuses the row when the batch is sent.
        w.append(_record("refused-ref", message_id="no-such-message@hs01.kep.tr"))
        return "refused"

    def raising(w: Writes) -> str:
        w.append(_record("raising"))
        raise ValueError("a unit that fails before anything is sent")

    units: list[Callable[[Writes], str]] = [lambda w, i=i: good(w, i) for i in range(5)]
    units[2:2] = [refused, raising]
    results = await asyncio.gather(*(ledger.transact(u) for u in units), return_exceptions=True)
    assert isinstance(results[2], IntegrityError)
    assert isinstance(results[3], ValueError)
    assert [r for r in results if isinstance(r, str)] == [f"good-{i}" for i in range(5)]
    kept = [rec.evidence_id async for rec in ledger.walk()]
    assert sorted(kept) == [f"good-{i}" for i in range(5)]
    assert await _chain_problems(ledger) == []


async def test_a_stale_head_is_read_again_and_the_unit_still_commits(engine: AsyncEngine) -> None:
    """Another process appended after this one's last commit: the seq it remembered is taken."""
    first, other = Ledger(engine), Ledger(engine)
    await first.transact(lambda w: w.append(_record("first-1")))
    await other.transact(lambda w: w.append(_record("other-1")))
    commits = _commits(first)
    assert await first.transact(lambda w: w.append(_record("first-2")).seq) == 3
    assert len(commits) == 1  # the refused try rolled back; the retry from the real head committed
    assert await _chain_problems(first) == []


async def test_rows_of_one_batch_go_in_parent_first_whatever_the_unit_order(engine: AsyncEngine) -> None:
    """A unit may append evidence of a message that a unit queued after it saves in the same batch."""
    ledger = Ledger(engine)
    now = dt.datetime.now(dt.UTC)
    facts = MessageFacts("late@hs01.kep.tr", "a@kep.test", ("b@kep.test",), "s", None, now, now, None)
    commits = _commits(ledger)
    await asyncio.gather(
        ledger.transact(lambda w: w.append(_record("child", message_id=facts.message_id))),
        ledger.transact(lambda w: save_facts(w, facts)),
    )
    assert len(commits) == 1
    [rec] = [r async for r in ledger.walk()]
    assert rec.message_id == facts.message_id


async def test_a_cancelled_caller_does_not_withdraw_its_unit(engine: AsyncEngine) -> None:
    ledger = Ledger(engine)
    caller = asyncio.create_task(ledger.transact(lambda w: w.append(_record("kept"))))
    await asyncio.sleep(0)  # queued, and its transaction started
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await ledger.transact(lambda w: None)  # queued behind it: done once that one has committed
    assert [r.evidence_id async for r in ledger.walk()] == ["kept"]


async def test_on_postgresql_an_append_waits_for_the_ledgers_turn_and_chains_after_the_holder(
    postgres: PgServer,
) -> None:
    """Another node holds the ledger's advisory lock and appends seq 1: an append that began
    meanwhile waits in the database, then reads the head the other node committed. It is not
    refused and retried: one transaction, at seq 2, chained after the other node's record."""
    url = postgres.new_database()
    engine, other = await open_engine(url), await open_engine(url)
    try:
        ledger = Ledger(engine)
        begun: list[int] = []
        event.listen(engine.sync_engine, "begin", lambda _conn: begun.append(1))
        theirs = _record("other-node")
        async with other.begin() as conn:
            await conn.run_sync(take_turn, Turn.LEDGER)
            mine = asyncio.create_task(ledger.transact(lambda w: w.append(_record("mine")).seq))
            while not (await _waiting_for_advisory_locks(other)) and not mine.done():
                await asyncio.sleep(0.01)
            assert not mine.done()
            await conn.execute(
                insert(ledger_table).values(
                    seq=1,
                    kind=theirs.kind.value,
                    evidence_id=theirs.evidence_id,
                    created_at=theirs.created_at,
                    der=theirs.der,
                    prev_hash=bytes(32),
                    hash=chain_hash(bytes(32), theirs),
                )
            )
        assert await mine == 2
        assert len(begun) == 1
        assert [r.evidence_id async for r in ledger.walk()] == ["other-node", "mine"]
        assert await _chain_problems(ledger) == []
    finally:
        await close(engine)
        await close(other)


async def _waiting_for_advisory_locks(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        found = await conn.execute(
            text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
        )
        return int(found.scalar_one())


async def test_on_postgresql_nodes_appending_at_once_keep_one_gapless_chain(postgres: PgServer) -> None:
    """Three engines stand for three nodes, each with its own connections and its own Ledger."""
    url = postgres.new_database()
    engines = [await open_engine(url) for _ in range(3)]
    try:
        ledgers = [Ledger(e) for e in engines]

        def unit(i: int) -> Callable[[Writes], int]:
            return lambda w: w.append(_record(f"node{i % 3}-{i}")).seq

        seqs = await asyncio.gather(*(ledgers[i % 3].transact(unit(i)) for i in range(60)))
        assert sorted(seqs) == list(range(1, 61))
        assert await _chain_problems(ledgers[0]) == []
    finally:
        for e in engines:
            await close(e)
