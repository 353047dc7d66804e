"""Shared fixtures: both simulators on loopback, and daemons configured for them."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import make_url

from daemon.config import load_settings
from daemon.service import Service
from daemon.simulators.clock import SimClock
from daemon.simulators.harness import SimPair
from tests.pgdatabase import throwaway_database

SHARED = Path(__file__).resolve().parents[2] / "shared"
PAYLOADS = SHARED / "reference" / "ivanti-payloads"
START = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)

# The admin URL of a throwaway PostgreSQL cluster (`./dev test --postgres` starts one and
# sets it): with it, every test that takes ``state_db_url`` runs on both backends.
PG_ADMIN_URL = os.environ.get("IXM_TEST_POSTGRES", "")
BACKENDS = ["sqlite", "postgresql"] if PG_ADMIN_URL else ["sqlite"]
# IXM_TEST_BACKENDS=sqlite or =postgresql runs one backend's leg alone (`./dev test
# --postgres` runs the two legs side by side); the PostgreSQL leg is only the tests that
# use a state DB.
_ONLY = [b for b in os.environ.get("IXM_TEST_BACKENDS", "").split(",") if b.strip()]
if _ONLY:
    BACKENDS = [b for b in BACKENDS if b in _ONLY]

# The simulators' switch profile (daemon.simulators.profiles): `default`, or `strict` for
# the hardest reading of every open question at once (`./dev test --strict`).
# IXM_SIM_PROFILE_POSTGRES, when set, is the profile of the tests on PostgreSQL: CI runs the
# end-to-end suite on SQLite under `default` and on PostgreSQL under `strict`, so each test
# meets both backends and both profiles within the time budget. A test that is about one
# reading pins it with @pytest.mark.sim_profile("default").
SIM_PROFILE = os.environ.get("IXM_SIM_PROFILE", "default")
SIM_PROFILE_POSTGRES = os.environ.get("IXM_SIM_PROFILE_POSTGRES", "") or SIM_PROFILE


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The PostgreSQL leg alone (IXM_TEST_BACKENDS=postgresql): only the tests that use a
    state DB; the SQLite leg runs everything else."""
    if BACKENDS != ["postgresql"]:
        return
    uses_db = {"state_db_url", "pg_state_db_url"}
    keep = [i for i in items if uses_db & set(getattr(i, "fixturenames", ()))]
    dropped = [i for i in items if i not in keep]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true", help="run the long randomized soak")
    parser.addoption("--soak-cycles", type=int, default=2000, help="cycles for --soak")


@pytest.fixture
def clock() -> SimClock:
    return SimClock(START, frozen=True)


@pytest.fixture
def sim_profile(request: pytest.FixtureRequest) -> str:
    """The simulator profile of this test: its sim_profile marker, else the profile of its
    backend (IXM_SIM_PROFILE_POSTGRES on PostgreSQL), else IXM_SIM_PROFILE."""
    marker = request.node.get_closest_marker("sim_profile")
    if marker is not None:
        return str(marker.args[0])
    callspec = getattr(request.node, "callspec", None)
    on_pg = request.node.get_closest_marker("e2e") is not None and (
        "pg_state_db_url" in request.fixturenames
        or (callspec is not None and callspec.params.get("state_db_url") == "postgresql")
    )
    return SIM_PROFILE_POSTGRES if on_pg else SIM_PROFILE


@pytest.fixture
def sims(clock: SimClock, sim_profile: str) -> Iterator[SimPair]:
    with SimPair(clock=clock, profile=sim_profile) as pair:
        yield pair


@pytest.fixture(params=BACKENDS)
def state_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a state DB nobody has used yet: a file in tmp_path on SQLite, a fresh
    database in the throwaway cluster on PostgreSQL (dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
        return
    yield from _fresh_pg_database()


@pytest.fixture
def pg_state_db_url() -> Iterator[str]:
    """A fresh PostgreSQL state DB, for what only PostgreSQL does (replicas, the lease)."""
    if not PG_ADMIN_URL:
        pytest.skip("needs PostgreSQL: ./dev test --postgres")
    if "postgresql" not in BACKENDS:
        pytest.skip("the PostgreSQL leg runs it (IXM_TEST_BACKENDS)")
    yield from _fresh_pg_database()


def _fresh_pg_database() -> Iterator[str]:
    with throwaway_database(PG_ADMIN_URL, "ixm_test") as url:
        yield url


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


MakeService = Callable[..., Service]


@pytest.fixture
def make_service(sims: SimPair, state_db_url: str) -> Iterator[MakeService]:
    """Build a daemon pointed at the simulators; same state DB for every call (restarts)."""
    made: list[Service] = []

    def make(**overrides: str) -> Service:
        opts = {
            k: overrides.pop(k) for k in ("mode", "ivanti_auth", "xmatters_auth") if k in overrides
        }
        env = sims.daemon_env(state_db_url, **opts)
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
