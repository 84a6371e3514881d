"""Opening the database: one async engine, SQLite tuned for durability, schema created on first use."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from kepmta.db import sqlite_pragmas
from kepmta.db.runner import close
from kepmta.db.schema import metadata


@asynccontextmanager
async def opened(url: str) -> AsyncIterator[AsyncEngine]:
    """The database for one command, disposed of however the command ends."""
    engine = await open_engine(url)
    try:
        yield engine
    finally:
        await close(engine)


async def open_engine(url: str) -> AsyncEngine:
    engine = create_async_engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", sqlite_pragmas)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    return engine
