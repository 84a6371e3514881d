"""The database runner: whole reads and transactions on a thread of their own, committed or rolled
back as a unit, on a real SQLite file."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import Connection, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from kepmta.db.engine import open_engine
from kepmta.db.runner import close, runner
from kepmta.db.schema import messages


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = await open_engine(database_url)
    yield eng
    await close(eng)


def _message(message_id: str) -> dict[str, object]:
    return {"id": message_id, "sender": "a@kep.test", "subject": "s", "submitted_at": dt.datetime.now(dt.UTC)}


def _count(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(messages)).scalar_one())


async def test_a_write_is_seen_by_the_next_read_and_by_the_async_engine(engine: AsyncEngine) -> None:
    db = runner(engine)
    assert db is runner(engine)  # one runner, one writer thread, per engine
    await db.write(lambda conn: conn.execute(insert(messages), [_message("m1@kep.test")]))
    assert await db.read(_count) == 1
    async with engine.connect() as conn:
        assert (await conn.execute(select(messages.c.id))).scalar_one() == "m1@kep.test"


async def test_a_failing_transaction_leaves_nothing(engine: AsyncEngine) -> None:
    db = runner(engine)

    def two_rows_one_refused(conn: Connection) -> None:
        conn.execute(insert(messages), [_message("m2@kep.test")])
        conn.execute(insert(messages), [_message("m2@kep.test")])  # the same key again

    with pytest.raises(IntegrityError):
        await db.write(two_rows_one_refused)
    assert await db.read(_count) == 0
