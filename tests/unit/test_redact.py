"""Secrets never reach logs or exception messages, in any encoding they travel in."""

from __future__ import annotations

import base64
import io
import json
import logging
import pickle
import secrets
from datetime import UTC, datetime
from urllib.parse import quote, quote_plus

import pytest

from daemon.errors import (
    ApiError,
    OutcomeUnknown,
    PermanentError,
    TransientError,
    parse_http_date,
    parse_retry_after,
)
from daemon.redact import MASK, RedactingFilter, redact, register_secret, registered_count


def fresh_secret(prefix: str = "S") -> str:
    """A unique secret with characters that change under URL encoding."""
    return f"{prefix}{secrets.token_hex(6)}+/=&x y"


# ----- registered secrets -----------------------------------------------------------------


def test_registered_secret_is_masked_in_every_encoding() -> None:
    secret = fresh_secret()
    register_secret(secret)
    basic = base64.b64encode(f"api-user:{secret}".encode()).decode()
    forms = [
        secret,
        quote(secret, safe=""),
        quote_plus(secret),
        json.dumps(secret)[1:-1],
        base64.b64encode(secret.encode()).decode(),
        basic,
    ]
    for form in forms:
        text = f"before {form} after"
        out = redact(text)
        assert form not in out, form
        assert out.startswith("before ") and out.endswith(" after")
        assert MASK in out


def test_basic_header_of_registered_password_is_masked_wherever_it_appears() -> None:
    secret = fresh_secret("P")
    register_secret(secret)
    token = base64.b64encode(f"xmrest:{secret}".encode()).decode()
    out = redact(f"headers={{'X-Creds': '{token}'}}")
    assert token not in out
    assert MASK in out


def test_short_and_empty_values_are_not_registered() -> None:
    before = registered_count()
    register_secret("")
    register_secret("abc")
    assert registered_count() == before
    assert redact("abc is a word") == "abc is a word"


def test_registering_twice_is_harmless() -> None:
    secret = fresh_secret()
    register_secret(secret)
    count = registered_count()
    register_secret(secret)
    assert registered_count() == count
    assert secret not in redact(secret * 2)


def test_secret_inside_a_key_name_does_not_unmask_the_value() -> None:
    weak = "wk" + secrets.token_hex(3)  # a weak secret that also occurs in a key name
    register_secret(weak)
    out = redact(f'{{"{weak}_password": "hunter2-value"}} {weak}_password=other-value')
    assert "hunter2-value" not in out and "other-value" not in out and weak not in out


def test_longer_secret_containing_a_shorter_one_leaves_no_residue() -> None:
    short = "K" + secrets.token_hex(4)
    long = short + "-tail-" + secrets.token_hex(4)
    register_secret(short)
    register_secret(long)
    out = redact(f"x {long} y")
    assert "tail" not in out
    assert out == f"x {MASK} y"


# ----- shape-based patterns (secrets the registry does not know) ---------------------------


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        (
            "POST https://a.xmatters.com/api/integration/1/functions/f/triggers?apiKey=ab12cd34",
            "ab12cd34",
        ),
        ("url ...triggers?x=1&apikey=Zq9Zq9Zq9#frag", "Zq9Zq9Zq9"),
        ("Authorization: rest_api_key=1A2B3CC4D5E67F8901G2HI345J6K7L89", "1A2B3CC4D5E67F"),
        ("sent rest_api_key=1A2B3CC4D5E67F8901G2HI345J6K7L89, got 401", "1A2B3CC4D5E67F"),
        ("{'Authorization': 'Bearer eyJhbGciOi.abc.def'}", "eyJhbGciOi"),
        ('{"Authorization": "Basic dXNlcjpwYXNz"}', "dXNlcjpwYXNz"),
        ("session acme.saasit.com#OV9HPH7EERP139GCVVLPNR5F8B1SDS64#2 expired", "OV9HPH7EERP139G"),
        ('{"access_token":"eyJ0eXAi.x.y","token_type":"bearer"}', "eyJ0eXAi"),
        ('{"refresh_token": "r-4f1c-9a7e"}', "r-4f1c-9a7e"),
        ('{"password": "hunter2\\"quoted"}', "hunter2"),
        ("{'password': 'pa55word'}", "pa55word"),
        ("grant_type=password&client_id=c&username=u&password=pa55word!", "pa55word"),
        ("grant_type=refresh_token&refresh_token=rt-123456&client_id=c", "rt-123456"),
        ("IVANTI_PASSWORD=topsecret99 set", "topsecret99"),
        ("client_secret=cs-998877", "cs-998877"),
        ("retrying with Bearer abcdefghijklmnop", "abcdefghijklmnop"),
    ],
)
def test_secret_shapes_are_masked(text: str, leak: str) -> None:
    out = redact(text)
    assert leak not in out
    assert MASK in out


@pytest.mark.parametrize(
    "text",
    [
        "ivanti update: HTTP 400 ISM_4000: Required field Incident.Category value must be provided",
        "RecId 085867F47547496783005D95CB82D557 at 2026-11-27T10:15:30-08:00",
        "$filter=LastModDateTime ge 2026-01-01T00:00:00Z&$orderby=LastModDateTime asc",
        '{"token_type": "bearer", "expires_in": 900}',
        "",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact(text) == text


# ----- logging filter ----------------------------------------------------------------------


def _render(record_logger: logging.Logger, emit: object) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s %(who)s"))
    handler.addFilter(RedactingFilter())
    record_logger.addHandler(handler)
    record_logger.propagate = False
    try:
        assert callable(emit)
        emit()
    finally:
        record_logger.removeHandler(handler)
    return stream.getvalue()


def test_filter_redacts_message_args_traceback_and_extras() -> None:
    secret = fresh_secret("L")
    register_secret(secret)
    logger = logging.getLogger("test.redact.filter")
    logger.setLevel(logging.DEBUG)

    def emit() -> None:
        try:
            raise RuntimeError(f"boom with {secret}")
        except RuntimeError:
            logger.exception("login %s failed", secret, extra={"who": f"user:{secret}"})

    output = _render(logger, emit)
    assert secret not in output
    assert "login *** failed" in output
    assert "RuntimeError: boom with ***" in output
    assert "user:***" in output


def test_filter_keeps_record_when_format_is_broken() -> None:
    secret = fresh_secret("B")
    register_secret(secret)
    logger = logging.getLogger("test.redact.broken")
    logger.setLevel(logging.INFO)
    output = _render(logger, lambda: logger.info("%d items", secret, extra={"who": "-"}))
    assert secret not in output
    assert "items" in output


# ----- errors: one readable, redacted line --------------------------------------------------


def test_api_error_renders_one_line() -> None:
    err = PermanentError(
        "ivanti",
        "update",
        "Required field Incident.Category value must be provided",
        status=400,
        code="ISM_4000",
    )
    assert str(err) == (
        "ivanti update: HTTP 400 ISM_4000: Required field Incident.Category value must be provided"
    )
    no_status = TransientError("xmatters", "events", "request not sent (ConnectError)")
    assert str(no_status) == "xmatters events: request not sent (ConnectError)"


def test_api_error_detail_is_redacted_flattened_and_capped() -> None:
    secret = fresh_secret("E")
    register_secret(secret)
    err = ApiError("ivanti", "query", f"line one\nleaked {secret}\n" + "x" * 500, status=500)
    assert "\n" not in str(err)
    assert secret not in str(err) and secret not in repr(err)
    assert len(err.detail) <= 300


def test_api_error_survives_pickling() -> None:
    err = OutcomeUnknown("xmatters", "trigger", "no answer", status=502, retry_after=3.0)
    clone = pickle.loads(pickle.dumps(err))
    assert type(clone) is OutcomeUnknown
    assert str(clone) == str(err)
    assert clone.retry_after == 3.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("7", 7.0),
        ("1.5", 1.5),
        ("-3", 0.0),
        ("Fri, 27 Nov 2026 10:02:00 GMT", 120.0),
        ("Fri, 27 Nov 2026 09:00:00 GMT", 0.0),
        ("soon", None),
        ("", None),
        (None, None),
        ("nan", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    now = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)
    assert parse_retry_after(value, now=now) == expected


def test_parse_http_date() -> None:
    assert parse_http_date("Fri, 27 Nov 2026 10:00:00 GMT") == datetime(
        2026, 11, 27, 10, 0, tzinfo=UTC
    )
    assert parse_http_date("not a date") is None
    assert parse_http_date(None) is None
