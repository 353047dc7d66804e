"""Issue 13: tables sized to the terminal, and the ``status`` lag explained.

The installed command as a subprocess: under a pseudo-terminal of a given width, with
``COLUMNS``, and into a pipe (which keeps every column whole).
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import termios
from pathlib import Path

import pytest

from tests.e2e.test_cli_behaviour import EXE, clean_env, cli

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("demo") / "demo.db"
    assert cli("demo", "--keep-db", str(db)).returncode == 0
    return db


def _env(db: Path, **extra: str) -> dict[str, str]:
    env = clean_env(IXM_STATE_DB=str(db), **extra)
    if "COLUMNS" not in extra:
        env.pop("COLUMNS", None)
    return env


def _on_terminal(args: list[str], env: dict[str, str], columns: int) -> str:
    """Run with stdout on a pseudo-terminal ``columns`` wide; what it printed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    try:
        proc = subprocess.Popen(
            [str(EXE), "--env-file", "/dev/null", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=slave,
            stderr=subprocess.PIPE,
        )
        os.close(slave)
        out = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
    finally:
        os.close(master)
    return out.decode().replace("\r\n", "\n")


@pytest.mark.parametrize("command", [["incidents"], ["status"], ["outbox"]])
def test_tables_fit_a_narrow_terminal_and_pipes_keep_full_width(
    command: list[str], demo_db: Path
) -> None:
    piped = cli("--env-file", "/dev/null", *command, env=_env(demo_db))
    assert piped.returncode == 0, piped.stderr
    table_lines = _table(piped.stdout)
    full = max(len(line) for line in table_lines)
    narrow = min(full - 10, 72)
    shown = _on_terminal(command, _env(demo_db), narrow)
    assert _table(shown), shown
    assert all(len(line) <= narrow for line in _table(shown)), shown
    assert "…" in "\n".join(_table(shown))
    # headers survive whole, in order
    assert _table(shown)[0].split() == table_lines[0].split()
    wide = _table(_on_terminal(command, _env(demo_db), 400))
    assert wide[0] == table_lines[0]  # room enough: nothing more is cut than into a pipe
    assert "\n".join(wide).count("…") == "\n".join(table_lines).count("…")
    by_env = cli("--env-file", "/dev/null", *command, env=_env(demo_db, COLUMNS=str(narrow)))
    assert all(len(line) <= narrow for line in _table(by_env.stdout))


def _table(text: str) -> list[str]:
    """The lines of the (last) table: from its upper-case header line to a blank line."""
    lines = text.splitlines()
    starts = [
        i
        for i, line in enumerate(lines)
        if line.strip() and line.strip().split()[0] in ("ID", "#", "NUMBER", "INCIDENT")
    ]
    if not starts:
        return []
    out = []
    for line in lines[starts[-1] :]:
        if not line.strip():
            break
        out.append(line)
    return out


def data_lag_beyond(env: dict[str, str]) -> float:
    data = json.loads(cli("--env-file", "/dev/null", "status", "--json", env=env).stdout)
    return float(data["lag_beyond_overlap_s"] or 0)


def test_status_explains_the_lag_and_says_what_is_left(demo_db: Path) -> None:
    env = _env(demo_db, IXM_OVERLAP="90")
    text = cli("--env-file", "/dev/null", "status", env=env)
    assert text.returncode == 0, text.stderr
    line = next(x for x in text.stdout.splitlines() if x.startswith("watermark"))
    assert "lag " in line
    if data_lag_beyond(env) > 0:
        assert "= 1m 30s IXM_OVERLAP (kept on purpose) + " in line
        assert line.rstrip().endswith(" behind")
    else:
        assert line.rstrip().endswith("(within IXM_OVERLAP=1m 30s: on time)")
    data = json.loads(cli("--env-file", "/dev/null", "status", "--json", env=env).stdout)
    assert data["overlap_s"] == 90
    assert data["lag_beyond_overlap_s"] == pytest.approx(max(0.0, data["lag_s"] - 90))
