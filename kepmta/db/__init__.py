"""The database: schema, engine, and what every reader of its rows needs."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from enum import IntEnum
from typing import Any

from sqlalchemy import URL, Connection, func, select
from sqlalchemy.ext.asyncio import AsyncEngine


def utc(value: dt.datetime) -> dt.datetime:
    """A stored time as aware UTC: SQLite hands back naive datetimes, and everything kepmta stores
    is UTC; PostgreSQL hands back aware ones in the session's zone."""
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    """Every SQLite connection of kepmta, async or not: WAL, durable commits, foreign keys."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # A commit returns only once it is on disk: a 250 promises exactly that.
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


# How long an SQLite write waits for another connection's lock before it fails (and a client
# hears 451, kepmta.outage), unless the URL says (`?timeout=SECONDS`, pysqlite's own parameter).
BUSY_TIMEOUT = 10.0


def sqlite_connect_args(url: URL) -> dict[str, Any]:
    return {} if "timeout" in url.query else {"timeout": BUSY_TIMEOUT}


class Turn(IntEnum):
    """What kepmta does one transaction at a time across every process on one database: each a key
    of a PostgreSQL advisory lock (any 64-bit number; these spell "kep" and a counter)."""

    MIGRATIONS = 0x6B6570_0001
    LEDGER = 0x6B6570_0002
    CHECKPOINTS = 0x6B6570_0003


def take_turn(conn: Connection, turn: Turn) -> None:
    """Wait until no other transaction holds `turn`, and hold it until this one ends.

    On PostgreSQL a transaction-scoped advisory lock, so processes on other machines wait too. On
    SQLite it does nothing: there one server process owns the file, whose writing transactions
    already run one at a time.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(int(turn))))


@contextlib.asynccontextmanager
async def alone(engine: AsyncEngine, turn: Turn) -> AsyncIterator[bool]:
    """Whether this process has `turn` to itself for the block, without waiting for it: a process
    that does not get it leaves the work to the one that holds it.

    On PostgreSQL a session-level advisory lock on a connection of its own, held across the
    block's transactions and released at its end, or by the server when the connection dies with
    its process. On SQLite always true: one server process owns the file.
    """
    if engine.dialect.name != "postgresql":
        yield True
        return
    async with engine.connect() as conn:
        held = bool((await conn.execute(select(func.pg_try_advisory_lock(int(turn))))).scalar_one())
        # The lock outlives this transaction; the connection does not sit idle in one meanwhile.
        await conn.commit()
        try:
            yield held
        finally:
            if held:
                await conn.execute(select(func.pg_advisory_unlock(int(turn))))
                await conn.commit()
