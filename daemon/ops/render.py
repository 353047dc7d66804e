"""What the operations commands share to show things: times, ages, tables, JSON.

Times are shown in UTC as ``2026-11-27T10:00:00Z`` with a relative age ("3m ago"); "now"
comes from ``utcnow()`` here, which the commands call as ``render.utcnow()`` so tests can
move it in one place. Tables fit the terminal (``output_width``); a pipe or a file keeps
every column whole.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime | None) -> str | None:
    """UTC ISO-8601 without microseconds: what people compare with Ivanti's screens."""
    if dt is None:
        return None
    return dt.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def span(seconds: float) -> str:
    """A duration in its two largest units: ``45s``, ``3m 5s``, ``2h 5m``, ``3d 4h``."""
    s = abs(seconds)
    if s < 10 and s != int(s):
        return f"{s:.1f}s"
    whole = int(s)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    for big, big_unit, small, small_unit in (
        (days, "d", hours, "h"),
        (hours, "h", minutes, "m"),
        (minutes, "m", secs, "s"),
    ):
        if big:
            return f"{big}{big_unit} {small}{small_unit}" if small else f"{big}{big_unit}"
    return f"{secs}s"


def ago(dt: datetime, now: datetime) -> str:
    seconds = (now - dt).total_seconds()
    if abs(seconds) < 1:
        return "just now"
    return f"{span(seconds)} ago" if seconds > 0 else f"in {span(seconds)}"


def when(dt: datetime | None, now: datetime, *, never: str = "never") -> str:
    if dt is None:
        return never
    return f"{iso(dt)} ({ago(dt, now)})"


def truncate(text: str, width: int) -> str:
    """One line, at most ``width`` characters, ``…`` marking a cut."""
    line = " ".join(text.split())
    if width > 0 and len(line) > width:
        return line[: max(0, width - 1)] + "…"
    return line


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def output_width() -> int | None:
    """How wide a table may be: ``COLUMNS`` when set, else the terminal's width when
    stdout is a terminal, else None (a pipe or a file keeps every column whole, rather
    than the 80 columns ``shutil.get_terminal_size`` falls back to)."""
    env = os.environ.get("COLUMNS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        if not os.isatty(sys.stdout.fileno()):
            return None
    except (AttributeError, OSError, ValueError):  # replaced or closed stdout
        return None
    return shutil.get_terminal_size().columns


_FIT_FLOOR = 5  # a column cut to fit the terminal keeps at least this much (or its header)


def _fit_columns(
    col: list[int], headers: Sequence[str], numeric: Sequence[bool], width: int
) -> list[int]:
    """Narrow the widest text columns, one character at a time, until the row fits in
    ``width``; numbers and headers are never cut (if even that is too wide, the terminal
    wraps)."""
    fitted = list(col)
    floors = [
        c if numeric[i] else min(c, max(len(headers[i]), _FIT_FLOOR)) for i, c in enumerate(col)
    ]
    excess = sum(fitted) + 2 * (len(fitted) - 1) - width
    while excess > 0:
        shrinkable = [i for i, c in enumerate(fitted) if c > floors[i]]
        if not shrinkable:
            break
        widest = max(shrinkable, key=lambda i: fitted[i])
        fitted[widest] -= 1
        excess -= 1
    return fitted


_AUTO = -1


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    max_width: int = 60,
    widths: Mapping[int, int] | None = None,
    width: int | None = _AUTO,
) -> str:
    """Aligned columns; long cells cut with ``…``; all-numeric columns right-aligned.

    ``width``: the line width to fit in, by narrowing the widest text columns (default:
    ``output_width()``, the terminal's; None: no fitting, as for a pipe)."""
    limits = dict(widths or {})
    cells = [
        [truncate(_cell(v), limits.get(i, max_width)) for i, v in enumerate(row)] for row in rows
    ]
    raw_numeric = [True] * len(headers)
    for row in cells:
        for i, text in enumerate(row):
            if not (text == "-" or re.fullmatch(r"-?\d+(\.\d+)?", text)):
                raw_numeric[i] = False
    col = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    numeric = [raw_numeric[i] and bool(cells) for i in range(len(headers))]
    if width == _AUTO:
        width = output_width()
    if width is not None:
        col = _fit_columns(col, headers, numeric, width)
        cells = [[truncate(v, col[i]) for i, v in enumerate(row)] for row in cells]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(col[i]) if numeric[i] else v.ljust(col[i]) for i, v in enumerate(values)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(list(headers)), *(line(r) for r in cells)])


def pairs(items: Iterable[tuple[str, str]], indent: str = "") -> str:
    """``key  value`` lines with the values aligned."""
    rows = list(items)
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"{indent}{k.ljust(width)}  {v}".rstrip() for k, v in rows)


def dump(data: object) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def age_s(dt: datetime | None, now: datetime) -> float | None:
    return None if dt is None else round((now - dt).total_seconds(), 3)
