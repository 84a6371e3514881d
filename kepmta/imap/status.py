"""A folder's STATUS values (RFC 3501 §6.3.10, RFC 9051 §6.3.11) and the response that carries them:
one reader for the STATUS command, LIST-STATUS and NOTIFY's STATUS of other mailboxes."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kepmta.imap import folders, quota
from kepmta.imap.mailbox import DELETED, SEEN, FolderStore

_VALUES: dict[str, Callable[[FolderStore], int]] = {
    "MESSAGES": lambda s: len(s.messages),
    "RECENT": lambda s: s.recent_count,
    "UIDNEXT": lambda s: s.uidnext,
    "UIDVALIDITY": lambda s: s.uidvalidity,
    "UNSEEN": lambda s: sum(1 for m in s.messages.values() if SEEN not in m.flags),
    # RFC 7162 §3.1.6
    "HIGHESTMODSEQ": lambda s: s.highestmodseq,
    # RFC 8438 §3: octets; RFC 9208 §4.2.2 DELETED, §4.2.3 DELETED-STORAGE in KiB.
    "SIZE": lambda s: sum(m.size for m in s.messages.values()),
    "DELETED": lambda s: sum(1 for m in s.messages.values() if DELETED in m.flags),
    "DELETED-STORAGE": lambda s: quota.kib_used(
        sum(m.size for m in s.messages.values() if DELETED in m.flags)
    ),
}
ITEMS = tuple(_VALUES)


def values(store: FolderStore, wanted: Sequence[str]) -> tuple[tuple[str, int], ...]:
    """The `wanted` items (names from `ITEMS`, as the client ordered them) of `store`."""
    return tuple((item, _VALUES[item](store)) for item in wanted)


def response(name: str, items: Sequence[tuple[str, int]], *, utf8: bool) -> bytes:
    body = " ".join(f"{item} {value}" for item, value in items)
    return b"* STATUS " + folders.name_to_wire(name, utf8=utf8) + f" ({body})".encode()
