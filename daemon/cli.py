"""The ``ivanti-xmatters`` command (also ``python -m daemon``)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from daemon import rules_cli
from daemon.config import EX_CONFIG, ConfigError, Settings, hide_url_password
from daemon.logs import setup_logging
from daemon.ops import check, explain, incidents, outbox, status
from daemon.settings_load import error_line, load, loaded_db_url, report_config_error

EX_UNAVAILABLE = 69  # sysexits.h: a service the daemon needs (the state DB) is unavailable

if TYPE_CHECKING:
    from daemon.service import CycleReport

# The operations commands (daemon/ops/), by name: each module registers its own on the parser.
_OPS: dict[str, Callable[[argparse.Namespace], int]] = {
    "status": status.run,
    "incidents": incidents.run,
    "explain": explain.run,
    "outbox": outbox.run_list,
    "retry": outbox.run_retry,
    "skip": outbox.run_skip,
    "check": check.run,
}

DESCRIPTION = """\
Pull-based bridge from Ivanti Service Manager to xMatters.

Polls Ivanti's OData incident feed for changes, detects the eight use cases of
the original xMatters integration (New Incident, Reassigned, Reopened, Priority
Upgrade, Priority Downgrade, Resolved, Closed, Canceled), creates or terminates
xMatters events accordingly, and writes xMatters responses, comments and
delivery status back to the incident as notes.

Configuration comes from the environment and ./.env (see .env.example); a bad
setting stops start-up with one line naming it (exit code 78).
"""

EPILOG = """\
first steps:
  ivanti-xmatters demo              run everything against built-in simulators (no config)
  ivanti-xmatters check             validate the config and call both APIs
  ivanti-xmatters once --dry-run    poll and print what would be sent, send nothing
  ivanti-xmatters run               the service (what systemd starts)
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ivanti-xmatters",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--env-file", help="read settings from this file instead of ./.env")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon (poll, deliver, write back) until stopped")
    run.add_argument(
        "--dry-run", action="store_true", help="poll and diff on schedule, send and write nothing"
    )

    once = sub.add_parser(
        "once", help="one full cycle (poll, deliver, write back); non-zero exit on failure"
    )
    once.add_argument(
        "--dry-run",
        action="store_true",
        help="poll and diff, print the transitions and actions that would be sent; "
        "send nothing and write nothing (the state DB is left unchanged)",
    )
    once.add_argument("--json", action="store_true", help="print the cycle report as JSON")

    demo = sub.add_parser(
        "demo",
        help="start both simulators and walk a scripted scenario through all eight transitions",
    )
    demo.add_argument("--json", action="store_true", help="print the timeline as JSON lines")
    demo.add_argument("--keep-db", metavar="PATH", help="write the demo's state DB here to inspect")

    sim = sub.add_parser(
        "simulate",
        help="run the Ivanti and xMatters simulators standalone (for trying the product)",
    )
    sim.add_argument("--ivanti-port", type=int, default=8081, help="default 8081")
    sim.add_argument("--xmatters-port", type=int, default=8082, help="default 8082")
    sim.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    sim.add_argument("--no-quirks", action="store_true", help="standard OData, no Ivanti quirks")
    sim.add_argument(
        "--no-flood-control", action="store_true", help="disable xMatters alert flood control"
    )
    sim.add_argument("--seed", type=int, default=0, help="create N sample incidents at start")
    sim.add_argument(
        "--profile",
        choices=("default", "strict"),
        default="default",
        help="default: the reference's likeliest reading of each open question; strict: the "
        "hardest reading a real tenant might have, all at once (sub-second times, GUID RecId "
        "order, PUT as replace, a session cap, RecId-only event lookups, delayed flows, ...; "
        "README 'Simulator switches')",
    )

    db = sub.add_parser("db", help="state DB migrations")
    dbsub = db.add_subparsers(dest="db_command", metavar="ACTION")
    dbsub.add_parser("upgrade", help="apply pending migrations (the daemon also does it at start)")
    dbsub.add_parser("current", help="show the DB's revision and the newest one")

    status.add_command(sub)
    incidents.add_command(sub)
    explain.add_command(sub)
    outbox.add_commands(sub)
    check.add_command(sub)
    rules_cli.add_command(sub)
    comp = sub.add_parser(
        "completion",
        help="print a shell completion script (bash or zsh)",
        description="Print a completion script. bash: "
        "ivanti-xmatters completion bash | sudo tee /etc/bash_completion.d/ivanti-xmatters; "
        "zsh: ivanti-xmatters completion zsh > ~/.zfunc/_ivanti-xmatters "
        "(a directory in $fpath).",
    )
    comp.add_argument("shell", choices=("bash", "zsh"))
    sub.add_parser(
        "print-unit",
        help="print the systemd unit shipped with this version "
        "(| sudo tee /etc/systemd/system/ivanti-xmatters.service)",
    )
    sub.add_parser(
        "print-env-example",
        help="print .env.example: every setting with its default and meaning",
    )
    _env_file_everywhere(sub)
    return p


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ivanti-xmatters")
    except PackageNotFoundError:  # run from a checkout that is not installed
        return "(not installed)"


# Shipped files: installed under the environment's share/ (pyproject data-files), or
# beside the package in a source checkout.
_SHIPPED = {
    "print-unit": (
        "share/ivanti-xmatters/ivanti-xmatters.service",
        "systemd/ivanti-xmatters.service",
    ),
    "print-env-example": ("share/ivanti-xmatters/.env.example", ".env.example"),
}


def shipped_file(command: str) -> Path:
    import sysconfig

    installed, in_checkout = _SHIPPED[command]
    candidates = [
        Path(sysconfig.get_path("data")) / installed,
        Path(sys.prefix) / installed,
        Path(__file__).resolve().parents[1] / in_checkout,
    ]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{Path(installed).name} is not installed with this copy (looked in "
        f"{', '.join(str(c.parent) for c in candidates)}); reinstall the package from a "
        "wheel or a checkout (pip install .)"
    )


def _env_file_everywhere(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``--env-file`` also after the command (``explain 10002 --env-file /dev/null``).

    ``SUPPRESS`` leaves the value given before the command alone when it is not repeated.
    """
    for command in sub.choices.values():
        command.add_argument(
            "--env-file", default=argparse.SUPPRESS, help="read settings from this file"
        )
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                _env_file_everywhere(action)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return _dispatch(args)
    except ConfigError as exc:
        report_config_error(exc)
        return EX_CONFIG
    except KeyboardInterrupt:  # Ctrl-C: the shell's convention, no traceback
        error_line("interrupted")
        return 130
    except BrokenPipeError:  # `ivanti-xmatters explain 123 | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        known = _outage(exc)
        if known is None:
            raise  # a bug: the traceback is what a report needs
        error_line(known[0])
        return known[1]


def _outage(exc: Exception) -> tuple[str, int] | None:
    """One line and an exit code for a state DB that cannot be used, else None."""
    from sqlalchemy.exc import DBAPIError

    if not isinstance(exc, DBAPIError):
        return None
    detail = " ".join(str(exc.orig).split()) or type(exc.orig).__name__
    url = loaded_db_url() or "IXM_STATE_DB"
    if url.startswith("sqlite:") and "unable to open database file" in detail:
        path = url.split(":///", 1)[-1]
        return (
            f"configuration error: the state DB {path} cannot be opened ({detail}); create "
            "its directory and make it writable by the daemon's user, or point IXM_STATE_DB "
            "elsewhere",
            EX_CONFIG,
        )
    return (
        f"the state DB {hide_url_password(url)} cannot be used ({detail}); check that the "
        "database server is up and IXM_STATE_DB is right, then start again",
        EX_UNAVAILABLE,
    )


def _dispatch(args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd == "demo":
        from daemon.demo import run_demo

        return run_demo(as_json=args.json, keep_db=args.keep_db)
    if cmd == "simulate":
        from daemon.simulators.standalone import run_simulators

        setup_logging("INFO")
        return run_simulators(
            host=args.host,
            ivanti_port=args.ivanti_port,
            xmatters_port=args.xmatters_port,
            quirks=not args.no_quirks,
            flood_control=not args.no_flood_control,
            seed=args.seed,
            profile=args.profile,
        )
    if cmd == "db":
        return _db(args)
    if cmd == "rules":
        return rules_cli.dispatch(args)
    if cmd == "completion":
        from daemon.completion import script

        sys.stdout.write(script(args.shell, _parser()))
        return 0
    if cmd in _SHIPPED:
        try:
            sys.stdout.write(shipped_file(cmd).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            error_line(str(exc))
            return 1
        return 0
    if cmd in ("run", "once"):
        settings = load(args)
        # `run` logs to stdout (the journal under systemd); `once` prints its report on
        # stdout, so its logs go to stderr and `once --json | jq` reads JSON only.
        setup_logging(
            settings.ops.log_level,
            sys.stdout if cmd == "run" else sys.stderr,
            fmt=settings.ops.log_format,
        )
        from daemon.lease import EX_TEMPFAIL, AlreadyRunning, hold_instance

        try:  # one daemon per SQLite state DB; `once --dry-run` writes nothing, needs no lock
            lock = None if cmd == "once" and args.dry_run else hold_instance(settings.state_db_url)
        except AlreadyRunning as exc:
            print(f"refused: {exc}", file=sys.stderr)
            return EX_TEMPFAIL
        try:
            if cmd == "run":
                return _run(settings, dry_run=args.dry_run)
            return _once(settings, dry_run=args.dry_run, as_json=args.json)
        finally:
            if lock is not None:
                lock.release()
    return _OPS[cmd](args)  # argparse admits only the commands above and these


def _db(args: argparse.Namespace) -> int:
    from daemon.store import current_revision, head_revision, make_engine, upgrade

    settings = load(args, require_targets=False)
    engine = make_engine(settings.state_db_url)
    if args.db_command == "upgrade":
        before = current_revision(engine)
        upgrade(engine)
        print(
            f"state DB {settings.state_db_url}: {before or 'empty'} -> {current_revision(engine)}"
        )
        return 0
    if args.db_command == "current":
        cur, head = current_revision(engine), head_revision()
        state = "up to date" if cur == head else "needs `ivanti-xmatters db upgrade`"
        print(
            f"state DB {settings.state_db_url}: revision {cur or 'none'} (newest {head}; {state})"
        )
        return 0
    print("usage: ivanti-xmatters db {upgrade,current}", file=sys.stderr)
    return 2


def _once(settings: Settings, *, dry_run: bool, as_json: bool) -> int:
    from daemon.lease import EX_TEMPFAIL
    from daemon.service import Service
    from daemon.store import DryRunUnavailable

    try:
        service = Service(settings, dry_run=dry_run)
    except DryRunUnavailable as exc:
        print(f"dry run not possible: {exc}", file=sys.stderr)
        return 1
    try:
        lead = service.leadership
        if lead is not None and not dry_run and not service.lead_step(activate=True):
            print(
                f"refused: another replica leads this state DB ({lead.leader_text()}); "
                "`once` runs only while no replica holds the lease",
                file=sys.stderr,
            )
            return EX_TEMPFAIL
        report = service.cycle(dry_run=dry_run)
        numbers = _incident_numbers(report, service)
    finally:
        service.close()
    if as_json:
        out = _report_dict(report, dry_run, numbers)
        if dry_run:
            out["state_db"] = service.dry_run_note
        print(json.dumps(out, indent=2))
    else:
        if dry_run:
            print(f"state DB: {service.dry_run_note}")
        _print_report(report, dry_run, numbers)
    return 0 if report.ok else 1


def _incident_numbers(report: CycleReport, service: Any) -> dict[str, int]:
    """RecId -> IncidentNumber for the report: people know incidents by number."""
    numbers: dict[str, int] = {}
    poll = report.poll
    if poll is None:
        return numbers
    for action in poll.actions:
        workflow = action.payload.get("workflow")
        number = workflow.get("IncidentID") if isinstance(workflow, dict) else None
        if isinstance(number, str | int) and str(number).isdigit():
            numbers[action.rec_id] = int(number)
    missing = {t.rec_id for t in [*poll.transitions, *poll.held]} - set(numbers)
    if missing:
        with service.store.unit(rollback=True) as u:
            for rec_id in missing:
                row = u.incident(rec_id)
                if row is not None:
                    numbers[rec_id] = int(row.incident_number)
    return numbers


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def _report_dict(
    report: CycleReport, dry_run: bool, numbers: dict[str, int] | None = None
) -> dict[str, Any]:
    poll = report.poll
    numbers = numbers or {}
    return {
        "ok": report.ok,
        "dry_run": dry_run,
        "error": report.error,
        "poll": poll.summary() if poll else None,
        "transitions": [
            {
                "kind": t.kind.value,
                "incident": numbers.get(t.rec_id),
                "rec_id": t.rec_id,
                "reason": t.reason,
            }
            for t in (poll.transitions if poll else [])
        ],
        "held": [
            {
                "kind": t.kind.value,
                "incident": numbers.get(t.rec_id),
                "rec_id": t.rec_id,
                "reason": t.reason,
            }
            for t in (poll.held if poll else [])
        ],
        "actions": [
            {
                "kind": a.kind.value,
                "incident": numbers.get(a.rec_id),
                "rec_id": a.rec_id,
                "payload": dict(a.payload),
                "reason": a.reason,
            }
            for a in (poll.actions if poll else [])
        ],
        "delivered": len(report.delivery.done),
        "awaiting_event": len(report.delivery.awaiting_event),
        "retrying": len(report.delivery.retried),
        "dead": len(report.delivery.dead),
        "writeback_notes": report.writeback.notes if report.writeback else 0,
    }


def _who(item: dict[str, Any]) -> str:
    """``INC 10002``; the RecId only for an incident whose number is not known."""
    return f"INC {item['incident']}" if item.get("incident") is not None else item["rec_id"]


def _print_report(report: CycleReport, dry_run: bool, numbers: dict[str, int]) -> None:
    d = _report_dict(report, dry_run, numbers)
    poll = d["poll"] or {}
    head = "dry run (nothing sent, nothing written)" if dry_run else "cycle"
    print(
        f"{head}: {poll.get('kind', 'poll')} read {_plural(poll.get('rows', 0), 'row')} in "
        f"{_plural(poll.get('requests', 0), 'request')}, "
        f"{_plural(poll.get('changes', 0), 'change')}, "
        f"{_plural(poll.get('transitions', 0), 'transition')}"
    )
    for t in d["transitions"]:
        print(f"  transition {t['kind']:<18} {_who(t)}  {t['reason']}")
    for t in d["held"]:
        print(f"  held back  {t['kind']:<18} {_who(t)}  {t['reason']}")
    for a in d["actions"]:
        verb = "would send" if dry_run else "queued"
        print(
            f"  {verb} {a['kind']:<9} {_who(a)}  {json.dumps(a['payload'].get('workflow', a['payload']))}"
        )
    if not dry_run:
        print(
            f"delivered {d['delivered']}, accepted awaiting their event {d['awaiting_event']}, "
            f"retrying {d['retrying']}, dead {d['dead']}, "
            f"write-back notes queued {d['writeback_notes']}"
        )
    if d["error"]:
        print(f"FAILED: {d['error']}", file=sys.stderr)


def _run(settings: Settings, *, dry_run: bool) -> int:
    from daemon.service import Service, settle_heap

    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    from daemon.store import DryRunUnavailable

    try:
        service = Service(settings, dry_run=dry_run)
    except DryRunUnavailable as exc:
        print(f"dry run not possible: {exc}", file=sys.stderr)
        return 1
    # systemctl reload: the rules file is read again (daemon/service.py reload_rules)
    signal.signal(signal.SIGHUP, lambda signum, frame: service.reload_requested.set())
    settle_heap()
    try:
        service.run(stop)
    finally:
        service.close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
