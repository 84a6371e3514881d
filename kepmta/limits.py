"""What one client may hold at once: connections from its address, logged-in sessions of its
account, the size of what one IMAP command keeps in memory, and quota for messages still arriving.

Counts are in memory, per process, and fall when what they count ends, however it ends: the
holder gives its place back in a `finally`, and giving it back twice is harmless.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from kepmta.imap.protocol import Limits


@dataclass(frozen=True)
class ImapLimits:
    """[imap] of the policy file, but the folders: what one IMAP client may hold."""

    # Connections at once from one client address (IPv6 by its /64), IMAP and IMAPS together.
    connections_per_address: int = 100
    # Logged-in sessions of one account at once, from anywhere.
    sessions_per_account: int = 20
    # Octets of one command line, CRLF included.
    line: int = 64 * 1024
    # Before login a stranger needs literals only for a user name and a password.
    preauth_literal: int = 4 * 1024
    preauth_command: int = 16 * 1024
    # After it, every literal but APPEND's message (written to a file) is a name, a search string
    # or the like, and stays in memory.
    literal: int = 64 * 1024
    command: int = 1024 * 1024
    # The largest APPEND message: [size] local_max, the largest message a user can be sent.
    message: int = 100 * 1024 * 1024

    @property
    def before_login(self) -> Limits:
        # Nothing is written to a file before login: no literal may be larger than one in memory.
        return Limits(
            line=self.line,
            literal=self.preauth_literal,
            command=self.preauth_command,
            message=self.preauth_literal,
        )

    @property
    def after_login(self) -> Limits:
        return Limits(line=self.line, literal=self.literal, command=self.command, message=self.message)


class Slots:
    """At most `limit` places held at once per key (a client address, an account). A function for
    `limit` is asked at each take: a reloaded policy applies to the next place taken."""

    def __init__(self, limit: int | Callable[[], int]) -> None:
        self._limit = limit
        self._held: dict[str, int] = {}

    @property
    def limit(self) -> int:
        return self._limit() if callable(self._limit) else self._limit

    def take(self, key: str) -> Slot | None:
        """A place for `key`, or None when its `limit` places are all held."""
        held = self._held.get(key, 0)
        if held >= self.limit:
            return None
        self._held[key] = held + 1
        return Slot(self, key)

    def held(self, key: str) -> int:
        return self._held.get(key, 0)

    def _give_back(self, key: str) -> None:
        held = self._held[key] - 1
        if held:
            self._held[key] = held
        else:
            del self._held[key]


class Slot:
    """One place held in `Slots`, until `release()`."""

    def __init__(self, slots: Slots, key: str) -> None:
        self.key = key
        self._slots: Slots | None = slots

    def release(self) -> None:
        if self._slots is not None:
            self._slots._give_back(self.key)
            self._slots = None


class _Watch:
    """The reservations of one account seen while its usage is being read."""

    def __init__(self, held: dict[int, int]) -> None:
        self.seen = dict(held)


class QuotaReservations:
    """Octets of messages still arriving (APPEND literals) counted against their account's quota
    as if already stored, so that uploads started together cannot pass the quota together: each
    is checked against what is stored and what the others have announced."""

    def __init__(self) -> None:
        self._held: dict[str, dict[int, int]] = {}
        self._watches: dict[str, list[_Watch]] = {}
        self._ids = itertools.count()

    async def usage(
        self,
        account: str,
        read: Callable[[], Awaitable[tuple[int, int]]],
        exclude: Reservation | None = None,
    ) -> tuple[int, int]:
        """(octets stored and reserved, quota) of `account`: `read()`'s figures plus every
        reservation held at any moment while it ran, but `exclude` (the caller's own).

        A reservation given up while the stored octets were being counted may or may not be in
        the count, its message having been stored meanwhile; it counts again, so the figure can be
        too high for a moment but never too low.
        """
        watch = _Watch(self._held.get(account, {}))
        self._watches.setdefault(account, []).append(watch)
        try:
            used, limit = await read()
        finally:
            watches = self._watches[account]
            watches.remove(watch)
            if not watches:
                del self._watches[account]
        skip = exclude.id if exclude is not None else None
        return used + sum(size for rid, size in watch.seen.items() if rid != skip), limit

    def reserve(self, account: str, size: int) -> Reservation:
        """Count `size` octets against `account` until the reservation is released. Check the
        room with `usage` first, with no await between: the event loop makes the two one step."""
        rid = next(self._ids)
        self._held.setdefault(account, {})[rid] = size
        for watch in self._watches.get(account, ()):
            watch.seen[rid] = size
        return Reservation(self, account, rid, size)

    def reserved(self, account: str) -> int:
        return sum(self._held.get(account, {}).values())

    def _release(self, account: str, rid: int) -> None:
        held = self._held[account]
        del held[rid]
        if not held:
            del self._held[account]


class Reservation:
    """Octets reserved for one message until `release()`."""

    def __init__(self, owner: QuotaReservations, account: str, rid: int, size: int) -> None:
        self.account = account
        self.id = rid
        self.size = size
        self._owner: QuotaReservations | None = owner

    def release(self) -> None:
        if self._owner is not None:
            self._owner._release(self.account, self.id)
            self._owner = None
