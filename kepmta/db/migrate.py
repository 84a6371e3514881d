"""Schema revisions (Alembic, the scripts in migrations/): which one a database is at, and
bringing it to the newest.

A database with no tables at all is made by running every revision. One whose tables were made
before migrations existed (no version table) is the first revision, and is stamped so before it is
upgraded. Anything else behind the code is upgraded only on the operator's word: `kepmta db
upgrade`, which a server that finds its database behind names and refuses to start.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, column, inspect, select, table
from sqlalchemy.ext.asyncio import AsyncEngine

from kepmta.config import ConfigError
from kepmta.db import Turn, take_turn

if TYPE_CHECKING:
    from alembic.script import ScriptDirectory

# Alembic is imported where it is used: importing it costs about 90 ms, at the start of every
# kepmta command that opens the database.

log = logging.getLogger(__name__)
# Alembic's INFO lines (its plugins, its DDL mode) would open every server log; what it changes is
# said by upgrade_on in one line.
logging.getLogger("alembic").setLevel(logging.WARNING)

FIRST = "0001"
# Every table of the first release, whose schema stayed the same until revision 0001.
_FIRST_TABLES = frozenset({"accounts", "operators", "messages", "recipients", "ledger", "jobs", "handovers"})
_VERSION_TABLE = "alembic_version"


class Standing(StrEnum):
    EMPTY = "empty"
    BEFORE_MIGRATIONS = "made before migrations"
    BEHIND = "behind"
    CURRENT = "current"
    # At a revision this kepmta does not have (a newer kepmta's), or tables that are not kepmta's.
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Status:
    current: str | None  # the revision recorded in the database, if any
    head: str  # the newest revision of this kepmta
    standing: Standing

    @property
    def needs_upgrade(self) -> bool:
        return self.standing in (Standing.EMPTY, Standing.BEFORE_MIGRATIONS, Standing.BEHIND)

    def describe(self) -> str:
        """One phrase for a person: where the database is, against this kepmta."""
        if self.standing is Standing.EMPTY:
            return f"the database is empty; this kepmta's schema is revision {self.head}"
        if self.standing is Standing.BEFORE_MIGRATIONS:
            return (
                f"the database was made before migrations existed (revision {FIRST} unstamped); "
                f"this kepmta needs revision {self.head}"
            )
        if self.standing is Standing.UNKNOWN:
            if self.current is None:
                return "the database holds tables that are not a kepmta schema"
            return (
                f"the database is at revision {self.current}, which this kepmta does not know "
                f"(its newest is {self.head}): it was upgraded by a newer kepmta"
            )
        return f"the database is at revision {self.current}; this kepmta's newest is {self.head}"


class DatabaseNotCurrent(ConfigError):
    """The database is not at this kepmta's revision: nothing may run on it until it is."""

    def __init__(self, status: Status) -> None:
        advice = "run `kepmta db upgrade`" if status.needs_upgrade else "run the kepmta that upgraded it"
        super().__init__(f"{status.describe()}: {advice}")
        self.status = status


@functools.cache
def _scripts() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(Path(__file__).with_name("migrations")))


def head() -> str:
    found = _scripts().get_current_head()
    assert found is not None  # the package ships its revisions
    return found


def status_of(conn: Connection) -> Status:
    """Where the database on `conn` stands."""
    from alembic.util import CommandError

    tables = set(inspect(conn).get_table_names())
    newest = head()
    if _VERSION_TABLE not in tables:
        if not tables:
            return Status(None, newest, Standing.EMPTY)
        if tables == _FIRST_TABLES:
            return Status(None, newest, Standing.BEFORE_MIGRATIONS)
        return Status(None, newest, Standing.UNKNOWN)
    # Read directly: Alembic's MigrationContext would log two lines at every start of the server.
    versions = conn.execute(select(table(_VERSION_TABLE, column("version_num")))).scalars().all()
    current = versions[0] if len(versions) == 1 else None
    if current is None:
        return Status(None, newest, Standing.EMPTY if tables == {_VERSION_TABLE} else Standing.UNKNOWN)
    if current == newest:
        return Status(current, newest, Standing.CURRENT)
    try:
        _scripts().get_revision(current)
    except CommandError:
        return Status(current, newest, Standing.UNKNOWN)
    return Status(current, newest, Standing.BEHIND)


def upgrade_on(conn: Connection) -> tuple[Status, Status]:
    """Bring the database on `conn` to the newest revision, within the caller's transaction;
    returns where it stood before and after. Raises DatabaseNotCurrent for one it cannot upgrade."""
    from alembic import command
    from alembic.config import Config

    # Two processes starting on one new database: the second waits, then finds it made.
    take_turn(conn, Turn.MIGRATIONS)
    before = status_of(conn)
    if before.standing is Standing.UNKNOWN:
        raise DatabaseNotCurrent(before)
    if before.needs_upgrade:
        config = Config()
        config.set_main_option("script_location", _scripts().dir)
        config.attributes["connection"] = conn
        if before.standing is Standing.BEFORE_MIGRATIONS:
            command.stamp(config, FIRST)
        command.upgrade(config, "head")
        log.info("database upgraded from %s to revision %s", before.current or before.standing, before.head)
    return before, status_of(conn)


async def status(engine: AsyncEngine) -> Status:
    async with engine.connect() as conn:
        return await conn.run_sync(status_of)


async def upgrade(engine: AsyncEngine) -> tuple[Status, Status]:
    """`upgrade_on` in a transaction of its own."""
    async with engine.begin() as conn:
        return await conn.run_sync(upgrade_on)


async def prepare(engine: AsyncEngine) -> None:
    """Make an empty database; refuse (DatabaseNotCurrent) one at any revision but the newest."""
    found = await status(engine)
    if found.standing is Standing.EMPTY:
        found = (await upgrade(engine))[1]
    if found.standing is not Standing.CURRENT:
        raise DatabaseNotCurrent(found)
