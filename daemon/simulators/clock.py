"""A controllable clock shared by both simulators.

Tests freeze it and move it by hand (several edits inside one second are then
possible); the standalone ``simulate`` command and the demo let it follow real
time, still allowing jumps forward and back.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta


class SimClock:
    """Time as the simulated services see it (always timezone-aware UTC)."""

    def __init__(self, start: datetime | None = None, *, frozen: bool = True) -> None:
        if start is None:
            start = datetime.now(UTC).replace(microsecond=0)
        if start.tzinfo is None:
            raise ValueError("SimClock start must be timezone-aware")
        self._lock = threading.Lock()
        self._base = start.astimezone(UTC)
        self._frozen = frozen
        self._mono0 = time.monotonic()

    @property
    def frozen(self) -> bool:
        return self._frozen

    def now(self) -> datetime:
        with self._lock:
            if self._frozen:
                return self._base
            return self._base + timedelta(seconds=time.monotonic() - self._mono0)

    def advance(self, seconds: float) -> datetime:
        """Move the clock by ``seconds`` (negative moves it back)."""
        with self._lock:
            self._base += timedelta(seconds=seconds)
            return (
                self._base
                if self._frozen
                else self._base + timedelta(seconds=time.monotonic() - self._mono0)
            )

    def set(self, when: datetime) -> None:
        if when.tzinfo is None:
            raise ValueError("SimClock.set needs a timezone-aware datetime")
        with self._lock:
            self._base = when.astimezone(UTC)
            self._mono0 = time.monotonic()

    def freeze(self, frozen: bool = True) -> None:
        """Stop (or restart) the clock following real time, keeping the current reading."""
        current = self.now()
        with self._lock:
            self._base = current
            self._mono0 = time.monotonic()
            self._frozen = frozen
