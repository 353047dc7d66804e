"""A dry run writes nothing to the state DB, ever: not through the scheduled jobs of
``run --dry-run`` (poll and the hourly reconcile), not by creating a DB that is not
there, not by migrating one at an older revision. And the state DB a real run creates
is owner-only, whatever the umask."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.cli import main
from daemon.config import load_settings
from daemon.poller import PollResult
from daemon.service import Service
from daemon.simulators.harness import SimPair
from daemon.store import _alembic_config, current_revision, head_revision, make_engine

pytestmark = pytest.mark.e2e

NET = "Network Operations"
ENV_FILE = ["--env-file", os.devnull]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
def env(sims: SimPair, db: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    values = sims.daemon_env(db)
    values["XMATTERS_RATE_LIMIT"] = "1000"
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    yield values


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def beside(db: Path) -> list[str]:
    """The DB's files: the DB itself and any -wal/-shm/-journal beside it."""
    return sorted(p.name for p in db.parent.iterdir() if p.name.startswith(db.name))


def test_run_dry_run_with_its_reconcile_writes_nothing_and_pages_nobody_later(
    sims: SimPair, env: dict[str, str], db: Path
) -> None:
    """`run --dry-run` on a new install: its scheduled polls and its reconcile read
    Ivanti and write nothing, so the first real start still takes its baseline and
    pages nobody for what was already open."""
    open_critical = [
        sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)["RecId"] for _ in range(2)
    ]
    settings_env = {
        **env,
        "IXM_POLL_INTERVAL": "1",
        "IXM_RECONCILE_INTERVAL": "1",
        "IXM_DELIVERY_INTERVAL": "0.2",
    }
    svc = Service(load_settings(settings_env, env_file=os.devnull), dry_run=True)
    reconciled: list[PollResult] = []
    real_reconcile = svc.reconcile_job

    def counting() -> PollResult:
        result = real_reconcile()
        reconciled.append(result)
        return result

    svc.reconcile_job = counting  # type: ignore[method-assign]
    stop = threading.Event()
    thread = threading.Thread(target=svc.run, args=(stop,), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while len(reconciled) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=20)
        svc.close()
    assert len(reconciled) >= 2
    assert all(r.rows_read == len(open_critical) for r in reconciled)  # it read them
    assert sims.xmatters.triggers() == []
    assert not db.exists() and beside(db) == []
    # The first real start: the baseline, nobody paged.
    assert main([*ENV_FILE, "once"]) == 0
    sims.clock.advance(30)
    assert main([*ENV_FILE, "once"]) == 0
    assert sims.xmatters.triggers() == []


def test_once_dry_run_creates_no_state_db(
    sims: SimPair, env: dict[str, str], db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)
    assert main([*ENV_FILE, "once", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"no state DB at {db} yet" in out and "the file is not created" in out
    assert "baseline read 1 row in 1 request" in out
    assert not db.exists() and beside(db) == []
    assert sims.xmatters.triggers() == []


def test_once_dry_run_does_not_migrate_an_old_state_db(
    sims: SimPair, env: dict[str, str], db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A state DB at an older revision is read through a migrated private copy; the
    file keeps its revision and its bytes."""
    from alembic import command

    engine = make_engine(env["IXM_STATE_DB"])
    cfg = _alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    engine.dispose()
    assert head_revision() != "0001"
    before = digest(db)
    assert main([*ENV_FILE, "once", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "it is at revision 0001" in out and "the file is not" in out
    engine = make_engine(env["IXM_STATE_DB"])
    try:
        assert current_revision(engine) == "0001"
    finally:
        engine.dispose()
    assert digest(db) == before


def test_once_dry_run_leaves_an_existing_state_db_as_it_was(
    sims: SimPair, env: dict[str, str], db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*ENV_FILE, "once"]) == 0  # the baseline
    sims.clock.advance(30)
    inc = sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)
    before, files = digest(db), beside(db)
    capsys.readouterr()
    assert main([*ENV_FILE, "once", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"reading a private copy of {db}" in out
    assert "would send page" in out and inc["RecId"] in out
    assert digest(db) == before and beside(db) == files  # no -shm left beside it either
    assert sims.xmatters.triggers() == []
    assert main([*ENV_FILE, "once"]) == 0  # the real run still sees the change
    sims.settle()
    assert len(sims.xmatters.live_events(inc["RecId"])) == 1


def test_state_db_is_created_owner_only_whatever_the_umask(
    sims: SimPair, env: dict[str, str], db: Path
) -> None:
    old = os.umask(0o022)
    try:
        assert main([*ENV_FILE, "once"]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
