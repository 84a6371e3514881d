"""Spool files on storage that several nodes may share: whose each one is, and which are left over.

A message being received is spooled in `incoming/` (or `relay-incoming/`), then becomes its
original in `originals/`, which its message row names once its acceptance commits. A node killed
on the way leaves files no message will ever name. Each file's name starts with the name of the
node that wrote it (`<node>+…`), so a node starting again removes its own leftovers at once: no
live process can still be writing them. Another node's file may be a message that node is receiving
right now, so it is removed only once nobody has written to it for `STALE`: by then the client has
given up on its answer (RFC 5321 §4.5.3.2: at most 3 minutes between data blocks, 10 for the reply
to the end of the data). On SQLite only one server runs on the data folder, and every leftover is
its own.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import time
from collections.abc import Iterator, Set
from pathlib import Path

log = logging.getLogger(__name__)

STALE = dt.timedelta(hours=1)
_MARK = "+"  # never in a node name (kepmta.config)


def file_name(node: str, what: str = "") -> str:
    """A new spool file name of `node`, with `what` (e.g. the message's token) in it."""
    return f"{node}{_MARK}{what or secrets.token_hex(12)}.eml"


def leftovers(folder: Path, node: str, *, alone: bool, named: Set[str] = frozenset()) -> Iterator[Path]:
    """The files in `folder` that no live node can still be writing or committing, except `named`
    (those a committed row names). `alone`: this node is the only server on the data folder."""
    oldest = time.time() - STALE.total_seconds()
    for path in folder.iterdir():
        if path.name in named:
            continue
        if alone or path.name.startswith(node + _MARK):
            yield path
            continue
        try:
            if path.stat().st_mtime < oldest:
                yield path
        except FileNotFoundError:
            continue  # its node has just moved or removed it
