"""Opening the database: one async engine, SQLite tuned for durability, the schema made by the
migrations on first use and checked to be this kepmta's on every later one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import Dialect, event, make_url
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
        # A pooled connection outlives a restart of the server only as a dead socket: each is
        # tried before use and replaced if dead, so no client hears 451 once the database is back.
        engine = create_async_engine(parsed, pool_pre_ping=True)
        event.listen(engine.sync_engine, "do_connect", _unreachable_is_operational)
        return engine
    engine = create_async_engine(parsed, connect_args=sqlite_connect_args(parsed))
    event.listen(engine.sync_engine, "connect", sqlite_pragmas)
    return engine


def _unreachable_is_operational(dialect: Dialect, _record: Any, cargs: Any, cparams: Any) -> Any:
    """Connect as SQLAlchemy would, but a server that cannot be reached (refused, reset, timed
    out) is the driver's OperationalError, as PEP 249 has it and psycopg raises it. asyncpg raises
    the bare OSError, which SQLAlchemy passes on as it is: kepmta.outage could not tell it from
    another OSError (a peer's, a file's), and a client heard "internal error" where a database
    that is away is 451 4.3.0 (IMAP NO [UNAVAILABLE])."""
    try:
        return dialect.connect(*cargs, **cparams)
    except OSError as e:
        raise dialect.loaded_dbapi.OperationalError(str(e)) from e


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
