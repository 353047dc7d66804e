"""No import cycle in daemon/: the CLI imports the commands, never the other way round.

``daemon.cli`` is the entry point (only ``daemon.__main__`` imports it); what the commands
share with it (loading the settings) lives in ``daemon.settings_load``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "daemon"
ENTRY_POINTS = {"daemon.cli", "daemon.__main__"}  # may import daemon.cli


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(tree: ast.AST, *, top_level_only: bool = False) -> set[str]:
    """The modules an import statement names (``from a import b``: ``a`` and ``a.b``);
    ``top_level_only``: only those run at import (not in functions, not TYPE_CHECKING)."""
    nodes = tree.body if top_level_only and isinstance(tree, ast.Module) else ast.walk(tree)
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_detector_sees_an_import_of_the_cli() -> None:
    for source in ("from daemon.cli import load", "import daemon.cli", "from daemon import cli"):
        assert "daemon.cli" in imported(ast.parse(f"def f():\n    {source}\n")), source


def test_nothing_but_the_entry_points_imports_the_cli() -> None:
    offenders = [
        name
        for name, path in MODULES.items()
        if name not in ENTRY_POINTS and "daemon.cli" in imported(ast.parse(path.read_text()))
    ]
    assert offenders == [], f"these import daemon.cli (use daemon.settings_load): {offenders}"


def test_no_cycle_among_the_imports_run_at_import_time() -> None:
    graph = {
        name: imported(ast.parse(path.read_text()), top_level_only=True) & MODULES.keys()
        for name, path in MODULES.items()
    }
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(name) :], name]))
        if name in done:
            return
        for dep in sorted(graph[name]):
            visit(dep, [*path, name])
        done.add(name)

    for name in graph:
        visit(name, [])
