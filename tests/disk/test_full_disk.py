"""The server's data folder on a small filesystem that fills up.

While it is full, a submission is answered 452 4.3.1 (RFC 5321 §4.2.2 "insufficient system
storage", RFC 3463 X.3.1) and an APPEND `NO [UNAVAILABLE]` (RFC 5530 §3: a subsystem is down for
now; not OVERQUOTA, which is the user's own quota, nor SERVERBUG); whatever was half written is
gone; and once space returns the next submission is accepted with no restart and no operator,
every earlier 250 is delivered once, and every receipt filed once.
"""

from __future__ import annotations

import datetime as dt
import errno
from pathlib import Path
from typing import BinaryIO

import pytest
from crash.crash_fixtures import Load, audit, drain, problems
from disk_fixtures import (
    SmallDisk,
    Tsa,
    append,
    database_elsewhere,
    half_written,
    imap_reply,
    jobs,
    log_size,
    logged,
    message,
    next_try,
    submission,
    submit,
)
from kepclient import DevServer, imap, signed_by, smtp, wait_for

from kepmta.events import TIMESTAMP_JOB
from kepmta.inspection import write_original
from kepmta.maildir import write_synced
from kepmta.queue.jobs import DELIVER

DRAFTS = "Taslaklar"


def test_a_full_disk_refuses_for_now_leaves_nothing_half_written_and_resumes_by_itself(
    disk: SmallDisk | None,
) -> None:
    assert disk is not None
    srv = DevServer(disk.root).start()
    load = Load(srv, 0)  # its threads never start: it keeps the record of what clients were told
    me, to = srv.account(0)["address"], [srv.account(1)["address"]]
    try:
        assert submit(srv, load, 0, [1, 2], "before")[0] == 250
        drain(disk.root)
        m = imap(srv, srv.account(0))
        assert m.create(DRAFTS)[0] == "OK"

        disk.fill()
        # Nothing in a full folder may fail as a bug of ours (NO [SERVERBUG]).
        assert imap_reply(m, "CREATE", "Yeni")[1].split()[0] in ("CREATE", "[UNAVAILABLE]")
        with smtp(srv, srv.account(0)) as conn:
            # A small message fails when the spool file is closed, a large one part-way through:
            # either way the reply comes after the final dot, and the rest of a large message is
            # not read as commands (the next reply is NOOP's own).
            for size in (100, 600_000):
                code, reply = submission(
                    conn, load, me, to, signed_by(srv, 0, to, f"full {size}", "z" * size)
                )
                assert (code, reply[:5]) == (452, "4.3.1"), reply
                assert conn.noop()[0] == 250
                assert not half_written(srv, 0)
        for size in (100, 300_000):
            status, text = append(m, DRAFTS, message(size))
            assert (status, text.split()[0]) == ("NO", "[UNAVAILABLE]"), text
            assert imap_reply(m, "NOOP")[0] == "OK"  # the literal was read past, not taken as commands
            assert not half_written(srv, 0)

        # Some room: what fails now fails wherever it runs out, in the spool, the original, the
        # database or a delivery after the 250; each answer must still be a 250 or a 4xx.
        for leave in (64 << 10, 256 << 10, 1 << 20, 2 << 20):
            disk.free()
            disk.fill(leave)
            code, reply = submit(srv, load, 0, [1, 2], f"room {leave}", "w" * 200_000)
            assert code == 250 or code // 100 == 4, reply
            status, text = append(m, DRAFTS, message(150_000))
            assert status == "OK" or text.startswith("[UNAVAILABLE]"), text
            assert not half_written(srv, 0)

        disk.free()
        assert submit(srv, load, 0, [1], "after")[0] == 250
        assert append(m, DRAFTS, message(1000))[0] == "OK"
        m.logout()
        drain(disk.root, 120)
        found = problems(srv, load) + half_written(srv)
        assert not found, "\n".join(found)
        assert (failed := audit(srv)) is None, failed
    finally:
        srv.stop()


def test_jobs_that_meet_a_full_disk_after_the_250_finish_once_space_returns(
    disk: SmallDisk | None, tmp_path: Path
) -> None:
    """Dispatches and receipts are due only once the acceptance is time-stamped: with the TSA
    away, the 250s come first, then the disk fills, then the TSA answers and every job meets the
    full disk. They wait and are all done, once each, when space returns."""
    assert disk is not None
    srv = DevServer(disk.root).start()
    srv.stop()
    tsa = Tsa(disk.root / "pki")
    tsa.configure(srv)
    load = Load(srv, 0)
    try:
        srv.start()
        for n in range(3):
            assert submit(srv, load, n % 2, [1, 2] if n % 2 == 0 else [0, 2], f"held {n}")[0] == 250
        assert wait_for(lambda: all(attempts for _, _, attempts, _ in jobs(srv, TIMESTAMP_JOB)), 60)
        since = log_size(srv)
        disk.fill()
        tsa.set("ok")
        # The jobs meet the full disk: the time-stamps' ledger records, or the dispatches after them.
        assert wait_for(
            lambda: logged(srv, since, "database or disk is full", "No space left on device"), 120
        )
        disk.free()
        # Traffic again: its delivery shows space is back, and what failed meanwhile goes at once.
        assert submit(srv, load, 0, [1], "after")[0] == 250
        drain(disk.root, 120)
        found = problems(srv, load) + half_written(srv)
        assert not found, "\n".join(found)
        assert (failed := audit(srv)) is None, failed
    finally:
        srv.stop()
        tsa.close()


def test_a_file_cut_short_by_a_full_disk_is_removed(disk: SmallDisk | None) -> None:
    """What a worker writes into a Maildir's tmp/ (kepmta.maildir.write_synced) and the original a
    submission stores (kepmta.inspection.write_original): a part written before the disk filled
    up is not left to hold the space it took."""
    assert disk is not None
    incoming = disk.root / "incoming.eml"
    incoming.write_bytes(b"Message-ID: <a@client.test>\r\nSubject: s\r\n\r\n" + b"x" * (4 << 20))
    disk.fill(1 << 20)

    def dispatch(out: BinaryIO) -> None:
        out.write(bytes(4 << 20))

    with pytest.raises(OSError) as raised:
        write_synced(disk.root / "dispatch", dispatch)
    assert raised.value.errno == errno.ENOSPC
    with pytest.raises(OSError) as raised:
        write_original(
            incoming, disk.root / "original.eml", "p@kep.test", incoming.read_bytes().index(b"\r\n\r\n") + 4
        )
    assert raised.value.errno == errno.ENOSPC
    assert sorted(f.name for f in disk.root.iterdir()) == ["filler", "incoming.eml"]


def test_deliveries_held_up_by_a_full_disk_go_as_soon_as_one_gets_through(
    disk: SmallDisk | None, tmp_path: Path
) -> None:
    """The database on a disk of its own, the mail store on the small one: the dispatches and
    receipts of accepted messages fail for want of space and back off (half a minute and more).
    When space returns, the first delivery that gets through shows it, and the others go at once,
    not at their back-off."""
    assert disk is not None
    srv = DevServer(disk.root).start()
    srv.stop()
    database_elsewhere(srv, tmp_path / "database")
    tsa = Tsa(disk.root / "pki")
    tsa.configure(srv)
    load = Load(srv, 0)
    try:
        srv.start()
        for n in range(2):
            assert submit(srv, load, n, [1 - n, 2], f"held {n}")[0] == 250
        disk.fill()
        tsa.set("ok")

        def backed_off() -> bool:
            waiting = [j for j in jobs(srv, DELIVER) if j[1] == "pending"]
            soon = next_try(srv, DELIVER) - dt.datetime.now(dt.UTC) < dt.timedelta(seconds=15)
            return len(waiting) == 4 and all("No space left" in (j[3] or "") for j in waiting) and not soon

        assert wait_for(backed_off, 120)
        due = next_try(srv, DELIVER)
        disk.free()
        assert submit(srv, load, 0, [1], "after")[0] == 250
        assert wait_for(lambda: all(state == "done" for _, state, _, _ in jobs(srv, DELIVER)), 60)
        assert dt.datetime.now(dt.UTC) < due, "the deliveries waited for their back-off"
        drain(disk.root, 120)
        found = problems(srv, load) + half_written(srv)
        assert not found, "\n".join(found)
        assert (failed := audit(srv)) is None, failed
    finally:
        srv.stop()
        tsa.close()
