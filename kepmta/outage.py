"""What the server tells a client while its disk is full or its database cannot take a write.

Neither is the client's fault nor a bug of ours, and neither lasts: nothing was decided, so the
client keeps what it sent and tries again later, and the server goes on by itself once space or
the database is back (the jobs already accepted wait in the queue, see kepmta.queue.jobs).
"""

from __future__ import annotations

import errno
import sqlite3
from dataclasses import dataclass

from sqlalchemy import exc as sa_exc

# SQLite primary result codes (https://sqlite.org/rescode.html); extended codes keep them in the
# low byte.
_SQLITE_FULL = 13
_SQLITE_UNAVAILABLE = {
    5,  # SQLITE_BUSY: another connection holds the lock beyond our busy timeout
    6,  # SQLITE_LOCKED
    8,  # SQLITE_READONLY
    10,  # SQLITE_IOERR
    14,  # SQLITE_CANTOPEN
    15,  # SQLITE_PROTOCOL
}
# PostgreSQL SQLSTATEs (Appendix A of its manual): 53100 disk_full; class 08, a connection that
# failed or was lost; 57P01 admin_shutdown, 57P02 crash_shutdown and 57P03 cannot_connect_now, a
# server stopping, crashed, or not yet started (as while it restarts).
_PG_DISK_FULL = "53100"
_PG_CONNECTION_CLASS = "08"
_PG_AWAY = {"57P01", "57P02", "57P03"}
_NO_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


@dataclass(frozen=True)
class Outage:
    what: str  # for the log
    # RFC 5321 §4.2.2, §4.3.2: 451 and 452 are the temporary replies to the end of DATA (and to
    # MAIL and RCPT); RFC 3463 X.3.1 "mail system full", X.3.0 "other mail system status".
    smtp: str
    # RFC 5530 §3 UNAVAILABLE: "temporary failure because a subsystem is down". Not OVERQUOTA,
    # which tells the user that their own quota is used up (deleting their mail would not help
    # here), and not SERVERBUG, which says the server broke an invariant of its own.
    imap: str


NO_SPACE = Outage(
    "no space left on the server's disk",
    "452 4.3.1 Insufficient system storage; try again later",
    "[UNAVAILABLE] not enough disk space on the server just now; try again later",
)
DATABASE = Outage(
    "the database cannot take a write",
    "451 4.3.0 The server cannot store messages just now; try again later",
    "[UNAVAILABLE] the server cannot record this just now; try again later",
)


def outage(error: BaseException) -> Outage | None:
    """The outage behind `error` (a worker's report, a wrapped database error), if it is one."""
    seen: set[int] = set()
    found: BaseException | None = error
    while found is not None and id(found) not in seen:
        seen.add(id(found))
        # OSError, and kepmta.workers.WorkerError, which carries the errno a worker process met.
        if getattr(found, "errno", None) in _NO_SPACE_ERRNOS:
            return NO_SPACE
        if isinstance(found, sqlite3.Error):
            code = (getattr(found, "sqlite_errorcode", 0) or 0) & 0xFF
            if code == _SQLITE_FULL:
                return NO_SPACE
            if code in _SQLITE_UNAVAILABLE:
                return DATABASE
        if isinstance(found, sa_exc.DBAPIError):
            sqlstate = getattr(found.orig, "sqlstate", None) or ""
            if sqlstate == _PG_DISK_FULL:
                return NO_SPACE
            if sqlstate.startswith(_PG_CONNECTION_CLASS) or sqlstate in _PG_AWAY:
                return DATABASE
            if isinstance(found.orig, sqlite3.Error):
                found = found.orig
                continue
            if found.connection_invalidated or isinstance(found, sa_exc.OperationalError):
                return DATABASE
        found = found.__cause__
    return None
