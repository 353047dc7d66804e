"""Logging for journald: one ``key=value`` line per event, secrets scrubbed.

A line looks like ``level=info logger=daemon.poller msg="poll done" rows=3 took_s=0.41``.
journald (and ``journalctl -o cat``) splits on newlines, so a line must stay one line even
when a field carries a multi-line API error body or a traceback: values are quoted when they
hold blanks, quotes or ``=``, and control characters are escaped (``\\n``, ``\\t``, ``\\x1b``).
No timestamps by default because journald stamps every line; pass ``timestamps=True`` when
writing somewhere that does not. ``IXM_LOG_FORMAT=json`` writes one JSON object a line instead
(``{"level": "info", "logger": "daemon.poller", "msg": "poll done", "rows": 3, ...}``) for log
shippers.

When the stream is the journal (systemd sets ``JOURNAL_STREAM=<dev>:<inode>`` and the stream's
``fstat`` matches it), every line starts with the syslog priority prefix journald understands
(``<3>`` error, ``<4>`` warning, ``<6>`` info, ``<7>`` debug), so ``journalctl -p err`` shows
the errors. Anywhere else (a terminal, a pipe, a file) lines carry no prefix.

What the levels mean, so an operator can pick ``IXM_LOG_LEVEL`` and alert on ``ERROR``:

* ``DEBUG``: every HTTP request and response, every per-incident decision.
* ``INFO``: once per cycle (poll done, deliveries done), each detected transition, each
  event created or terminated, each note written back. Quiet daemon = few lines a minute.
* ``WARNING``: a failure that will be retried (timeouts, 5xx, 429, expired session), or a
  surprising but survivable answer from an API.
* ``ERROR``: something a person must look at: a dead-lettered action (retries exhausted),
  the dead-man tripping (no successful poll for ``IXM_DEADMAN``), a configuration error.

Every line goes through ``daemon.redact.RedactingFilter`` (when that module is present):
once on the record, as any logging filter, and once more on the rendered line, so secrets
inside structured fields or tracebacks are caught too, not just those in the message.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from typing import Literal, TextIO

FIELDS_ATTR = "fields"  # LogRecord attribute holding the key=value fields of an event
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("logfmt", "json")
LogFormat = Literal["logfmt", "json"]
# syslog priorities (sd-daemon(3)): what journald files a line under when it starts with <N>
_SYSLOG_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}
_KEY_JUNK = re.compile(r"[^A-Za-z0-9_.\-]")
_SIMPLE_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Chatty third-party loggers: per-request INFO from httpx duplicates our own DEBUG lines (and
# would print trigger URLs), apscheduler logs every job run at INFO.
_QUIET_LOGGERS = ("httpx", "httpcore", "apscheduler", "alembic")


def _escape_char(ch: str) -> str:
    if ch in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[ch]
    if ch == " " or ch.isprintable():
        return ch
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _needs_quotes(text: str) -> bool:
    """Empty, or holding a space, ``"``, ``=``, ``\\`` or a character that does not print.
    (Whole-string tests in C: a busy poll logs a line for each of hundreds of transitions.)"""
    return (
        not text
        or not text.isprintable()
        or " " in text
        or '"' in text
        or "=" in text
        or "\\" in text
    )


def quote_value(value: object, *, always: bool = False) -> str:
    """Render one value: bare when safe, else double-quoted with escapes; never a newline."""
    text = _as_text(value)
    if not always and not _needs_quotes(text):
        return text
    if text.isprintable() and '"' not in text and "\\" not in text:
        return '"' + text + '"'  # nothing to escape
    return '"' + "".join(_escape_char(c) for c in text) + '"'


def _as_text(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def render_key(key: str) -> str:
    return _KEY_JUNK.sub("_", key) or "_"


def render_fields(fields: Mapping[str, object]) -> str:
    return " ".join(f"{render_key(k)}={quote_value(v)}" for k, v in fields.items())


class KeyValueFormatter(logging.Formatter):
    """``[ts=…] level=… logger=… msg="…" k=v…``; exceptions become an escaped ``exc=`` field."""

    def __init__(self, *, timestamps: bool = False) -> None:
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        parts: list[str] = []
        if self.timestamps:
            stamp = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
            parts.append("ts=" + stamp.replace("+00:00", "Z"))
        parts.append(f"level={record.levelname.lower()}")
        parts.append(f"logger={quote_value(record.name)}")
        parts.append(f"msg={quote_value(record.getMessage(), always=True)}")
        fields = getattr(record, FIELDS_ATTR, None)
        if isinstance(fields, Mapping) and fields:
            parts.append(render_fields(fields))
        if record.exc_info:
            parts.append(f"exc={quote_value(self.formatException(record.exc_info))}")
        if record.stack_info:
            parts.append(f"stack={quote_value(self.formatStack(record.stack_info))}")
        return " ".join(parts)


def _json_value(value: object) -> object:
    if value is None or isinstance(value, bool | int | float):
        return value if not isinstance(value, float) or value == value else str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``level``, ``logger``, ``msg``, the event's fields, ``exc``.

    A field named like a fixed key (``level``, ``msg``...) is kept as ``field_<name>`` rather
    than overwriting it. String values are redacted before encoding, so a secret holding a
    quote or a backslash (escaped differently in JSON) is caught too.
    """

    _FIXED = ("ts", "level", "logger", "msg", "exc", "stack")

    def __init__(self, *, timestamps: bool = False) -> None:
        super().__init__()
        self.timestamps = timestamps
        self._redact = _redact_function()

    def _clean(self, value: object) -> object:
        out = _json_value(value)
        return self._redact(out) if isinstance(out, str) else out

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {}
        if self.timestamps:
            stamp = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
            data["ts"] = stamp.replace("+00:00", "Z")
        data["level"] = record.levelname.lower()
        data["logger"] = record.name
        data["msg"] = self._clean(record.getMessage())
        fields = getattr(record, FIELDS_ATTR, None)
        if isinstance(fields, Mapping):
            for key, value in fields.items():
                name = render_key(str(key))
                data[f"field_{name}" if name in self._FIXED else name] = self._clean(value)
        if record.exc_info:
            data["exc"] = self._clean(self.formatException(record.exc_info))
        if record.stack_info:
            data["stack"] = self._clean(self.formatStack(record.stack_info))
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def _redact_function() -> Callable[[str], str]:
    try:
        from daemon.redact import redact
    except ImportError:
        return lambda text: text
    return redact


def is_journal_stream(stream: TextIO) -> bool:
    """True when ``stream`` is the journal: ``$JOURNAL_STREAM`` names its device and inode.

    systemd sets ``JOURNAL_STREAM=<device>:<inode>`` for a service whose stdout or stderr is
    connected to journald; comparing with the stream's own ``fstat`` tells a redirected
    stream (``ivanti-xmatters status > file`` run from a service's shell) from the journal.
    """
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):  # io.StringIO, a closed stream...
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


def syslog_prefix(levelno: int) -> str:
    """``<3>`` for ERROR, ``<4>`` WARNING, ``<6>`` INFO, ``<7>`` DEBUG (levels in between round up)."""
    for number in sorted(_SYSLOG_PRIORITY, reverse=True):
        if levelno >= number:
            return f"<{_SYSLOG_PRIORITY[number]}>"
    return "<7>"


class OneLineHandler(logging.StreamHandler):
    """Writes formatted lines, passing the final text through the handler's filters again.

    Filters normally only see ``msg``/``args``; re-running them on a record whose message is
    the whole rendered line lets a redacting filter scrub fields and tracebacks as well.
    """

    journal = False  # prefix each line with its syslog priority (set by setup_logging)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self._scrub(self.format(record), record)
            if self.journal:
                line = syslog_prefix(record.levelno) + line
            self.stream.write(line + "\n")
            self.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def _scrub(self, line: str, original: logging.LogRecord) -> str:
        probe = logging.makeLogRecord(
            {
                "name": original.name,
                "levelno": original.levelno,
                "levelname": original.levelname,
                "msg": line,
                "args": None,
            }
        )
        for flt in self.filters:
            if isinstance(flt, logging.Filter):
                flt.filter(probe)
            elif callable(flt):
                flt(probe)
        return " ".join(probe.getMessage().splitlines())


def _redacting_filter() -> logging.Filter | None:
    try:
        from daemon.redact import RedactingFilter
    except ImportError:
        return None
    filt: logging.Filter = RedactingFilter()
    return filt


def level_number(level: int | str) -> int:
    """``"info"``/``"INFO"``/``20`` -> 20; unknown names raise ``ValueError``."""
    if isinstance(level, int):
        return level
    name = level.strip().upper()
    if name == "WARN":
        name = "WARNING"
    if name not in _LEVELS:
        raise ValueError(f"unknown log level {level!r}; use one of {', '.join(_LEVELS[:4])}")
    return int(getattr(logging, name))


def setup_logging(
    level: str = "INFO",
    stream: TextIO | None = None,
    *,
    timestamps: bool = False,
    fmt: str = "logfmt",
    journal: bool | None = None,
) -> None:
    """Route all logging to ``stream`` (``sys.stdout`` when None, looked up at call time).

    ``fmt`` is ``logfmt`` (``key=value``, the default) or ``json``. ``journal`` adds the
    syslog priority prefix to each line; ``None`` detects it (``is_journal_stream``).
    Safe to call twice: the handler installed by an earlier call is replaced, other handlers
    on the root logger (e.g. pytest's) are left alone.
    """
    number = level_number(level)
    if fmt not in LOG_FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; use one of {', '.join(LOG_FORMATS)}")
    target = sys.stdout if stream is None else stream
    handler = OneLineHandler(target)
    handler.journal = is_journal_stream(target) if journal is None else journal
    formatter: logging.Formatter = (
        JsonFormatter(timestamps=timestamps)
        if fmt == "json"
        else KeyValueFormatter(timestamps=timestamps)
    )
    handler.setFormatter(formatter)
    redactor = _redacting_filter()
    if redactor is not None:
        handler.addFilter(redactor)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, OneLineHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(number)
    for name in _QUIET_LOGGERS:
        noisy = (
            logging.DEBUG if number <= logging.DEBUG and name == "apscheduler" else logging.WARNING
        )
        logging.getLogger(name).setLevel(noisy)
    logging.captureWarnings(True)


def log_event(
    logger: logging.Logger | logging.LoggerAdapter,
    level: int | str,
    msg: str,
    /,
    *,
    exc_info: bool | BaseException = False,
    **fields: object,
) -> None:
    """Log ``msg`` with ``fields`` rendered as ``key=value`` after it.

    ``msg`` is never %-formatted (it is passed as an argument), so a ``%`` from an API
    error cannot break the call.
    """
    number = level_number(level)
    if not logger.isEnabledFor(number):
        return
    logger.log(number, "%s", msg, exc_info=exc_info, extra={FIELDS_ATTR: fields}, stacklevel=2)
