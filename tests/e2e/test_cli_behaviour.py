"""The installed ``ivanti-xmatters`` command as operators and systemd run it (a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.simulators.harness import SimPair

pytestmark = pytest.mark.e2e

EXE = Path(sys.executable).parent / "ivanti-xmatters"


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without any daemon setting, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("IXM_", "IVANTI_", "XMATTERS_", "JOURNAL_STREAM", "NOTIFY_SOCKET"))
    }
    env.update(extra)
    return env


def cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(EXE), *args],
        env=clean_env() if env is None else env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def sim_env(sims: SimPair, tmp_path: Path) -> dict[str, str]:
    return clean_env(**sims.daemon_env(tmp_path / "state.db", IXM_LOG_LEVEL="INFO"))


def test_installed_command_exists() -> None:
    assert EXE.is_file(), f"{EXE} missing: install the project into this venv"


@pytest.mark.parametrize("fmt", ["logfmt", "json"])
def test_once_json_prints_json_only_and_logs_to_stderr(
    sims: SimPair, sim_env: dict[str, str], tmp_path: Path, fmt: str
) -> None:
    sim_env["IXM_LOG_FORMAT"] = fmt
    first = cli("--env-file", "/dev/null", "once", "--json", env=sim_env)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["ok"] is True  # the whole stdout is one JSON document
    assert "baseline done" in first.stderr
    if fmt == "json":
        assert all(json.loads(line)["level"] for line in first.stderr.splitlines())
    sims.clock.advance(30)
    sims.ivanti.create_incident(Priority="1", OwnerTeam="Network Operations")
    dry = cli("--env-file", "/dev/null", "once", "--dry-run", "--json", env=sim_env)
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert report["dry_run"] is True and [a["kind"] for a in report["actions"]] == ["page"]
    assert "poll done" in dry.stderr
