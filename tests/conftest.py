"""Fixtures for every test folder: the databases kepmta runs on."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pgserver import PgServer, PgUnavailable, start


@pytest.fixture(scope="session")
def postgres() -> Iterator[PgServer]:
    """The session's PostgreSQL server, started the first time a test asks for it."""
    try:
        server = start()
    except PgUnavailable as e:
        # .ci/run installs PostgreSQL and sets KEPMTA_REQUIRE_INTEROP: there it must run.
        if os.environ.get("KEPMTA_REQUIRE_INTEROP"):
            pytest.fail(f"PostgreSQL tests cannot run: {e}")
        pytest.skip(str(e))
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: a SQLite file in the test's folder, or a new database on the session's
    PostgreSQL server. A test using it runs once on each."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'kep.db'}"
    server: PgServer = request.getfixturevalue("postgres")
    return server.new_database()
