"""The systemd unit and .env.example: what an operator installs, checked against the code."""

from __future__ import annotations

import re
from pathlib import Path

from daemon.config import SECRET_NAMES, load_settings

ROOT = Path(__file__).resolve().parents[2]
UNIT = (ROOT / "systemd" / "ivanti-xmatters.service").read_text()


def settings_lines() -> list[tuple[str, str]]:
    out = []
    for line in UNIT.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.append((key, value))
    return out


def test_a_credential_line_for_every_secret() -> None:
    loaded = {
        m.group(1): m.group(2) for m in re.finditer(r"^LoadCredential=([A-Z_]+):(\S+)$", UNIT, re.M)
    }
    assert set(loaded) == set(SECRET_NAMES)
    assert all(path == f"/etc/ivanti-xmatters/credentials/{n}" for n, path in loaded.items())


def test_no_empty_setting_but_the_capability_bounding_set() -> None:
    empty = [key for key, value in settings_lines() if not value]
    assert empty == ["CapabilityBoundingSet"]  # empty there means: no capabilities at all


def test_documentation_points_at_the_readme_the_wheel_installs() -> None:
    (doc,) = [v for k, v in settings_lines() if k == "Documentation"]
    exec_start = next(v for k, v in settings_lines() if k == "ExecStart")
    venv = exec_start.split("/bin/")[0]
    assert doc == f"file://{venv}/share/doc/ivanti-xmatters/README.md"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"share/doc/ivanti-xmatters" = ["README.md"' in pyproject


def test_env_example_scope_filter_reads_the_same_with_env_file(tmp_path: Path) -> None:
    example = (ROOT / ".env.example").read_text()
    (line,) = [ln for ln in example.splitlines() if ln.startswith("# IVANTI_SCOPE_FILTER=")]
    value = line.split("=", 1)[1]
    assert value.startswith('"') and value.endswith('"')  # systemd keeps the inner quotes
    env_file = tmp_path / "ixm.env"
    env_file.write_text(
        "IVANTI_BASE_URL=https://acme.saasit.com\nIVANTI_API_KEY=k\n"
        "XMATTERS_TRIGGER_URL=https://acme.xmatters.com/api/integration/1/functions/x/triggers\n"
        + line[2:]
        + "\n"
    )
    s = load_settings({}, env_file=env_file)
    assert s.ivanti is not None
    assert s.ivanti.scope_filter == value[1:-1]
