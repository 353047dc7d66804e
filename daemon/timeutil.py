"""Datetime parsing and formatting for Ivanti, xMatters and the daemon's own store.

Ivanti serialises datetimes with whatever UTC offset was in force at that instant
(``-07:00`` on one row, ``-08:00`` on the next after a DST change, ``Z`` on some
tenants), so every value is converted to timezone-aware UTC on the way in and only
UTC ever leaves this module. Unset Ivanti datetimes are the sentinel
``0001-01-01T00:00:00Z`` rather than ``null``; they become ``None``.

A value without any offset is rejected rather than guessed: reading a local time as
UTC would shift the polling watermark by hours, and a watermark that is too late drops
changes silently, whereas a rejected value is loud.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

_ISO_RE = re.compile(
    r"""
    ^\s*
    (?P<year>\d{4})-(?P<month>\d{2})-(?P<day>\d{2})
    [Tt\ ]
    (?P<hour>\d{2}):(?P<minute>\d{2})
    (?::(?P<second>\d{2})(?:[.,](?P<fraction>\d+))?)?
    (?P<offset>[Zz]|[+-]\d{2}(?::?[0-5]\d)?)?
    \s*$
    """,
    re.VERBOSE,
)

_QUOTE_LIMIT = 60


def _quote(value: object) -> str:
    """Render a bad value for an error message without flooding logs with a huge one."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) > _QUOTE_LIMIT:
        text = text[: _QUOTE_LIMIT - 1] + "…"
    return f"'{text}'"


def _parse_offset(text: str) -> timezone:
    if text in ("Z", "z"):
        return UTC
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    hours = int(digits[:2])
    minutes = int(digits[2:4]) if len(digits) > 2 else 0
    if hours > 23 or minutes > 59:
        raise ValueError(f"UTC offset {text} is out of range")
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def _fraction_to_micros(fraction: str | None) -> int:
    """Floor any number of fractional digits to microseconds (.NET sends up to 7)."""
    if not fraction:
        return 0
    return int(fraction[:6].ljust(6, "0"))


def _parse(value: str, *, year_one_is_none: bool) -> datetime | None:
    match = _ISO_RE.match(value)
    if match is None:
        raise ValueError(f"{_quote(value)} is not an ISO-8601 datetime")
    if match["offset"] is None:
        raise ValueError(f"{_quote(value)} has no UTC offset (expected Z or +hh:mm)")
    if year_one_is_none and match["year"] == "0001":
        return None
    try:
        # what the pattern admits, ``fromisoformat`` reads alike (fractions floored to
        # microseconds), in C: a busy poll parses thousands of these
        return datetime.fromisoformat(value.strip()).astimezone(UTC)
    except (ValueError, OverflowError):
        return _build(value, match)  # says what is wrong (or reads what it cannot)


def _build(value: str, match: re.Match[str]) -> datetime:
    """The datetime ``match`` of ``_ISO_RE`` (with an offset) describes, field by field."""
    parts = match.groupdict()
    try:
        local = datetime(
            int(parts["year"]),
            int(parts["month"]),
            int(parts["day"]),
            int(parts["hour"]),
            int(parts["minute"]),
            int(parts["second"] or 0),
            _fraction_to_micros(parts["fraction"]),
            tzinfo=_parse_offset(parts["offset"]),
        )
        return local.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"{_quote(value)} is not a valid datetime: {exc}") from None


def parse_ivanti_datetime(value: object) -> datetime | None:
    """Parse an Ivanti datetime field to aware UTC; unset values (None, "", year 1) are None.

    Any value in year 1 counts as the sentinel, whatever its offset: a tenant in a
    negative zone may render the same "unset" instant as ``0001-01-01T00:00:00-07:00``,
    and converting year-1 values with a positive offset to UTC would underflow.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{_quote(value)} is not an ISO-8601 datetime string")
    if not value.strip():
        return None
    return _parse(value, year_one_is_none=True)


def _require_aware(dt: datetime) -> datetime:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"naive datetime {dt.isoformat()} has no time zone; refusing to guess")
    return dt.astimezone(UTC)


def odata_datetime_literal(dt: datetime) -> str:
    """Bare UTC literal for an OData ``$filter``, floored to whole seconds.

    Flooring is the safe direction for the ``ge`` watermark filter: it can only
    re-read a row already seen (de-duplicated later), never skip one.
    """
    utc = _require_aware(dt)
    return (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}"
        f"T{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}Z"
    )


def iso_utc(dt: datetime) -> str:
    """ISO-8601 UTC text with ``Z`` for values the daemon stores; microseconds kept if non-zero.

    The text is for storage and display: values with and without a fraction do not
    sort correctly as strings (``...30Z`` > ``...30.5Z``), so compare parsed datetimes.
    """
    # isoformat() of a UTC value: YYYY-MM-DDTHH:MM:SS, .ffffff only if non-zero, +00:00
    return _require_aware(dt).isoformat()[:-6] + "Z"


def parse_utc(value: str) -> datetime:
    """Parse a timestamp the daemon wrote (``iso_utc``) or xMatters sent, to aware UTC.

    Unlike ``parse_ivanti_datetime`` there is no sentinel here: year 1 is just a date.
    """
    if not isinstance(value, str):
        raise ValueError(f"{_quote(value)} is not an ISO-8601 datetime string")
    parsed = _parse(value, year_one_is_none=False)
    assert parsed is not None  # only the Ivanti sentinel maps to None
    return parsed
