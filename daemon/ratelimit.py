"""A thread-safe token bucket that keeps the daemon under xMatters' request limits.

xMatters rejects (not queues) requests over the plan's per-minute limit with 429, and
its official Go client limits itself to 4 requests/s; the daemon does the same before
every ``/api/xm/1`` call so a burst of write-back polling cannot starve event triggers.

Callers *reserve* a token under the lock and sleep outside it: concurrent threads queue
up in arrival order, each waiting exactly as long as its reservation requires, and the
lock is never held while sleeping.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable


class RateLimiter:
    """``rate_per_s`` tokens per second, at most ``burst`` saved up; rate <= 0 disables it."""

    def __init__(
        self,
        rate_per_s: float,
        burst: int | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not math.isfinite(rate_per_s):
            raise ValueError(f"rate_per_s must be a finite number, got {rate_per_s!r}")
        self.rate = float(rate_per_s)
        self.burst = max(1, int(burst if burst is not None else math.ceil(max(rate_per_s, 1.0))))
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = float(self.burst)
        self._updated = clock()
        self.waited = 0.0  # total seconds callers were held back, for metrics

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def _reserve(self) -> float:
        """Take one token (possibly going into debt) and return how long to wait for it."""
        with self._lock:
            now = self._clock()
            elapsed = max(0.0, now - self._updated)
            self._updated = now
            self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)
            self._tokens -= 1.0
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
            self.waited += wait
            return wait

    def acquire(self) -> float:
        """Block until a request may be sent; returns the seconds waited (0.0 if none)."""
        if not self.enabled:
            return 0.0
        wait = self._reserve()
        if wait > 0:
            self._sleep(wait)
        return wait
