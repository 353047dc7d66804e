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


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state DB with history: the demo's."""
    db = tmp_path_factory.mktemp("demo") / "demo.db"
    assert cli("demo", "--keep-db", str(db)).returncode == 0
    return db


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


# --------------------------------------------------------------------------- no tracebacks

TARGETS = {
    "IVANTI_BASE_URL": "http://127.0.0.1:9",
    "IVANTI_API_KEY": "k" * 32,
    "XMATTERS_TRIGGER_URL": "http://127.0.0.1:9/api/integration/1/functions/x/triggers",
}


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # (psycopg 3 is the supported driver; psycopg2 is not installed with the extra)
        ("postgresql+psycopg2://ixm:pw@127.0.0.1:9/ixm", "pip install 'psycopg2-binary'"),
        ("mysql://ixm@db.example.com/ixm", "pip install 'mysqlclient'"),
        ("sqlite:////nonexistent/dir/state.db", "/nonexistent/dir/state.db cannot be opened"),
    ],
)
@pytest.mark.parametrize("command", [["once"], ["status"], ["db", "upgrade"]])
def test_a_state_db_that_cannot_work_is_one_line_and_78(
    url: str, expected: str, command: list[str]
) -> None:
    if url.startswith("sqlite") and command == ["status"]:
        expected = "no state DB at /nonexistent/dir/state.db"  # status never creates one
    result = cli("--env-file", "/dev/null", *command, env=clean_env(**TARGETS, IXM_STATE_DB=url))
    line = one_line(result)
    assert expected in line
    assert result.returncode == (1 if "no state DB" in expected else 78)


def test_an_unreachable_database_server_is_one_line_and_69() -> None:
    from sqlalchemy.exc import OperationalError

    from daemon import cli as cli_module

    exc = OperationalError("connect", {}, Exception("connection refused\nis the server up?"))
    message, code = cli_module._outage(exc) or ("", 0)
    assert code == 69 and "connection refused is the server up?" in message


def test_busy_metrics_port_is_a_configuration_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        env = clean_env(**TARGETS, IXM_STATE_DB=str(tmp_path / "s.db"), IXM_METRICS_PORT=str(port))
        result = cli("--env-file", "/dev/null", "run", env=env)
    assert result.returncode == 78
    line = one_line(result)
    assert f"IXM_METRICS_PORT={port} cannot be served on 127.0.0.1:{port}" in line
    assert "another process already listens there" in line
    assert "Traceback" not in result.stderr + result.stdout


def test_error_line_has_the_journal_error_priority(tmp_path: Path) -> None:
    err_path = tmp_path / "stderr"
    with err_path.open("w") as err:
        st = os.fstat(err.fileno())
        env = clean_env(JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}", IXM_POLL_INTERVAL="often")
        rc = subprocess.run(
            [str(EXE), "--env-file", "/dev/null", "once"], env=env, stderr=err, timeout=60
        ).returncode
    assert rc == 78
    assert err_path.read_text().startswith("<3>configuration error: ")


def test_ctrl_c_is_130_without_a_traceback(tmp_path: Path) -> None:
    import signal
    import socket

    with socket.socket() as blackhole:  # accepts connections, never answers
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(16)
        url = f"http://127.0.0.1:{blackhole.getsockname()[1]}"
        env = clean_env(**{**TARGETS, "IVANTI_BASE_URL": url}, IXM_STATE_DB=str(tmp_path / "s.db"))
        proc = subprocess.Popen(
            [str(EXE), "--env-file", "/dev/null", "once"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # a shell without job control starts background jobs with SIGINT ignored
            # (.ci/two-legs runs the legs with `&`), and the child would inherit that:
            # give it what a terminal gives, the default handler
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        # interrupt once it waits on Ivanti (start-up and migrations are done), however
        # long a loaded machine takes to get there
        blackhole.settimeout(120)
        conn, _ = blackhole.accept()
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=90)  # generous: CI runs two test sessions at once
        conn.close()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "interrupted"


@pytest.mark.parametrize(
    "command", [["--help"], ["status"], ["explain", "10002"], ["incidents", "--json"]]
)
def test_a_closed_pipe_is_not_an_error(command: list[str], demo_db: Path) -> None:
    """`ivanti-xmatters status | head -1`: the reader went away; exit quietly."""
    db = demo_db
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [str(EXE), "--env-file", "/dev/null", *command],
            env=clean_env(IXM_STATE_DB=str(db)),
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert result.returncode == 0 and result.stderr == ""


# --------------------------------------------------------------------------- configuration


def test_every_configuration_problem_in_one_run_and_unknown_names_warned() -> None:
    env = clean_env(
        IVANTI_API_KEY="k" * 32,
        IXM_POLL_INTERVALL="5",
        IXM_CRITICAL_PRIORITIES="x",
        IXM_DEADMAN="abc",
    )
    result = cli("--env-file", "/dev/null", "once", env=env)
    assert result.returncode == 78 and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert [line.split(" ", 3)[2] for line in lines[:-1]] == [
        "IVANTI_BASE_URL",
        "XMATTERS_TRIGGER_URL",
        "IXM_CRITICAL_PRIORITIES",
        "IXM_DEADMAN='abc'",
    ]
    assert all(line.startswith("configuration error: ") for line in lines[:-1])
    assert lines[-1] == (
        "warning: IXM_POLL_INTERVALL is not a setting and is ignored; "
        "did you mean IXM_POLL_INTERVAL?"
    )


def test_unknown_setting_warned_on_stderr_when_the_rest_is_fine(demo_db: Path) -> None:
    env = clean_env(IXM_STATE_DB=str(demo_db), IXM_LOG_LEVL="DEBUG")
    result = cli("status", "--json", "--env-file", "/dev/null", env=env)
    assert result.returncode == 0, result.stderr
    json.loads(result.stdout)
    assert result.stderr.strip() == (
        "warning: IXM_LOG_LEVL is not a setting and is ignored; did you mean IXM_LOG_LEVEL?"
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--env-file", "ENV", "explain", "10002"],
        ["explain", "10002", "--env-file", "ENV"],
        ["explain", "--env-file", "ENV", "10002"],
    ],
)
def test_env_file_before_or_after_the_command(
    args: list[str], demo_db: Path, tmp_path: Path
) -> None:
    env_file = tmp_path / "ixm.env"
    env_file.write_text(f"IXM_STATE_DB={demo_db}\n")
    result = cli(*[str(env_file) if a == "ENV" else a for a in args], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Incident 10002")


def test_env_file_after_a_nested_command(tmp_path: Path) -> None:
    result = cli("db", "current", "--env-file", str(tmp_path / "missing.env"))
    assert result.returncode == 78
    assert "the settings file" in one_line(result) and "missing.env does not exist" in result.stderr


# --------------------------------------------------------------------------- output people read


def test_once_names_incidents_by_number_and_counts_in_good_english(
    sims: SimPair, sim_env: dict[str, str]
) -> None:
    assert cli("--env-file", "/dev/null", "once", env=sim_env).returncode == 0  # baseline
    sims.clock.advance(30)
    inc = sims.ivanti.create_incident(Priority="1", OwnerTeam="Network Operations")
    number = inc["IncidentNumber"]
    dry = cli("--env-file", "/dev/null", "once", "--dry-run", env=sim_env)
    assert dry.returncode == 0, dry.stderr
    lines = [ln for ln in dry.stdout.splitlines() if not ln.startswith("state DB: ")]
    head, transition, action = lines[:3]
    assert "read 1 row in 1 request, 1 change, 1 transition" in head
    assert transition.split()[:4] == ["transition", "New", "Incident", "INC"]
    assert f"INC {number} " in transition and inc["RecId"] not in transition
    assert action.startswith(f"  would send page      INC {number}  ")
    report = json.loads(cli("--env-file", "/dev/null", "once", "--json", env=sim_env).stdout)
    assert report["transitions"][0]["incident"] == number
    assert report["actions"][0]["incident"] == number
    assert report["actions"][0]["rec_id"] == inc["RecId"]
