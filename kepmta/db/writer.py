"""Running one transaction's statements, each with all its rows, in as few round trips as the
database allows.

aiosqlite runs every cursor call on its thread and hands the answer back to the event loop: a
statement costs three such hops (cursor, execute, close), and under load each hop waits behind the
rest of the server. So on SQLite the whole transaction is one call on a thread of its own, through a
synchronous connection to the same file with the same pragmas; the statements are the same
SQLAlchemy Core objects, compiled by the same dialect family. Other databases (PostgreSQL over
asyncpg) get each statement awaited in turn on the async engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import Engine, Executable, create_engine, event
from sqlalchemy.ext.asyncio import AsyncEngine

from kepmta.db.engine import sqlite_pragmas

Step = tuple[Executable, list[dict[str, Any]]]


class BatchWriter:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sync: Engine | None = None
        self._thread: ThreadPoolExecutor | None = None
        url = engine.url
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            # One connection, used only by the one thread: the writes of a process are serial anyway.
            self._sync = create_engine(url.set(drivername="sqlite"), pool_size=1, max_overflow=0)
            event.listen(self._sync, "connect", sqlite_pragmas)
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="kepmta-db-writer")

    async def run(self, steps: Sequence[Step]) -> None:
        """Execute `steps` in order in one transaction; commit, or roll back and raise."""
        if self._sync is None:
            async with self.engine.begin() as conn:
                for statement, rows in steps:
                    await conn.execute(statement, rows)
            return
        await asyncio.get_running_loop().run_in_executor(self._thread, self._run_sync, steps)

    def _run_sync(self, steps: Sequence[Step]) -> None:
        assert self._sync is not None
        with self._sync.begin() as conn:
            for statement, rows in steps:
                conn.execute(statement, rows)

    async def close(self) -> None:
        if self._sync is not None and self._thread is not None:
            # The connection belongs to the writer thread: it is closed there.
            await asyncio.get_running_loop().run_in_executor(self._thread, self._sync.dispose)
            self._thread.shutdown()
