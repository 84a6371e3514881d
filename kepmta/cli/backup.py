"""`kepmta backup` and `kepmta restore`: a consistent copy of a running server, and its return.

The archive is a gzip-compressed tar file:

    manifest.json            what it holds (format, time, database kind, snapshot marks)
    database/kepmta.db       SQLite: a copy made with SQLite's online backup API
    database/kepmta.pgdump   PostgreSQL: pg_dump's custom format
    data/…                   the data folder: mail store, spool originals, keys and files in it
    outside/…                configuration, policy, peers, keys and certificates kept outside the
                             data folder, under their absolute paths

Consistency. The database is copied first, in one snapshot (the online backup API copies the file
as of one moment; pg_dump reads one transaction's snapshot). The files are copied after it. So
every message acknowledged before the backup started is in the snapshot with its evidence and jobs,
and its original and delivered files are on disk by then (a 250 is answered only once the original
is synced and the acceptance committed; a job's file is in place before the job is recorded done).
What the server does while the files are copied is left out, as far as it can be told apart:

- a file that a job (`…-d<job>`, `…-r<job>`) or an evidence (`…-e<seq>`) made after the snapshot,
  told by the job id or ledger seq above the snapshot's highest, is not copied;
- a Maildir's tmp/ and the spool's incoming folders (writes not finished) are not copied;
- an original accepted after the snapshot is copied, but no message row names it: the server
  restored removes it at start, as after a crash (SubmissionService.recover).

Restore marks every pending job of the snapshot as begun before, so each one first looks for the
file an attempt after the snapshot may have filed (kepmta.delivery), files it only if it is not
there, and records the evidence the snapshot lacks: nothing is delivered twice, nothing lost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import glob
import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from kepmta import config
from kepmta.cli.common import add_config_options, die, settings_from

FORMAT = 1
MANIFEST = "manifest.json"
SQLITE_MEMBER = "database/kepmta.db"
PGDUMP_MEMBER = "database/kepmta.pgdump"
# Marks a pending job of a restored database as claimed before (kepmta.queue.jobs: `begun`).
RESTORED = "restored"
# kepmta.delivery names the files of its jobs K<message>-d<job>, -r<job> and -e<ledger seq>.
_JOB_FILE = re.compile(r"K(?!quota-|relay-warning-)[A-Za-z0-9_-]+-([dre])(\d+)\.")
# Spool folders of messages being received: nothing in them is acknowledged.
_RECEIVING = ("incoming", "relay-incoming")


class BackupError(Exception):
    """Why a backup or restore cannot be made, in one line."""


@dataclass(frozen=True)
class Marks:
    """The snapshot's highest job id and ledger seq: what was made after it has higher ones."""

    job: int
    seq: int

    def covers(self, name: str) -> bool:
        found = _JOB_FILE.match(name)
        if found is None:
            return True
        limit = self.seq if found.group(1) == "e" else self.job
        return int(found.group(2)) <= limit


def _sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    return Path(parsed.database)


def _libpq_url(url: str) -> str:
    """The URL libpq's tools take: SQLAlchemy's driver part removed."""
    scheme, sep, rest = url.partition("://")
    if not scheme.startswith("postgresql") or not sep:
        raise BackupError(f"{url}: neither SQLite nor PostgreSQL")
    return f"postgresql://{rest}"


def _pg_tool(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    # Debian keeps them out of PATH, one folder per major version: the newest reads every older.
    folders = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda f: int(Path(f).parent.name))
    for folder in reversed(folders):
        if (Path(folder) / name).is_file():
            return str(Path(folder) / name)
    raise BackupError(f"no {name} on PATH or in /usr/lib/postgresql/*/bin (install postgresql-client)")


_MARKS = "SELECT (SELECT coalesce(max(id), 0) FROM jobs), (SELECT coalesce(max(seq), 0) FROM ledger)"


def _copy_sqlite(source: Path, target: Path) -> Marks:
    """SQLite's online backup API: the whole database as of one moment, while the server writes."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=60)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)  # all pages in one step: one read transaction, one moment
        job, seq = dst.execute(_MARKS).fetchone()
    finally:
        dst.close()
        src.close()
    return Marks(int(job), int(seq))


async def _dump_postgresql(url: str, target: Path) -> Marks:
    """pg_dump of one exported snapshot, the one in which the marks are read."""
    engine = create_async_engine(url, isolation_level="REPEATABLE READ")
    try:
        async with engine.connect() as conn, conn.begin():
            snapshot = (await conn.execute(text("SELECT pg_export_snapshot()"))).scalar_one()
            job, seq = (await conn.execute(text(_MARKS))).one()
            # The snapshot stays importable while this transaction is open.
            dump = await asyncio.create_subprocess_exec(
                _pg_tool("pg_dump"),
                f"--snapshot={snapshot}",
                "--format=custom",
                f"--file={target}",
                "--no-owner",
                "--no-privileges",
                f"--dbname={_libpq_url(url)}",
                stderr=subprocess.PIPE,
            )
            _, err = await dump.communicate()
            if dump.returncode != 0:
                raise BackupError(f"pg_dump failed: {err.decode(errors='replace').strip()}")
    finally:
        await engine.dispose()
    return Marks(int(job), int(seq))


def _policy_file(s: config.Settings) -> Path | None:
    """The policy file the configuration names; None for the one kepmta ships."""
    with s.source.open("rb") as f:
        named = tomllib.load(f).get("policy", {}).get("file")
    return (s.source.parent / named).resolve() if isinstance(named, str) else None


def _outside_files(s: config.Settings) -> list[Path]:
    """Configuration and key files the server reads, wherever they are."""
    paths: list[Path | None] = [
        s.source,
        s.tls_cert,
        s.tls_key,
        s.evidence_cert,
        s.evidence_key,
        s.evidence_pin_file,
        s.provider_ca,
        s.tsa_cert,
        s.tsa_key,
        s.qualified_ca,
        s.peers_file,
        *s.evidence_crls,
    ]
    paths.append(_policy_file(s))
    if s.tsa is not None:
        paths += [s.tsa.ca, s.tsa.password_file]
    if s.relay is not None:
        paths += [s.relay.client_cert, s.relay.client_key, *(k.key for k in s.relay.dkim)]
    return sorted({p for p in paths if p is not None and not p.is_relative_to(s.data_dir)})


def _data_files(s: config.Settings, marks: Marks, skip: set[Path]) -> Iterator[Path]:
    """The data folder's files worth restoring: not the live database, no write in progress, nothing
    a job or evidence after the snapshot made."""
    for folder, dirs, files in os.walk(s.data_dir):
        here = Path(folder)
        if here != s.data_dir:
            yield here  # the folder itself: an empty IMAP folder is a folder all the same
        if here == s.spool_dir:
            dirs[:] = [d for d in dirs if d not in _RECEIVING]
        if here.is_relative_to(s.mail_root) and {"new", "cur", "tmp"} <= set(dirs):
            dirs.remove("tmp")  # a Maildir's tmp/: deliveries not finished
            yield here / "tmp"
        # new/ before cur/: a message the IMAP server moves from one to the other meanwhile is then
        # met in one listing or the other (and found again by _moved), never in neither.
        dirs.sort(key=lambda d: (d != "new", d))
        for name in sorted(files):
            path = here / name
            if path in skip or not marks.covers(name):
                continue
            yield path


def _moved(path: Path) -> Path | None:
    """A Maildir message renamed since the folder was listed (new/ to cur/, or its flags changed)."""
    base = path.name.split(":")[0]
    folder = path.parent.parent
    if path.parent.name not in ("new", "cur"):
        return None
    for sub in ("cur", "new"):
        with contextlib.suppress(FileNotFoundError):
            for candidate in (folder / sub).iterdir():
                if candidate.name.split(":")[0] == base:
                    return candidate
    return None


def _add(tar: tarfile.TarFile, path: Path, name: str) -> bool:
    try:
        tar.add(path, name, recursive=False)
        return True
    except FileNotFoundError:
        moved = _moved(path)
        if moved is None:
            return False  # removed meanwhile: a spool file the server was done with
        with contextlib.suppress(FileNotFoundError):
            tar.add(moved, str(Path(name).parent.parent / moved.parent.name / moved.name), recursive=False)
            return True
        return False


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(dt.datetime.now(dt.UTC).timestamp())
    info.mode = 0o600
    tar.addfile(info, io.BytesIO(data))


def backup(s: config.Settings, output: Path) -> dict[str, object]:
    """Write the archive to `output` (through a temporary file beside it); returns its manifest."""
    started = dt.datetime.now(dt.UTC)
    output = output.resolve()
    db_file = _sqlite_path(s.database_url)
    skip = {output}
    with tempfile.TemporaryDirectory(prefix="kepmta-backup-") as work:
        snapshot = Path(work) / "database"
        if db_file is not None:
            marks = _copy_sqlite(db_file, snapshot)
            skip |= {db_file.with_name(db_file.name + end) for end in ("", "-wal", "-shm", "-journal")}
            member, kind = SQLITE_MEMBER, "sqlite"
        else:
            marks = asyncio.run(_dump_postgresql(s.database_url, snapshot))
            member, kind = PGDUMP_MEMBER, "postgresql"
        manifest: dict[str, object] = {
            "format": FORMAT,
            "started": started.isoformat(),
            "database": kind,
            # Where the SQLite file was, relative to the data folder (None: outside it, or PostgreSQL).
            "database_path": (
                str(db_file.relative_to(s.data_dir))
                if db_file is not None and db_file.is_relative_to(s.data_dir)
                else None
            ),
            "data_dir": str(s.data_dir),
            "config": str(s.source),
            "last_job": marks.job,
            "last_seq": marks.seq,
        }
        partial = output.with_name(f".{output.name}.partial")
        copied = 0
        try:
            with tarfile.open(partial, "w:gz", compresslevel=6) as tar:
                _add_bytes(tar, MANIFEST, json.dumps(manifest, indent=2).encode())
                tar.add(snapshot, member)
                for path in _data_files(s, marks, skip):
                    copied += _add(tar, path, f"data/{path.relative_to(s.data_dir)}")
                for path in _outside_files(s):
                    tar.add(path, f"outside/{str(path).lstrip('/')}", recursive=False)
            partial.chmod(0o600)  # keys inside
            partial.replace(output)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    manifest["files"] = copied
    return manifest


def _check_members(tar: tarfile.TarFile) -> None:
    """Refuse, before anything is written, an archive with a member that is neither a folder nor
    a regular file, or named outside the folder it would be restored into (no absolute names, no
    `..`): PEP 706's "data" filter, which Debian 12's Python 3.11.2 lacks."""
    for member in tar.getmembers():
        name = Path(member.name)
        if name.is_absolute() or ".." in name.parts:
            raise BackupError(f"{member.name}: a name outside the folder it is restored into")
        if not (member.isdir() or member.isreg()):
            raise BackupError(f"{member.name}: neither a folder nor a regular file")


def _extract(tar: tarfile.TarFile, prefix: str, dest: Path) -> None:
    """Unpack the members under `prefix` into `dest`, without set-id bits or group and other
    write; `_check_members` has passed them."""
    for member in tar.getmembers():
        if not member.name.startswith(prefix):
            continue
        target = dest / member.name.removeprefix(prefix)
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        source = tar.extractfile(member)
        assert source is not None  # a regular file's
        with source, open(target, "xb") as out:
            shutil.copyfileobj(source, out)
        target.chmod(member.mode & 0o755)
        os.utime(target, (member.mtime, member.mtime))


def _mark_begun(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        with conn:
            return conn.execute(_BEGUN_SQL).rowcount
    finally:
        conn.close()


# Every pending job, those a node of the backed-up server held too: their leases would keep the
# restored server waiting for nodes that are not there, and a job held then may have begun.
_BEGUN_SQL = f"UPDATE jobs SET claimed_by = '{RESTORED}', lease_until = NULL WHERE state = 'pending'"


def _restore_postgresql(dump: Path, url: str) -> None:
    target = _libpq_url(url)
    loaded = subprocess.run(
        [
            _pg_tool("pg_restore"),
            "--exit-on-error",
            "--no-owner",
            "--no-privileges",
            f"--dbname={target}",
            str(dump),
        ],
        capture_output=True,
        text=True,
    )
    if loaded.returncode != 0:
        raise BackupError(f"pg_restore failed: {loaded.stderr.strip()}")
    marked = subprocess.run(
        [_pg_tool("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", target, "-c", _BEGUN_SQL],
        capture_output=True,
        text=True,
    )
    if marked.returncode != 0:
        raise BackupError(f"psql failed: {marked.stderr.strip()}")


def _open(archive: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive, "r:gz")
    except (OSError, tarfile.TarError) as e:
        raise BackupError(f"{archive}: not a kepmta backup: {e}") from None


def restore(archive: Path, data: Path, database: str | None) -> dict[str, object]:
    """Unpack `archive` into the new folder `data` (and the database); returns its manifest."""
    if data.exists() and (not data.is_dir() or any(data.iterdir())):
        raise BackupError(f"{data} is not empty: restore only into a new or empty folder")
    with _open(archive) as tar:
        try:
            manifest: dict[str, object] = json.loads(tar.extractfile(MANIFEST).read())  # type: ignore[union-attr]
        except (KeyError, ValueError, AttributeError):
            raise BackupError(f"{archive}: not a kepmta backup (no {MANIFEST})") from None
        if manifest.get("format") != FORMAT:
            raise BackupError(f"{archive}: backup format {manifest.get('format')!r}, not {FORMAT}")
        if manifest["database"] == "postgresql" and database is None:
            raise BackupError("a PostgreSQL backup is restored into an empty database: give --database URL")
        _check_members(tar)
        data.mkdir(parents=True, exist_ok=True)
        data.chmod(0o700)
        _extract(tar, "data/", data)
        _extract(tar, "outside/", data / "outside")
        with tempfile.TemporaryDirectory(prefix="kepmta-restore-") as work:
            _extract(tar, "database/", Path(work))
            if manifest["database"] == "sqlite":
                # Where it was in the data folder; a file kept elsewhere comes back as kepmta.db.
                relative = str(manifest["database_path"] or "kepmta.db")
                db = data / relative
                db.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(Path(work) / "kepmta.db", db)
                manifest["restored_database"] = str(db)
                manifest["begun"] = _mark_begun(db)
            else:
                assert database is not None
                _restore_postgresql(Path(work) / "kepmta.pgdump", database)
                manifest["restored_database"] = database
    return manifest


def cmd_backup(args: argparse.Namespace) -> int:
    try:
        settings = settings_from(args)
        manifest = backup(settings, args.output)
    except config.ConfigError as e:
        return die(str(e))
    except (BackupError, OSError, sqlite3.Error) as e:
        return die(f"backup failed: {e}", 1)
    print(
        f"{args.output}: database ({manifest['database']}, ledger up to seq {manifest['last_seq']}) "
        f"and {manifest['files']} file(s) of {manifest['data_dir']}"
    )
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    try:
        manifest = restore(args.file, args.data, args.database)
    except (BackupError, OSError, sqlite3.Error) as e:
        return die(f"restore failed: {e}", 1)
    print(f"restored the backup of {manifest['data_dir']} (started {manifest['started']}) into {args.data}")
    print(f"  database: {manifest['restored_database']}")
    if (args.data / "outside").exists():
        print(f"  files kept outside the data folder are under {args.data / 'outside'}: put them back")
    if manifest["database"] == "postgresql" or manifest["database_path"] is None:
        print("  point [database] url in the configuration at the restored database")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    b = sub.add_parser(
        "backup",
        help="copy a server's database, ledger, mail store and keys into one file, while it runs",
        description="Copies the database first (SQLite's online backup API, or pg_dump), then the data "
        "folder (mail store, spool originals, keys) and the configuration and key files kept "
        "outside it, into a gzip-compressed tar file. Every message answered 250 before the "
        "backup started is in it.",
    )
    b.add_argument(
        "-o", "--output", type=Path, required=True, metavar="FILE", help="the backup file to write"
    )
    add_config_options(b)
    b.set_defaults(func=cmd_backup)

    r = sub.add_parser(
        "restore",
        help="unpack a backup into a new data folder",
        description="Unpacks a backup made by `kepmta backup` into --data, which must be new or "
        "empty: the data folder as it was, its SQLite database, and the files kept outside it "
        "under DIR/outside/. A PostgreSQL backup is loaded into the empty database --database.",
    )
    r.add_argument("file", type=Path, help="the backup file")
    r.add_argument("--data", type=Path, required=True, metavar="DIR", help="the new data folder")
    r.add_argument(
        "--database",
        metavar="URL",
        help="for a PostgreSQL backup: the empty database to load it into, e.g. "
        "postgresql+asyncpg://kepmta@127.0.0.1/kepmta",
    )
    r.set_defaults(func=cmd_restore)
