"""A small in-process token bucket per key (the client's IP address) for the public forms.

Each key has a bucket of ``burst`` tokens that refills at ``rate`` tokens a minute; a request
takes one, and is refused while the bucket is empty (``retry_after`` says for how long). Buckets
that are full again are forgotten, and at most ``max_keys`` are kept (the oldest first go), so
memory stays bounded whatever the number of addresses. The limit is per process: several
``mailcast serve`` processes each keep their own.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable


class RateLimiter:
    def __init__(
        self,
        rate_per_minute: float,
        burst: int,
        *,
        max_keys: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate_per_minute / 60.0  # tokens a second
        self.burst = max(1, burst)
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key: (tokens, at)
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, key: str) -> float:
        """Take a token for ``key``: 0.0 when allowed, else the seconds until one is there."""
        if not self.enabled:
            return 0.0
        now = self.clock()
        with self._lock:
            tokens, at = self._buckets.pop(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate)
            if tokens >= 1.0:
                tokens -= 1.0
                wait = 0.0
            else:
                wait = (1.0 - tokens) / self.rate
            self._buckets[key] = (tokens, now)  # most recently used last
            self._forget(now)
            return wait

    def _forget(self, now: float) -> None:
        buckets = self._buckets
        while len(buckets) > self.max_keys:
            buckets.popitem(last=False)
        # buckets full again (the least recently used first) hold nothing worth keeping
        refill = self.burst / self.rate
        while buckets:
            key, (_tokens, at) = next(iter(buckets.items()))
            if now - at < refill:
                break
            del buckets[key]

    def retry_after(self, wait: float) -> str:
        """A Retry-After header value (whole seconds, at least 1)."""
        return str(max(1, math.ceil(wait)))

    def __len__(self) -> int:
        return len(self._buckets)
