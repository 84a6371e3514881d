"""Opening the database: one async engine, SQLite tuned for durability, schema created on first use."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from kepmta.db.schema import metadata


def sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # A commit returns only once it is on disk: a 250 promises exactly that.
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


@asynccontextmanager
async def opened(url: str) -> AsyncIterator[AsyncEngine]:
    """The database for one command, disposed of however the command ends."""
    engine = await open_engine(url)
    try:
        yield engine
    finally:
        await engine.dispose()


async def open_engine(url: str) -> AsyncEngine:
    engine = create_async_engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", sqlite_pragmas)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    return engine
