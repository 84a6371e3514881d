"""Opening the database: one async engine, SQLite tuned for durability, the schema made by the
migrations on first use and checked to be this kepmta's on every later one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import event, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from kepmta.db import migrate, sqlite_connect_args, sqlite_pragmas
from kepmta.db.runner import close


@asynccontextmanager
async def opened(url: str) -> AsyncIterator[AsyncEngine]:
    """The database for one command, disposed of however the command ends."""
    engine = await open_engine(url)
    try:
        yield engine
    finally:
        await close(engine)


def create(url: str) -> AsyncEngine:
    """An engine on `url`, whatever its database holds (for `kepmta db`)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_async_engine(parsed)
    engine = create_async_engine(parsed, connect_args=sqlite_connect_args(parsed))
    event.listen(engine.sync_engine, "connect", sqlite_pragmas)
    return engine


async def open_engine(url: str) -> AsyncEngine:
    """An engine on a database at this kepmta's revision, made now if it was empty; raises
    migrate.DatabaseNotCurrent for one that is behind (or ahead)."""
    engine = create(url)
    try:
        await migrate.prepare(engine)
    except BaseException:
        await engine.dispose()
        raise
    return engine
