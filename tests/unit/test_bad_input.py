"""Bad input everywhere: each setting malformed, each Ivanti field of the wrong type,
and hostile strings (control characters, markup, a megabyte) on every path in.

Each gets a clear error (one line that names the setting or field) or is sanitised.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.config import ConfigError, load_settings
from daemon.deliverer import FORM_TRUNCATION_MARKER, fit_form_limits
from daemon.domain import FORM_PROPERTY_LIMITS as FORM_LIMITS
from daemon.notes import comment_note, delivery_note, response_note, sanitize
from daemon.snapshot import MalformedRecord, parse_incident, workflow_payload

MEGABYTE = 1_000_000
HOSTILE = "\x00\x07\x1b[31mred\x1b[0m\u202eevil\u200b<script>alert(1)</script>\r\n\tend"


@pytest.fixture(autouse=True)
def no_stray_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.chdir(tmp_path)
    yield


def good_env(**extra: str) -> dict[str, str]:
    env = {
        "IVANTI_BASE_URL": "https://acme.saasit.com",
        "IVANTI_API_KEY": "IVKEY-0123456789abcdef0123456789",
        "XMATTERS_TRIGGER_URL": "https://acme.xmatters.com/api/integration/1/functions/abc/triggers",
        "XMATTERS_BASE_URL": "https://acme.xmatters.com",
        "XMATTERS_USERNAME": "svc-ivanti",
        "XMATTERS_PASSWORD": "xm-Pa55word!",
    }
    env.update(extra)
    return env


def config_error(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(env, env_file=os.devnull)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    return message


def test_the_good_environment_loads() -> None:
    settings = load_settings(good_env(), env_file=os.devnull)
    assert settings.ivanti is not None and settings.xmatters is not None


# ----- every setting, malformed -----------------------------------------------------------

BAD_SETTINGS: list[tuple[str, str]] = [
    ("IVANTI_BASE_URL", "not a url"),
    ("IVANTI_BASE_URL", "ftp://acme.saasit.com"),
    ("IVANTI_BASE_URL", "https://acme.saasit.com/api/odata"),
    ("IVANTI_BASE_URL", "https://user:pw@acme.saasit.com"),
    ("IVANTI_BASE_URL", "https://acme.saasit.com:port"),
    ("IVANTI_TIMEOUT", "abc"),
    ("IVANTI_TIMEOUT", "-1"),
    ("IVANTI_TIMEOUT", "0"),
    ("IVANTI_TIMEOUT", "nan"),
    ("IVANTI_SCOPE_FILTER", "Status eq"),
    ("IVANTI_SCOPE_FILTER", "substringof('x', Subject)"),
    ("IVANTI_SCOPE_FILTER", "not (Status eq 'Closed')"),
    ("IVANTI_EXTRA_FIELDS", "Bad Field!"),
    ("IVANTI_EXTRA_FIELDS", "Urgency,1st"),
    ("XMATTERS_TRIGGER_URL", "nope"),
    ("XMATTERS_TRIGGER_URL", "gopher://acme.xmatters.com/x"),
    ("XMATTERS_FORM_TRIGGER_URL", "::::"),
    ("XMATTERS_BASE_URL", "htp:/acme"),
    ("XMATTERS_BASE_URL", "https://acme.xmatters.com/api/xm/1"),
    ("XMATTERS_MODE", "fast"),
    ("XMATTERS_RESPONSES_USER", "not-a-uuid"),
    ("XMATTERS_RESPONSES_GROUP", "3d8a9c1e-5b7f-4e2a-9c61-0f4b2d7e8a15;zzz"),
    ("XMATTERS_EVENT_PRIORITY", "URGENT"),
    ("XMATTERS_TIMEOUT", "soon"),
    ("XMATTERS_TIMEOUT", "0.01"),
    ("XMATTERS_RATE_LIMIT", "0"),
    ("XMATTERS_RATE_LIMIT", "inf"),
    ("XMATTERS_RATE_LIMIT", "many"),
    ("XMATTERS_FLOOD_LIMIT", "0"),
    ("XMATTERS_FLOOD_LIMIT", "four"),
    ("XMATTERS_FLOOD_LIMIT", "4.5"),
    ("IXM_CRITICAL_PRIORITIES", ",,"),
    ("IXM_STATUS_RESOLVED", "Closed"),
    ("IXM_STATUS_CANCELED", "Resolved"),
    ("IXM_POLL_INTERVAL", "0.5"),
    ("IXM_POLL_INTERVAL", "fast"),
    ("IXM_POLL_INTERVAL", "-3"),
    ("IXM_POLL_INTERVAL", "10x"),
    ("IXM_OVERLAP", "-1"),
    ("IXM_OVERLAP", "a minute"),
    ("IXM_RECONCILE_INTERVAL", "-5"),
    ("IXM_PAGE_SIZE", "101"),
    ("IXM_PAGE_SIZE", "0"),
    ("IXM_PAGE_SIZE", "ten"),
    ("IXM_PAGE_SIZE", "1.5"),
    ("IXM_BASELINE_PAGE_CRITICAL", "maybe"),
    ("IXM_DELIVERY_INTERVAL", "0"),
    ("IXM_DELIVERY_INTERVAL", "x"),
    ("IXM_MAX_ATTEMPTS", "0"),
    ("IXM_MAX_ATTEMPTS", "twelve"),
    ("IXM_MAX_AGE", "0.5"),
    ("IXM_MAX_AGE", "1w"),
    ("IXM_BACKOFF_BASE", "0"),
    ("IXM_BACKOFF_BASE", "x"),
    ("IXM_BACKOFF_MAX", "x"),
    ("IXM_BACKOFF_MAX", "1"),  # below IXM_BACKOFF_BASE's default 2
    ("IXM_WRITEBACK", "perhaps"),
    ("IXM_WRITEBACK_INTERVAL", "0"),
    ("IXM_WRITEBACK_GRACE", "-1"),
    ("IXM_DELIVERY_NOTES", "some"),
    ("IXM_RESPONSE_ACTIONS", "Acknowledge=page"),
    ("IXM_RESPONSE_ACTIONS", "Acknowledge"),
    ("IXM_USER_MAP", "jsmith"),
    ("IXM_USER_MAP", "a=b;A=c"),
    ("IXM_NOTE_MAX_CHARS", "99"),
    ("IXM_NOTE_MAX_CHARS", "lots"),
    ("IXM_WRITEBACK_CONCURRENCY", "65"),
    ("IXM_WRITEBACK_CONCURRENCY", "0"),
    ("IXM_QUIET_POLL_EVERY", "0"),
    ("IXM_LOG_LEVEL", "LOUD"),
    ("IXM_METRICS_PORT", "70000"),
    ("IXM_METRICS_PORT", "http"),
    ("IXM_METRICS_ADDR", "not an address!"),
    ("IXM_DEADMAN", "1"),
    ("IXM_DEADMAN", "never"),
]


@pytest.mark.parametrize(("name", "value"), BAD_SETTINGS)
def test_each_malformed_setting_is_one_clear_line(name: str, value: str) -> None:
    message = config_error(good_env(**{name: value}))
    assert name in message
    assert len(message) < 400


PAIRED = [
    ({"IVANTI_USERNAME": "svc"}, "IVANTI_USERNAME"),
    ({"IVANTI_PASSWORD": "pw"}, "IVANTI_PASSWORD"),
    ({"IVANTI_USERNAME": "svc", "IVANTI_PASSWORD": "pw"}, "IVANTI_API_KEY"),
    ({"XMATTERS_PASSWORD": ""}, "XMATTERS_USERNAME"),
    ({"XMATTERS_API_KEY": "k"}, "XMATTERS_API_KEY"),
    (
        {"XMATTERS_OAUTH_CLIENT_ID": "c", "XMATTERS_USERNAME": "", "XMATTERS_PASSWORD": ""},
        "XMATTERS_OAUTH_CLIENT_ID",
    ),
    ({"XMATTERS_MODE": "direct"}, "XMATTERS_RESPONSES_USER"),
    (
        {
            "IXM_WRITEBACK": "true",
            "XMATTERS_BASE_URL": "",
            "XMATTERS_USERNAME": "",
            "XMATTERS_PASSWORD": "",
        },
        "IXM_WRITEBACK",
    ),
]


@pytest.mark.parametrize(("extra", "named"), PAIRED)
def test_inconsistent_settings_name_what_to_fix(extra: dict[str, str], named: str) -> None:
    assert named in config_error(good_env(**extra))


@pytest.mark.parametrize(
    "name",
    [
        "IXM_POLL_INTERVAL",
        "IXM_PAGE_SIZE",
        "XMATTERS_MODE",
        "IXM_LOG_LEVEL",
        "IVANTI_SCOPE_FILTER",
        "IXM_USER_MAP",
        "IXM_DELIVERY_NOTES",
        "XMATTERS_RESPONSES_USER",
    ],
)
@pytest.mark.parametrize(
    "value",
    [
        pytest.param(HOSTILE, id="control-and-markup"),
        pytest.param("x" * MEGABYTE, id="one-megabyte"),
        pytest.param("1\n2", id="newline"),
    ],
)
def test_hostile_setting_values_give_a_short_single_line(name: str, value: str) -> None:
    message = config_error(good_env(**{name: value}))
    assert name in message
    assert len(message) < 400  # a megabyte never reaches a log line
    assert not any(ch in message for ch in "\x00\x07\x1b\r\n")


def test_metrics_addr_longer_than_any_host_name_is_refused() -> None:
    message = config_error(good_env(IXM_METRICS_ADDR="a" * 254))
    assert "IXM_METRICS_ADDR" in message
    assert "IXM_METRICS_ADDR" in config_error(good_env(IXM_METRICS_ADDR="b" * 64 + ".example"))


def test_extra_field_name_longer_than_any_field_is_refused() -> None:
    assert "IVANTI_EXTRA_FIELDS" in config_error(
        good_env(IVANTI_EXTRA_FIELDS="Symptom," + "F" * 101)
    )


def test_secret_setting_malformed_never_echoes_its_value() -> None:
    secret = "https://acme.xmatters.com:notaport/api/integration?apiKey=s3cr3t-VALUE"
    message = config_error(good_env(XMATTERS_TRIGGER_URL=secret))
    assert "XMATTERS_TRIGGER_URL" in message and "s3cr3t-VALUE" not in message


# ----- every Ivanti field of the wrong type ------------------------------------------------

REC = "0123456789ABCDEF0123456789ABCDEF"


def good_record(**changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "RecId": REC,
        "IncidentNumber": 10001,
        "Status": "Active",
        "Priority": "1",
        "Owner": "jsmith",
        "OwnerTeam": "Network Operations",
        "LastModDateTime": "2026-11-27T02:00:00-08:00",
        "LastModBy": "lchen",
        "Subject": "Core switch down",
        "Category": "Network",
        "Phone": "+1 415 555 0100",
        "ProfileFullName": "Li Chen",
    }
    record.update(changes)
    return {k: v for k, v in record.items() if v is not DROP}


DROP = object()

BAD_FIELDS: list[tuple[str, object, str]] = [
    ("RecId", DROP, "RecId is missing"),
    ("RecId", None, "RecId is missing"),
    ("RecId", 12345, "RecId is a int 12345, expected a string"),
    ("RecId", ["A"], "RecId is a list"),
    ("RecId", {"id": REC}, "RecId is an object"),
    ("RecId", True, "RecId is a boolean"),
    ("RecId", "not-hex", "is not 32 hexadecimal characters"),
    ("RecId", REC + "00", "is not 32 hexadecimal characters"),
    ("IncidentNumber", DROP, "IncidentNumber is missing"),
    ("IncidentNumber", 12.5, "IncidentNumber 12.5 is not a whole number"),
    ("IncidentNumber", True, "IncidentNumber true is not a whole number"),
    ("IncidentNumber", -4, "IncidentNumber -4 is not a whole number"),
    ("IncidentNumber", "12a", "IncidentNumber '12a' is not a whole number"),
    ("IncidentNumber", "١٢", "is not a whole number"),  # Arabic-Indic digits
    ("IncidentNumber", [1], "IncidentNumber [1] is not a whole number"),
    ("Status", DROP, "Status is missing"),
    ("Status", "", "Status is empty"),
    ("Status", "   ", "Status is empty"),
    ("Status", 3, "Status is a int 3, expected a string"),
    ("Status", ["Active"], "Status is a list"),
    ("Status", {"Name": "Active"}, "Status is an object"),
    ("Priority", ["1"], "Priority is a list"),
    ("Priority", {"v": 1}, "Priority is an object"),
    ("Priority", True, "Priority is a boolean"),
    ("Priority", 1.5, "Priority is a float"),
    ("Owner", 7, "Owner is a int 7"),
    ("Owner", ["jsmith"], "Owner is a list"),
    ("OwnerTeam", {"Name": "NOC"}, "OwnerTeam is an object"),
    ("OwnerTeam", False, "OwnerTeam is a boolean"),
    ("LastModBy", 1, "LastModBy is a int"),
    ("LastModDateTime", DROP, "LastModDateTime is missing"),
    ("LastModDateTime", "", "LastModDateTime is missing"),
    ("LastModDateTime", "yesterday", "LastModDateTime 'yesterday' is not an ISO-8601"),
    ("LastModDateTime", 1764237600, "LastModDateTime 1764237600 is not an ISO-8601"),
    ("LastModDateTime", ["2026-11-27"], "is not an ISO-8601"),
    ("LastModDateTime", "0001-01-01T00:00:00Z", "is the 'unset' sentinel"),
    ("LastModDateTime", "2026-13-45T99:00:00Z", "is not an ISO-8601"),
]


@pytest.mark.parametrize(("field", "value", "problem"), BAD_FIELDS)
def test_each_wrong_field_type_is_a_readable_problem(
    field: str, value: object, problem: str
) -> None:
    with pytest.raises(MalformedRecord) as info:
        parse_incident(good_record(**{field: value}))
    assert problem in info.value.problem
    assert field in info.value.problem or "RecId" in info.value.problem
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("field", ["Status", "RecId", "IncidentNumber", "LastModDateTime"])
def test_a_megabyte_of_junk_in_a_field_gives_a_short_problem(field: str) -> None:
    with pytest.raises(MalformedRecord) as info:
        parse_incident(good_record(**{field: ["x" * MEGABYTE]}))
    assert field in info.value.problem
    assert len(str(info.value)) < 300


@pytest.mark.parametrize(
    ("field", "value", "flat"),
    [
        ("Subject", None, ""),
        ("Subject", 42, "42"),
        ("Category", True, "true"),
        ("Phone", {"mobile": "555"}, '{"mobile":"555"}'),
        ("ProfileFullName", ["Li", "Chen"], '["Li","Chen"]'),
        ("Priority", 2, "2"),
        ("Priority", None, ""),
        ("Owner", None, ""),
        ("IncidentNumber", " 10001 ", ""),
    ],
)
def test_forwarded_fields_of_odd_types_are_flattened_not_rejected(
    field: str, value: object, flat: str
) -> None:
    snap = parse_incident(good_record(**{field: value}))
    if field in snap.payload_fields:
        assert snap.payload_fields[field] == flat
    elif field == "Priority":
        assert snap.priority == flat
    elif field == "Owner":
        assert snap.owner == flat
    else:
        assert snap.incident_number == 10001


# ----- hostile strings on the way to xMatters -----------------------------------------------


def test_a_megabyte_subject_is_cut_to_the_form_limit_with_a_marker() -> None:
    snap = parse_incident(good_record(Subject="S" * MEGABYTE))
    sent = fit_form_limits(workflow_payload(snap, "New Incident"))
    assert len(sent["Summary"]) == FORM_LIMITS["Summary"] == 255
    assert sent["Summary"].endswith(FORM_TRUNCATION_MARKER)
    assert sent["RecId"] == REC and sent["Type"] == "New Incident"


@pytest.mark.parametrize(("name", "limit"), sorted(FORM_LIMITS.items()))
def test_every_form_property_is_kept_within_its_maximum(name: str, limit: int) -> None:
    fitted = fit_form_limits({name: "v" * (limit + 1)})
    assert len(fitted[name]) == limit
    exact = fit_form_limits({name: "v" * limit})
    assert exact[name] == "v" * limit  # at the limit nothing is cut


def test_values_without_a_limit_and_non_strings_pass_untouched() -> None:
    props = {"Urgency": "u" * 5000, "IncidentID": 10001, "Summary": None}
    assert fit_form_limits(props) == props


def test_markup_and_control_characters_reach_xmatters_only_as_json_text() -> None:
    """xMatters form properties are JSON string values: markup stays literal text and
    control characters are escaped by the JSON encoding, never raw bytes on the wire."""
    snap = parse_incident(good_record(Subject=HOSTILE))
    body = json.dumps(fit_form_limits(workflow_payload(snap, "New Incident")))
    assert "\x00" not in body and "\x1b" not in body
    assert json.loads(body)["Summary"] == HOSTILE.strip()


# ----- hostile strings on the way back to Ivanti --------------------------------------------


@pytest.mark.parametrize("limit", [100, 4000])
def test_a_megabyte_comment_becomes_a_capped_note(limit: int) -> None:
    note = response_note(
        "[xMatters]", "Jane", "Smith", "Mobile App", "Acknowledge", "c" * MEGABYTE, limit=limit
    )
    assert len(note) <= limit
    assert note.startswith("[xMatters] Jane Smith | Mobile App responded [ Acknowledge ]")
    assert "…[truncated]" in note


def test_control_characters_and_bidi_tricks_are_removed_from_notes() -> None:
    note = comment_note("[xMatters]", "Ja\x00ne", "Sm\u202eith", HOSTILE)
    assert not any(ord(ch) < 32 or ch in "\u202e\u200b\x7f" for ch in note)
    assert "<script>alert(1)</script>" in note  # markup stays literal text
    assert note.startswith("[xMatters] Jane Smith commented [ ")


@pytest.mark.parametrize(
    "text", [HOSTILE, "x" * MEGABYTE, "\u0000" * 10, "🙂" * 5000, "\ud800lone surrogate"]
)
def test_sanitize_always_returns_short_printable_text(text: str) -> None:
    out = sanitize(text, 500)
    assert len(out) <= 500
    assert all(ch == " " or ch.isprintable() for ch in out)
    out.encode("utf-8")  # no lone surrogates left


def test_hostile_names_in_delivery_notes() -> None:
    failed = delivery_note("[xMatters]", "FAILED", "js\x1bmith|Mobile\x00 App", None, None, None)
    assert failed == "[xMatters] Notification FAILED to jsmith|Mobile App"
    huge = delivery_note("[xMatters]", "DELIVERED", "x" * MEGABYTE, "y" * MEGABYTE, "", "")
    assert huge is not None and len(huge) <= 4000
