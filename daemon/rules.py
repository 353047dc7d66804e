"""The rules file (``IXM_RULES_FILE``): per-use-case criteria and the team -> group map.

Pure: parsing and evaluation only, no HTTP and no SQL. The file is TOML (read with the
standard library's ``tomllib``); criteria use the OData ``$filter`` syntax Ivanti admins
already write for Quick Actions and saved searches, parsed by the ``odata-query`` library
(the same grammar as the simulator's, ``daemon/simulators/odata.py``) and evaluated here,
locally, on an incident snapshot::

    # which incidents are critical, for every use case (default: IXM_CRITICAL_PRIORITIES)
    critical = "Priority eq '1' or Priority eq '2'"

    [use_cases.new_incident]
    when = "Priority eq '1' or (Priority eq '2' and Category eq 'Network')"

    [use_cases.reassigned]
    when = "OwnerTeam ne 'Service Desk'"

    [use_cases.priority_downgrade]
    enabled = false

    [teams]
    default = "ops-oncall"          # for a team not listed below (default: the team's own name)
    [teams.groups]
    "Network Ops (EMEA)" = "netops-emea"

A use case's ``when`` narrows it: the transition table (``daemon/transitions.py``) decides
the use case as always, with "critical" read from ``critical``; the use case then fires
only if it is enabled and its ``when`` matches the current snapshot. Without a file, or
with an empty one, every decision is the same as without rules.

Evaluation follows what Ivanti does with the same filter: text compares case-insensitively,
``'$NULL'`` matches empty text, numbers compare as numbers (``Priority le 2``), and the
string functions ``contains``/``startswith``/``endswith`` work (``in`` is accepted too,
locally). A field the daemon does not read is an error when the file is checked.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from odata_query import ast
from odata_query import exceptions as odata_exc
from odata_query.grammar import ODataLexer, ODataParser

from daemon.domain import CORE_FIELDS, Snapshot, TransitionKind

NULL_TEXT = "$NULL"

# The use cases by their key in the file (the xmTrigger value in snake case).
USE_CASE_KEYS: Mapping[str, TransitionKind] = MappingProxyType(
    {kind.value.lower().replace(" ", "_"): kind for kind in TransitionKind}
)
KEY_OF: Mapping[TransitionKind, str] = MappingProxyType({k: n for n, k in USE_CASE_KEYS.items()})

_TOP_KEYS = ("critical", "use_cases", "teams", "windows")
_WINDOW_KEYS = ("name", "teams", "when", "start", "end", "cron", "duration", "timezone")
_USE_CASE_FIELDS = ("enabled", "when")
_TEAM_KEYS = ("default", "groups")


class RulesError(Exception):
    """The rules file is wrong. ``problems`` holds one line each, every one with its line."""

    def __init__(self, path: str, problems: Iterable[str]) -> None:
        self.path = path
        self.problems: tuple[str, ...] = tuple(problems)
        first = self.problems[0] if self.problems else "invalid"
        more = len(self.problems) - 1
        tail = f" (and {more} more problem{'s' * (more > 1)})" if more else ""
        super().__init__(f"rules file {path}: {first}{tail}")


class FilterSyntaxError(ValueError):
    pass


# --------------------------------------------------------------------------- criteria


def _team_key(team: str) -> str:
    return " ".join(team.split()).casefold()


def snapshot_fields(snap: Snapshot) -> dict[str, str]:
    """The incident's fields by lower-cased Ivanti name, as the criteria see them."""
    values = {name.casefold(): value for name, value in snap.payload_fields.items()}
    values.update(
        {
            "recid": snap.rec_id,
            "incidentnumber": str(snap.incident_number),
            "status": snap.status,
            "priority": snap.priority,
            "owner": snap.owner,
            "ownerteam": snap.owner_team,
            "lastmodby": snap.last_mod_by,
        }
    )
    return values


_Value = str | float | bool | None | tuple[Any, ...]
_Eval = Callable[[Mapping[str, str]], Any]


def _compare(op: str, left: Any, right: Any) -> bool:
    """Ivanti's reading: text case-insensitively (blanks around it ignored), '$NULL' as
    empty text; against a number literal (``Priority le 2``) the text is read as a number,
    and text that is not one equals no number and is neither below nor above it."""
    if isinstance(left, bool) or isinstance(right, bool):
        left, right = str(left), str(right)
    if isinstance(left, float) or isinstance(right, float):
        a, b = _as_number(left), _as_number(right)
        if a is None or b is None:
            return op == "ne"
        return _order(op, a, b)
    return _order(op, _as_text(left), _as_text(right))


def _as_number(value: Any) -> float | None:
    if isinstance(value, float):
        return value
    text = str(value).strip()
    return float(text) if re.fullmatch(r"[+-]?\d+(\.\d+)?", text) else None


def _as_text(value: Any) -> str:
    text = str(value)
    return "" if text == NULL_TEXT else text.strip().casefold()


def _order(op: str, a: Any, b: Any) -> bool:
    if op == "eq":
        return bool(a == b)
    if op == "ne":
        return bool(a != b)
    if op == "lt":
        return bool(a < b)
    if op == "le":
        return bool(a <= b)
    if op == "gt":
        return bool(a > b)
    return bool(a >= b)


_OPS = {
    ast.Eq: "eq",
    ast.NotEq: "ne",
    ast.Lt: "lt",
    ast.LtE: "le",
    ast.Gt: "gt",
    ast.GtE: "ge",
}
_TEXT_FUNCTIONS = {
    "contains": lambda a, b: b in a,
    "startswith": lambda a, b: a.startswith(b),
    "endswith": lambda a, b: a.endswith(b),
}
_SCALAR_FUNCTIONS = {
    "tolower": lambda a: a.lower(),
    "toupper": lambda a: a.upper(),
    "trim": lambda a: a.strip(),
}


class _Compiler:
    """An odata-query AST to a Python predicate over ``snapshot_fields``; field names are
    checked against ``known`` (lower-cased) as they are met."""

    def __init__(self, known: Mapping[str, str] | None) -> None:
        self.known = known  # lower-cased name -> the name as Ivanti spells it
        self.problems: list[str] = []

    def node(self, n: ast._Node) -> _Eval:
        if isinstance(n, ast.BoolOp):
            left, right = self.node(n.left), self.node(n.right)
            if isinstance(n.op, ast.And):
                return lambda f: bool(left(f)) and bool(right(f))
            return lambda f: bool(left(f)) or bool(right(f))
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.Not):
            inner = self.node(n.operand)
            return lambda f: not inner(f)
        if isinstance(n, ast.Compare):
            return self.compare(n)
        if isinstance(n, ast.Call):
            return self.call(n)
        if isinstance(n, ast.Identifier):
            return self.identifier(n)
        if isinstance(n, ast.Boolean):
            value = n.val.lower() == "true" if isinstance(n.val, str) else bool(n.val)
            return lambda f: value
        if isinstance(n, ast.String):
            text = str(n.val)
            return lambda f: text
        if isinstance(n, ast.Integer | ast.Float):
            num = float(n.val)
            return lambda f: num
        if isinstance(n, ast.Null):
            return lambda f: ""
        if isinstance(n, ast.List):
            items = [self.node(v) for v in n.val]
            return lambda f: tuple(i(f) for i in items)
        self.problems.append(f"{type(n).__name__.lower()} is not supported in a rule")
        return lambda f: False

    def identifier(self, n: ast.Identifier) -> _Eval:
        name = n.name
        key = name.casefold()
        if self.known is not None and key not in self.known:
            close = difflib.get_close_matches(key, sorted(self.known), n=1, cutoff=0.6)
            hint = f"did you mean {self.known[close[0]]!r}? " if close else ""
            self.problems.append(
                f"field {name!r} is not read from Ivanti; {hint}use one of the incident fields "
                "(Priority, OwnerTeam, Status, Category, ...) or add it to IVANTI_EXTRA_FIELDS"
            )
        return lambda f: f.get(key, "")

    def compare(self, n: ast.Compare) -> _Eval:
        left, right = self.node(n.left), self.node(n.right)
        if isinstance(n.comparator, ast.In):
            return lambda f: any(_compare("eq", left(f), v) for v in _as_tuple(right(f)))
        op = _OPS.get(type(n.comparator))
        if op is None:
            self.problems.append(f"operator {type(n.comparator).__name__} is not supported")
            return lambda f: False
        return lambda f: _compare(op, left(f), right(f))

    def call(self, n: ast.Call) -> _Eval:
        name = n.func.name.lower()
        args = [self.node(a) for a in n.args]
        if name in _TEXT_FUNCTIONS and len(args) == 2:
            fn = _TEXT_FUNCTIONS[name]
            a0, a1 = args
            return lambda f: bool(fn(str(a0(f)).casefold(), str(a1(f)).casefold()))
        if name in _SCALAR_FUNCTIONS and len(args) == 1:
            sfn = _SCALAR_FUNCTIONS[name]
            (only,) = args
            return lambda f: sfn(str(only(f)))
        self.problems.append(
            f"function {n.func.name}() is not supported in a rule "
            "(contains, startswith, endswith, tolower, toupper, trim are)"
        )
        return lambda f: False


def _as_tuple(value: Any) -> tuple[Any, ...]:
    return value if isinstance(value, tuple) else (value,)


def _parse(text: str) -> ast._Node:
    try:
        node: ast._Node = ODataParser().parse(ODataLexer().tokenize(text))
    except odata_exc.TokenizingException as exc:
        raise FilterSyntaxError(f"invalid filter near position {exc.token.index}") from None
    except odata_exc.UnknownFunctionException as exc:
        raise FilterSyntaxError(f"function {exc.function_name!r} is not supported") from None
    except odata_exc.ParsingException as exc:
        where = "at the end" if exc.eof or exc.token is None else f"at position {exc.token.index}"
        raise FilterSyntaxError(f"invalid filter: unexpected input {where}") from None
    except odata_exc.ODataException as exc:
        raise FilterSyntaxError(f"invalid filter: {exc}") from None
    if node is None:
        raise FilterSyntaxError("invalid filter")
    return node


@dataclass(frozen=True)
class Criterion:
    """One ``$filter`` text, compiled; ``where`` says where it came from (for reasons)."""

    text: str
    where: str = ""
    predicate: _Eval = field(compare=False, repr=False, default=lambda f: True)

    def matches(self, snap: Snapshot) -> bool:
        return bool(self.predicate(snapshot_fields(snap)))

    def __str__(self) -> str:
        return f"`{self.text}`"


def compile_criterion(
    text: str, *, known_fields: Iterable[str] | None = None, where: str = ""
) -> Criterion:
    """Parse and compile a ``$filter``; raises ``FilterSyntaxError`` naming the problem."""
    stripped = text.strip()
    if not stripped:
        raise FilterSyntaxError("the filter is empty; remove the key or write a filter")
    node = _parse(stripped)
    known = None if known_fields is None else {f.casefold(): f for f in known_fields}
    compiler = _Compiler(known)
    predicate = compiler.node(node)
    if compiler.problems:
        raise FilterSyntaxError("; ".join(compiler.problems))
    return Criterion(stripped, where, predicate)


def priority_criterion(priorities: Iterable[str]) -> str:
    """The ``critical`` filter equivalent to IXM_CRITICAL_PRIORITIES."""
    return " or ".join(f"Priority eq '{p}'" for p in sorted(priorities))


# --------------------------------------------------------------------------- the rule set


@dataclass(frozen=True)
class UseCaseRule:
    kind: TransitionKind
    enabled: bool = True
    when: Criterion | None = None
    line: int = 0  # of its [use_cases.<key>] table, 0 when not in the file

    @property
    def name(self) -> str:
        return f"use_cases.{KEY_OF[self.kind]}"


@dataclass(frozen=True)
class TeamMap:
    """Ivanti OwnerTeam -> xMatters group; teams compare trimmed and case-insensitively."""

    groups: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    default: str = ""

    def group_for(self, team: str) -> str:
        """The group for ``team``: its entry, else ``default``, else the team's own name (an
        incident without a team goes to ``default`` too, rather than to nobody)."""
        if not team.strip():
            return self.default or team
        wanted = _team_key(team)
        for name, group in self.groups.items():
            if _team_key(name) == wanted:
                return group
        return self.default or team


_DOW_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _cron_trigger(expr: str, tz: ZoneInfo) -> Any:
    """A standard 5-field crontab line as an APScheduler trigger. Its day-of-week field
    counts 0 = Monday, cron's 0 = Sunday: numbers there are turned into names first."""
    from apscheduler.triggers.cron import CronTrigger

    fields = expr.split()
    if len(fields) == 5:
        fields[4] = re.sub(r"\d+", lambda m: _dow(m.group(0)), fields[4])
    return CronTrigger.from_crontab(" ".join(fields), timezone=tz)


def _dow(number: str) -> str:
    n = int(number)
    if n > 7:
        raise ValueError(f"day of week {n} is not 0-7")
    return _DOW_NAMES[n]


@dataclass(frozen=True)
class Window:
    """A maintenance window: pages for the incidents it covers are held while it is open.

    It covers an incident whose OwnerTeam is in ``teams`` (any team when empty) and that
    ``when`` matches (any when None). One-off: ``start`` .. ``end``; recurring: each time
    ``cron`` fires (in ``timezone``), for ``duration``.
    """

    name: str
    timezone: str = "UTC"
    teams: tuple[str, ...] = ()
    when: Criterion | None = None
    start: datetime | None = None
    end: datetime | None = None
    cron: str = ""
    duration: timedelta = timedelta(0)
    line: int = 0

    def covers(self, snap: Snapshot) -> bool:
        if self.teams and _team_key(snap.owner_team) not in {_team_key(t) for t in self.teams}:
            return False
        return self.when is None or self.when.matches(snap)

    def open_until(self, now: datetime) -> datetime | None:
        """The end (UTC) of the occurrence open at ``now``, or None when it is closed."""
        if self.start is not None and self.end is not None:
            return self.end if self.start <= now < self.end else None
        if not self.cron:
            return None
        trigger = _cron_trigger(self.cron, ZoneInfo(self.timezone))
        fire = trigger.get_next_fire_time(None, now - self.duration)
        until: datetime | None = None
        while fire is not None and fire <= now:  # overlapping occurrences: the latest end
            end = fire.astimezone(UTC) + self.duration
            if end > now:
                until = end
            fire = trigger.get_next_fire_time(fire, fire + timedelta(seconds=1))
        return until

    def shown(self, at: datetime) -> str:
        """``at`` as people of this window read it: ``02:00 UTC``, with the date if not today."""
        local = at.astimezone(ZoneInfo(self.timezone))
        return f"{local:%Y-%m-%d %H:%M} {self.timezone}"


def holding_window(
    windows: Iterable[Window], snap: Snapshot, now: datetime
) -> tuple[Window, datetime] | None:
    """The open window that covers ``snap`` at ``now`` and closes last, with its end."""
    best: tuple[Window, datetime] | None = None
    for window in windows:
        if not window.covers(snap):
            continue
        until = window.open_until(now)
        if until is not None and (best is None or until > best[1]):
            best = (window, until)
    return best


@dataclass(frozen=True)
class RuleSet:
    """What the rules file says; ``RuleSet()`` is the same as no file."""

    path: str = ""
    critical: Criterion | None = None
    use_cases: Mapping[TransitionKind, UseCaseRule] = field(
        default_factory=lambda: MappingProxyType({})
    )
    teams: TeamMap = field(default_factory=TeamMap)
    windows: tuple[Window, ...] = ()

    def rule(self, kind: TransitionKind) -> UseCaseRule:
        return self.use_cases.get(kind) or UseCaseRule(kind)

    def describe(self) -> list[str]:
        """One line per setting, for ``rules check``."""
        lines = [f"critical: {self.critical}" if self.critical else "critical: (from settings)"]
        for kind in TransitionKind:
            r = self.rule(kind)
            state = "on" if r.enabled else "off"
            when = f", when {r.when}" if r.when else ""
            lines.append(f"{r.name} ({kind.value}): {state}{when}")
        for team, group in self.teams.groups.items():
            lines.append(f"team {team!r} -> xMatters group {group!r}")
        if self.teams.default:
            lines.append(f"any other team -> xMatters group {self.teams.default!r}")
        for w in self.windows:
            scope = ", ".join(w.teams) if w.teams else "every team"
            if w.when is not None:
                scope += f", when {w.when}"
            if w.start is not None and w.end is not None:
                span = f"{w.shown(w.start)} to {w.shown(w.end)}"
            else:
                span = f"cron `{w.cron}` ({w.timezone}) for {w.duration}"
            lines.append(f"window {w.name!r}: {span}; holds pages of {scope}")
        return lines


# --------------------------------------------------------------------------- the file

_ARRAY_HEADER = re.compile(r"^\s*\[\[\s*([^\[\]]+?)\s*\]\]\s*(#.*)?$")
_HEADER = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")
_KEY = re.compile(r"""^\s*("([^"]*)"|'([^']*)'|[A-Za-z0-9_-]+)\s*=""")
_TOML_LINE = re.compile(r"at line (\d+)")


def _split_dotted(header: str) -> tuple[str, ...]:
    parts = re.findall(r""""([^"]*)"|'([^']*)'|([^.\s"']+)""", header)
    return tuple(next(p for p in groups if p) for groups in parts)


class _Lines:
    """Where a table or a key is in the file (tomllib keeps no positions)."""

    def __init__(self, text: str) -> None:
        self.tables: dict[tuple[str, ...], int] = {}
        self.keys: dict[tuple[str, ...], int] = {}
        self.array_tables: dict[tuple[str, ...], list[int]] = {}
        table: tuple[str, ...] = ()
        for number, line in enumerate(text.splitlines(), start=1):
            array = _ARRAY_HEADER.match(line)
            if array:
                table = _split_dotted(array.group(1))
                self.array_tables.setdefault(table, []).append(number)
                continue
            header = _HEADER.match(line)
            if header:
                table = _split_dotted(header.group(1))
                self.tables.setdefault(table, number)
                continue
            key = _KEY.match(line)
            if key:
                raw = key.group(2) or key.group(3) or key.group(1)
                path = table + tuple(_split_dotted(raw) if key.group(2) is None else (raw,))
                self.keys.setdefault(path, number)
                for i in range(1, len(path)):
                    self.tables.setdefault(path[:i], number)

    def of(self, *path: str) -> int:
        if len(path) == 2 and path[0] == "@line":
            return int(path[1]) or 1
        for i in range(len(path), 0, -1):
            found = self.keys.get(path[:i]) or self.tables.get(path[:i])
            if found:
                return found
        return 1


def parse_rules(
    text: str,
    *,
    path: str = "rules.toml",
    known_fields: Iterable[str] | None = None,
) -> RuleSet:
    """Parse a rules file's text; every problem found raises one ``RulesError`` listing all,
    each as ``line N: ...``. ``known_fields`` are the fields a criterion may use (default:
    the daemon's core fields)."""
    fields = tuple(known_fields) if known_fields is not None else CORE_FIELDS
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = _TOML_LINE.search(str(exc))
        line = found.group(1) if found else str(max(1, len(text.splitlines())))
        message = _TOML_LINE.sub("", str(exc)).replace("()", "").strip(" .")
        raise RulesError(path, [f"line {line}: not valid TOML: {message}"]) from None
    lines = _Lines(text)
    problems: list[str] = []

    def problem(where: tuple[str, ...], message: str) -> None:
        problems.append(f"line {lines.of(*where)}: {message}")

    def criterion(where: tuple[str, ...], value: Any) -> Criterion | None:
        name = ".".join(where)
        if not isinstance(value, str):
            problem(where, f"{name} must be a text (an OData $filter in quotes)")
            return None
        try:
            return compile_criterion(
                value, known_fields=fields, where=f"{name} (line {lines.of(*where)})"
            )
        except FilterSyntaxError as exc:
            problem(where, f"{name} = {value!r}: {exc}")
            return None

    for key in data:
        if key not in _TOP_KEYS:
            problem((key,), f"unknown key {key!r}; {_did_you_mean(key, _TOP_KEYS)}")
    critical = criterion(("critical",), data["critical"]) if "critical" in data else None
    use_cases = _use_cases(data.get("use_cases", {}), problem, criterion, lines)
    teams = _teams(data.get("teams", {}), problem)
    windows = _windows(data.get("windows", []), problem, fields, lines)
    if problems:
        raise RulesError(path, problems)
    return RuleSet(
        path=path,
        critical=critical,
        use_cases=MappingProxyType(use_cases),
        teams=teams,
        windows=windows,
    )


def _did_you_mean(key: str, known: Iterable[str]) -> str:
    known = list(known)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    return f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known)}"


def _use_cases(
    raw: Any,
    problem: Callable[[tuple[str, ...], str], None],
    criterion: Callable[[tuple[str, ...], Any], Criterion | None],
    lines: _Lines,
) -> dict[TransitionKind, UseCaseRule]:
    out: dict[TransitionKind, UseCaseRule] = {}
    if not isinstance(raw, dict):
        problem(("use_cases",), "use_cases must be a table ([use_cases.new_incident] ...)")
        return out
    for key, body in raw.items():
        where = ("use_cases", key)
        kind = USE_CASE_KEYS.get(key)
        if kind is None:
            problem(where, f"unknown use case {key!r}; {_did_you_mean(key, USE_CASE_KEYS)}")
            continue
        if not isinstance(body, dict):
            problem(where, f"use_cases.{key} must be a table with enabled and/or when")
            continue
        for name in body:
            if name not in _USE_CASE_FIELDS:
                problem(
                    (*where, name),
                    f"unknown key {name!r} in use_cases.{key}; "
                    f"{_did_you_mean(name, _USE_CASE_FIELDS)}",
                )
        enabled = body.get("enabled", True)
        if not isinstance(enabled, bool):
            problem((*where, "enabled"), f"use_cases.{key}.enabled must be true or false")
            enabled = True
        when = criterion((*where, "when"), body["when"]) if "when" in body else None
        out[kind] = UseCaseRule(kind, enabled, when, lines.of(*where))
    return out


def _teams(raw: Any, problem: Callable[[tuple[str, ...], str], None]) -> TeamMap:
    if not isinstance(raw, dict):
        problem(("teams",), "teams must be a table ([teams] default = ..., [teams.groups])")
        return TeamMap()
    for key in raw:
        if key not in _TEAM_KEYS:
            problem(
                ("teams", key), f"unknown key {key!r} in teams; {_did_you_mean(key, _TEAM_KEYS)}"
            )
    default = raw.get("default", "")
    if not isinstance(default, str):
        problem(("teams", "default"), "teams.default must be an xMatters group name in quotes")
        default = ""
    groups_raw = raw.get("groups", {})
    groups: dict[str, str] = {}
    if not isinstance(groups_raw, dict):
        problem(("teams", "groups"), 'teams.groups must be a table ("Ivanti team" = "group")')
        groups_raw = {}
    seen: dict[str, str] = {}
    for team, group in groups_raw.items():
        where = ("teams", "groups", team)
        if not isinstance(group, str) or not group.strip():
            problem(where, f"team {team!r} must map to an xMatters group name in quotes")
            continue
        key = _team_key(team)
        if key in seen:
            problem(where, f"team {team!r} is mapped twice (also as {seen[key]!r}); keep one")
            continue
        seen[key] = team
        groups[team] = group.strip()
    return TeamMap(MappingProxyType(groups), default.strip())


_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def _duration(value: Any) -> timedelta | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return timedelta(seconds=value)
    if isinstance(value, str):
        m = _DURATION.match(value.strip().replace(" ", ""))
        if m and any(m.groups()):
            d, h, mi, se = (int(g or 0) for g in m.groups())
            span = timedelta(days=d, hours=h, minutes=mi, seconds=se)
            return span if span > timedelta(0) else None
    return None


def _instant(value: Any, tz: ZoneInfo) -> datetime | None:
    """A TOML date-time (with offset, or local: read in the window's time zone) or the
    same as an ISO text, in UTC."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=tz)
        return value.astimezone(UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=tz).astimezone(UTC)
    return None


def _windows(
    raw: Any,
    problem: Callable[[tuple[str, ...], str], None],
    fields: Iterable[str],
    lines: _Lines,
) -> tuple[Window, ...]:
    if not isinstance(raw, list):
        problem(("windows",), "windows must be a list of tables ([[windows]] name = ...)")
        return ()
    out: list[Window] = []
    names: set[str] = set()
    headers = iter(lines.array_tables.get(("windows",), []))
    for i, body in enumerate(raw):
        line = next(headers, 0)

        def bad(message: str, line: int = line) -> None:
            problem(("@line", str(line)), message)

        if not isinstance(body, dict):
            bad(f"windows entry {i + 1} must be a table")
            continue
        name = body.get("name")
        label = f"window {name!r}" if isinstance(name, str) and name else f"window {i + 1}"
        for key in body:
            if key not in _WINDOW_KEYS:
                bad(f"unknown key {key!r} in {label}; {_did_you_mean(key, _WINDOW_KEYS)}")
        if not isinstance(name, str) or not name.strip():
            bad(f'{label} needs a name (name = "core-switch upgrade")')
            continue
        if name in names:
            bad(f"{label} is defined twice; names must be unique")
        names.add(name)
        tz_name = body.get("timezone", "UTC")
        try:
            tz = ZoneInfo(tz_name) if isinstance(tz_name, str) else None
        except (ZoneInfoNotFoundError, ValueError):
            tz = None
        if tz is None:
            bad(f'{label}: timezone {tz_name!r} is not a time zone; use e.g. "Europe/Berlin"')
            continue
        teams = body.get("teams", [])
        if isinstance(teams, str):
            teams = [teams]
        if not isinstance(teams, list) or not all(isinstance(t, str) for t in teams):
            bad(f"{label}: teams must be a list of Ivanti Owner Team names")
            teams = []
        when = None
        if "when" in body:
            text = body["when"]
            try:
                if not isinstance(text, str):
                    raise FilterSyntaxError("it must be a text (an OData $filter in quotes)")
                when = compile_criterion(text, known_fields=fields, where=f"{label} (line {line})")
            except FilterSyntaxError as exc:
                bad(f"{label}: when = {text!r}: {exc}")
        one_off = "start" in body or "end" in body
        recurring = "cron" in body or "duration" in body
        start = end = None
        cron, duration = "", timedelta(0)
        if one_off == recurring:
            bad(f"{label}: give either start and end (one-off) or cron and duration (recurring)")
            continue
        if one_off:
            start, end = _instant(body.get("start"), tz), _instant(body.get("end"), tz)
            if start is None or end is None:
                bad(f"{label}: start and end must both be date-times, e.g. 2026-12-05T01:00:00")
                continue
            if end <= start:
                bad(f"{label}: end must be after start")
                continue
        else:
            cron = body.get("cron", "")
            got = _duration(body.get("duration"))
            if got is None:
                bad(f'{label}: duration must be e.g. "2h", "90m" or "1h30m"')
                continue
            duration = got
            try:
                if not isinstance(cron, str):
                    raise ValueError("it must be a text")
                _cron_trigger(cron, tz)
            except ValueError as exc:
                bad(
                    f"{label}: cron {cron!r} is not a crontab line (minute hour day month "
                    f'weekday, e.g. "0 1 * * sat"): {exc}'
                )
                continue
        out.append(
            Window(
                name=name,
                timezone=tz_name,
                teams=tuple(teams),
                when=when,
                start=start,
                end=end,
                cron=cron,
                duration=duration,
                line=line,
            )
        )
    return tuple(out)


def load_rules(path: str | Path, *, known_fields: Iterable[str] | None = None) -> RuleSet:
    """Read and parse the rules file at ``path`` (``RulesError`` when unreadable or wrong)."""
    shown = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RulesError(
            shown, ["the file does not exist; create it or unset IXM_RULES_FILE"]
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(
            shown,
            [
                f"cannot be read ({exc}); make it readable by the daemon's user (under systemd "
                "with DynamicUser: mode 0644, in a directory others may enter)"
            ],
        ) from None
    return parse_rules(text, path=shown, known_fields=known_fields)
