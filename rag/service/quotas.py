"""Request rate per API key: a token bucket per key, in this process.

Each key may make ``rate_per_minute`` requests a minute, in bursts of up to that many; past it a
request is refused with ``429 quota_exceeded`` and a ``Retry-After`` of the seconds until the
next one is allowed. The buckets live in the replica: with N replicas behind a load balancer a
key gets up to N times the rate (a shared budget needs the registry, see docs/security.md).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from rag.core.errors import QuotaExceeded

MAX_KEYS = 10_000


class RateLimiter:
    def __init__(self, rate_per_minute: int, *, clock: Callable[[], float] = time.monotonic):
        self.rate = rate_per_minute / 60.0
        self.burst = float(rate_per_minute)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, when)

    @property
    def enabled(self) -> bool:
        return self.burst > 0

    def charge(self, key_id: str, name: str) -> None:
        """Take one request from the key's bucket, or raise ``QuotaExceeded``."""
        if not self.enabled:
            return
        now = self._clock()
        tokens, when = self._buckets.get(key_id, (self.burst, now))
        tokens = min(self.burst, tokens + (now - when) * self.rate)
        if tokens < 1.0:
            wait = (1.0 - tokens) / self.rate
            self._buckets[key_id] = (tokens, now)
            raise QuotaExceeded(
                f"key {name!r} is over its rate of {round(self.burst)} requests a minute",
                retry_after=max(1.0, math.ceil(wait)),
                quota="requests_per_minute",
            )
        if len(self._buckets) >= MAX_KEYS and key_id not in self._buckets:
            self._buckets.clear()
        self._buckets[key_id] = (tokens - 1.0, now)
