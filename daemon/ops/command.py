"""What every operations command does the same way: its parser (with ``--json``), a
failure said on stderr or as JSON, and the state DB opened for one read or one write."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from daemon.config import Settings
from daemon.ops.render import dump
from daemon.ops.state_db import NoDatabase, open_store
from daemon.settings_load import load
from daemon.store import Store, Unit


def subparser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help: str
) -> argparse.ArgumentParser:
    """The command's parser on the ``ivanti-xmatters`` parser, with ``--json``."""
    p = sub.add_parser(name, help=help, description=help)
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    return p


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def fail(args: argparse.Namespace, message: str, code: int = 1, **extra: Any) -> int:
    if getattr(args, "json", False):
        dump({"ok": False, "error": message, **extra})
    else:
        print(message, file=sys.stderr)
    return code


def read(args: argparse.Namespace, work: Callable[[Store, Unit, Settings], int]) -> int:
    """``work`` in a transaction that is rolled back: it only reads."""
    return _in_unit(args, work, rollback=True)


def write(args: argparse.Namespace, work: Callable[[Unit], int]) -> int:
    """One short transaction; ``work`` refuses (non-zero) before changing anything."""
    return _in_unit(args, lambda _store, u, _settings: work(u), rollback=False)


def _in_unit(
    args: argparse.Namespace, work: Callable[[Store, Unit, Settings], int], *, rollback: bool
) -> int:
    settings = load(args, require_targets=False)
    try:
        store = open_store(settings)
    except NoDatabase as exc:
        return fail(args, str(exc))
    try:
        with store.unit(rollback=rollback) as u:
            return work(store, u, settings)
    finally:
        store.close()
