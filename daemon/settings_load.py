"""Loading the settings for a command, and saying what is wrong with them, on stderr.

Every command that needs settings (``run``, ``once``, ``db``, the operations commands,
``rules``) loads them with ``load``: a misspelled setting is warned about once, and the
state DB named is remembered so an error about it can name it (``loaded_db_url``). A
``ConfigError`` is reported with ``report_config_error``, one line per problem.
"""

from __future__ import annotations

import argparse
import sys

from daemon.config import ConfigError, Settings, load_settings
from daemon.logs import is_journal_stream
from daemon.redact import redact

_loaded_db_urls: list[str] = []  # the state DB of each settings loaded, for error messages


def load(args: argparse.Namespace, *, require_targets: bool = True) -> Settings:
    settings = load_settings(env_file=args.env_file, require_targets=require_targets)
    _loaded_db_urls.append(settings.state_db_url)
    for warning in settings.warnings:  # a misspelled setting: said once, on stderr
        error_line(f"warning: {warning}", priority="<4>")
    return settings


def loaded_db_url() -> str | None:
    """The state DB of the settings loaded last; None before any."""
    return _loaded_db_urls[-1] if _loaded_db_urls else None


def report_config_error(exc: ConfigError) -> None:
    for problem in exc.problems:
        error_line(f"configuration error: {problem}")
    for warning in exc.warnings:
        error_line(f"warning: {warning}", priority="<4>")


def error_line(line: str, *, priority: str = "<3>") -> None:
    """One line on stderr; with its journal priority (error) when stderr is the journal."""
    prefix = priority if is_journal_stream(sys.stderr) else ""
    print(prefix + redact(line), file=sys.stderr)
