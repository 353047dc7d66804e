"""Packaging as the README uses it: ./dev build's wheel, installed, prints what it carries."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from tests.e2e.test_cli_behaviour import cli

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("ivanti_xmatters-*.whl")
    return built


def test_the_wheel_carries_the_unit_the_env_example_and_the_readme(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    data = "ivanti_xmatters-0.1.0.data/data/share/"
    for path in (
        "ivanti-xmatters/ivanti-xmatters.service",
        "ivanti-xmatters/.env.example",
        "doc/ivanti-xmatters/README.md",
    ):
        assert data + path in names


def test_installed_from_the_wheel_it_prints_its_unit_and_env_example(
    wheel: Path, tmp_path: Path
) -> None:
    target = tmp_path / "venv"
    venv.create(target, with_pip=False)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(target), "platbase": str(target)}))
    # the dependencies come from this environment; the package itself from the wheel only
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--ignore-installed",  # never touch this environment's own install
            "--prefix",
            str(target),
            str(wheel),
        ],
        check=True,
        timeout=300,
    )
    python = target / "bin" / "python"  # pip --prefix wrote this interpreter's shebang
    exe = target / "bin" / "ivanti-xmatters"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def run(*args: str) -> str:
        return subprocess.run(
            [str(python), *args], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
        ).stdout

    assert run("-c", "import daemon; print(daemon.__file__)").startswith(str(site))

    def run_cli(*args: str) -> str:
        return run(str(exe), *args)

    unit = run_cli("print-unit")
    assert unit == (ROOT / "systemd" / "ivanti-xmatters.service").read_text()
    assert run_cli("print-env-example") == (ROOT / ".env.example").read_text()
    assert run_cli("--version").strip() == "ivanti-xmatters 0.1.0"
    doc = next(line for line in unit.splitlines() if line.startswith("Documentation="))
    installed_doc = target / "share" / "doc" / "ivanti-xmatters" / "README.md"
    assert installed_doc.is_file()  # what Documentation= names, under /opt/.../venv
    assert doc.endswith("/venv/share/doc/ivanti-xmatters/README.md")


def test_version_and_completion_from_the_installed_command() -> None:
    assert cli("--version").stdout.startswith("ivanti-xmatters ")
    script = cli("completion", "bash").stdout
    probe = (
        script
        + '\nCOMP_WORDS=(ivanti-xmatters in); COMP_CWORD=1; _ivanti_xmatters; echo "${COMPREPLY[*]}"'
        + '\nCOMP_WORDS=(ivanti-xmatters outbox --state ""); COMP_CWORD=3; _ivanti_xmatters; '
        'echo "${COMPREPLY[*]}"'
        + '\nCOMP_WORDS=(ivanti-xmatters db ""); COMP_CWORD=2; _ivanti_xmatters; '
        'echo "${COMPREPLY[*]}"'
    )
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == [
        "incidents",
        "pending done dead skipped",
        "upgrade current -h --help --env-file",
    ]


def test_zsh_completion_is_valid_zsh_and_registers_itself(tmp_path: Path) -> None:
    from shutil import which

    if which("zsh") is None:
        pytest.skip("zsh is not installed")
    script = tmp_path / "_ivanti-xmatters"
    script.write_text(cli("completion", "zsh").stdout)
    subprocess.run(["zsh", "-n", str(script)], check=True)
    out = subprocess.run(
        [
            "zsh",
            "-f",
            "-c",
            f"autoload -U compinit; compinit -u; source {script}; "
            "print ${_comps[ivanti-xmatters]}",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    assert out.stdout.strip() == "_ivanti_xmatters"
