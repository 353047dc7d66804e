"""Errors raised by the Ivanti and xMatters clients, classified by what the caller should do.

The daemon's outbox decides between "retry later", "check first, then maybe retry" and
"give up and tell a human" from the exception class alone:

* ``TransientError``  - the request did not act (or only read); safe to send again later,
  honouring ``retry_after`` when the peer gave one.
* ``OutcomeUnknown``  - the request may have reached the peer and acted (a trigger may have
  created an event, a note may have been written). Re-sending blindly could duplicate it, so
  the caller must look first.
* ``PermanentError``  - the peer refused the request as such; re-sending the same thing will
  fail the same way. ``AuthError`` and ``NotFound`` refine it.

Every message is built from already-redacted text, kept to one line and at most 300
characters of detail, so an exception can be logged or stored in the state database as is.
The helpers at the bottom map HTTP statuses and httpx transport errors onto these classes
so both clients classify identically.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

from daemon.redact import redact

DETAIL_MAX = 300


def _one_line(text: str) -> str:
    return " ".join(text.split())


class ApiError(Exception):
    """Base class: which service and operation failed, the HTTP status/code and a detail."""

    def __init__(
        self,
        service: str,
        operation: str,
        detail: str = "",
        *,
        status: int | None = None,
        code: str | None = None,
    ) -> None:
        self.service = service
        self.operation = operation
        self.status = status
        self.code = code
        clean = _one_line(redact(detail))
        if len(clean) > DETAIL_MAX:
            clean = clean[: DETAIL_MAX - 1] + "…"
        self.detail = clean
        super().__init__(self._render())

    def _render(self) -> str:
        head = f"{self.service} {self.operation}:"
        parts = []
        if self.status is not None:
            parts.append(f"HTTP {self.status}")
        if self.code:
            parts.append(_one_line(redact(self.code)))
        line = " ".join([head, *parts])
        if self.detail:
            line = f"{line}: {self.detail}" if parts else f"{line} {self.detail}"
        return line

    def __str__(self) -> str:
        return self._render()

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only constructor args would otherwise break pickling/copying.
        return (_rebuild, (type(self), self.__dict__.copy()))


def _rebuild(cls: type[ApiError], state: dict[str, object]) -> ApiError:
    err = cls.__new__(cls)
    err.__dict__.update(state)
    Exception.__init__(err, err._render())
    return err


class TransientError(ApiError):
    """Worth retrying later; ``retry_after`` is the peer's requested delay in seconds, if any."""

    def __init__(
        self,
        service: str,
        operation: str,
        detail: str = "",
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(service, operation, detail, status=status, code=code)


class OutcomeUnknown(TransientError):
    """The peer may have acted on the request; check its state before re-sending."""


class PermanentError(ApiError):
    """The peer refused this request; fix the input or configuration, do not retry as is."""


class AuthError(PermanentError):
    """Credentials were rejected (after the one permitted re-authentication)."""


class NotFound(PermanentError):
    """The addressed record does not exist (xMatters 404, Ivanti 400 "Invalid key")."""


# ----- shared classification helpers --------------------------------------------------------


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP-date.

    ``now`` should be the response's own ``Date`` when present, so a skewed local clock
    cannot turn a sensible date into a negative or huge delay.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    reference = now or datetime.now(UTC)
    return max(0.0, (when - reference).total_seconds())


def parse_http_date(value: str | None) -> datetime | None:
    """An RFC 7231 date header as an aware UTC datetime, or None if absent/garbled."""
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


# Raised before any byte of the request can have reached the peer: always safe to resend.
_NOT_SENT: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.ProxyError,
)
# Mistakes on our side (bad URL scheme, illegal header value): resending cannot help.
_LOCAL: tuple[type[Exception], ...] = (httpx.UnsupportedProtocol, httpx.LocalProtocolError)


def transport_error(
    service: str, operation: str, exc: httpx.TransportError, *, idempotent: bool
) -> ApiError:
    """Classify an httpx transport failure by whether the request may have been acted on.

    Connect failures happen before sending, so they are plain ``TransientError``. Read
    timeouts, resets and early closes (and write failures, which may hit after the last
    byte) leave the outcome open: ``OutcomeUnknown`` unless the operation is idempotent.
    """
    kind = type(exc).__name__
    reason = str(exc) or kind
    detail = f"{kind}: {reason}" if reason != kind else kind
    if isinstance(exc, _NOT_SENT):
        return TransientError(service, operation, f"request not sent ({detail})")
    if isinstance(exc, _LOCAL):
        return PermanentError(service, operation, f"request could not be built ({detail})")
    if idempotent:
        return TransientError(service, operation, f"no answer ({detail})")
    return OutcomeUnknown(
        service, operation, f"no answer after sending; the request may have been applied ({detail})"
    )


def status_error(
    service: str,
    operation: str,
    status: int,
    *,
    code: str | None,
    detail: str,
    idempotent: bool,
    retry_after: float | None = None,
    not_found_on_404: bool = True,
) -> ApiError:
    """Classify a non-2xx answer. 401 maps to ``AuthError`` - callers re-authenticate first.

    ``not_found_on_404`` is off for Ivanti, whose 404 (``ISM_4004``) means a wrong path or
    entity-set name - a configuration mistake, not a missing record.

    A 5xx on a non-idempotent call is ``OutcomeUnknown``: Ivanti answers 500 for a failed
    save yet some servers act before failing, so the caller has to look before re-sending.
    """
    args = (service, operation, detail)
    if status == 401:
        return AuthError(*args, status=status, code=code)
    if status in (408, 429):
        return TransientError(*args, status=status, code=code, retry_after=retry_after)
    if status >= 500:
        cls = TransientError if idempotent else OutcomeUnknown
        return cls(*args, status=status, code=code, retry_after=retry_after)
    if status == 404 and not_found_on_404:
        return NotFound(*args, status=status, code=code)
    return PermanentError(*args, status=status, code=code)


def response_error(
    service: str,
    operation: str,
    status: int,
    headers: Mapping[str, str],
    *,
    code: str | None,
    detail: str,
    idempotent: bool,
    not_found_on_404: bool = True,
) -> ApiError:
    """``status_error`` for an HTTP answer, taking Retry-After (seconds or a date,
    measured against the answer's own Date header) from its headers."""
    retry_after = parse_retry_after(
        headers.get("Retry-After"), now=parse_http_date(headers.get("Date"))
    )
    return status_error(
        service,
        operation,
        status,
        code=code,
        detail=detail,
        idempotent=idempotent,
        retry_after=retry_after,
        not_found_on_404=not_found_on_404,
    )
