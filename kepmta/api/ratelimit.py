"""Token buckets: each key (an API token, or a client address on the verification page) may make
`burst` requests at once, and its allowance comes back at `per_minute`."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

# Full buckets are forgotten when this many keys are held, so a stream of new keys costs bounded
# memory; a full bucket and a forgotten one answer alike.
_SWEEP_AT = 10_000


@dataclass
class _Bucket:
    tokens: float
    at: float


class Buckets:
    def __init__(self, burst: int, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = float(burst)
        self.rate = per_minute / 60.0  # per second
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def _level(self, bucket: _Bucket, now: float) -> float:
        return min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)

    def take(self, key: str) -> float | None:
        """None if `key` may make a request now (and it is counted); else the seconds until it may."""
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= _SWEEP_AT:
                self._sweep(now)
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        bucket.tokens, bucket.at = self._level(bucket, now), now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return (1.0 - bucket.tokens) / self.rate

    def _sweep(self, now: float) -> None:
        self._buckets = {k: b for k, b in self._buckets.items() if self._level(b, now) < self.burst}
