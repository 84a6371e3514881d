"""The database under a real `kepmta serve`: the first registered message through PostgreSQL, and
through a database made by the first release, which the server refuses until `kepmta db upgrade`."""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from kepclient import KEPMTA, DevServer, free_port_base, kepmta
from pgserver import PgServer

# Collected here too, against this module's servers: the same end-to-end test as on SQLite.
from test_first_path import (
    test_signed_message_is_delivered_with_verifiable_evidence as test_the_first_registered_message,
)

from kepmta import devinit
from kepmta.db.migrate import head

FIRST_RELEASE = Path(__file__).parent / "fixtures" / "kepmta-acb16e4.sql"

__all__ = ["test_the_first_registered_message"]


def first_release_folder(folder: Path) -> Path:
    """A development folder whose database the first release made (before any message)."""
    devinit.create_identity(folder, devinit.choose_ports(free_port_base()))
    with sqlite3.connect(folder / "kepmta.db") as conn:
        conn.executescript(FIRST_RELEASE.read_text())
    return folder


@pytest.fixture(scope="module", params=["postgresql", "first-release"])
def srv(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    folder = tmp_path_factory.mktemp("db") / "data"
    if request.param == "postgresql":
        postgres: PgServer = request.getfixturevalue("postgres")
        server = DevServer(folder, database=postgres.new_database())
    else:
        upgraded = kepmta("db", "upgrade", "--data", str(first_release_folder(folder)))
        assert upgraded.returncode == 0, upgraded.stderr
        server = DevServer(folder)
    server.start()
    yield server
    server.stop()


def test_db_status_shows_the_database_the_configuration_names_at_the_newest_revision(
    srv: DevServer,
) -> None:
    status = kepmta("db", "status", "--data", str(srv.data))
    assert status.returncode == 0, status.stdout + status.stderr
    assert "upgrade needed: no" in status.stdout
    where = "postgresql+asyncpg://" if srv.database else "sqlite+aiosqlite://"
    assert f"database: {where}" in status.stdout
    # PostgreSQL holds everything: no SQLite file was made beside it.
    assert (srv.data / "kepmta.db").exists() is (srv.database is None)


def test_a_server_refuses_a_database_of_the_first_release_until_db_upgrade(tmp_path: Path) -> None:
    folder = first_release_folder(tmp_path / "data")
    status = kepmta("db", "status", "--data", str(folder))
    assert status.returncode == 1
    assert "current revision: none (made before migrations)" in status.stdout
    assert "upgrade needed: yes" in status.stdout

    refused = subprocess.run(
        [*KEPMTA, "serve", "--dev", "--data", str(folder)], capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 1
    assert refused.stderr.splitlines() == [
        "kepmta: the database was made before migrations existed (revision 0001 unstamped); this "
        f"kepmta needs revision {head()}: run `kepmta db upgrade --config {folder / 'kepmta.toml'}`"
    ]

    upgraded = kepmta("db", "upgrade", "--config", str(folder / "kepmta.toml"))
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"upgraded from made before migrations to revision {head()}" in upgraded.stdout
    again = kepmta("db", "upgrade", "--data", str(folder))
    assert again.returncode == 0 and "nothing to do" in again.stdout
    status = kepmta("db", "status", "--data", str(folder))
    assert status.returncode == 0 and f"current revision: {head()}" in status.stdout
