"""Keep secrets out of logs, exception messages and the state database.

Two layers, because neither alone is enough:

* a process-wide registry of the exact secret values the process was given or obtained
  (passwords, API keys and secrets, session keys, OAuth tokens). Each is matched verbatim
  and in the encodings it travels in: URL-encoded (query strings, form bodies), JSON-escaped,
  base64 (HTTP Basic credentials put ``user:secret`` through base64, so any base64-looking
  word whose decoding contains a secret is masked too);
* shape-based patterns for secrets the registry may not know yet (a token in an error body
  from a server, a key typed into a URL): ``apiKey=`` query values, ``Authorization``
  header values, ``rest_api_key=``, Ivanti session keys ``<host>#<KEY>#<n>``, and
  ``access_token``/``refresh_token``/``password``/``client_secret`` in JSON or forms.

``redact`` is cheap enough to run on every log record (``RedactingFilter``).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
from urllib.parse import quote, quote_plus

MASK = "***"
MIN_SECRET_LEN = 4

_lock = threading.Lock()
_secrets: set[str] = set()
_secret_rx: re.Pattern[str] | None = None

# Key names whose values are always secret; ``\w*`` catches prefixes such as
# ``client_secret``, ``api_secret`` or ``IVANTI_PASSWORD``.
_SENSITIVE_KEYS = r"access_token|refresh_token|id_token|\w*password|passwd|\w*secret|api_?key"

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization header in any rendering: "Authorization: x", 'Authorization': 'x', JSON.
    (
        re.compile(r"(?i)(\bauthorization[\"']?\s*[:=]\s*)([\"']?)([^\"'\r\n]+)"),
        rf"\g<1>\g<2>{MASK}",
    ),
    # Ivanti API-key header value, wherever it appears.
    (re.compile(r"(?i)(rest_api_key=)[^\s\"'&,;]+"), rf"\g<1>{MASK}"),
    # JSON / Python-repr values of sensitive keys.
    (
        re.compile(
            rf"(?i)([\"'](?:{_SENSITIVE_KEYS})[\"']\s*:\s*)(\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*')"
        ),
        rf'\g<1>"{MASK}"',
    ),
    # Form-encoded / query-string values of sensitive keys: OAuth token requests and the
    # xMatters trigger URL's ``?apiKey=``.
    (re.compile(rf"(?i)(\b(?:{_SENSITIVE_KEYS})=)[^\s&\"']+"), rf"\g<1>{MASK}"),
    # Ivanti session key: "<tenant host>#<KEY>#<n>".
    (re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-]*#[A-Za-z0-9]{16,}#\d+"), MASK),
    # "Basic <base64>" / "Bearer <token>" outside an Authorization header.
    (re.compile(r"(?i)\b(Basic|Bearer)\s+[A-Za-z0-9+/=._\-~]{8,}"), rf"\g<1> {MASK}"),
)

_B64_WORD = re.compile(r"[A-Za-z0-9+/_\-]{8,}={0,2}")


def _forms(value: str) -> set[str]:
    """The encodings a secret is seen in on the wire and in logged URLs/bodies."""
    forms = {value, quote(value, safe=""), quote_plus(value), json.dumps(value)[1:-1]}
    raw = value.encode()
    forms.add(base64.b64encode(raw).decode().rstrip("="))
    forms.add(base64.urlsafe_b64encode(raw).decode().rstrip("="))
    return {f for f in forms if len(f) >= MIN_SECRET_LEN}


def register_secret(value: str) -> None:
    """Remember a secret so ``redact`` masks it from now on; short values are ignored.

    Values shorter than four characters would mask ordinary words and numbers all over
    the logs, so they are not registered.
    """
    global _secret_rx
    if not isinstance(value, str) or len(value) < MIN_SECRET_LEN:
        return
    with _lock:
        if value in _secrets:
            return
        _secrets.add(value)
        forms = set().union(*(_forms(s) for s in _secrets))
        ordered = sorted(forms, key=len, reverse=True)  # longest first: no partial leftovers
        _secret_rx = re.compile("|".join(re.escape(f) for f in ordered))


def registered_count() -> int:
    """How many secrets are registered (for diagnostics and tests)."""
    with _lock:
        return len(_secrets)


def _decodes_to_secret(word: str, secrets: frozenset[str]) -> bool:
    padded = word + "=" * (-len(word) % 4)
    for decoder in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            decoded = decoder(padded).decode("utf-8", errors="ignore")
        except (binascii.Error, ValueError):
            continue
        if any(s in decoded for s in secrets):
            return True
    return False


def redact(text: str) -> str:
    """``text`` with every registered secret and every secret-shaped value replaced by ***."""
    if not text:
        return text
    with _lock:
        rx = _secret_rx
        secrets = frozenset(_secrets)
    # Shapes first: a registered secret that happens to be part of a key name ("pass" in
    # "password") must not break the key-based patterns.
    out = text
    for pattern, replacement in _PATTERNS:
        out = pattern.sub(replacement, out)
    if rx is not None:
        out = rx.sub(MASK, out)
    if secrets:
        out = _B64_WORD.sub(
            lambda m: MASK if _decodes_to_secret(m.group(0), secrets) else m.group(0), out
        )
    return out


_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class RedactingFilter(logging.Filter):
    """Redact a record's message, arguments, traceback and string extras before output.

    The message is rendered (``msg % args``) first and the args dropped, so a secret split
    across the format string and an argument is still caught.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not hide the record
            message = f"{record.msg!s} {record.args!r}"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for key, value in list(vars(record).items()):
            if key not in _STANDARD_ATTRS and isinstance(value, str):
                setattr(record, key, redact(value))
        return True
