"""A thread-safe token bucket that keeps the daemon inside xMatters' request budget.

xMatters rejects (not queues) requests over the plan's limit with 429. The plan's
limit is the customer's: one tenant's headers allowed 60,000 a minute. So the rate is
a *ceiling* (``XMATTERS_RATE_LIMIT``) that the limiter lowers to what the tenant says
and does:

- ``x-ratelimit-limit`` / ``x-ratelimit-period_in_sec`` (and ``x-ratelimit-used`` or
  ``-remaining``), when the server sends them, cap the rate at ``SHARE`` of the plan's
  rate, leaving the rest to the tenant's other clients and to this daemon's own
  triggers; when the period's budget is nearly used up, at what is left of it;
- a 429 halves the rate; one to a rate-limited (REST) call also holds every caller
  back for its ``Retry-After``, at most ``MAX_HOLD`` seconds (a longer wait is the
  caller's: the outbox and the write-back pass reschedule on their own);
- each answer that is not a 429 then wins back 2% of the rate, up to the cap.

Callers *reserve* a token under the lock and sleep outside it: concurrent threads queue
up in arrival order, each waiting exactly as long as its reservation requires, and the
lock is never held while sleeping.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping

SHARE = 0.5  # of the plan's advertised rate that the daemon allows itself
FLOOR = 0.5  # requests a second the rate never drops below
RECOVERY = 1.02  # after a 429, each answer that is not one wins back this factor
MAX_HOLD = 2.0  # seconds a 429 may hold every caller back


class RateLimiter:
    """``rate_per_s`` tokens per second, at most ``burst`` saved up; rate <= 0 disables it.

    ``rate_per_s`` is the ceiling; ``rate`` is what is allowed now (see the module doc).
    """

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
        self.ceiling = float(rate_per_s)
        self.rate = self.ceiling
        self.cap = self.ceiling  # the ceiling, or less when the server says its budget
        self.burst = max(1, int(burst if burst is not None else math.ceil(max(rate_per_s, 1.0))))
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = float(self.burst)
        self._updated = clock()
        self.waited = 0.0  # total seconds callers were held back, for metrics

    @property
    def enabled(self) -> bool:
        return self.ceiling > 0

    # ----- learning the tenant's budget ------------------------------------------------
    def observe(
        self,
        status: int,
        headers: Mapping[str, str],
        retry_after: float | None,
        *,
        hold: bool = True,
    ) -> None:
        """Learn from one answer of the server (any call, limited or not); ``hold``: a
        429 to this call also holds back the limited callers (not for a trigger's)."""
        if not self.enabled:
            return
        budget = _budget(headers)
        with self._lock:
            if budget is not None:
                self.cap = min(self.ceiling, max(FLOOR, budget))
            if status == 429:
                self.rate = max(FLOOR, min(self.rate, self.cap) / 2)
                if hold:
                    wait = min(MAX_HOLD, retry_after if retry_after is not None else 1.0)
                    # everyone waits: the bucket goes into that much debt
                    self._tokens = min(self._tokens, 0.0) - max(0.0, wait) * self.rate
                    self._updated = self._clock()
            else:
                self.rate = min(self.cap, self.rate * RECOVERY)

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


def _number(headers: Mapping[str, str], name: str) -> float | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _budget(headers: Mapping[str, str]) -> float | None:
    """The requests a second the server's ``x-ratelimit-*`` headers allow the daemon."""
    limit = _number(headers, "x-ratelimit-limit")
    period = _number(headers, "x-ratelimit-period_in_sec") or 60.0
    if not limit or period <= 0:
        return None
    used = _number(headers, "x-ratelimit-used")
    remaining = _number(headers, "x-ratelimit-remaining")
    if remaining is None and used is not None:
        remaining = max(0.0, limit - used)
    share = SHARE * limit / period
    if remaining is not None and remaining < (1 - SHARE) * limit:
        # most of this period's budget is gone: spread what is left over the period
        share = min(share, SHARE * remaining / period)
    return share
