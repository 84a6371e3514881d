"""Running synchronous SQLAlchemy Core functions against the server's database, off the loop.

aiosqlite runs every cursor call on a thread of its connection and hands each answer back to the
event loop: a read costs about five such hops (checkout, cursor, execute, fetch, close) and a
statement three, and under load every hop waits behind the rest of the server and wakes threads
that fight over the GIL. So on SQLite a whole read or a whole transaction is one call on one
thread of its own, through a synchronous connection to the same file with the same pragmas. The
statements are the same SQLAlchemy Core objects, compiled by the same dialect family.

Other databases (PostgreSQL over asyncpg) run the same functions through
`AsyncConnection.run_sync`, so callers have one code path.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.ext.asyncio import AsyncEngine

from kepmta.db import sqlite_connect_args, sqlite_pragmas

T = TypeVar("T")


class SyncRunner:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # SQLite: (engine, thread) for writes and for reads. Each thread has its own connection,
        # so a read never waits behind a commit's fsync (WAL lets readers run beside the writer).
        self._sqlite: dict[str, tuple[Engine, ThreadPoolExecutor]] = {}
        url = engine.url
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            for role in ("write", "read"):
                sync = create_engine(
                    url.set(drivername="sqlite"),
                    pool_size=1,
                    max_overflow=0,
                    connect_args=sqlite_connect_args(url),
                )
                event.listen(sync, "connect", sqlite_pragmas)
                self._sqlite[role] = (sync, ThreadPoolExecutor(1, thread_name_prefix=f"kepmta-db-{role}"))

    async def read(self, fn: Callable[[Connection], T]) -> T:
        """`fn(connection)`, whose reads see every transaction committed before the call."""
        if not self._sqlite:
            async with self.engine.connect() as conn:
                return await conn.run_sync(fn)
        sync, thread = self._sqlite["read"]
        return await asyncio.get_running_loop().run_in_executor(thread, _read, sync, fn)

    async def write(self, fn: Callable[[Connection], T]) -> T:
        """`fn(connection)` in one transaction: committed if it returns, rolled back if it raises."""
        if not self._sqlite:
            async with self.engine.begin() as conn:
                return await conn.run_sync(fn)
        sync, thread = self._sqlite["write"]
        return await asyncio.get_running_loop().run_in_executor(thread, _write, sync, fn)

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        for sync, thread in self._sqlite.values():
            # Each connection belongs to its thread: it is closed there.
            await loop.run_in_executor(thread, sync.dispose)
            thread.shutdown()


def _read(sync: Engine, fn: Callable[[Connection], T]) -> T:
    with sync.connect() as conn:
        return fn(conn)


def _write(sync: Engine, fn: Callable[[Connection], T]) -> T:
    with sync.begin() as conn:
        return fn(conn)


_RUNNERS: weakref.WeakKeyDictionary[AsyncEngine, SyncRunner] = weakref.WeakKeyDictionary()


def runner(engine: AsyncEngine) -> SyncRunner:
    """The one runner of `engine`, shared by everything that uses it (one writer thread per file)."""
    found = _RUNNERS.get(engine)
    if found is None:
        found = _RUNNERS[engine] = SyncRunner(engine)
    return found


async def close(engine: AsyncEngine) -> None:
    """Close `engine`'s runner, if it has one, and dispose of the engine."""
    found = _RUNNERS.pop(engine, None)
    if found is not None:
        await found.close()
    await engine.dispose()
