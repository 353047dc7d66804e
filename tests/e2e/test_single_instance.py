"""SQLite: one daemon per state DB. A second ``run`` or ``once`` beside a running daemon
refuses, naming the holder, instead of paging people a second time; the read-only
commands and ``once --dry-run`` still work beside it."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from daemon.lease import EX_TEMPFAIL
from daemon.simulators.harness import SimPair
from tests.e2e.daemons import (
    NET,
    Daemon,
    StateDB,
    daemon_env,
    quiesce,
    run_cli,
    started,
    trigger_log,
    wait_until,
)

pytestmark = pytest.mark.e2e


def test_a_second_daemon_on_one_sqlite_db_refuses_naming_the_holder(
    live_sims: SimPair, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    env = daemon_env(live_sims, url)
    first, db = Daemon(env, tmp_path / "first.log"), StateDB(url)
    try:
        started(first, db)
        assert first.proc is not None
        for argv in (["run"], ["once"]):
            second = run_cli(env, *argv, timeout=30)
            lines = second.stderr.strip().splitlines()
            assert second.returncode == EX_TEMPFAIL, second.stderr
            assert len(lines) == 1, lines
            assert f"host {socket.gethostname()}, pid {first.proc.pid}, since 20" in lines[0]
            assert "another daemon is using the state DB" in lines[0]
        assert run_cli(env, "status").returncode == 0  # read-only commands stay allowed
        assert run_cli(env, "once", "--dry-run").returncode == 0
        rec = live_sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)["RecId"]
        quiesce(first, db, lambda: len(trigger_log(live_sims)) >= 1, "the page")
        assert trigger_log(live_sims) == [(rec, "New Incident", "created")]
        # the holder gone (its lock goes with the process), the next daemon starts at once
        after = run_cli(env, "once")
        assert after.returncode == 0, after.stderr
        assert trigger_log(live_sims) == [(rec, "New Incident", "created")]
    finally:
        first.cleanup()
        db.close()


def test_a_killed_daemon_leaves_no_stale_lock(live_sims: SimPair, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    env = daemon_env(live_sims, url)
    d, db = Daemon(env, tmp_path / "daemon.log"), StateDB(url)
    try:
        started(d, db)
        d.kill9()
        d.start()
        wait_until(
            lambda: d.log().count("daemon running") == 2 or not d.alive(), what="the restart"
        )
        assert d.alive(), d.log()
        assert d.terminate() == 0
    finally:
        d.cleanup()
        db.close()
