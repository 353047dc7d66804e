"""End-to-end fixtures shared by the files that run the daemon as real processes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from daemon.simulators.clock import SimClock
from daemon.simulators.harness import SimPair


@pytest.fixture
def live_sims(sim_profile: str) -> Iterator[SimPair]:
    """Both simulators on a clock that follows real time (the daemon runs elsewhere)."""
    with SimPair(clock=SimClock(frozen=False), profile=sim_profile) as pair:
        yield pair
