"""The database: schema, engine, and what every reader of its rows needs."""

from __future__ import annotations

import datetime as dt
from enum import IntEnum
from typing import Any

from sqlalchemy import Connection, func, select


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


class Turn(IntEnum):
    """What kepmta does one transaction at a time across every process on one database: each a key
    of a PostgreSQL advisory lock (any 64-bit number; these spell "kep" and a counter)."""

    MIGRATIONS = 0x6B6570_0001
    LEDGER = 0x6B6570_0002


def take_turn(conn: Connection, turn: Turn) -> None:
    """Wait until no other transaction holds `turn`, and hold it until this one ends.

    On PostgreSQL a transaction-scoped advisory lock, so processes on other machines wait too. On
    SQLite it does nothing: there one server process owns the file, whose writing transactions
    already run one at a time.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(int(turn))))
