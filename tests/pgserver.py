"""A PostgreSQL server of the test session's own, from Debian's `postgresql` package (.ci/run
installs it): `initdb` and `pg_ctl` in a temporary folder, listening on a free 127.0.0.1 port only,
run as `nobody` when the tests run as root (PostgreSQL refuses to run as root). Every test that
wants a database gets a new one (`PgServer.new_database`)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from kepclient import free_port

USER = "kepmta"


class PgUnavailable(Exception):
    """No PostgreSQL binaries on this machine."""


def _bin_dir() -> Path:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    # Debian keeps them out of PATH, one folder per major version; the newest wins.
    folders = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda f: int(Path(f).parent.name))
    for folder in reversed(folders):
        if (Path(folder) / "initdb").is_file():
            return Path(folder)
    raise PgUnavailable("no initdb on PATH or in /usr/lib/postgresql/*/bin (apt-get install postgresql)")


@dataclass
class PgServer:
    bin: Path
    folder: Path
    port: int
    as_user: list[str]

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://{USER}@127.0.0.1:{self.port}/{database}"

    def run(self, program: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.as_user, str(self.bin / program), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
            cwd=self.folder,
        )

    def sql(self, statement: str, database: str = "postgres") -> str:
        host = ["-h", "127.0.0.1", "-p", str(self.port), "-U", USER, "-d", database]
        quiet = ["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
        return self.run("psql", *host, *quiet, "-c", statement).stdout

    def new_database(self) -> str:
        """The url of a new, empty database."""
        name = "t_" + uuid.uuid4().hex[:16]
        self.sql(f"CREATE DATABASE {name}")
        return self.url(name)

    def halt(self) -> None:
        """Stop the server, keeping its data folder for `resume` (an outage, not the end)."""
        self.run("pg_ctl", "stop", "-D", str(self.folder / "data"), "-m", "fast", "-w")

    def resume(self) -> None:
        """Start a halted server again, on the same port and data folder: `restart` of a stopped
        server starts it with the options of its last start, kept in postmaster.opts."""
        data, log = str(self.folder / "data"), str(self.folder / "log")
        self.run("pg_ctl", "restart", "-D", data, "-w", "-t", "60", "-l", log)

    def stop(self) -> None:
        subprocess.run(
            [*self.as_user, str(self.bin / "pg_ctl"), "stop", "-D", str(self.folder / "data"), "-m", "fast"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(self.folder, ignore_errors=True)


def start() -> PgServer:
    """Start a server; raises PgUnavailable if PostgreSQL is not installed."""
    bin_dir = _bin_dir()
    # Not under pytest's tmp_path: its folders are private to root, and `nobody` must enter this one.
    folder = Path(tempfile.mkdtemp(prefix="kepmta-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(folder, nobody.pw_uid, nobody.pw_gid)
        as_user = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups", "--"]
    server = PgServer(bin_dir, folder, free_port(), as_user)
    data = str(folder / "data")
    # -N: no fsync of the new cluster; the options below drop durability too: a test server's
    # data need not outlive a crash of the machine.
    server.run("initdb", "-D", data, "-U", USER, "--auth=trust", "-E", "UTF8", "--no-locale", "-N")
    options = (
        f"-c listen_addresses=127.0.0.1 -c port={server.port} -c unix_socket_directories='' "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
    )
    try:
        server.run("pg_ctl", "start", "-D", data, "-w", "-t", "60", "-l", str(folder / "log"), "-o", options)
    except subprocess.CalledProcessError as e:
        log = (folder / "log").read_text() if (folder / "log").exists() else ""
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not start: {e.stderr}{log}") from e
    return server
