"""The SQLite database locked by another process for longer than the server's busy timeout (here
3 s, the URL's `?timeout=`; kepmta.db.BUSY_TIMEOUT by default): a submission is answered 451 4.3.0
(never a 250 for what is not on disk, never a 5xx that makes the client drop the message), a read
that must record evidence `NO [UNAVAILABLE]` (RFC 5530 §3) and the message stays unread; once the
lock is gone, everything goes on by itself, nothing lost, nothing twice, the ledger audit clean."""

from __future__ import annotations

import imaplib
import re
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from crash.crash_fixtures import Load, audit, drain, problems
from disk_fixtures import Tsa, database_lock, imap_reply, lock_database, submission, submit
from kepclient import DevServer, imap, signed_by, smtp, wait_for

# The server waits this long for a lock, and the ledger tries a failed batch once more alone: a
# lock held past both leaves no doubt.
BUSY_TIMEOUT = 3.0
DATABASE = f"sqlite+aiosqlite:///kepmta.db?timeout={BUSY_TIMEOUT:g}"


def test_a_locked_database_defers_submissions_and_reads_and_nothing_is_lost(tmp_path: Path) -> None:
    srv = DevServer(tmp_path / "data", database=DATABASE).start()
    load = Load(srv, 0)
    data = tmp_path / "data"
    me, to = srv.account(0)["address"], [srv.account(1)["address"]]
    try:
        assert submit(srv, load, 0, [1], "before")[0] == 250
        drain(data)
        reader = imap(srv, srv.account(1))
        assert reader.select("INBOX")[0] == "OK"

        def read() -> tuple[str, str]:
            # BODY[] sets \Seen: a read that needs its ContentHandover evidence in the ledger.
            return imap_reply(reader, "FETCH", "1", "(BODY[])")

        with smtp(srv, srv.account(0)) as conn, database_lock(srv), ThreadPoolExecutor(2) as pool:
            msg = signed_by(srv, 0, to, "locked")
            submitted = pool.submit(submission, conn, load, me, to, msg)
            fetched = pool.submit(read)
            code, reply = submitted.result(timeout=120)
            status, text = fetched.result(timeout=120)
            assert (code, reply[:5]) == (451, "4.3.0"), reply
            assert (status, text.split()[0]) == ("NO", "[UNAVAILABLE]"), text
            # The transaction is over (RFC 5321 §4.1.1.4) and the session goes on: a new MAIL
            # starts a new one instead of being refused as nested.
            assert conn.mail(me)[0] == 250
            assert conn.rset()[0] == 250
        # Not read, as far as anyone can tell: the read that follows records its evidence.
        assert b"\\Seen" not in reader.fetch("1", "(FLAGS)")[1][0]  # type: ignore[operator]

        assert submit(srv, load, 0, [1], "after")[0] == 250
        assert read()[0] == "OK"
        load.reads.add((srv.account(1)["address"], _provider_id(reader)))
        reader.logout()
        drain(data, 120)
        found = problems(srv, load)
        assert not found, "\n".join(found)
        assert (failed := audit(srv)) is None, failed
    finally:
        srv.stop()


def _provider_id(m: imaplib.IMAP4) -> str:
    """The provider message id of the first message: its dispatch's Message-ID."""
    _, data = m.fetch("1", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    part = data[0]
    found = re.search(rb"<([^>]+)>", part[1] if isinstance(part, tuple) else b"")
    assert found, data
    return found.group(1).decode()


def test_jobs_due_while_the_database_is_locked_are_done_once_it_is_free(tmp_path: Path) -> None:
    """Jobs that run into the lock, and cannot even record their failure, are not lost with the
    worker that ran them: with the TSA away, an accepted message's time-stamp and dispatch jobs
    keep coming due; the lock is taken, held past a try of each, and released; then the TSA
    answers and everything is done. A job whose failure could not be recorded stays claimed until
    its lease runs out: the shortest lease there is ([server] job_lease) keeps the wait short."""
    srv = DevServer(tmp_path / "data", database=DATABASE).start()
    srv.stop()
    config = tmp_path / "data" / "kepmta.toml"
    config.write_text(config.read_text().replace("[server]\n", "[server]\njob_lease = 15\n", 1))
    tsa = Tsa(tmp_path / "data" / "pki")
    tsa.configure(srv)
    load = Load(srv, 0)
    try:
        srv.start()
        assert submit(srv, load, 0, [1, 2], "held")[0] == 250
        # The lock is taken while a job waits for the TSA, which does not answer before it is
        # held: that job tries the TSA under the lock, then waits for the lock to record its
        # failure; the other jobs, coming due, wait for it alike.
        held: list[sqlite3.Connection] = []
        tsa.on_next_request = lambda: held.append(lock_database(srv))
        assert wait_for(lambda: held, 300), "no job ever asked the TSA"
        try:
            threading.Event().wait(BUSY_TIMEOUT * 1.5)
            held[0].execute("ROLLBACK")
        finally:
            held[0].close()
        tsa.set("ok")
        drain(tmp_path / "data", 120)
        found = problems(srv, load)
        assert not found, "\n".join(found)
        assert (failed := audit(srv)) is None, failed
    finally:
        srv.stop()
        tsa.close()
