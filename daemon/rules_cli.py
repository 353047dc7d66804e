"""``ivanti-xmatters rules check`` and ``rules test <incident>``: the rules file, offline.

``check`` validates the file the settings name (``IXM_RULES_FILE``, or a path given on the
command line) and prints every problem as ``FILE:LINE: problem``, exit 78 like any other
configuration error; on success it prints what the file decides. ``test`` re-judges an
incident's stored snapshot (and its last change) under the rules, naming the use case and
the rule that would fire, or what holds it back. Both only read.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

from daemon.config import EX_CONFIG, rules_fields, rules_file_settings
from daemon.domain import Policy, Snapshot, TransitionKind
from daemon.rules import KEY_OF, RulesError, RuleSet, load_rules
from daemon.settings_load import load
from daemon.snapshot import snapshot_from_json
from daemon.transitions import decide


def utcnow() -> datetime:
    return datetime.now(UTC)


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rules = sub.add_parser(
        "rules",
        help="check the rules file (IXM_RULES_FILE), or test it on a stored incident",
        description="Check the rules file, or show which use case and rule would fire for "
        "an incident's stored snapshot. Only reads.",
    )
    rsub = rules.add_subparsers(dest="rules_command", metavar="ACTION")
    check = rsub.add_parser(
        "check", help="validate the rules file: every problem with its line (exit 78)"
    )
    check.add_argument("file", nargs="?", help="this file instead of IXM_RULES_FILE")
    check.add_argument("--json", action="store_true", help="print machine-readable JSON")
    test = rsub.add_parser(
        "test", help="which use case and rule would fire for an incident's stored snapshot"
    )
    test.add_argument("incident", metavar="INCIDENT", help="IncidentNumber or RecId")
    test.add_argument("--file", help="this rules file instead of IXM_RULES_FILE")
    test.add_argument(
        "--live",
        action="store_true",
        help="read the incident from Ivanti now (one read) and judge it against the stored "
        "snapshot: what the next poll would decide",
    )
    test.add_argument("--json", action="store_true", help="print machine-readable JSON")

    page_open = rsub.add_parser(
        "page-open",
        help="page, on request, the open incidents the rules in use would page if they were "
        "new and that are not paging (after a rules change); --apply WRITES",
    )
    page_open.add_argument(
        "--apply", action="store_true", help="queue the pages (WRITES the state DB)"
    )
    page_open.add_argument(
        "--include-baseline",
        action="store_true",
        help="also the incidents recorded at first start (the baseline)",
    )
    page_open.add_argument("--json", action="store_true", help="print machine-readable JSON")


def dispatch(args: argparse.Namespace) -> int:
    if args.rules_command == "check":
        return _check(args)
    if args.rules_command == "test":
        return _test(args)
    if args.rules_command == "page-open":
        return _page_open(args)
    print("usage: ivanti-xmatters rules {check,test,page-open} ...", file=sys.stderr)
    return 2


def _rules(args: argparse.Namespace, path: str | None) -> tuple[RuleSet | None, str | None]:
    configured, extras = rules_file_settings(env_file=getattr(args, "env_file", None))
    chosen = path or configured
    if chosen is None:
        return None, None
    return load_rules(chosen, known_fields=rules_fields(extras)), chosen


def _check(args: argparse.Namespace) -> int:
    try:
        rules, path = _rules(args, args.file)
    except RulesError as exc:
        lines = [_located(exc.path, p) for p in exc.problems]
        if args.json:
            print(json.dumps({"ok": False, "file": exc.path, "problems": lines}, indent=2))
        else:
            for line in lines:
                print(line, file=sys.stderr)
            n = len(lines)
            print(f"{n} problem{'s' * (n > 1)}; nothing starts with this file", file=sys.stderr)
        return EX_CONFIG
    if rules is None:
        message = "IXM_RULES_FILE is not set: no rules file, the settings decide (as always)"
        print(json.dumps({"ok": True, "file": None}) if args.json else message)
        return 0
    if args.json:
        print(json.dumps({"ok": True, "file": path, "rules": rules.describe()}, indent=2))
    else:
        print(f"{path}: ok")
        for line in rules.describe():
            print(f"  {line}")
    return 0


def _located(path: str, problem: str) -> str:
    """``line 4: msg`` -> ``rules.toml:4: msg`` (what editors jump to)."""
    head, sep, rest = problem.partition(": ")
    if sep and head.startswith("line ") and head[5:].isdigit():
        return f"{path}:{head[5:]}: {rest}"
    return f"{path}: {problem}"


def judge(
    rules: RuleSet | None,
    policy: Policy,
    cur: Snapshot,
    prev: Snapshot | None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """What the rules make of a snapshot: critical or not, each use case's rule, and the
    verdicts for it seen as new and for its last change. Pure."""
    with_rules = Policy(
        critical_priorities=policy.critical_priorities,
        resolved_statuses=policy.resolved_statuses,
        closed_statuses=policy.closed_statuses,
        canceled_statuses=policy.canceled_statuses,
        rules=rules,
    )
    use_cases = []
    for kind in TransitionKind:
        rule = rules.rule(kind) if rules is not None else None
        entry: dict[str, Any] = {"use_case": kind.value, "rule": f"use_cases.{KEY_OF[kind]}"}
        if rule is None or kind not in (rules.use_cases if rules else {}):
            entry.update(enabled=True, when=None, matches=None, line=None)
        else:
            entry.update(
                enabled=rule.enabled,
                when=rule.when.text if rule.when else None,
                matches=rule.when.matches(cur) if rule.when else None,
                line=rule.line,
            )
        use_cases.append(entry)
    as_new = decide(None, cur, with_rules)
    last = decide(prev, cur, with_rules) if prev is not None else None
    critical = rules.critical if rules is not None else None
    at = now or utcnow()
    windows = []
    for w in rules.windows if rules is not None else ():
        until = w.open_until(at) if w.covers(cur) else None
        windows.append(
            {
                "window": w.name,
                "line": w.line,
                "covers": w.covers(cur),
                "open_until": w.shown(until) if until else None,
            }
        )
    return {
        "windows": windows,
        "critical": with_rules.critical(cur),
        "critical_by": f"critical = {critical}"
        if critical
        else "IXM_CRITICAL_PRIORITIES " + ",".join(sorted(policy.critical_priorities)),
        "use_cases": use_cases,
        "as_new": _verdict(as_new),
        "last_change": _verdict(last) if last is not None else None,
    }


def _verdict(v: Any) -> dict[str, Any]:
    return {
        "fires": v.transition.kind.value if v.transition else None,
        "held": v.held.value if v.held else None,
        "reason": v.reason,
    }


def _test(args: argparse.Namespace) -> int:
    from daemon.ops.state_db import NoDatabase, open_store

    try:
        rules, path = _rules(args, args.file)
    except RulesError as exc:
        for p in exc.problems:
            print(_located(exc.path, p), file=sys.stderr)
        return EX_CONFIG
    settings = load(args, require_targets=False)
    stored: Snapshot | None = None
    prev: Snapshot | None = None
    recorded: str | None = None
    try:
        store = open_store(settings)
    except NoDatabase as exc:
        if not args.live:
            print(str(exc), file=sys.stderr)
            return 1
        store = None
    if store is not None:
        try:
            with store.unit(rollback=True) as u:
                row = u.find_incident(args.incident)
                if row is not None:
                    stored = snapshot_from_json(row.snapshot)
                    changes = u.changes_for(row.rec_id)
                    last = changes[-1] if changes else None
                    if last is not None:
                        recorded = last.transition or f"none: {last.reason}"
                        if last.prev_status is not None:  # before it, as the row keeps it
                            prev = stored.with_changes(
                                status=last.prev_status,
                                priority=last.prev_priority or "",
                                owner_team=last.prev_owner_team or "",
                                owner=last.prev_owner or "",
                            )
        finally:
            store.close()
    if args.live:
        live = _read_live(settings, args.incident)
        if isinstance(live, str):
            print(live, file=sys.stderr)
            return 1
        cur, prev, recorded = live, stored, None
    elif stored is None:
        print(f"incident {args.incident!r} is not tracked", file=sys.stderr)
        return 1
    else:
        cur = stored
    data = judge(rules, settings.policy, cur, prev)
    data.update(incident=cur.incident_number, rec_id=cur.rec_id, file=path)
    data["last_change_recorded"] = recorded
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    source = "as read from Ivanti now" if args.live else "stored snapshot"
    print(f"Incident {cur.incident_number} ({source}) under {path or 'no rules file'}")
    print(
        f"  Status {cur.status}, Priority {cur.priority or '(none)'}, "
        f"OwnerTeam {cur.owner_team or '(none)'}, Owner {cur.owner or '(none)'}"
    )
    print(f"  critical: {'yes' if data['critical'] else 'no'} (by {data['critical_by']})")
    for uc in data["use_cases"]:
        if uc["line"] is None:
            print(f"  {uc['use_case']:<18} on (no rule in the file)")
            continue
        state = "on" if uc["enabled"] else "OFF"
        when = ""
        if uc["when"] is not None:
            when = f", when `{uc['when']}` {'matches' if uc['matches'] else 'does NOT match'}"
        print(f"  {uc['use_case']:<18} {state} ({uc['rule']}, line {uc['line']}){when}")
    for w in data["windows"]:
        if not w["covers"]:
            state = "does not cover it"
        elif w["open_until"]:
            state = f"covers it and is OPEN until {w['open_until']}: its pages are held"
        else:
            state = "covers it, closed now"
        print(f"  window {w['window']!r} (line {w['line']}) {state}")
    print(f"  seen as new now: {_line(data['as_new'])}")
    if data["last_change"] is not None and args.live:
        print(f"  against the stored snapshot (the next poll): {_line(data['last_change'])}")
    elif data["last_change"] is not None:
        print(f"  its last change, judged again: {_line(data['last_change'])}")
        print(f"    (recorded then: {data['last_change_recorded']})")
    return 0


def _page_open(args: argparse.Namespace) -> int:
    """Rules judge changes, so a rule that newly matches an open incident does not page
    it; this pages such incidents when the operator asks, each once (it is then alerting)."""
    from daemon.ops.state_db import NoDatabase, open_store
    from daemon.windows import queue_page

    settings = load(args, require_targets=False)
    policy = settings.policy
    try:
        store = open_store(settings)
    except NoDatabase as exc:
        print(str(exc), file=sys.stderr)
        return 1
    now = utcnow()
    found: list[dict[str, Any]] = []
    try:
        with store.unit(rollback=not args.apply) as u:
            for row in u.quiet_open_incidents():
                if row.baseline and not args.include_baseline:
                    continue
                snap = snapshot_from_json(row.snapshot)
                verdict = decide(None, snap, policy)
                if verdict.transition is None:
                    continue
                item: dict[str, Any] = {
                    "incident": row.incident_number,
                    "rec_id": row.rec_id,
                    "priority": snap.priority,
                    "team": snap.owner_team,
                    "reason": verdict.reason,
                }
                if args.apply:
                    reason = f"paged on request (rules page-open): {verdict.reason}"
                    _, item["action"] = queue_page(
                        u,
                        row,
                        verdict.transition.kind,
                        reason,
                        policy,
                        now,
                        source="rules",
                    )
                found.append(item)
    finally:
        store.close()
    if args.json:
        print(json.dumps({"applied": args.apply, "incidents": found}, indent=2))
        return 0
    verb = "queued a page for" if args.apply else "would page"
    print(f"{verb} {len(found)} open incident{'s' * (len(found) != 1)} not paging:")
    for item in found:
        queued = f" (action #{item['action']})" if "action" in item else ""
        print(f"  INC {item['incident']}{queued}: {item['reason']}")
    if found and not args.apply:
        print("run again with --apply to queue these pages (the daemon delivers them)")
    return 0


def _read_live(settings: Any, ref: str) -> Snapshot | str:
    """The incident as Ivanti serves it now (one read), or a line saying why not."""
    from daemon.service import build_ivanti
    from daemon.snapshot import MalformedRecord, parse_incident

    if settings.ivanti is None:
        return "--live needs the Ivanti settings (IVANTI_BASE_URL and credentials)"
    client = build_ivanti(settings)
    try:
        if ref.isdigit():
            rows = client.query_incidents(
                f"IncidentNumber eq {int(ref)}", "IncidentNumber asc", top=1
            ).rows
            raw = rows[0] if rows else None
        else:
            raw = client.get_incident(ref)
    finally:
        client.close()
    if raw is None:
        return f"incident {ref!r} not found in Ivanti"
    try:
        return parse_incident(raw, settings.ivanti.extra_fields)
    except MalformedRecord as exc:
        return f"incident {ref!r} cannot be read: {exc.problem}"


def _line(v: dict[str, Any]) -> str:
    if v["fires"]:
        return f"{v['fires']} fires: {v['reason']}"
    return f"nothing fires: {v['reason']}"
