"""Logging: one key=value line per event, newlines escaped, secrets scrubbed."""

from __future__ import annotations

import io
import logging
import re
import sys
import types
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.logs import (
    KeyValueFormatter,
    OneLineHandler,
    _escape_char,
    level_number,
    log_event,
    quote_value,
    setup_logging,
)


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """setup_logging changes the root logger; put it back so other tests are unaffected."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quiet = {n: logging.getLogger(n).level for n in ("httpx", "httpcore", "apscheduler")}
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    for name, lvl in quiet.items():
        logging.getLogger(name).setLevel(lvl)
    logging.captureWarnings(False)


@pytest.fixture
def no_redact_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import daemon.redact`` fail so tests see only this module's behaviour."""
    monkeypatch.setitem(sys.modules, "daemon.redact", None)


def capture(level: str = "DEBUG", **kwargs: bool) -> io.StringIO:
    buf = io.StringIO()
    setup_logging(level, buf, **kwargs)
    return buf


def lines(buf: io.StringIO) -> list[str]:
    return buf.getvalue().splitlines()


# --------------------------------------------------------------------------- rendering


def test_event_renders_as_one_key_value_line(no_redact_module: None) -> None:
    buf = capture()
    log_event(logging.getLogger("daemon.poller"), "info", "poll done", rows=3, took_s=0.5)
    assert lines(buf) == ['level=info logger=daemon.poller msg="poll done" rows=3 took_s=0.5']


@pytest.mark.parametrize(
    ("value", "rendered"),
    [
        ("plain", "plain"),
        ("with space", '"with space"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("a=b", '"a=b"'),
        ("", '""'),
        ("line1\nline2", '"line1\\nline2"'),
        ("cr\rtab\t", '"cr\\rtab\\t"'),
        ("back\\slash", '"back\\\\slash"'),
        ("esc\x1b[31m", '"esc\\x1b[31m"'),
        ("sep\u2028x", '"sep\\u2028x"'),
        (None, "null"),
        (True, "true"),
        (False, "false"),
        (42, "42"),
        (datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "2026-01-02T03:04:05+00:00"),
        ("Ünïcode", "Ünïcode"),
    ],
)
def test_quote_value(value: object, rendered: str) -> None:
    assert quote_value(value) == rendered


def _quoted_char_by_char(text: str, always: bool) -> str:
    """The rule as first written: quote when any character is a space, ``"``, ``=``,
    ``\\`` or does not print (or the text is empty); then escape each character."""
    if not always and text and not any(c in ' "=\\' or not c.isprintable() for c in text):
        return text
    return '"' + "".join(_escape_char(c) for c in text) + '"'


_AWKWARD = st.sampled_from(list(' "=\\\n\r\t\x1b\u2028'))


@given(st.text(st.one_of(_AWKWARD, st.characters())), st.booleans())
def test_quoting_is_the_char_by_char_rule(text: str, always: bool) -> None:
    """The whole-string fast paths render exactly what the per-character rule does."""
    assert quote_value(text, always=always) == _quoted_char_by_char(text, always)


def test_field_with_newline_from_api_error_stays_on_one_line(no_redact_module: None) -> None:
    buf = capture()
    body = '{"code": "ISM_4000",\n "message": ["Invalid key"]}\r\n'
    log_event(
        logging.getLogger("daemon.ivanti"), logging.WARNING, "put failed\nretrying", body=body
    )
    out = lines(buf)
    assert len(out) == 1
    assert out[0].startswith('level=warning logger=daemon.ivanti msg="put failed\\nretrying" ')
    assert out[0].endswith(
        'body="{\\"code\\": \\"ISM_4000\\",\\n \\"message\\": [\\"Invalid key\\"]}\\r\\n"'
    )


def test_exception_traceback_is_one_escaped_field(no_redact_module: None) -> None:
    buf = capture()
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        log_event(logging.getLogger("daemon.x"), "error", "gave up", exc_info=True, rec="R1")
    (line,) = lines(buf)
    assert line.startswith('level=error logger=daemon.x msg="gave up" rec=R1 exc="Traceback')
    assert "ValueError: bad\\nthing" in line


def test_percent_in_message_is_not_formatted(no_redact_module: None) -> None:
    buf = capture()
    log_event(logging.getLogger("d"), "info", "100% done %s %(x)s")
    assert lines(buf) == ['level=info logger=d msg="100% done %s %(x)s"']


def test_plain_logging_calls_use_the_same_format(no_redact_module: None) -> None:
    buf = capture()
    logging.getLogger("lib").warning("hello %s", "world", extra={"fields": {"k": "v w"}})
    assert lines(buf) == ['level=warning logger=lib msg="hello world" k="v w"']


def test_odd_keys_are_sanitised(no_redact_module: None) -> None:
    buf = capture()
    log_event(logging.getLogger("d"), "info", "m", **{"bad key=": 1, "ok.key-1": 2})
    assert lines(buf) == ['level=info logger=d msg="m" bad_key_=1 ok.key-1=2']


def test_timestamps_are_optional(no_redact_module: None) -> None:
    buf = capture(timestamps=True)
    log_event(logging.getLogger("d"), "info", "m")
    (line,) = lines(buf)
    assert re.fullmatch(
        r'ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z level=info logger=d msg="m"', line
    )


def test_formatter_without_fields() -> None:
    record = logging.makeLogRecord({"name": "n", "levelno": 40, "levelname": "ERROR", "msg": "x"})
    assert KeyValueFormatter().format(record) == 'level=error logger=n msg="x"'


# --------------------------------------------------------------------------- levels and setup


def test_level_filters_lower_events(no_redact_module: None) -> None:
    buf = capture("WARNING")
    log = logging.getLogger("daemon.lvl")
    log_event(log, "debug", "hidden")
    log_event(log, "info", "hidden too")
    log_event(log, "warning", "shown")
    assert lines(buf) == ['level=warning logger=daemon.lvl msg="shown"']


def test_setup_twice_keeps_one_handler(no_redact_module: None) -> None:
    first = capture()
    second = capture()
    ours = [h for h in logging.getLogger().handlers if isinstance(h, OneLineHandler)]
    assert len(ours) == 1
    log_event(logging.getLogger("d"), "info", "once")
    assert first.getvalue() == ""
    assert lines(second) == ['level=info logger=d msg="once"']


def test_chatty_libraries_are_quieted(no_redact_module: None) -> None:
    buf = capture("INFO")
    logging.getLogger("httpx").info('HTTP Request: GET https://x "200 OK"')
    logging.getLogger("apscheduler.executors.default").info("Running job")
    logging.getLogger("httpx").warning("kept")
    assert lines(buf) == ['level=warning logger=httpx msg="kept"']


@pytest.mark.parametrize(("name", "number"), [("debug", 10), ("INFO", 20), ("warn", 30), (40, 40)])
def test_level_number(name: str | int, number: int) -> None:
    assert level_number(name) == number


def test_unknown_level_is_rejected() -> None:
    with pytest.raises(ValueError, match="TRACE"):
        setup_logging("TRACE", io.StringIO())


def test_default_stream_is_stdout_at_call_time(
    no_redact_module: None, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("INFO")
    log_event(logging.getLogger("d"), "info", "to stdout")
    assert capsys.readouterr().out == 'level=info logger=d msg="to stdout"\n'


# --------------------------------------------------------------------------- redaction


class _StubRedactingFilter(logging.Filter):
    """Stands in for daemon.redact.RedactingFilter: scrubs known secrets from the message."""

    secrets: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        for s in self.secrets:
            text = text.replace(s, "***")
        record.msg, record.args = text, None
        return True


def test_redacting_filter_is_attached_and_scrubs_fields_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stub = types.ModuleType("daemon.redact")
    stub.RedactingFilter = _StubRedactingFilter  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "daemon.redact", stub)
    monkeypatch.setattr(_StubRedactingFilter, "secrets", ["hunter2"])
    buf = capture()
    handler = next(h for h in logging.getLogger().handlers if isinstance(h, OneLineHandler))
    assert any(isinstance(f, _StubRedactingFilter) for f in handler.filters)
    try:
        raise RuntimeError("login failed for hunter2")
    except RuntimeError:
        log_event(
            logging.getLogger("d"),
            "error",
            "key hunter2 rejected",
            url="https://x/?apiKey=hunter2",
            exc_info=True,
        )
    out = buf.getvalue()
    assert "hunter2" not in out
    assert 'msg="key *** rejected"' in out
    assert 'url="https://x/?apiKey=***"' in out
    assert "RuntimeError: login failed for ***" in out
    assert len(lines(buf)) == 1


def test_real_redaction_module_hides_registered_secrets() -> None:
    try:
        from daemon.redact import register_secret
    except ImportError:
        pytest.skip("daemon.redact is not written yet (another engineer owns it)")
    secret = "Zq9-real-redact-test-secret-77"
    register_secret(secret)
    buf = capture()
    log_event(logging.getLogger("d"), "info", f"using {secret}", detail=f"server said {secret}!")
    (line,) = lines(buf)
    assert line == 'level=info logger=d msg="using ***" detail="server said ***!"'


# --------------------------------------------------------------------------- journald, JSON


def test_journal_stream_gets_syslog_priority_prefixes(
    tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, no_redact_module: None
) -> None:
    import os

    path = os.path.join(str(tmp_path), "journal")
    with open(path, "w", encoding="utf-8") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        setup_logging("DEBUG", stream)  # type: ignore[arg-type]
        log = logging.getLogger("daemon.test")
        log_event(log, "DEBUG", "d")
        log_event(log, "INFO", "i")
        log_event(log, "WARNING", "w")
        log_event(log, "ERROR", "e")
        log_event(log, "CRITICAL", "c")
    with open(path, encoding="utf-8") as f:
        got = [line.split(" ", 1)[0] for line in f.read().splitlines()]
    assert got == [
        "<7>level=debug",
        "<6>level=info",
        "<4>level=warning",
        "<3>level=error",
        "<2>level=critical",
    ]


def test_no_prefix_when_the_stream_is_not_the_journal(
    tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, no_redact_module: None
) -> None:
    import os

    monkeypatch.setenv("JOURNAL_STREAM", "1:2")  # someone else's journal stream (inherited)
    path = os.path.join(str(tmp_path), "file")
    with open(path, "w", encoding="utf-8") as stream:
        setup_logging("INFO", stream)  # type: ignore[arg-type]
        log_event(logging.getLogger("daemon.test"), "ERROR", "e")
    with open(path, encoding="utf-8") as f:
        assert f.read().startswith("level=error ")
    buf = io.StringIO()  # no file descriptor at all
    setup_logging("INFO", buf)
    log_event(logging.getLogger("daemon.test"), "ERROR", "e")
    assert buf.getvalue().startswith("level=error ")


def test_json_format_is_one_object_a_line(no_redact_module: None) -> None:
    import json

    buf = io.StringIO()
    setup_logging("INFO", buf, fmt="json")
    log = logging.getLogger("daemon.test")
    log_event(log, "INFO", "poll done", rows=3, took_s=0.5, ok=True, level="x", note="a\nb")
    try:
        raise ValueError("boom\nline two")
    except ValueError:
        log.exception("failed")
    first, second = (json.loads(line) for line in lines(buf))
    assert first == {
        "level": "info",
        "logger": "daemon.test",
        "msg": "poll done",
        "rows": 3,
        "took_s": 0.5,
        "ok": True,
        "field_level": "x",
        "note": "a\nb",
    }
    assert second["level"] == "error" and "ValueError: boom" in second["exc"]


def test_json_format_redacts_secrets_with_quotes() -> None:
    import json

    from daemon.redact import register_secret

    secret = 'pa"ss\\word-0123456789'
    register_secret(secret)
    buf = io.StringIO()
    setup_logging("INFO", buf, fmt="json")
    log_event(logging.getLogger("daemon.test"), "INFO", f"login with {secret}", body=secret)
    line = buf.getvalue()
    assert secret not in json.loads(line)["msg"] and secret not in json.loads(line)["body"]
    assert "pa" not in json.loads(line)["body"]


def test_unknown_log_format_is_refused() -> None:
    with pytest.raises(ValueError, match="logfmt, json"):
        setup_logging("INFO", io.StringIO(), fmt="xml")
