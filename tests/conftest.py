"""Shared fixtures: both simulators on loopback, and daemons configured for them."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from daemon.config import load_settings
from daemon.service import Service
from daemon.simulators.clock import SimClock
from daemon.simulators.harness import SimPair

SHARED = Path(__file__).resolve().parents[2] / "shared"
PAYLOADS = SHARED / "reference" / "ivanti-payloads"
START = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true", help="run the long randomized soak")
    parser.addoption("--soak-cycles", type=int, default=2000, help="cycles for --soak")


@pytest.fixture
def clock() -> SimClock:
    return SimClock(START, frozen=True)


@pytest.fixture
def sims(clock: SimClock) -> Iterator[SimPair]:
    with SimPair(clock=clock) as pair:
        yield pair


MakeService = Callable[..., Service]


@pytest.fixture
def make_service(sims: SimPair, tmp_path: Path) -> Iterator[MakeService]:
    """Build a daemon pointed at the simulators; same state DB for every call (restarts)."""
    made: list[Service] = []

    def make(**overrides: str) -> Service:
        opts = {
            k: overrides.pop(k) for k in ("mode", "ivanti_auth", "xmatters_auth") if k in overrides
        }
        env = sims.daemon_env(tmp_path / "state.db", **opts)
        env.setdefault("XMATTERS_RATE_LIMIT", "1000")
        # The journal check stays on (the default); its wait would only slow the tests.
        env.setdefault("IXM_WORKFLOW_WRITEBACK_WAIT", "0")
        env.update(overrides)
        settings = load_settings(env, env_file=os.devnull)
        svc = Service(settings, now=sims.clock.now)
        made.append(svc)
        return svc

    yield make
    for svc in made:
        try:
            svc.close()
        except Exception:
            pass
