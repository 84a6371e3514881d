"""The PostgreSQL server gone (stopped) under a running kepmta, then back on the same port and data
folder: meanwhile a submission is answered 451 4.3.0 (never a 250 for what is not recorded, never
a 5xx that makes the client drop the message) and the SMTP session goes on, a read that must
record evidence is `NO [UNAVAILABLE]` (RFC 5530 §3) and the message stays unread, and the server
stays up without a traceback for each look at the job table; once the database is back, kepmta
goes on by itself, without a restart: nothing lost, nothing twice, the ledger audit clean.

crash_fixtures reads the database as a SQLite file; here its tables are copied into one, through
psql, once the queue is drained (`_mirror`)."""

from __future__ import annotations

import asyncio
import imaplib
import json
import re
import sqlite3
import struct
from contextlib import closing
from pathlib import Path

import pytest
from crash.crash_fixtures import Load, audit, problems
from disk_fixtures import imap_reply, log_size, logged, submission, submit
from kepclient import DevServer, imap, signed_by, smtp, wait_for
from pgserver import PgServer
from sqlalchemy.exc import DBAPIError

from kepmta.db.engine import create
from kepmta.outage import DATABASE, outage

# What crash_fixtures.Server reads, table by table.
_READ = {
    "messages": ("id", "sender", "ua_message_id", "spool_path"),
    "recipients": ("message_id", "address", "position"),
    "ledger": ("kind", "evidence_id", "message_id", "event", "recipient"),
    "handovers": ("message_id", "recipient"),
    "jobs": ("id", "kind", "state", "message_id", "last_error"),
}


def test_postgresql_gone_defers_submissions_and_reads_and_nothing_is_lost(
    postgres: PgServer, tmp_path: Path
) -> None:
    url = postgres.new_database()
    database = url.rpartition("/")[2]
    srv = DevServer(tmp_path / "data", database=url).start()
    load = Load(srv, 0)
    me, to = srv.account(0)["address"], [srv.account(1)["address"]]
    try:
        assert submit(srv, load, 0, [1], "before")[0] == 250
        assert _drained(postgres, database), _pending(postgres, database)
        reader = imap(srv, srv.account(1))
        assert reader.select("INBOX")[0] == "OK"
        since = log_size(srv)

        with smtp(srv, srv.account(0)) as conn:
            postgres.halt()
            try:
                # Twice on one session: each transaction is refused alike, and the session goes on.
                for n in range(2):
                    code, reply = submission(conn, load, me, to, signed_by(srv, 0, to, f"gone {n}"))
                    assert (code, reply[:5]) == (451, "4.3.0"), reply
                    assert "internal error" not in reply.lower(), reply  # an outage, not a fault
                    # Refused at RCPT (the recipient is looked up in the database), the transaction
                    # stays open (RFC 5321 §3.3): the client ends it.
                    assert conn.rset()[0] == 250
                assert conn.mail(me)[0] == 250
                assert conn.rset()[0] == 250
                # BODY[] sets \Seen: a read that needs its ContentHandover evidence in the ledger.
                status, text = imap_reply(reader, "FETCH", "1", "(BODY[])")
                assert (status, text.split()[0]) == ("NO", "[UNAVAILABLE]"), text
                # Every worker looks at the job table at least every few seconds: one that met the
                # outage says so, in a line, and looks again later.
                assert wait_for(lambda: logged(srv, since, "trying again"), 60), "no worker met the outage"
                assert srv.proc is not None and srv.proc.poll() is None, "kepmta exited"
            finally:
                postgres.resume()
        # Not read, as far as anyone can tell: the read that follows records its evidence.
        assert b"\\Seen" not in reader.fetch("1", "(FLAGS)")[1][0]  # type: ignore[operator]

        # The pool's connections died with the server; new ones are made as they are needed.
        def accepted() -> bool:
            return submit(srv, load, 0, [1], "after")[0] == 250

        assert wait_for(accepted, 60, 1), load.submissions[-1].reply
        assert imap_reply(reader, "FETCH", "1", "(BODY[])")[0] == "OK"
        load.reads.add((srv.account(1)["address"], _provider_id(reader)))
        reader.logout()
        assert _drained(postgres, database), _pending(postgres, database)

        # Down and up again while nothing asks the database: the pool's connections died all the
        # same, and none of them is what the next client or worker meets.
        postgres.halt()
        postgres.resume()
        since_back = log_size(srv)
        assert submit(srv, load, 0, [1, 2], "back")[0] == 250, load.submissions[-1].reply
        assert not logged(srv, since_back, "cannot take a write"), "a dead connection was used"
        assert _drained(postgres, database), _pending(postgres, database)
        assert not logged(srv, since_back, "cannot take a write"), "a dead connection was used"
        with srv.log.open("rb") as f:
            f.seek(since)
            written = f.read().decode(errors="replace")
        assert "Traceback" not in written, written[-6000:]
        _mirror(postgres, database, Path(srv.info["data"]))  # type: ignore[index]
        found = problems(srv, load)
        assert not found, "\n".join(found)
        assert (failed := audit(srv)) is None, failed
    finally:
        srv.stop()


async def test_a_database_starting_up_is_away_not_broken() -> None:
    """Either side of an outage PostgreSQL is there but refuses to serve, "the database system is
    starting up" (or "shutting down"), SQLSTATE 57P03: the outage's 451 and NO [UNAVAILABLE], not
    an internal error. The server in that state is this listener, which answers every connection
    as PostgreSQL then does (its manual, Frontend/Backend Protocol: Start-up, Message Formats)."""
    server = await asyncio.start_server(_starting_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    engine = create(f"postgresql+asyncpg://kepmta@127.0.0.1:{port}/kep")
    try:
        with pytest.raises(DBAPIError) as refused:
            async with engine.connect():
                pass
        assert "starting up" in str(refused.value)
        assert outage(refused.value) is DATABASE, refused.value
    finally:
        await engine.dispose()
        server.close()
        await server.wait_closed()


async def _starting_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # SSLRequest and GSSENCRequest are declined with "N"; the StartupMessage is answered with a
    # FATAL ErrorResponse, and the connection closed.
    while True:
        (length,) = struct.unpack("!I", await reader.readexactly(4))
        body = await reader.readexactly(length - 4)
        if struct.unpack("!I", body[:4])[0] not in (80877103, 80877104):
            break
        writer.write(b"N")
    fields = b"SFATAL\0VFATAL\0C57P03\0Mthe database system is starting up\0\0"
    writer.write(b"E" + struct.pack("!I", 4 + len(fields)) + fields)
    await writer.drain()
    writer.close()


def _pending(pg: PgServer, database: str) -> str:
    return pg.sql("SELECT id, kind, state, last_error FROM jobs WHERE state != 'done'", database)


def _drained(pg: PgServer, database: str) -> bool:
    """Whether every job is done, waiting for it a generous while (a bound, never a verdict)."""
    return wait_for(lambda: not _pending(pg, database).strip(), 120, 0.2)


def _mirror(pg: PgServer, database: str, data: Path) -> None:
    """The tables crash_fixtures reads, copied from PostgreSQL into `data`/kepmta.db."""
    target = data / "kepmta.db"
    assert not target.exists(), "a SQLite database beside a server on PostgreSQL"
    with closing(sqlite3.connect(target)) as db, db:
        for table, columns in _READ.items():
            names = ", ".join(columns)
            out = pg.sql(f"SELECT coalesce(json_agg(t), '[]') FROM (SELECT {names} FROM {table}) t", database)
            db.execute(f"CREATE TABLE {table} ({names})")
            marks = ", ".join("?" * len(columns))
            rows = [tuple(row[c] for c in columns) for row in json.loads(out)]
            db.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)


def _provider_id(m: imaplib.IMAP4) -> str:
    """The provider message id of the first message: its dispatch's Message-ID."""
    _, data = m.fetch("1", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    part = data[0]
    found = re.search(rb"<([^>]+)>", part[1] if isinstance(part, tuple) else b"")
    assert found, data
    return found.group(1).decode()
