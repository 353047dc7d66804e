"""Logging for journald: one ``key=value`` line per event, secrets scrubbed.

A line looks like ``level=info logger=daemon.poller msg="poll done" rows=3 took_s=0.41``.
journald (and ``journalctl -o cat``) splits on newlines, so a line must stay one line even
when a field carries a multi-line API error body or a traceback: values are quoted when they
hold blanks, quotes or ``=``, and control characters are escaped (``\\n``, ``\\t``, ``\\x1b``).
No timestamps by default because journald stamps every line; pass ``timestamps=True`` when
writing somewhere that does not.

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

import logging
import re
import sys
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import TextIO

FIELDS_ATTR = "fields"  # LogRecord attribute holding the key=value fields of an event
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
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
    return not text or any(c in ' "=\\' or not c.isprintable() for c in text)


def quote_value(value: object, *, always: bool = False) -> str:
    """Render one value: bare when safe, else double-quoted with escapes; never a newline."""
    text = _as_text(value)
    if not always and not _needs_quotes(text):
        return text
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


class OneLineHandler(logging.StreamHandler):
    """Writes formatted lines, passing the final text through the handler's filters again.

    Filters normally only see ``msg``/``args``; re-running them on a record whose message is
    the whole rendered line lets a redacting filter scrub fields and tracebacks as well.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self._scrub(self.format(record), record)
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
    level: str = "INFO", stream: TextIO | None = None, *, timestamps: bool = False
) -> None:
    """Route all logging to ``stream`` (``sys.stdout`` when None, looked up at call time).

    Safe to call twice: the handler installed by an earlier call is replaced, other handlers
    on the root logger (e.g. pytest's) are left alone.
    """
    number = level_number(level)
    handler = OneLineHandler(sys.stdout if stream is None else stream)
    handler.setFormatter(KeyValueFormatter(timestamps=timestamps))
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
