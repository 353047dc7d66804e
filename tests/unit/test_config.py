"""Configuration: every variable's happy path, a bad value per type, secrets kept secret."""

from __future__ import annotations

import os
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.config import (
    EX_CONFIG,
    SECRET_NAMES,
    ConfigError,
    Settings,
    load_settings,
    validate_scope_filter,
)

IVANTI_KEY = "IVKEY-0123456789abcdef0123456789"
TRIGGER_KEY = "TRIGGERKEY-9f8e7d6c"
TRIGGER = f"https://acme.xmatters.com/api/integration/1/functions/abc/triggers?apiKey={TRIGGER_KEY}"
UUID_A = "3d8a9c1e-5b7f-4e2a-9c61-0f4b2d7e8a15"
UUID_B = "a1b2c3d4-0000-4000-8000-123456789abc"
UUID_C = "ffffffff-1111-4222-8333-444444444444"


def base_env(**extra: str) -> dict[str, str]:
    env = {
        "IVANTI_BASE_URL": "https://acme.saasit.com",
        "IVANTI_API_KEY": IVANTI_KEY,
        "XMATTERS_TRIGGER_URL": TRIGGER,
    }
    env.update(extra)
    return env


def rest_env(**extra: str) -> dict[str, str]:
    env = base_env(
        XMATTERS_BASE_URL="https://acme.xmatters.com",
        XMATTERS_USERNAME="svc-ivanti",
        XMATTERS_PASSWORD="xm-Pa55word!",
    )
    env.update(extra)
    return env


def error_of(env: dict[str, str], **kwargs: object) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(env, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture(autouse=True)
def in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No stray ./.env from the repo; cwd-based defaults land in tmp_path."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(autouse=True)
def psycopg_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The examples use postgresql:// state DBs; their driver is not a dependency."""
    monkeypatch.setitem(sys.modules, "psycopg", types.ModuleType("psycopg"))


@pytest.fixture(autouse=True)
def registered(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Replace daemon.redact with a recorder: the calls can be seen, and the test secrets
    stay out of the real process-wide registry (which would mask them in other tests)."""
    seen: list[str] = []
    stub = types.ModuleType("daemon.redact")
    stub.register_secret = seen.append  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "daemon.redact", stub)
    yield seen


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- basics


def test_ex_config_is_sysexits_value() -> None:
    assert EX_CONFIG == 78


def test_minimal_environment_gives_documented_defaults(in_tmp_dir: Path) -> None:
    s = load_settings(base_env())
    assert s.ivanti is not None and s.xmatters is not None
    assert s.ivanti.base_url == "https://acme.saasit.com"
    assert s.ivanti.tenant == "acme.saasit.com"
    assert (s.ivanti.api_key, s.ivanti.username, s.ivanti.password) == (IVANTI_KEY, None, None)
    assert s.ivanti.auth == "apikey"
    assert (s.ivanti.role, s.ivanti.timeout, s.ivanti.scope_filter) == ("Admin", 30.0, "")
    assert s.ivanti.extra_fields == ()
    xm = s.xmatters
    assert xm.trigger_url == TRIGGER and xm.form_trigger_url == TRIGGER
    assert (xm.base_url, xm.auth, xm.username, xm.password) == (None, "none", None, None)
    assert (xm.mode, xm.notes_prefix) == ("workflow", "[xMatters]")
    assert xm.recid_properties == ("RecId#en", "RecId")
    assert (xm.event_priority, xm.timeout, xm.rate_limit_per_s, xm.flood_limit_per_min) == (
        "MEDIUM",
        30.0,
        100.0,
        4,
    )
    assert xm.user_response_options == () and xm.group_response_options == ()
    assert s.policy.critical_priorities == {"1", "2"}
    assert s.policy.resolved_statuses == {"resolved"}
    assert s.policy.closed_statuses == {"closed"}
    assert s.policy.canceled_statuses == {"canceled", "cancelled"}
    p = s.poll
    assert (p.interval, p.overlap, p.reconcile_interval, p.page_size) == (30, 60, 3600, 100)
    assert p.baseline_page_critical is False
    d = s.delivery
    assert (d.interval, d.max_attempts, d.max_age, d.backoff_base, d.backoff_max) == (
        5,
        12,
        86400,
        2.0,
        600.0,
    )
    w = s.writeback
    assert w.enabled is False  # no XMATTERS_BASE_URL
    assert (w.interval, w.grace, w.delivery_notes, w.response_actions) == (2, 3600, "all", "")
    assert dict(w.user_map) == {}
    assert (w.note_max_chars, w.concurrency, w.quiet_poll_every) == (4000, 8, 4)
    o = s.ops
    assert (o.log_level, o.metrics_port, o.metrics_addr, o.deadman) == (
        "INFO",
        None,
        "127.0.0.1",
        600,
    )
    assert s.state_db_url == f"sqlite:///{in_tmp_dir}/ivanti-xmatters.db"


def test_every_variable_happy_path(tmp_path: Path) -> None:
    env = {
        "IVANTI_BASE_URL": "https://ism.example.com/HEAT/",
        "IVANTI_TENANT": "tenant-7",
        "IVANTI_USERNAME": "svc",
        "IVANTI_PASSWORD": "iv-pw",
        "IVANTI_ROLE": "ServiceDeskAnalyst",
        "IVANTI_TIMEOUT": "12.5",
        "IVANTI_SCOPE_FILTER": "OwnerTeam eq 'Network Operations' or OwnerTeam eq 'Database Team'",
        "IVANTI_EXTRA_FIELDS": " Symptom , Service,Symptom",
        "XMATTERS_BASE_URL": "https://acme.xmatters.com/",
        "XMATTERS_TRIGGER_URL": "/api/integration/1/functions/step00/triggers",
        "XMATTERS_FORM_TRIGGER_URL": "https://acme.xmatters.com/api/integration/1/functions/s1/triggers",
        "XMATTERS_API_KEY": "key-id",
        "XMATTERS_API_SECRET": "key-secret",
        "XMATTERS_MODE": "DIRECT",
        "XMATTERS_RESPONSES_USER": UUID_A.upper(),
        "XMATTERS_RESPONSES_GROUP": f"{UUID_B}; {UUID_C}",
        "XMATTERS_NOTES_PREFIX": "[xM]",
        "XMATTERS_RECID_PROPERTY": "RecId",
        "XMATTERS_EVENT_PRIORITY": "high",
        "XMATTERS_TIMEOUT": "5",
        "XMATTERS_RATE_LIMIT": "2.5",
        "XMATTERS_FLOOD_LIMIT": "6",
        "IXM_CRITICAL_PRIORITIES": "1, 2,3",
        "IXM_STATUS_RESOLVED": "Resolved,Fixed",
        "IXM_STATUS_CLOSED": "CLOSED",
        "IXM_STATUS_CANCELED": "Withdrawn",
        "IXM_POLL_INTERVAL": "15",
        "IXM_OVERLAP": "2m",
        "IXM_RECONCILE_INTERVAL": "0",
        "IXM_PAGE_SIZE": "50",
        "IXM_BASELINE_PAGE_CRITICAL": "yes",
        "IXM_DELIVERY_INTERVAL": "1.5",
        "IXM_MAX_ATTEMPTS": "3",
        "IXM_MAX_AGE": "1d",
        "IXM_BACKOFF_BASE": "1.5",
        "IXM_BACKOFF_MAX": "120",
        "IXM_WRITEBACK": "on",
        "IXM_WRITEBACK_INTERVAL": "10",
        "IXM_WRITEBACK_GRACE": "1h",
        "IXM_DELIVERY_NOTES": "Failures",
        "IXM_USER_MAP": "jsmith=JSmith; bwong = BWong",
        "IXM_NOTE_MAX_CHARS": "2000",
        "IXM_WRITEBACK_CONCURRENCY": "2",
        "IXM_QUIET_POLL_EVERY": "3",
        "IXM_STATE_DB": "postgresql://ixm@db.example.com/ixm",
        "IXM_LOG_LEVEL": "debug",
        "IXM_METRICS_PORT": "9464",
        "IXM_METRICS_ADDR": "0.0.0.0",
        "IXM_DEADMAN": "300",
    }
    s = load_settings(env)
    iv, xm = s.ivanti, s.xmatters
    assert iv is not None and xm is not None
    assert (iv.base_url, iv.tenant, iv.role, iv.timeout) == (
        "https://ism.example.com/HEAT",
        "tenant-7",
        "ServiceDeskAnalyst",
        12.5,
    )
    assert (iv.api_key, iv.username, iv.password, iv.auth) == (None, "svc", "iv-pw", "session")
    assert iv.scope_filter.startswith("OwnerTeam eq")
    assert iv.extra_fields == ("Symptom", "Service")
    assert xm.base_url == "https://acme.xmatters.com"
    assert xm.trigger_url == "https://acme.xmatters.com/api/integration/1/functions/step00/triggers"
    assert xm.form_trigger_url.endswith("/functions/s1/triggers")
    assert (xm.auth, xm.username, xm.password) == ("apikey", "key-id", "key-secret")
    assert (xm.mode, xm.event_priority, xm.notes_prefix, xm.recid_properties) == (
        "direct",
        "HIGH",
        "[xM]",
        ("RecId",),
    )
    assert xm.user_response_options == (UUID_A,)
    assert xm.group_response_options == (UUID_B, UUID_C)
    assert (xm.timeout, xm.rate_limit_per_s, xm.flood_limit_per_min) == (5, 2.5, 6)
    assert s.policy.critical_priorities == {"1", "2", "3"}
    assert s.policy.resolved_statuses == {"resolved", "fixed"}
    assert s.policy.closed_statuses == {"closed"}
    assert s.policy.canceled_statuses == {"withdrawn"}
    assert s.policy.status_class("FIXED").terminal
    assert (s.poll.interval, s.poll.overlap, s.poll.reconcile_interval) == (15, 120, 0)
    assert (s.poll.page_size, s.poll.baseline_page_critical) == (50, True)
    d = s.delivery
    assert (d.interval, d.max_attempts, d.max_age, d.backoff_base, d.backoff_max) == (
        1.5,
        3,
        86400,
        1.5,
        120,
    )
    w = s.writeback
    assert (w.enabled, w.interval, w.grace, w.delivery_notes) == (True, 10, 3600, "failures")
    assert dict(w.user_map) == {"jsmith": "JSmith", "bwong": "BWong"}
    assert (w.note_max_chars, w.concurrency, w.quiet_poll_every) == (2000, 2, 3)
    assert s.state_db_url == "postgresql://ixm@db.example.com/ixm"
    assert (s.ops.log_level, s.ops.metrics_port, s.ops.metrics_addr, s.ops.deadman) == (
        "DEBUG",
        9464,
        "0.0.0.0",
        300,
    )


def test_settings_are_frozen() -> None:
    s = load_settings(base_env())
    with pytest.raises(AttributeError):
        s.poll.interval = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        s.writeback.user_map["x"] = "y"  # type: ignore[index]


# --------------------------------------------------------------------------- .env file


def test_dotenv_in_cwd_is_read_and_environment_wins(in_tmp_dir: Path) -> None:
    write(
        in_tmp_dir / ".env",
        "IXM_POLL_INTERVAL=45\nIXM_PAGE_SIZE=20\nIVANTI_PASSWORD='pa$$word'\nIVANTI_USERNAME=u\n",
    )
    env = base_env(IXM_PAGE_SIZE="10")
    del env["IVANTI_API_KEY"]
    s = load_settings(env)
    assert s.poll.interval == 45
    assert s.poll.page_size == 10
    assert s.ivanti is not None and s.ivanti.password == "pa$$word"  # no ${} interpolation


def test_explicit_env_file(tmp_path: Path) -> None:
    f = write(tmp_path / "custom.env", "IXM_OVERLAP=90\n")
    assert load_settings(base_env(), env_file=f).poll.overlap == 90
    assert load_settings(base_env(), env_file=str(f)).poll.overlap == 90


def test_explicit_env_file_must_exist(tmp_path: Path) -> None:
    message = error_of(base_env(), env_file=tmp_path / "nope.env")
    assert "nope.env" in message and "does not exist" in message


def test_empty_value_counts_as_unset() -> None:
    s = load_settings(base_env(IXM_POLL_INTERVAL="", IVANTI_PASSWORD="  "))
    assert s.poll.interval == 30
    assert s.ivanti is not None and s.ivanti.password is None


def test_os_environ_is_default_source(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in base_env(IXM_PAGE_SIZE="7").items():
        monkeypatch.setenv(k, v)
    assert load_settings().poll.page_size == 7


# --------------------------------------------------------------------------- secrets


def test_secret_from_file_strips_one_trailing_newline(tmp_path: Path) -> None:
    f = write(tmp_path / "key", "from-file-key\n\n")
    env = base_env(IVANTI_API_KEY_FILE=str(f))
    del env["IVANTI_API_KEY"]
    s = load_settings(env)
    assert s.ivanti is not None and s.ivanti.api_key == "from-file-key\n"


def test_secret_file_crlf(tmp_path: Path) -> None:
    f = write(tmp_path / "key", "crlf-key\r\n")
    env = base_env(IVANTI_API_KEY_FILE=str(f))
    del env["IVANTI_API_KEY"]
    assert load_settings(env).ivanti.api_key == "crlf-key"  # type: ignore[union-attr]


def test_secret_from_systemd_credential(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    write(creds / "XMATTERS_TRIGGER_URL", TRIGGER + "\n")
    write(creds / "IVANTI_API_KEY", "cred-key")
    env = base_env(CREDENTIALS_DIRECTORY=str(creds))
    del env["XMATTERS_TRIGGER_URL"], env["IVANTI_API_KEY"]
    s = load_settings(env)
    assert s.xmatters is not None and s.xmatters.trigger_url == TRIGGER
    assert s.ivanti is not None and s.ivanti.api_key == "cred-key"
    assert dict(s.describe())["IVANTI_API_KEY"] == "*** (set, 8 chars) (from credential)"


def test_secret_precedence_variable_then_file_then_credential(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    write(creds / "IVANTI_API_KEY", "cred-key")
    f = write(tmp_path / "key", "file-key")
    with_var = base_env(CREDENTIALS_DIRECTORY=str(creds))
    assert load_settings(with_var).ivanti.api_key == IVANTI_KEY  # type: ignore[union-attr]
    with_file = base_env(CREDENTIALS_DIRECTORY=str(creds), IVANTI_API_KEY_FILE=str(f))
    del with_file["IVANTI_API_KEY"]
    assert load_settings(with_file).ivanti.api_key == "file-key"  # type: ignore[union-attr]


def test_variable_and_file_both_set_is_an_error(tmp_path: Path) -> None:
    f = write(tmp_path / "pw", "x")
    message = error_of(base_env(IVANTI_API_KEY_FILE=str(f)))
    assert (
        message == "set one of IVANTI_API_KEY or IVANTI_API_KEY_FILE, not both; remove one of them"
    )


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "binary"])
def test_unreadable_secret_file_names_the_path(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "secret-file"
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        write(path, "\n")
    elif kind == "binary":
        path.write_bytes(b"\xff\xfe\x00bad")
    env = base_env(XMATTERS_PASSWORD_FILE=str(path))
    message = error_of(env)
    assert f"XMATTERS_PASSWORD_FILE={path}" in message


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads anything")
def test_permission_denied_secret_file(tmp_path: Path) -> None:
    path = write(tmp_path / "pw", "secret")
    path.chmod(0)
    message = error_of(base_env(IVANTI_PASSWORD_FILE=str(path), IVANTI_USERNAME="u"))
    assert str(path) in message and "cannot be read" in message


def test_unreadable_credential_names_the_path(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    (creds / "XMATTERS_API_SECRET").mkdir(parents=True)
    message = error_of(base_env(CREDENTIALS_DIRECTORY=str(creds)))
    assert str(creds / "XMATTERS_API_SECRET") in message and "credential" in message


def test_every_secret_is_registered_for_redaction(registered: list[str], tmp_path: Path) -> None:
    f = write(tmp_path / "pw", "xm-secret-from-file")
    env = rest_env(XMATTERS_PASSWORD_FILE=str(f))
    del env["XMATTERS_PASSWORD"]
    env["IXM_STATE_DB"] = "postgresql://ixm:db-pass-123@db/ixm"
    load_settings(env)
    for value in (IVANTI_KEY, TRIGGER, TRIGGER_KEY, "xm-secret-from-file", "db-pass-123"):
        assert value in registered


def test_secret_names_cover_the_brief() -> None:
    assert set(SECRET_NAMES) >= {
        "IVANTI_PASSWORD",
        "IVANTI_API_KEY",
        "XMATTERS_PASSWORD",
        "XMATTERS_API_SECRET",
        "XMATTERS_TRIGGER_URL",
    }


SECRET_LEAK_CASES = {
    "bad trigger url": {"XMATTERS_TRIGGER_URL": "notaurl-" + TRIGGER_KEY},
    "relative trigger outside integration": {"XMATTERS_TRIGGER_URL": "/x/" + TRIGGER_KEY},
    "relative trigger without base": {"XMATTERS_TRIGGER_URL": "/api/integration/1/" + TRIGGER_KEY},
    "ivanti both auth kinds": {"IVANTI_USERNAME": "u", "IVANTI_PASSWORD": "iv-secret-pw"},
    "ivanti password only": {"IVANTI_API_KEY": "", "IVANTI_PASSWORD": "iv-secret-pw"},
    "xm half pair": {"XMATTERS_API_SECRET": "xm-api-secret"},
    "xm both kinds": {
        "XMATTERS_USERNAME": "u",
        "XMATTERS_PASSWORD": "xm-secret-pw",
        "XMATTERS_API_KEY": "k",
        "XMATTERS_API_SECRET": "xm-api-secret",
    },
    "url with userinfo": {"XMATTERS_FORM_TRIGGER_URL": "https://u:form-secret@acme.xmatters.com/"},
    "both var and file": {"XMATTERS_PASSWORD": "xm-secret-pw", "XMATTERS_PASSWORD_FILE": "/nope"},
}


@pytest.mark.parametrize("case", SECRET_LEAK_CASES)
def test_config_errors_never_contain_secret_values(case: str) -> None:
    extra = SECRET_LEAK_CASES[case]
    message = error_of(base_env(**extra))
    for name, value in extra.items():
        is_secret = name in SECRET_NAMES and value
        if is_secret:
            assert value not in message, message
        assert IVANTI_KEY not in message and TRIGGER_KEY not in message


def test_describe_masks_secrets_and_shows_their_source(tmp_path: Path) -> None:
    f = write(tmp_path / "xm.pw", "xm-file-secret\n")
    env = rest_env(XMATTERS_PASSWORD_FILE=str(f))
    del env["XMATTERS_PASSWORD"]
    s = load_settings(env)
    shown = dict(s.describe())
    assert shown["IVANTI_API_KEY"] == f"*** (set, {len(IVANTI_KEY)} chars)"
    assert shown["XMATTERS_PASSWORD"] == f"*** (set, 14 chars) (from file {f})"
    assert shown["XMATTERS_TRIGGER_URL"] == f"*** (set, {len(TRIGGER)} chars)"
    assert shown["XMATTERS_USERNAME"] == "svc-ivanti"
    text = repr(s) + repr(s.describe())
    for secret in (IVANTI_KEY, TRIGGER_KEY, "xm-file-secret"):
        assert secret not in text


def test_describe_covers_every_variable_and_env_example_documents_them() -> None:
    s = load_settings(rest_env(IXM_STATE_DB="postgresql://ixm:db-pass-123@db/ixm"))
    rows = s.describe()
    names = [n for n, _ in rows if n.startswith(("IVANTI_", "XMATTERS_", "IXM_"))]
    assert len(names) == len(set(names))
    assert dict(rows)["IXM_STATE_DB"] == "postgresql://ixm:***@db/ixm"
    example = (Path(__file__).resolve().parents[2] / ".env.example").read_text()
    missing = [n for n in names if f"# {n}=" not in example]
    assert missing == []
    for secret in SECRET_NAMES:
        assert secret in example


def test_describe_with_api_key_auth_and_separate_form_trigger() -> None:
    s = load_settings(
        base_env(
            XMATTERS_API_KEY="the-key",
            XMATTERS_API_SECRET="the-secret",
            XMATTERS_FORM_TRIGGER_URL="https://acme.xmatters.com/api/integration/1/functions/s1/triggers",
        )
    )
    shown = dict(s.describe())
    assert shown["XMATTERS_API_KEY"] == "the-key"
    assert shown["XMATTERS_API_SECRET"] == "*** (set, 10 chars)"
    assert shown["XMATTERS_USERNAME"] == "(not set)"
    assert shown["XMATTERS_FORM_TRIGGER_URL"].startswith("*** (set,")
    assert "the-secret" not in repr(s.describe())


# --------------------------------------------------------------------------- typed values


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        (
            "IXM_POLL_INTERVAL",
            "abc",
            "IXM_POLL_INTERVAL='abc' is not a number of seconds; set it to e.g. 30",
        ),
        ("IXM_POLL_INTERVAL", "0.5", "IXM_POLL_INTERVAL='0.5' is out of range"),
        ("IXM_OVERLAP", "-1", "IXM_OVERLAP='-1' is out of range"),
        ("IXM_OVERLAP", "nan", "is not a number of seconds"),
        ("IXM_RECONCILE_INTERVAL", "5x", "is not a number of seconds"),
        ("IXM_PAGE_SIZE", "101", "Ivanti rejects $top above 100"),
        ("IXM_PAGE_SIZE", "ten", "IXM_PAGE_SIZE='ten' is not a whole number; set it to e.g. 100"),
        ("IXM_PAGE_SIZE", "0", "between 1 and 100"),
        ("IXM_MAX_ATTEMPTS", "2.5", "not a whole number"),
        ("IXM_MAX_AGE", "0", "out of range"),
        ("IXM_BACKOFF_BASE", "fast", "IXM_BACKOFF_BASE='fast' is not a number; set it to e.g. 2"),
        ("IXM_BACKOFF_MAX", "1", "IXM_BACKOFF_MAX=1 is below IXM_BACKOFF_BASE=2"),
        ("IXM_DELIVERY_INTERVAL", "soon", "not a number of seconds"),
        ("IXM_WRITEBACK_INTERVAL", "-3", "out of range"),
        ("IXM_WRITEBACK_GRACE", "?", "not a number of seconds"),
        ("IXM_NOTE_MAX_CHARS", "10", "out of range"),
        ("IXM_WRITEBACK_CONCURRENCY", "0", "out of range"),
        ("IXM_QUIET_POLL_EVERY", "x", "not a whole number"),
        ("IXM_METRICS_PORT", "70000", "between 1 and 65535"),
        ("IXM_METRICS_PORT", "http", "not a whole number"),
        ("IXM_DEADMAN", "20", "IXM_DEADMAN=20 must exceed IXM_POLL_INTERVAL=30"),
        ("IXM_LEASE_TTL", "0.5", "out of range"),
        ("IVANTI_TIMEOUT", "inf", "not a number of seconds"),
        ("XMATTERS_TIMEOUT", "0", "out of range"),
        ("XMATTERS_RATE_LIMIT", "0", "out of range"),
        ("XMATTERS_FLOOD_LIMIT", "many", "not a whole number"),
    ],
)
def test_bad_numbers(name: str, value: str, expected: str) -> None:
    message = error_of(base_env(**{name: value}))
    assert message.startswith(name)
    assert expected in message


@pytest.mark.parametrize("text", ["90", "90s", "1.5m", "0.025h", " 90 S "])
def test_duration_suffixes(text: str) -> None:
    assert load_settings(base_env(IXM_OVERLAP=text)).poll.overlap == pytest.approx(90)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", True),
        ("TRUE", True),
        ("Yes", True),
        ("on", True),
        ("0", False),
        ("off", False),
        ("No", False),
        ("false", False),
    ],
)
def test_booleans(text: str, expected: bool) -> None:
    assert (
        load_settings(base_env(IXM_BASELINE_PAGE_CRITICAL=text)).poll.baseline_page_critical
        is expected
    )


@pytest.mark.parametrize("name", ["IXM_BASELINE_PAGE_CRITICAL", "IXM_WRITEBACK"])
def test_bad_boolean(name: str) -> None:
    message = error_of(base_env(**{name: "maybe"}))
    assert message.startswith(f"{name}='maybe' is not a yes/no value; set it to true or false")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("XMATTERS_MODE", "push"),
        ("XMATTERS_EVENT_PRIORITY", "URGENT"),
        ("IXM_DELIVERY_NOTES", "some"),
        ("IXM_LOG_LEVEL", "TRACE"),
        ("IXM_LOG_FORMAT", "xml"),
    ],
)
def test_bad_choices(name: str, value: str) -> None:
    message = error_of(base_env(**{name: value}))
    assert message.startswith(f"{name}={value!r} is not one of")


def test_metrics_addr_must_look_like_an_address() -> None:
    assert load_settings(base_env(IXM_METRICS_ADDR="::1")).ops.metrics_addr == "::1"
    assert (
        load_settings(base_env(IXM_METRICS_ADDR="metrics.local")).ops.metrics_addr
        == "metrics.local"
    )
    assert "IXM_METRICS_ADDR" in error_of(base_env(IXM_METRICS_ADDR="not an addr"))


# --------------------------------------------------------------------------- URLs


def test_ivanti_base_url_required() -> None:
    env = base_env()
    del env["IVANTI_BASE_URL"]
    assert error_of(env) == (
        "IVANTI_BASE_URL is not set; set it to your tenant URL, e.g. https://acme.saasit.com"
    )


@pytest.mark.parametrize(
    "url",
    [
        "acme.saasit.com",
        "ftp://acme.saasit.com",
        "https://",
        "https://acme.saasit.com:99999",
        "http://[::1",
    ],
)
def test_bad_ivanti_base_url(url: str) -> None:
    assert "is not an http(s) URL" in error_of(base_env(IVANTI_BASE_URL=url))


@pytest.mark.parametrize(
    "url",
    ["https://acme.saasit.com/api", "https://acme.saasit.com/HEAT/api/odata", "https://a.b/?x=1"],
)
def test_ivanti_base_url_must_be_root(url: str) -> None:
    assert "without /api" in error_of(base_env(IVANTI_BASE_URL=url))


def test_bad_xmatters_base_url() -> None:
    assert "XMATTERS_BASE_URL='acme'" in error_of(rest_env(XMATTERS_BASE_URL="acme"))
    assert "without /api" in error_of(rest_env(XMATTERS_BASE_URL="https://a.xmatters.com/api/xm/1"))


def test_trigger_url_required() -> None:
    env = base_env()
    del env["XMATTERS_TRIGGER_URL"]
    assert error_of(env).startswith("XMATTERS_TRIGGER_URL is not set; set it to the full URL")


def test_relative_trigger_needs_base_url() -> None:
    message = error_of(base_env(XMATTERS_TRIGGER_URL="/api/integration/1/functions/x/triggers"))
    assert "XMATTERS_BASE_URL is not set" in message


def test_plain_http_trigger_accepted_for_simulators() -> None:
    url = "http://127.0.0.1:8081/api/integration/1/functions/f/triggers"
    assert load_settings(base_env(XMATTERS_TRIGGER_URL=url)).xmatters.trigger_url == url  # type: ignore[union-attr]


def test_tenant_defaults_to_host_without_port() -> None:
    s = load_settings(base_env(IVANTI_BASE_URL="http://127.0.0.1:8080"))
    assert s.ivanti is not None and s.ivanti.tenant == "127.0.0.1"


# --------------------------------------------------------------------------- Ivanti auth, scope


def test_ivanti_user_password_auth() -> None:
    env = base_env(IVANTI_USERNAME="svc", IVANTI_PASSWORD="pw")
    del env["IVANTI_API_KEY"]
    iv = load_settings(env).ivanti
    assert iv is not None and (iv.auth, iv.username, iv.password) == ("session", "svc", "pw")


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, "no Ivanti credentials are set"),
        ({"IVANTI_USERNAME": "svc"}, "IVANTI_PASSWORD is not set but IVANTI_USERNAME is"),
        ({"IVANTI_PASSWORD": "pw"}, "IVANTI_USERNAME is not set but IVANTI_PASSWORD is"),
        (
            {"IVANTI_API_KEY": "k", "IVANTI_USERNAME": "svc", "IVANTI_PASSWORD": "pw"},
            "pick one",
        ),
    ],
)
def test_ivanti_auth_errors(extra: dict[str, str], expected: str) -> None:
    env = base_env()
    del env["IVANTI_API_KEY"]
    env.update(extra)
    assert expected in error_of(env)


@pytest.mark.parametrize(
    "scope",
    [
        "OwnerTeam eq 'Network Operations' or OwnerTeam eq 'Database Team'",
        "(Priority eq 1 or Priority eq 2) and Owner eq '$NULL'",
        "Owner eq 'O''Brien'",
        "CreatedDateTime gt 2026-01-01T00:00:00Z",
    ],
)
def test_valid_scope_filters(scope: str) -> None:
    validate_scope_filter(scope)
    assert load_settings(base_env(IVANTI_SCOPE_FILTER=scope)).ivanti.scope_filter == scope  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        ("contains(Subject, 'vpn')", "contains()"),
        ("OwnerTeam eq 'X' and startswith(Subject, 'a')", "startswith()"),
        ("endswith(Subject, 'a') eq true", "endswith()"),
        ("substringof('vpn', Subject)", "substringof()"),
        ("not (Status eq 'Closed')", "'not'"),
        ("Status eq 'A' and not Owner eq 'x'", "'not'"),
        ("Status in ('A', 'B')", "'in'"),
    ],
)
def test_scope_filter_rejects_what_ivanti_ignores(scope: str, expected: str) -> None:
    message = error_of(base_env(IVANTI_SCOPE_FILTER=scope))
    assert message.startswith("IVANTI_SCOPE_FILTER uses")
    assert expected in message
    assert "eq ne lt le gt ge and or" in message


@pytest.mark.parametrize(
    ("scope", "where"),
    [
        ("Status # 1", "at position 7"),
        ("Status eq 'unterminated", "at position 11"),
        ("Status eq 'Active' and", "Status eq 'Active' and"),
    ],
)
def test_scope_filter_syntax_error_quotes_position(scope: str, where: str) -> None:
    message = error_of(base_env(IVANTI_SCOPE_FILTER=scope))
    assert "is not a valid OData filter: error" in message
    assert where in message


def test_bad_extra_field() -> None:
    message = error_of(base_env(IVANTI_EXTRA_FIELDS="Symptom,Bad Field"))
    assert message.startswith("IVANTI_EXTRA_FIELDS entry 'Bad Field' is not an Ivanti field name")


# --------------------------------------------------------------------------- xMatters auth and mode


def test_xmatters_basic_and_oauth() -> None:
    xm = load_settings(rest_env()).xmatters
    assert xm is not None and (xm.auth, xm.username, xm.password) == (
        "basic",
        "svc-ivanti",
        "xm-Pa55word!",
    )
    xm = load_settings(rest_env(XMATTERS_OAUTH_CLIENT_ID="client-1")).xmatters
    assert xm is not None and (xm.auth, xm.oauth_client_id) == ("oauth", "client-1")


def test_xmatters_credentials_without_base_url_are_kept_for_the_trigger() -> None:
    xm = load_settings(base_env(XMATTERS_USERNAME="u", XMATTERS_PASSWORD="p")).xmatters
    assert xm is not None and xm.auth == "basic" and xm.base_url is None


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"XMATTERS_USERNAME": "u"}, "XMATTERS_PASSWORD is not set but XMATTERS_USERNAME is"),
        ({"XMATTERS_PASSWORD": "p"}, "XMATTERS_USERNAME is not set but XMATTERS_PASSWORD is"),
        ({"XMATTERS_API_KEY": "k"}, "XMATTERS_API_SECRET is not set but XMATTERS_API_KEY is"),
        ({"XMATTERS_API_SECRET": "s"}, "XMATTERS_API_KEY is not set but XMATTERS_API_SECRET is"),
        (
            {
                "XMATTERS_USERNAME": "u",
                "XMATTERS_PASSWORD": "p",
                "XMATTERS_API_KEY": "k",
                "XMATTERS_API_SECRET": "s",
            },
            "pick one",
        ),
        (
            {"XMATTERS_API_KEY": "k", "XMATTERS_API_SECRET": "s", "XMATTERS_OAUTH_CLIENT_ID": "c"},
            "the OAuth password grant needs a user",
        ),
        ({"XMATTERS_BASE_URL": "https://acme.xmatters.com"}, "no xMatters REST credentials"),
    ],
)
def test_xmatters_auth_errors(extra: dict[str, str], expected: str) -> None:
    assert expected in error_of(base_env(**extra))


def test_direct_mode_requirements() -> None:
    assert "needs XMATTERS_BASE_URL" in error_of(base_env(XMATTERS_MODE="direct"))
    message = error_of(rest_env(XMATTERS_MODE="direct", XMATTERS_RESPONSES_USER=UUID_A))
    assert message.startswith("XMATTERS_RESPONSES_GROUP is not set but XMATTERS_MODE=direct")
    ok = load_settings(
        rest_env(
            XMATTERS_MODE="direct",
            XMATTERS_RESPONSES_USER=UUID_A,
            XMATTERS_RESPONSES_GROUP=f"{UUID_B},{UUID_C}",
        )
    )
    assert ok.xmatters is not None and ok.xmatters.mode == "direct"


def test_bad_uuid() -> None:
    message = error_of(base_env(XMATTERS_RESPONSES_GROUP=f"{UUID_A};not-a-uuid"))
    assert message.startswith("XMATTERS_RESPONSES_GROUP entry 'not-a-uuid' is not a UUID")


# --------------------------------------------------------------------------- policy


def test_status_in_two_classes_is_an_error() -> None:
    message = error_of(base_env(IXM_STATUS_CLOSED="Closed,RESOLVED"))
    assert "'resolved' is listed in both IXM_STATUS_RESOLVED and IXM_STATUS_CLOSED" in message


def test_critical_priorities_cannot_be_empty() -> None:
    assert "IXM_CRITICAL_PRIORITIES" in error_of(base_env(IXM_CRITICAL_PRIORITIES=" , "))


def test_other_statuses_are_open() -> None:
    policy = load_settings(base_env()).policy
    assert not policy.status_class("Waiting for Customer").terminal
    assert policy.status_class("CANCELLED").terminal


# --------------------------------------------------------------------------- write-back


def test_writeback_defaults_on_with_base_url_and_can_be_turned_off() -> None:
    assert load_settings(rest_env()).writeback.enabled is True
    assert load_settings(rest_env(IXM_WRITEBACK="false")).writeback.enabled is False


def test_writeback_on_without_base_url_is_an_error() -> None:
    assert "IXM_WRITEBACK is on but XMATTERS_BASE_URL is not set" in error_of(
        base_env(IXM_WRITEBACK="true")
    )


@pytest.mark.parametrize("mapping", ["jsmith", "=JSmith", "jsmith=", "a=b;A=c"])
def test_bad_user_map(mapping: str) -> None:
    assert error_of(base_env(IXM_USER_MAP=mapping)).startswith("IXM_USER_MAP")


def test_response_actions_validated_by_notes_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def parse_response_actions(raw: str) -> object:
        seen.append(raw)
        if "bogus" in raw:
            raise ValueError("unknown action 'bogus'")
        return raw

    stub = types.ModuleType("daemon.notes")
    stub.parse_response_actions = parse_response_actions  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "daemon.notes", stub)
    ok = load_settings(base_env(IXM_RESPONSE_ACTIONS="Acknowledge=note"))
    assert ok.writeback.response_actions == "Acknowledge=note"
    message = error_of(base_env(IXM_RESPONSE_ACTIONS="Acknowledge=bogus"))
    assert message.startswith("IXM_RESPONSE_ACTIONS='Acknowledge=bogus' is invalid: unknown action")
    assert seen == ["Acknowledge=note", "Acknowledge=bogus"]


# --------------------------------------------------------------------------- state DB


def test_state_db_defaults_to_first_state_directory(tmp_path: Path) -> None:
    s = load_settings(base_env(STATE_DIRECTORY=f"{tmp_path}/one:{tmp_path}/two"))
    assert s.state_db_url == f"sqlite:///{tmp_path}/one/ivanti-xmatters.db"


def test_state_db_plain_path_becomes_sqlite_url(in_tmp_dir: Path) -> None:
    assert load_settings(base_env(IXM_STATE_DB="/var/lib/x/state.db")).state_db_url == (
        "sqlite:////var/lib/x/state.db"
    )
    assert load_settings(base_env(IXM_STATE_DB="rel/state.db")).state_db_url == (
        f"sqlite:///{in_tmp_dir}/rel/state.db"
    )
    assert load_settings(base_env(IXM_STATE_DB="sqlite:///x.db")).state_db_url == "sqlite:///x.db"


# --------------------------------------------------------------------------- require_targets


def test_require_targets_false_loads_without_ivanti_and_xmatters() -> None:
    s = load_settings({"IXM_POLL_INTERVAL": "10"}, require_targets=False)
    assert s.ivanti is None and s.xmatters is None
    assert s.poll.interval == 10
    shown = dict(s.describe())
    assert shown["IVANTI_*"].startswith("(not loaded")
    assert shown["XMATTERS_*"].startswith("(not loaded")


def test_require_targets_false_still_loads_complete_sections() -> None:
    s = load_settings(rest_env(IXM_WRITEBACK="true"), require_targets=False)
    assert s.ivanti is not None and s.xmatters is not None and s.writeback.enabled


def test_require_targets_false_still_validates_the_rest() -> None:
    assert "IXM_PAGE_SIZE" in error_of({"IXM_PAGE_SIZE": "0"}, require_targets=False)


def test_hand_built_settings_have_defaults() -> None:
    s = Settings()
    assert s.poll.interval == 30 and s.ivanti is None
    assert ("IVANTI_*", "(not loaded: not needed by this command)") in s.describe()


def test_response_actions_checked_by_the_real_notes_module() -> None:
    try:
        import daemon.notes  # noqa: F401
    except ImportError:
        pytest.skip("daemon.notes is not written yet (another engineer owns it)")
    ok = load_settings(base_env(IXM_RESPONSE_ACTIONS="Assign to me=assign;Acknowledge=note"))
    assert ok.writeback.response_actions == "Assign to me=assign;Acknowledge=note"
    assert error_of(base_env(IXM_RESPONSE_ACTIONS="Acknowledge=explode")).startswith(
        "IXM_RESPONSE_ACTIONS='Acknowledge=explode' is invalid:"
    )


def test_lease_ttl_defaults_to_the_poll_interval() -> None:
    assert load_settings(base_env(IXM_POLL_INTERVAL="45")).ops.lease_ttl == 45
    assert load_settings(base_env(IXM_LEASE_TTL="10s")).ops.lease_ttl == 10


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "mysql://ixm@db/ixm",
            "needs the Python module MySQLdb, which is not installed; "
            "install it into the daemon's environment (pip install 'mysqlclient')",
        ),
        ("postgresql+psycopg2://ixm:db-pass-123@db/ixm", "pip install 'psycopg2-binary'"),
        ("foo://x", "names the database kind 'foo', which SQLAlchemy does not know"),
        ("postgresql://db:port/ixm", "is not a database URL"),
    ],
)
def test_state_db_url_needs_a_known_dialect_and_an_installed_driver(
    url: str, expected: str
) -> None:
    message = error_of(base_env(IXM_STATE_DB=url))
    assert message.startswith("IXM_STATE_DB=") and expected in message
    assert "db-pass-123" not in message


# --------------------------------------------------------------------------- all problems at once


def problems_of(env: dict[str, str], **kwargs: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_settings(env, env_file=os.devnull, **kwargs)  # type: ignore[arg-type]
    return info.value


def test_every_problem_is_reported_in_one_run() -> None:
    exc = problems_of(
        {
            "IVANTI_TIMEOUT": "-1",
            "XMATTERS_MODE": "direct",
            "IXM_POLL_INTERVAL": "often",
            "IXM_CRITICAL_PRIORITIES": "x",
            "IXM_DEADMAN": "abc",
            "IXM_USER_MAP": "nobody",
            "IXM_STATE_DB": "foo://x",
        }
    )
    starts = [p.split(" ", 1)[0] for p in exc.problems]
    assert starts == [
        "IVANTI_BASE_URL",
        "no",  # no Ivanti credentials
        "IVANTI_TIMEOUT='-1'",
        "XMATTERS_TRIGGER_URL",
        "XMATTERS_MODE=direct",
        "IXM_CRITICAL_PRIORITIES",
        "IXM_POLL_INTERVAL='often'",
        "IXM_USER_MAP",
        "IXM_DEADMAN='abc'",
        "IXM_STATE_DB='foo://x'",
    ]
    assert str(exc) == exc.problems[0] + " (and 9 more problems)"
    assert all("\n" not in p for p in exc.problems)


def test_a_refused_value_does_not_cause_a_misleading_cross_check() -> None:
    # IXM_POLL_INTERVAL is refused: IXM_DEADMAN=20 must not be compared with its default 30
    exc = problems_of(base_env(IXM_POLL_INTERVAL="often", IXM_DEADMAN="20"))
    assert [p.split("=")[0] for p in exc.problems] == ["IXM_POLL_INTERVAL"]


def test_targets_not_required_hide_their_problems_only() -> None:
    exc = problems_of({"IVANTI_TIMEOUT": "-1", "IXM_PAGE_SIZE": "500"}, require_targets=False)
    assert [p.split("=")[0] for p in exc.problems] == ["IXM_PAGE_SIZE"]
    s = load_settings({"IVANTI_TIMEOUT": "-1"}, env_file=os.devnull, require_targets=False)
    assert s.ivanti is None and s.xmatters is None


def test_unknown_settings_are_warned_about_with_the_closest_name() -> None:
    s = load_settings(
        base_env(
            IXM_POLL_INTERVALL="5",
            XMATTERS_TRIGER_URL="x",
            IVANTI_PASSWORD_FILE="",
            IXM_VENV=".venv-ci",
            IXM_TEST_POSTGRES_RESTART="pg_ctl restart",  # the test suite's own
            IXM_SIM_PROFILE_POSTGRES="strict",
            IXM_ZZZ="1",
            OTHER_THING="1",
        ),
        env_file=os.devnull,
    )
    assert s.warnings == (
        "IXM_POLL_INTERVALL is not a setting and is ignored; did you mean IXM_POLL_INTERVAL?",
        "IXM_ZZZ is not a setting and is ignored; see .env.example for the settings",
        "XMATTERS_TRIGER_URL is not a setting and is ignored; did you mean XMATTERS_TRIGGER_URL?",
    )
    exc = problems_of({"IVANTI_BASE_ULR": "https://acme.saasit.com"})
    assert exc.warnings[0].endswith("did you mean IVANTI_BASE_URL?")


def test_known_names_cover_what_is_read_and_documented() -> None:
    from daemon.config import SETTING_NAMES

    s = load_settings(rest_env(), env_file=os.devnull)
    described = {n for n, _ in s.describe() if n.startswith(("IVANTI_", "XMATTERS_", "IXM_"))}
    assert described == set(SETTING_NAMES)
    example = (Path(__file__).resolve().parents[2] / ".env.example").read_text()
    documented = set(re.findall(r"^#? ?((?:IXM|IVANTI|XMATTERS)_[A-Z_]+)=", example, re.M))
    assert documented <= set(SETTING_NAMES)


@pytest.mark.parametrize("value", ["x", "1,high", "0", "-1", "P1"])
def test_critical_priorities_must_be_ivanti_priorities(value: str) -> None:
    assert "is not an Ivanti priority" in error_of(base_env(IXM_CRITICAL_PRIORITIES=value))


@pytest.mark.parametrize(
    "name", ["IXM_STATUS_RESOLVED", "IXM_STATUS_CLOSED", "IXM_STATUS_CANCELED"]
)
def test_status_lists_that_can_never_work(name: str) -> None:
    assert "lists no status" in error_of(base_env(**{name: " , "}))
    assert "the status of every open incident" in error_of(base_env(**{name: "Closed,active"}))
