"""Failed logins slow the address that makes them, and never lock an account's holder out.

Failures are counted over a sliding window per (account, client address) pair, per client address
and per account. A pair past its limit waits before its next try is checked, first_delay and then
twice as long after every further failure; so does an address past its own limit, whatever
accounts it tries (password spraying). Failures on an account from *other* addresses only add a
short, fixed wait: the holder, logging in from a clean address, is slowed but never refused, so a
stranger who knows the address cannot lock the account (an account lock-out is itself a denial of
service; Dovecot's auth penalty and OWASP's Authentication Cheat Sheet slow instead, by address).

Waits are asyncio sleeps, so the event loop serves everyone else meanwhile. A wait longer than
max_delay is not slept: the try is answered "try later" at once (SMTP 454 4.7.0, IMAP NO
[UNAVAILABLE]), and an address past its limits may have only waiting_per_address tries asleep at
once, so no client can hold many coroutines sleeping, nor any for long.

IPv6 clients are counted by their /64: one host is given a whole /64 (RFC 6177), and counting
single addresses would give an attacker 2^64 fresh ones.

In memory, per process: a restart forgets, which only ever lets a client try again sooner.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kepmta.config import Policy

# Doublings past a limit that are still counted; 2**40 times any delay is far past any max_delay.
_DOUBLINGS = 40


@dataclass(frozen=True)
class Limits:
    per_pair: int = 5  # failures of one account from one address before its tries wait
    per_address: int = 20  # failures from one address, any accounts, before its tries wait
    per_account: int = 5  # failures on an account from other addresses before logins to it wait
    window_seconds: float = 900
    first_delay: float = 1  # the first wait past a pair's or an address's limit; doubles after
    account_delay: float = 1  # the fixed wait of a clean address logging in to a targeted account
    max_delay: float = 30  # a try that would wait longer is answered "try later" at once
    waiting_per_address: int = 10  # tries from one address past its limits asleep at once

    @classmethod
    def from_policy(cls, policy: Policy) -> Limits:
        return cls(
            per_pair=policy.auth_failures_per_pair,
            per_address=policy.auth_failures_per_address,
            per_account=policy.auth_failures_per_account,
            window_seconds=policy.auth_window_seconds,
            first_delay=policy.auth_first_delay,
            account_delay=policy.auth_account_delay,
            max_delay=policy.auth_max_delay,
            waiting_per_address=policy.auth_waiting_per_address,
        )


@dataclass(frozen=True)
class Verdict:
    """What the failures so far ask of the next try: wait `delay` seconds, or come back later."""

    delay: float
    try_later: bool = False
    suspect: bool = False  # the address itself is past a limit (pair or address), not only the account


def client_key(peer_ip: str) -> str:
    """The address failures are counted for: IPv4 as is, IPv6 by its /64."""
    try:
        ip = ipaddress.ip_address(peer_ip)
    except ValueError:
        return peer_ip
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class FailureLimiter:
    def __init__(
        self, limits: Limits | Callable[[], Limits] | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        # A function is asked at each use: the limits of the policy in force (kepmta.live).
        self._limits = limits or Limits()
        self._clock = clock
        self._failures: dict[tuple[str, ...], deque[float]] = {}
        self._waiting: dict[str, int] = {}
        self._swept = clock()

    @property
    def limits(self) -> Limits:
        return self._limits() if callable(self._limits) else self._limits

    def _count(self, key: tuple[str, ...], now: float) -> int:
        times = self._failures.get(key)
        if times is None:
            return 0
        while times and now - times[0] > self.limits.window_seconds:
            times.popleft()
        if not times:
            del self._failures[key]
        return len(times)

    def _growing(self, failures: int, limit: int) -> float:
        if failures < limit:
            return 0.0
        return float(self.limits.first_delay * 2 ** min(failures - limit, _DOUBLINGS))

    def verdict(self, account: str, peer_ip: str) -> Verdict:
        now = self._clock()
        address = client_key(peer_ip)
        pair = self._count(("pair", account, address), now)
        own = self._count(("address", address), now) if address else 0
        others = self._count(("account", account), now) - pair
        suspect = max(self._growing(pair, self.limits.per_pair), self._growing(own, self.limits.per_address))
        if suspect > self.limits.max_delay:
            return Verdict(suspect, try_later=True, suspect=True)
        if suspect > 0:
            return Verdict(max(suspect, self._account_wait(others)), suspect=True)
        return Verdict(self._account_wait(others))

    def _account_wait(self, others: int) -> float:
        return self.limits.account_delay if others >= self.limits.per_account else 0.0

    async def wait(self, account: str, peer_ip: str) -> bool:
        """Sleep as long as the failures so far ask; False: the try is to be refused ("try later")
        without checking the password."""
        verdict = self.verdict(account, peer_ip)
        if verdict.try_later:
            return False
        if verdict.delay <= 0:
            return True
        if not verdict.suspect:
            # A clean address is slowed only by the account's fixed delay, and never refused.
            await asyncio.sleep(verdict.delay)
            return True
        address = client_key(peer_ip)
        if self._waiting.get(address, 0) >= self.limits.waiting_per_address:
            return False
        self._waiting[address] = self._waiting.get(address, 0) + 1
        try:
            await asyncio.sleep(verdict.delay)
        finally:
            self._waiting[address] -= 1
            if not self._waiting[address]:
                del self._waiting[address]
        return True

    def failed(self, account: str, peer_ip: str) -> None:
        now = self._clock()
        address = client_key(peer_ip)
        limits = self.limits
        # Counts past a limit only matter up to the doubling that passes max_delay, so each
        # history is bounded whatever a client sends.
        self._add(("pair", account, address), now, limits.per_pair + _DOUBLINGS)
        if address:
            self._add(("address", address), now, limits.per_address + _DOUBLINGS)
        self._add(("account", account), now, limits.per_account + limits.per_pair + _DOUBLINGS)
        if now - self._swept > limits.window_seconds:
            self._sweep(now)

    def _add(self, key: tuple[str, ...], now: float, bound: int) -> None:
        times = self._failures.get(key)
        if times is None:
            times = self._failures[key] = deque(maxlen=bound)
        times.append(now)

    def _sweep(self, now: float) -> None:
        """Forget keys with no failure in the window, once a window, so memory follows the window."""
        window = self.limits.window_seconds
        for key in [k for k, times in self._failures.items() if now - times[-1] > window]:
            del self._failures[key]
        self._swept = now

    def succeeded(self, account: str, peer_ip: str) -> None:
        """The right password from this address: its own tries for this account start afresh.

        The address's and the account's counts stay: an attacker who holds one account must not
        clear its failures on others by logging in to it, nor the holder those of a stranger."""
        self._failures.pop(("pair", account, client_key(peer_ip)), None)
