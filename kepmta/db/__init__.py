"""The database: schema, engine, and what every reader of its rows needs."""

from __future__ import annotations

import datetime as dt
from typing import Any


def utc(value: dt.datetime) -> dt.datetime:
    """A stored time as aware UTC: SQLite hands back naive datetimes, and everything kepmta stores
    is UTC; PostgreSQL hands back aware ones in the session's zone."""
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    """Every SQLite connection of kepmta, async or not: WAL, durable commits, foreign keys."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # A commit returns only once it is on disk: a 250 promises exactly that.
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()
