"""Failed-login limits per account and per client address, over a sliding window.

In memory, per process: a restart forgets, which only ever lets a client try again sooner.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    per_account: int = 5
    per_address: int = 20
    window_seconds: float = 900


class FailureLimiter:
    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        while times and now - times[0] > self.limits.window_seconds:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def allowed(self, account: str, peer_ip: str) -> bool:
        now = time.monotonic()
        if len(self._recent("a:" + account, now)) >= self.limits.per_account:
            return False
        return not (peer_ip and len(self._recent("ip:" + peer_ip, now)) >= self.limits.per_address)

    def failed(self, account: str, peer_ip: str) -> None:
        now = time.monotonic()
        self._failures.setdefault("a:" + account, deque()).append(now)
        if peer_ip:
            self._failures.setdefault("ip:" + peer_ip, deque()).append(now)

    def succeeded(self, account: str) -> None:
        self._failures.pop("a:" + account, None)
