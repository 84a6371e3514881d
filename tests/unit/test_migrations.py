"""Schema migrations on SQLite and PostgreSQL: a new database is made by the revisions, exactly as
the schema declares it; one made before migrations is refused until `db upgrade` stamps it, and
keeps its rows; one from a newer kepmta is refused."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from pgserver import PgServer
from sqlalchemy import Connection, create_engine, insert, select, text
from sqlalchemy.engine import make_url

from kepmta.db import migrate
from kepmta.db.engine import create, open_engine
from kepmta.db.runner import close
from kepmta.db.schema import messages, metadata


def _differences(conn: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(conn), metadata))


_NOW = dt.datetime(2025, 3, 1, 9, 0, tzinfo=dt.UTC)


# The tables of the first release: what `create_all` made before migrations existed.
_FIRST_RELEASE = ("accounts", "operators", "messages", "recipients", "ledger", "jobs", "handovers")


async def _create_all(url: str) -> None:
    """A database as kepmta made it before migrations: `create_all`, no version table."""
    engine = create(url)
    first = [metadata.tables[name] for name in _FIRST_RELEASE]
    async with engine.begin() as conn:
        await conn.run_sync(lambda sync: metadata.create_all(sync, tables=first))
        # Revision 0003 added these to a table of the first release.
        for added in ("claimed_by", "lease_until"):
            await conn.execute(text(f"ALTER TABLE jobs DROP COLUMN {added}"))
        await conn.execute(
            insert(messages).values(id="old@kep.test", sender="a@kep.test", subject="s", submitted_at=_NOW)
        )
    await close(engine)


async def test_a_new_database_is_made_by_the_migrations_as_the_schema_declares(database_url: str) -> None:
    engine = await open_engine(database_url)
    try:
        status = await migrate.status(engine)
        assert status == migrate.Status(migrate.head(), migrate.head(), migrate.Standing.CURRENT)
        async with engine.connect() as conn:
            assert await conn.run_sync(_differences) == []
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one()
        assert version == migrate.head()
    finally:
        await close(engine)
    # Opened again, nothing is made twice.
    await close(await open_engine(database_url))


async def test_on_sqlite_the_first_revision_is_byte_for_byte_the_schema_of_create_all(tmp_path: Path) -> None:
    made, declared = tmp_path / "made.db", tmp_path / "declared.db"
    await close(await open_engine(f"sqlite+aiosqlite:///{made}"))
    engine = create_engine(f"sqlite:///{declared}")
    metadata.create_all(engine)
    engine.dispose()

    def schema(path: Path) -> set[tuple[str, str, str | None]]:
        with create_engine(f"sqlite:///{path}").connect() as conn:
            rows = conn.execute(
                text("SELECT type, name, sql FROM sqlite_master WHERE name != 'alembic_version'")
            )
            # A table a revision made anew (Alembic's batch mode) is named by a RENAME, after which
            # SQLite keeps its name quoted.
            return {
                (
                    r.type,
                    r.name,
                    r.sql and r.sql.replace(f'CREATE TABLE "{r.name}"', f"CREATE TABLE {r.name}"),
                )
                for r in rows
                if not r.name.startswith("sqlite_autoindex_alembic")
            }

    assert schema(made) == schema(declared)


def test_on_postgresql_the_first_revision_is_the_schema_of_create_all(postgres: PgServer) -> None:
    made, declared = postgres.new_database(), postgres.new_database()

    async def make() -> None:
        await close(await open_engine(made))
        engine = create(declared)
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        await close(engine)

    asyncio.run(make())

    def dump(url: str) -> list[str]:
        name = make_url(url).database or ""
        host = ["-h", "127.0.0.1", "-p", str(postgres.port), "-U", "kepmta"]
        out = postgres.run(
            "pg_dump", *host, "--schema-only", "--no-owner", "-T", "alembic_version", name
        ).stdout
        # Comments, settings and psql's \restrict keys carry nothing of the schema, and differ.
        kept = (line for line in out.splitlines() if line and not re.match(r"--|SET |SELECT |\\", line))
        # pg_dump's order among objects of equal rank is not fixed: compare the statements as a set.
        return sorted(statement.strip() for statement in "\n".join(kept).split(";\n"))

    assert any(s.startswith("CREATE TABLE public.ledger") for s in dump(made))
    assert dump(made) == dump(declared)


async def test_a_database_made_before_migrations_is_refused_then_stamped_and_keeps_its_rows(
    database_url: str,
) -> None:
    await _create_all(database_url)
    with pytest.raises(migrate.DatabaseNotCurrent) as refused:
        await open_engine(database_url)
    assert refused.value.status.standing is migrate.Standing.BEFORE_MIGRATIONS
    assert "made before migrations" in str(refused.value) and "kepmta db upgrade" in str(refused.value)

    engine = create(database_url)
    try:
        before, after = await migrate.upgrade(engine)
        assert before.standing is migrate.Standing.BEFORE_MIGRATIONS and before.needs_upgrade
        assert after == migrate.Status(migrate.head(), migrate.head(), migrate.Standing.CURRENT)
        again = await migrate.upgrade(engine)
        assert again[0].standing is migrate.Standing.CURRENT
    finally:
        await close(engine)
    engine = await open_engine(database_url)
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(select(messages.c.id))).scalars().all() == ["old@kep.test"]
    finally:
        await close(engine)


async def test_a_database_from_a_newer_kepmta_or_of_another_program_is_refused(database_url: str) -> None:
    await close(await open_engine(database_url))
    engine = create(database_url)
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    for attempt in (open_engine(database_url), migrate.upgrade(engine)):
        with pytest.raises(migrate.DatabaseNotCurrent, match="9999, which this kepmta does not know"):
            await attempt
    async with engine.begin() as conn:
        await conn.execute(text("DROP TABLE alembic_version"))
        await conn.execute(text("DROP TABLE handovers"))
    status = await migrate.status(engine)
    assert status.standing is migrate.Standing.UNKNOWN and not status.needs_upgrade
    with pytest.raises(migrate.DatabaseNotCurrent, match="not a kepmta schema"):
        await migrate.upgrade(engine)
    await close(engine)


async def test_on_postgresql_servers_starting_together_on_a_new_database_make_it_once(
    postgres: PgServer,
) -> None:
    url = postgres.new_database()
    engines = [create(url) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate.upgrade(e) for e in engines))
    finally:
        for e in engines:
            await close(e)
    standings = sorted(before.standing for before, _ in results)
    assert standings.count(migrate.Standing.EMPTY) == 1, standings
    assert all(after.standing is migrate.Standing.CURRENT for _, after in results)
