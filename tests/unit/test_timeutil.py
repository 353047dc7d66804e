from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon import timeutil
from daemon.timeutil import iso_utc, odata_datetime_literal, parse_ivanti_datetime, parse_utc


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2020-08-12T16:33:37-07:00", datetime(2020, 8, 12, 23, 33, 37, tzinfo=UTC)),
        ("2026-11-27T10:15:30+05:30", datetime(2026, 11, 27, 4, 45, 30, tzinfo=UTC)),
        ("2026-11-27T10:15:30Z", datetime(2026, 11, 27, 10, 15, 30, tzinfo=UTC)),
        ("2026-11-27T10:15:30.123Z", datetime(2026, 11, 27, 10, 15, 30, 123000, tzinfo=UTC)),
        # .NET emits up to 7 fractional digits: floored to microseconds
        ("2026-11-27T10:15:30.1234567Z", datetime(2026, 11, 27, 10, 15, 30, 123456, tzinfo=UTC)),
        ("2026-11-27T10:15:30.5+01:00", datetime(2026, 11, 27, 9, 15, 30, 500000, tzinfo=UTC)),
        ("2026-11-27T10:15Z", datetime(2026, 11, 27, 10, 15, tzinfo=UTC)),
        ("2026-11-27T00:15:30+0100", datetime(2026, 11, 26, 23, 15, 30, tzinfo=UTC)),
    ],
)
def test_parse_ivanti_datetime_converts_any_offset_to_utc(text: str, expected: datetime) -> None:
    parsed = parse_ivanti_datetime(text)
    assert parsed == expected
    assert parsed is not None and parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "  ",
        "0001-01-01T00:00:00Z",
        "0001-01-01T00:00:00-07:00",
        "0001-01-01T00:00:00+05:30",
    ],
)
def test_unset_values_and_the_year_one_sentinel_are_none(value: object) -> None:
    assert parse_ivanti_datetime(value) is None


@pytest.mark.parametrize(
    "value",
    [
        "20x6-11-27T10:15:30Z",
        "yesterday",
        "2026-13-01T00:00:00Z",
        "2026-02-30T00:00:00Z",
        "2026-11-27T10:15:30",  # no offset: refusing to guess the zone
        "2026-11-27T10:15:30+25:00",
        "2026-11-27T10:15:30-05:75",  # fromisoformat alone would read it as -06:15
        12345,
        ["2026-11-27T10:15:30Z"],
    ],
)
def test_unparseable_values_raise_value_error(value: object) -> None:
    with pytest.raises(ValueError):
        parse_ivanti_datetime(value)


def test_error_message_quotes_the_value_truncated() -> None:
    bad = "garbage-" + "x" * 500
    with pytest.raises(ValueError) as info:
        parse_ivanti_datetime(bad)
    message = str(info.value)
    assert "'garbage-xxx" in message
    assert len(message) < 160


def test_odata_literal_is_bare_utc_and_floored() -> None:
    dt = datetime(2026, 11, 27, 11, 15, 30, 999999, tzinfo=timezone(timedelta(hours=1)))
    assert odata_datetime_literal(dt) == "2026-11-27T10:15:30Z"


def test_odata_literal_rejects_naive() -> None:
    with pytest.raises(ValueError):
        odata_datetime_literal(datetime(2026, 11, 27, 10, 15, 30))


def test_iso_utc_keeps_microseconds_only_when_present() -> None:
    assert iso_utc(datetime(2026, 11, 27, 10, 15, 30, tzinfo=UTC)) == "2026-11-27T10:15:30Z"
    assert (
        iso_utc(datetime(2026, 11, 27, 10, 15, 30, 123000, tzinfo=UTC))
        == "2026-11-27T10:15:30.123000Z"
    )
    with pytest.raises(ValueError):
        iso_utc(datetime(2026, 11, 27))


def test_parse_utc_reads_xmatters_timestamps() -> None:
    assert parse_utc("2026-11-27T10:15:30.123Z") == datetime(
        2026, 11, 27, 10, 15, 30, 123000, tzinfo=UTC
    )
    assert parse_utc("0001-01-01T00:00:00Z") == datetime(1, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError):
        parse_utc("2026-11-27 10:15:30")


aware = st.datetimes(
    min_value=datetime(1970, 1, 2),
    max_value=datetime(2200, 1, 1),
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(hours=-7)), timezone(timedelta(hours=5, minutes=30))]
    ),
)


@given(aware)
def test_iso_utc_round_trips(dt: datetime) -> None:
    assert parse_utc(iso_utc(dt)) == dt


@given(aware)
def test_odata_literal_never_later_than_the_value(dt: datetime) -> None:
    literal = parse_utc(odata_datetime_literal(dt))
    assert literal <= dt
    assert dt - literal < timedelta(seconds=1)


@given(aware)
def test_ivanti_parse_of_isoformat_output(dt: datetime) -> None:
    assert parse_ivanti_datetime(dt.isoformat()) == dt


def _text(parts: tuple[str, ...]) -> str:
    return "".join(parts)


# Strings of the shape the pattern admits, valid or not: any separator, seconds or none,
# fractions of 1 to 9 digits, every offset spelling (some out of range), odd whitespace.
iso_like = st.tuples(
    st.sampled_from(["", " "]),
    st.integers(0, 9999).map("{:04d}".format),
    st.sampled_from(["-01-", "-02-", "-12-", "-13-", "-00-"]),
    st.sampled_from(["01", "28", "29", "31", "32"]),
    st.sampled_from(["T", "t", " "]),
    st.sampled_from(["00", "09", "23", "24"]),
    st.sampled_from([":00", ":59", ":60"]),
    st.one_of(  # seconds, with or without a fraction, or none
        st.just(""),
        st.tuples(
            st.sampled_from([":00", ":30", ":59", ":60"]),
            st.sampled_from(["", ".1", ",5", ".123", ".123456", ".1234567", ".999999999"]),
        ).map(_text),
    ),
    st.sampled_from(
        ["Z", "z", "+00:00", "-07:00", "+0530", "+05", "-23:59", "+24:00", "+23:59", "+1400"]
    ),
    st.sampled_from(["", " ", "\n"]),
).map(_text)


@given(iso_like)
def test_the_fast_parse_reads_every_admitted_string_as_the_field_by_field_build(
    text: str,
) -> None:
    """``_parse`` hands the common case to ``datetime.fromisoformat``: wherever it
    answers, the answer is the one the field-by-field build gives, and a string
    either rejects, both reject."""
    match = timeutil._ISO_RE.match(text)
    assert match is not None
    try:
        built: datetime | None = timeutil._build(text, match)
    except ValueError:
        built = None
    try:
        parsed = timeutil._parse(text, year_one_is_none=False)
    except ValueError:
        parsed = None
    assert parsed == built
    if parsed is not None:
        assert parsed.tzinfo is UTC
