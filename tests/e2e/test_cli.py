"""The commands people run: demo, once (and --dry-run), config errors, --help."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.cli import main
from daemon.simulators.harness import SimPair

pytestmark = pytest.mark.e2e

EIGHT = [
    "New Incident",
    "Reassigned",
    "Reopened",
    "Priority Upgrade",
    "Priority Downgrade",
    "Resolved",
    "Closed",
    "Canceled",
]


def test_demo_walks_all_eight_use_cases_and_writes_back(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    db = tmp_path / "demo.db"
    assert main(["demo", "--keep-db", str(db)]) == 0
    out = capsys.readouterr().out
    for kind in EIGHT:
        assert f"daemon    {kind}: INC" in out
    assert "responded [ Assign to me ]" in out
    assert "nothing lost, nothing doubled" in out
    assert db.exists()


def test_demo_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {line["who"] for line in lines} == {"ivanti", "daemon", "xmatters", "demo"}


@pytest.fixture
def env(sims: SimPair, state_db_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = sims.daemon_env(state_db_url)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


def test_once_dry_run_then_once(
    sims: SimPair, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--env-file", "/dev/null", "once"]) == 0  # the baseline
    sims.clock.advance(30)
    inc = sims.ivanti.create_incident(Priority="1", OwnerTeam="Network Operations")
    capsys.readouterr()
    assert main(["--env-file", "/dev/null", "once", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run (nothing sent, nothing written)" in out
    assert "would send page" in out and inc["RecId"] in out
    assert sims.xmatters.triggers() == []
    assert main(["--env-file", "/dev/null", "once", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    # delivered, or accepted with its event still to appear (an asynchronous flow)
    assert report["ok"] is True and report["delivered"] + report["awaiting_event"] == 1
    assert [t["kind"] for t in report["transitions"]] == ["New Incident"]
    sims.settle()
    assert len(sims.xmatters.live_events(inc["RecId"])) == 1


def test_once_exits_non_zero_when_the_cycle_failed(
    sims: SimPair, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    sims.ivanti.faults.inject("status", "/incidents", status=503)
    assert main(["--env-file", "/dev/null", "once"]) == 1
    assert "FAILED" in capsys.readouterr().err


def test_bad_setting_is_one_line_and_exit_78(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IXM_POLL_INTERVAL", "often")
    assert main(["--env-file", "/dev/null", "once"]) == 78
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "IXM_POLL_INTERVAL" in err[0]


def test_python_dash_m_daemon_help_teaches() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "daemon", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("run", "once", "demo", "simulate", "check", "explain", "status"):
        assert command in out
    assert "ivanti-xmatters demo" in out  # first steps
