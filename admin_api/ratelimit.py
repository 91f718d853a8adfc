"""Token buckets per key (a user, a client address): `429` with `Retry-After` when one runs dry.

In memory, per API process: with several API processes behind a balancer each enforces its own share,
which bounds a client to (processes x limit); the audit trail and the lockout are in the database.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

_MAX_KEYS = 10_000


class RateLimiter:
    def __init__(self, *, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(max(1, per_minute))
        self.rate = self.capacity / 60.0
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """Spend one token for `key`: 0 when allowed, else the seconds until one is available."""
        now = self._clock()
        with self._lock:
            tokens, stamp = self._buckets.pop(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - stamp) * self.rate)
            if tokens >= 1:
                self._buckets[key] = (tokens - 1, now)
                wait = 0.0
            else:
                self._buckets[key] = (tokens, now)
                wait = (1 - tokens) / self.rate
            while len(self._buckets) > _MAX_KEYS:  # the least recently seen go first
                self._buckets.popitem(last=False)
        return wait


def retry_after_header(wait_seconds: float) -> str:
    return str(max(1, math.ceil(wait_seconds)))
