"""Settings: read once at start from the environment (and an optional ``.env``), validated, frozen.

Why one frozen object: every component gets the same, already-checked values, so a typo
in a unit file stops the daemon at start (exit ``EX_CONFIG``) with one line that names the
variable, what is wrong and how to fix it, instead of surfacing as an HTTP error an hour later.

Sources, strongest first: the process environment, then the ``.env`` file (``./.env`` unless
a path is given; an explicitly given file must exist). ``.env`` values are taken literally
(no ``${VAR}`` interpolation) so a ``$`` in a password survives. An empty value counts as
unset, so ``IVANTI_API_KEY=`` in ``.env`` does not count as an API key.

Secrets (``SECRET_NAMES``) may instead come from ``<NAME>_FILE`` (a path; one trailing newline
is dropped) or from a systemd credential ``$CREDENTIALS_DIRECTORY/<NAME>``. Precedence is
variable, then ``_FILE``, then credential; setting both the variable and ``_FILE`` is an
error because it is always a mistake. Every secret value is handed to
``daemon.redact.register_secret`` so it can never reach a log line, and no secret value is
ever put into a ``ConfigError`` message, ``repr()`` or ``Settings.describe()``.

``require_targets=False`` is for operational commands that only read the state database
(``status``, ``explain``...): the Ivanti and xMatters sections are then loaded only if they
are complete and valid, otherwise ``settings.ivanti`` / ``settings.xmatters`` are ``None``.
Everything else is validated as usual.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import math
import os
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal, TypeVar
from urllib.parse import parse_qsl, urlsplit

from daemon.domain import Policy

if TYPE_CHECKING:
    from daemon.rules import RuleSet

EX_CONFIG = 78  # sysexits.h: configuration error; the CLI exits with it

SECRET_NAMES: tuple[str, ...] = (
    "IVANTI_PASSWORD",
    "IVANTI_API_KEY",
    "XMATTERS_PASSWORD",
    "XMATTERS_API_SECRET",
    "XMATTERS_TRIGGER_URL",
    "XMATTERS_FORM_TRIGGER_URL",
)

# Every setting the daemon reads (``<SECRET>_FILE`` variants are added below); any other
# IXM_/IVANTI_/XMATTERS_ name in the environment or the settings file is warned about.
SETTING_NAMES: tuple[str, ...] = (
    "IVANTI_BASE_URL",
    "IVANTI_TENANT",
    "IVANTI_API_KEY",
    "IVANTI_USERNAME",
    "IVANTI_PASSWORD",
    "IVANTI_ROLE",
    "IVANTI_TIMEOUT",
    "IVANTI_UPDATE_METHOD",
    "IVANTI_SCOPE_FILTER",
    "IVANTI_EXTRA_FIELDS",
    "XMATTERS_BASE_URL",
    "XMATTERS_TRIGGER_URL",
    "XMATTERS_FORM_TRIGGER_URL",
    "XMATTERS_USERNAME",
    "XMATTERS_PASSWORD",
    "XMATTERS_API_KEY",
    "XMATTERS_API_SECRET",
    "XMATTERS_OAUTH_CLIENT_ID",
    "XMATTERS_MODE",
    "XMATTERS_RESPONSES_USER",
    "XMATTERS_RESPONSES_GROUP",
    "XMATTERS_NOTES_PREFIX",
    "XMATTERS_RECID_PROPERTY",
    "XMATTERS_EVENT_PRIORITY",
    "XMATTERS_TIMEOUT",
    "XMATTERS_RATE_LIMIT",
    "XMATTERS_FLOOD_LIMIT",
    "IXM_CRITICAL_PRIORITIES",
    "IXM_STATUS_RESOLVED",
    "IXM_STATUS_CLOSED",
    "IXM_STATUS_CANCELED",
    "IXM_POLL_INTERVAL",
    "IXM_OVERLAP",
    "IXM_RECONCILE_INTERVAL",
    "IXM_PAGE_SIZE",
    "IXM_BASELINE_PAGE_CRITICAL",
    "IXM_PAGING",
    "IXM_DELIVERY_INTERVAL",
    "IXM_MAX_ATTEMPTS",
    "IXM_MAX_AGE",
    "IXM_BACKOFF_BASE",
    "IXM_BACKOFF_MAX",
    "IXM_EVENT_TIMEOUT",
    "IXM_WRITEBACK",
    "IXM_WRITEBACK_INTERVAL",
    "IXM_WRITEBACK_GRACE",
    "IXM_DELIVERY_NOTES",
    "IXM_RESPONSE_ACTIONS",
    "IXM_USER_MAP",
    "IXM_NOTE_MAX_CHARS",
    "IXM_WRITEBACK_CONCURRENCY",
    "IXM_QUIET_POLL_EVERY",
    "IXM_WORKFLOW_WRITEBACK",
    "IXM_WORKFLOW_WRITEBACK_WAIT",
    "IXM_STATE_DB",
    "IXM_LOG_LEVEL",
    "IXM_LOG_FORMAT",
    "IXM_METRICS_PORT",
    "IXM_METRICS_ADDR",
    "IXM_DEADMAN",
    "IXM_LEASE_TTL",
    "IXM_RULES_FILE",
)
# Read by the tooling around the daemon, not by it: not warned about.
_TOOLING_NAMES = frozenset(
    {
        "IXM_VENV",
        "IXM_SOAK_SEED",
        "IXM_TEST_POSTGRES",
        "IXM_TEST_POSTGRES_RESTART",
        "IXM_SIM_PROFILE",
        "IXM_SIM_PROFILE_POSTGRES",
    }
)
# the test suite's own switches (IXM_TEST_POSTGRES, IXM_SIM_PROFILE, ...): never settings
_TOOLING_PREFIXES = ("IXM_TEST_", "IXM_SIM_")
_KNOWN_NAMES = frozenset(SETTING_NAMES) | {f"{n}_FILE" for n in SECRET_NAMES} | _TOOLING_NAMES
_SETTING_PREFIXES = ("IXM_", "IVANTI_", "XMATTERS_")

XMattersAuth = Literal["none", "basic", "apikey", "oauth"]
XMattersMode = Literal["workflow", "direct"]
DeliveryNotes = Literal["all", "failures", "summary"]
WorkflowWriteback = Literal["check", "on", "off"]

_T = TypeVar("_T")

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")
_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_EXAMPLE_UUID = "3d8a9c1e-5b7f-4e2a-9c61-0f4b2d7e8a15"
_SCOPE_EXAMPLE = "OwnerTeam eq 'Network Operations' or OwnerTeam eq 'Database Team'"


class ConfigError(Exception):
    """A setting is missing or wrong. ``str()`` is one line: the setting, the problem, the fix.

    ``load_settings`` reports every problem it finds in one go: ``problems`` holds one line
    each (``str()`` is the first, with a count of the others), ``warnings`` the unknown
    settings noticed on the way (see ``unknown_settings``).
    """

    def __init__(
        self, message: str, *, problems: Iterable[str] = (), warnings: Iterable[str] = ()
    ) -> None:
        text = " ".join(message.split())
        self.problems: tuple[str, ...] = tuple(problems) or (text,)
        self.warnings: tuple[str, ...] = tuple(warnings)
        super().__init__(text)


# --------------------------------------------------------------------------- the settings


@dataclass(frozen=True, slots=True)
class IvantiSettings:
    """How to reach Ivanti. Exactly one auth method: ``api_key`` or ``username``+``password``.

    ``scope_filter`` is ANDed with the change filter by the poller. Ivanti only honours
    parentheses at the very start of a filter (ivanti-api.md §2.3, measured on one tenant,
    open question 9), so the poller should put ``(scope)`` first. It is checked to parse as
    OData and to use only the eight operators Ivanti documents.
    """

    base_url: str
    tenant: str = ""
    api_key: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    role: str = "Admin"
    timeout: float = 30.0
    update_method: str = "PATCH"
    scope_filter: str = ""
    extra_fields: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.tenant:
            object.__setattr__(self, "tenant", urlsplit(self.base_url).hostname or "")

    @property
    def auth(self) -> Literal["apikey", "session"]:
        """``apikey``: static ``rest_api_key=`` header; ``session``: login/relogin/logout."""
        return "apikey" if self.api_key else "session"


@dataclass(frozen=True, slots=True)
class XMattersSettings:
    """How to reach xMatters.

    ``username``/``password`` hold the REST credentials whatever their kind: a REST user
    (``auth="basic"``), an API key and its secret (``auth="apikey"``, both still sent as
    Basic credentials), or a user for the OAuth2 password grant (``auth="oauth"``, with
    ``oauth_client_id``). They may also be set without ``base_url``: a trigger whose URL
    carries no ``?apiKey=`` then needs them as Basic credentials.
    """

    trigger_url: str = field(repr=False)
    base_url: str | None = None
    form_trigger_url: str = field(default="", repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    auth: XMattersAuth = "none"
    oauth_client_id: str | None = None
    mode: XMattersMode = "workflow"
    user_response_options: tuple[str, ...] = ()
    group_response_options: tuple[str, ...] = ()
    notes_prefix: str = "[xMatters]"
    # The propertyName spellings that find an incident's events, tried in order until
    # one finds any: whether xMatters wants RecId#en or RecId is an open question.
    recid_properties: tuple[str, ...] = ("RecId#en", "RecId")
    event_priority: Literal["LOW", "MEDIUM", "HIGH"] = "MEDIUM"
    timeout: float = 30.0
    rate_limit_per_s: float = 100.0
    flood_limit_per_min: int = 4

    def __post_init__(self) -> None:
        if not self.form_trigger_url:
            object.__setattr__(self, "form_trigger_url", self.trigger_url)

    @property
    def rest_enabled(self) -> bool:
        return self.base_url is not None


@dataclass(frozen=True, slots=True)
class PollSettings:
    interval: float = 30.0
    overlap: float = 60.0  # how late a save may commit and be seen (the settle read)
    reconcile_interval: float = 3600.0  # 0 disables the full open-incident re-read
    page_size: int = 100  # Ivanti rejects $top > 100
    baseline_page_critical: bool = False
    # "safe": loses no row whatever Ivanti's time precision and RecId collation;
    # "keyset": the cheaper (second, RecId) keyset, for a tenant known to store whole
    # seconds and to compare RecIds as it sorts them (daemon/poller.py)
    paging: str = "safe"


@dataclass(frozen=True, slots=True)
class DeliverySettings:
    interval: float = 5.0
    max_attempts: int = 12
    max_age: float = 86400.0
    backoff_base: float = 2.0
    backoff_max: float = 600.0
    event_timeout: float = 120.0


@dataclass(frozen=True, slots=True)
class WritebackSettings:
    enabled: bool = False
    interval: float = 2.0
    grace: float = 3600.0
    delivery_notes: DeliveryNotes = "all"
    response_actions: str = ""
    user_map: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    note_max_chars: int = 4000
    concurrency: int = 8
    quiet_poll_every: int = 4
    # Whether the original workflow's own write-back steps still write notes:
    # check (look in the journal first), on (they do; the daemon writes none), off.
    workflow_writeback: WorkflowWriteback = "check"
    workflow_writeback_wait: float = 5.0


@dataclass(frozen=True, slots=True)
class OpsSettings:
    log_level: str = "INFO"
    log_format: str = "logfmt"  # or "json"
    metrics_port: int | None = None
    metrics_addr: str = "127.0.0.1"
    deadman: float = 600.0
    # PostgreSQL: how long the leader's lease lasts unrenewed (renewed every third of it)
    lease_ttl: float = 30.0


@dataclass(frozen=True, slots=True)
class Settings:
    """The whole configuration. ``state_db_url`` defaults to in-memory only for hand-built test
    objects; ``load_settings`` always sets a file location."""

    ivanti: IvantiSettings | None = None
    xmatters: XMattersSettings | None = None
    policy: Policy = field(default_factory=Policy)
    poll: PollSettings = field(default_factory=PollSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    writeback: WritebackSettings = field(default_factory=WritebackSettings)
    ops: OpsSettings = field(default_factory=OpsSettings)
    state_db_url: str = "sqlite://"
    # secret name -> "env" | "file:<path>" | "credential:<path>", for describe()
    secret_sources: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({}), repr=False
    )
    # unknown IXM_/IVANTI_/XMATTERS_ names seen, one line each (see unknown_settings)
    warnings: tuple[str, ...] = ()

    def describe(self) -> list[tuple[str, str]]:
        """Every effective setting as (VARIABLE, shown value) for ``check``; secrets masked."""
        rows = self._describe_ivanti() + self._describe_xmatters()
        return rows + self._describe_policy() + self._describe_runtime()

    def _secret(self, name: str, value: str | None) -> str:
        if not value:
            return "(not set)"
        shown = f"*** (set, {len(value)} chars)"
        source = self.secret_sources.get(name, "env")
        if source.startswith("file:"):
            shown += f" (from file {source[5:]})"
        elif source.startswith("credential:"):
            shown += " (from credential)"
        return shown

    def _describe_ivanti(self) -> list[tuple[str, str]]:
        iv = self.ivanti
        if iv is None:
            return [("IVANTI_*", "(not loaded: not needed by this command)")]
        return [
            ("IVANTI_BASE_URL", iv.base_url),
            ("IVANTI_TENANT", iv.tenant),
            ("IVANTI_API_KEY", self._secret("IVANTI_API_KEY", iv.api_key)),
            ("IVANTI_USERNAME", _show(iv.username)),
            ("IVANTI_PASSWORD", self._secret("IVANTI_PASSWORD", iv.password)),
            ("IVANTI_ROLE", iv.role if iv.auth == "session" else f"{iv.role} (unused: API key)"),
            ("IVANTI_TIMEOUT", _show(iv.timeout)),
            ("IVANTI_UPDATE_METHOD", iv.update_method),
            ("IVANTI_SCOPE_FILTER", _show(iv.scope_filter)),
            ("IVANTI_EXTRA_FIELDS", _show(iv.extra_fields)),
        ]

    def _describe_xmatters(self) -> list[tuple[str, str]]:
        xm = self.xmatters
        if xm is None:
            return [("XMATTERS_*", "(not loaded: not needed by this command)")]
        same = xm.form_trigger_url == xm.trigger_url
        return [
            ("XMATTERS_BASE_URL", _show(xm.base_url)),
            ("XMATTERS_TRIGGER_URL", self._secret("XMATTERS_TRIGGER_URL", xm.trigger_url)),
            (
                "XMATTERS_FORM_TRIGGER_URL",
                "(same as XMATTERS_TRIGGER_URL)"
                if same
                else self._secret("XMATTERS_FORM_TRIGGER_URL", xm.form_trigger_url),
            ),
            *self._describe_xmatters_auth(xm),
            ("XMATTERS_MODE", xm.mode),
            ("XMATTERS_RESPONSES_USER", _show(xm.user_response_options)),
            ("XMATTERS_RESPONSES_GROUP", _show(xm.group_response_options)),
            ("XMATTERS_NOTES_PREFIX", xm.notes_prefix),
            ("XMATTERS_RECID_PROPERTY", ",".join(xm.recid_properties)),
            ("XMATTERS_EVENT_PRIORITY", xm.event_priority),
            ("XMATTERS_TIMEOUT", _show(xm.timeout)),
            ("XMATTERS_RATE_LIMIT", _show(xm.rate_limit_per_s)),
            ("XMATTERS_FLOOD_LIMIT", _show(xm.flood_limit_per_min)),
        ]

    def _describe_xmatters_auth(self, xm: XMattersSettings) -> list[tuple[str, str]]:
        is_key = xm.auth == "apikey"
        return [
            ("XMATTERS_USERNAME", "(not set)" if is_key else _show(xm.username)),
            (
                "XMATTERS_PASSWORD",
                "(not set)" if is_key else self._secret("XMATTERS_PASSWORD", xm.password),
            ),
            ("XMATTERS_API_KEY", _show(xm.username) if is_key else "(not set)"),
            (
                "XMATTERS_API_SECRET",
                self._secret("XMATTERS_API_SECRET", xm.password) if is_key else "(not set)",
            ),
            ("XMATTERS_OAUTH_CLIENT_ID", _show(xm.oauth_client_id)),
            ("(xMatters REST auth)", xm.auth),
        ]

    def _describe_policy(self) -> list[tuple[str, str]]:
        p = self.policy
        return [
            ("IXM_CRITICAL_PRIORITIES", _show(tuple(sorted(p.critical_priorities)))),
            ("IXM_STATUS_RESOLVED", _show(tuple(sorted(p.resolved_statuses)))),
            ("IXM_STATUS_CLOSED", _show(tuple(sorted(p.closed_statuses)))),
            ("IXM_STATUS_CANCELED", _show(tuple(sorted(p.canceled_statuses)))),
            ("IXM_RULES_FILE", p.rules.path if p.rules is not None else "(not set)"),
        ]

    def _describe_runtime(self) -> list[tuple[str, str]]:
        po, de, wb, op = self.poll, self.delivery, self.writeback, self.ops
        user_map = ";".join(f"{k}={v}" for k, v in wb.user_map.items())
        return [
            ("IXM_POLL_INTERVAL", _show(po.interval)),
            ("IXM_OVERLAP", _show(po.overlap)),
            (
                "IXM_RECONCILE_INTERVAL",
                _show(po.reconcile_interval) if po.reconcile_interval else "0 (disabled)",
            ),
            ("IXM_PAGE_SIZE", _show(po.page_size)),
            ("IXM_BASELINE_PAGE_CRITICAL", _show(po.baseline_page_critical)),
            ("IXM_PAGING", _show(po.paging)),
            ("IXM_DELIVERY_INTERVAL", _show(de.interval)),
            ("IXM_MAX_ATTEMPTS", _show(de.max_attempts)),
            ("IXM_MAX_AGE", _show(de.max_age)),
            ("IXM_BACKOFF_BASE", _show(de.backoff_base)),
            ("IXM_BACKOFF_MAX", _show(de.backoff_max)),
            ("IXM_EVENT_TIMEOUT", _show(de.event_timeout)),
            ("IXM_WRITEBACK", _show(wb.enabled)),
            ("IXM_WRITEBACK_INTERVAL", _show(wb.interval)),
            ("IXM_WRITEBACK_GRACE", _show(wb.grace)),
            ("IXM_DELIVERY_NOTES", wb.delivery_notes),
            ("IXM_RESPONSE_ACTIONS", wb.response_actions or "(default: the original three)"),
            ("IXM_USER_MAP", user_map or "(none)"),
            ("IXM_NOTE_MAX_CHARS", _show(wb.note_max_chars)),
            ("IXM_WRITEBACK_CONCURRENCY", _show(wb.concurrency)),
            ("IXM_QUIET_POLL_EVERY", _show(wb.quiet_poll_every)),
            ("IXM_WORKFLOW_WRITEBACK", wb.workflow_writeback),
            ("IXM_WORKFLOW_WRITEBACK_WAIT", _show(wb.workflow_writeback_wait)),
            ("IXM_STATE_DB", hide_url_password(self.state_db_url)),
            ("IXM_LOG_LEVEL", op.log_level),
            ("IXM_LOG_FORMAT", op.log_format),
            ("IXM_METRICS_PORT", "(disabled)" if op.metrics_port is None else str(op.metrics_port)),
            ("IXM_METRICS_ADDR", op.metrics_addr),
            ("IXM_DEADMAN", _show(op.deadman)),
            ("IXM_LEASE_TTL", _show(op.lease_ttl)),
        ]


def _show(value: object) -> str:
    """Render a non-secret value for ``describe``."""
    if value is None or value == "":
        return "(not set)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _fmt_number(value)
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) if value else "(none)"
    return str(value)


def _fmt_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def hide_url_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


# --------------------------------------------------------------------------- reading values


def _register_secret(value: str) -> None:
    """Tell the redactor about a secret; tolerated missing while ``daemon.redact`` is young."""
    try:
        from daemon.redact import register_secret
    except ImportError:
        return
    register_secret(value)


def _quote(value: str) -> str:
    """A non-secret value for an error message: repr keeps it on one line; long ones are cut."""
    return repr(value if len(value) <= 80 else value[:77] + "...")


_Accessor = TypeVar("_Accessor", bound=Callable[..., object])


def _collecting(accessor: _Accessor) -> _Accessor:
    """A typed ``_Env`` accessor ``(name, default, ...)`` that records a refused value and
    returns the default instead of raising."""

    @functools.wraps(accessor)
    def wrapper(self: _Env, name: str, default: object, *args: object, **kwargs: object) -> object:
        try:
            return accessor(self, name, default, *args, **kwargs)
        except ConfigError as exc:
            self.errors.extend(exc.problems)
            self.failed.add(name)
            return default

    return wrapper  # type: ignore[return-value]


class _Env:
    """The merged variables, with typed accessors that raise one-line ``ConfigError``s."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = values
        self.secret_sources: dict[str, str] = {}
        self.errors: list[str] = []  # every problem found, in order (load_settings raises)
        self.failed: set[str] = set()  # settings whose value was refused

    def attempt(self, work: Callable[[], _T], fallback: _T, *names: str) -> _T:
        """``work()``, or ``fallback`` with its ``ConfigError`` recorded, so loading goes on
        and every problem is reported in one run."""
        try:
            return work()
        except ConfigError as exc:
            self.errors.extend(exc.problems)
            self.failed.update(names)
            return fallback

    def ok(self, *names: str) -> bool:
        """None of ``names`` was refused (cross-checks on a refused value would mislead)."""
        return not self.failed.intersection(names)

    def raw(self, name: str) -> str | None:
        """The value with surrounding blanks removed; empty counts as unset."""
        value = self._values.get(name)
        if value is None or not value.strip():
            return None
        return value.strip()

    def text(self, name: str, default: str) -> str:
        value = self.raw(name)
        return default if value is None else value

    def required(self, name: str, fix: str) -> str:
        value = self.raw(name)
        if value is None:
            raise ConfigError(f"{name} is not set; {fix}")
        return value

    # -- secrets

    def secret(self, name: str) -> str | None:
        """Variable, then ``<NAME>_FILE``, then ``$CREDENTIALS_DIRECTORY/<NAME>``."""
        direct = self._values.get(name)
        direct = direct if direct is not None and direct.strip() else None
        file_path = self.raw(f"{name}_FILE")
        if direct is not None and file_path is not None:
            raise ConfigError(f"set one of {name} or {name}_FILE, not both; remove one of them")
        if direct is not None:
            value, source = direct.strip(), "env"
        elif file_path is not None:
            value = _read_secret_file(
                Path(file_path),
                f"{name}_FILE={file_path}",
                "fix the path or make the file readable by the daemon's user",
            )
            source = f"file:{file_path}"
        else:
            found = self._credential(name)
            if found is None:
                return None
            value, source = found
        _register_secret(value)
        self.secret_sources[name] = source
        return value

    def _credential(self, name: str) -> tuple[str, str] | None:
        directory = self.raw("CREDENTIALS_DIRECTORY")
        if directory is None:
            return None
        path = Path(directory) / name
        if not os.path.lexists(path):
            return None
        value = _read_secret_file(
            path,
            f"the systemd credential {path}",
            f"check LoadCredential={name}:... in the unit file",
        )
        return value, f"credential:{path}"

    # -- numbers and words

    @_collecting
    def seconds(self, name: str, default: float, *, lo: float, hi: float | None = None) -> float:
        """A duration: plain seconds, or with a unit suffix s/m/h/d (``90s``, ``5m``, ``1d``)."""
        raw = self.raw(name)
        if raw is None:
            return default
        value = _parse_seconds(raw)
        if value is None:
            raise ConfigError(
                f"{name}={_quote(raw)} is not a number of seconds; "
                f"set it to e.g. {_fmt_number(default)}"
            )
        _check_range(name, raw, value, lo, hi, default, unit=" s")
        return value

    @_collecting
    def integer(
        self, name: str, default: int, *, lo: int, hi: int | None = None, why: str = ""
    ) -> int:
        raw = self.raw(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(
                f"{name}={_quote(raw)} is not a whole number; set it to e.g. {default}"
            ) from None
        _check_range(name, raw, value, lo, hi, default, why=why)
        return value

    @_collecting
    def decimal(self, name: str, default: float, *, lo: float) -> float:
        raw = self.raw(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise ConfigError(
                f"{name}={_quote(raw)} is not a number; set it to e.g. {_fmt_number(default)}"
            )
        _check_range(name, raw, value, lo, None, default)
        return value

    @_collecting
    def boolean(self, name: str, default: bool) -> bool:
        raw = self.raw(name)
        if raw is None:
            return default
        word = raw.lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise ConfigError(
            f"{name}={_quote(raw)} is not a yes/no value; set it to true or false "
            "(1/0, yes/no and on/off also work)"
        )

    @_collecting
    def choice(self, name: str, default: str, choices: Iterable[str]) -> str:
        raw = self.raw(name)
        if raw is None:
            return default
        options = list(choices)
        for option in options:
            if raw.casefold() == option.casefold():
                return option
        raise ConfigError(
            f"{name}={_quote(raw)} is not one of {', '.join(options)}; "
            f"set it to one of them (default {default})"
        )

    def items(self, name: str, default: str, *, separators: str = ",") -> tuple[str, ...]:
        """A separated list; blanks around items and empty items are dropped."""
        raw = self.text(name, default)
        parts = re.split(f"[{re.escape(separators)}]", raw)
        return tuple(p.strip() for p in parts if p.strip())


def _read_secret_file(path: Path, what: str, fix: str) -> str:
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{what} is not UTF-8 text; {fix}") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"{what} cannot be read ({reason}); {fix}") from None
    if content.endswith("\r\n"):
        content = content[:-2]
    elif content.endswith("\n"):
        content = content[:-1]
    if not content.strip():
        raise ConfigError(f"{what} is empty; put the secret in it")
    return content


def _parse_seconds(raw: str) -> float | None:
    text = raw.strip().lower()
    factor = 1.0
    if text and text[-1] in _DURATION_UNITS:
        factor = _DURATION_UNITS[text[-1]]
        text = text[:-1].strip()
    try:
        value = float(text)
    except ValueError:
        return None
    return value * factor if math.isfinite(value) else None


def _check_range(
    name: str,
    raw: str,
    value: float,
    lo: float,
    hi: float | None,
    default: float,
    *,
    unit: str = "",
    why: str = "",
) -> None:
    if lo <= value and (hi is None or value <= hi):
        return
    bounds = (
        f"at least {_fmt_number(lo)}{unit}"
        if hi is None
        else (f"between {_fmt_number(lo)} and {_fmt_number(hi)}{unit}")
    )
    reason = f"; {why}" if why else ""
    raise ConfigError(
        f"{name}={_quote(raw)} is out of range: it must be {bounds}{reason}; "
        f"set it to e.g. {_fmt_number(default)}"
    )


# --------------------------------------------------------------------------- URLs


def _http_url(name: str, value: str, *, secret: bool, example: str) -> str:
    """An absolute http(s) URL with a host, no credentials in it, trailing slash removed."""
    shown = f"{name} (value hidden)" if secret else f"{name}={_quote(value)}"
    problem = ConfigError(f"{shown} is not an http(s) URL; set it to e.g. {example}")
    try:
        parts = urlsplit(value)
        host = parts.hostname
        _ = parts.port  # raises ValueError on a junk port
    except ValueError:
        raise problem from None
    if parts.scheme.lower() not in ("http", "https") or not host:
        raise problem
    if parts.username is not None:
        raise ConfigError(
            f"{name} (value hidden) carries credentials in the URL; "
            "remove them and use the matching *_USERNAME/*_PASSWORD settings"
        )
    return value.rstrip("/")


def _reject_api_path(name: str, url: str, example: str) -> None:
    """Base URLs are the tenant root: clients append /api/... themselves."""
    segments = [s.lower() for s in urlsplit(url).path.split("/")]
    if "api" in segments or urlsplit(url).query or urlsplit(url).fragment:
        raise ConfigError(
            f"{name}={_quote(url)} must be the site root without /api/... or a query; "
            f"set it to e.g. {example}"
        )


# --------------------------------------------------------------------------- Ivanti


def _load_ivanti(env: _Env) -> IvantiSettings:
    """Each part is checked even when another failed (the errors are collected)."""
    base_url = env.attempt(lambda: _ivanti_base_url(env), "", "IVANTI_BASE_URL")
    no_auth: tuple[str | None, str | None, str | None] = (None, None, None)
    api_key, username, password = env.attempt(lambda: _ivanti_auth(env), no_auth)
    scope = env.text("IVANTI_SCOPE_FILTER", "")
    if scope:
        env.attempt(lambda: validate_scope_filter(scope), None, "IVANTI_SCOPE_FILTER")
    return IvantiSettings(
        base_url=base_url,
        tenant=env.text("IVANTI_TENANT", urlsplit(base_url).hostname or ""),
        api_key=api_key,
        username=username,
        password=password,
        role=env.text("IVANTI_ROLE", "Admin"),
        timeout=env.seconds("IVANTI_TIMEOUT", 30.0, lo=0.1),
        update_method=env.choice("IVANTI_UPDATE_METHOD", "PATCH", ("PATCH", "PUT")),
        scope_filter=scope,
        extra_fields=env.attempt(lambda: _extra_fields(env), (), "IVANTI_EXTRA_FIELDS"),
    )


def _ivanti_base_url(env: _Env) -> str:
    example = "https://acme.saasit.com (on-premises: https://ism.example.com/HEAT)"
    raw = env.required("IVANTI_BASE_URL", "set it to your tenant URL, e.g. https://acme.saasit.com")
    url = _http_url("IVANTI_BASE_URL", raw, secret=False, example=example)
    _reject_api_path("IVANTI_BASE_URL", url, example)
    return url


def _ivanti_auth(env: _Env) -> tuple[str | None, str | None, str | None]:
    api_key = env.secret("IVANTI_API_KEY")
    username = env.raw("IVANTI_USERNAME")
    password = env.secret("IVANTI_PASSWORD")
    if api_key and (username or password):
        raise ConfigError(
            "IVANTI_API_KEY and IVANTI_USERNAME/IVANTI_PASSWORD are both set; pick one: "
            "unset the API key or the username and password"
        )
    if api_key or (username and password):
        return api_key, username, password
    if username:
        raise ConfigError(
            "IVANTI_PASSWORD is not set but IVANTI_USERNAME is; set IVANTI_PASSWORD "
            "(or IVANTI_PASSWORD_FILE) or use IVANTI_API_KEY instead"
        )
    if password:
        raise ConfigError(
            "IVANTI_USERNAME is not set but IVANTI_PASSWORD is; set IVANTI_USERNAME "
            "or use IVANTI_API_KEY instead"
        )
    raise ConfigError(
        "no Ivanti credentials are set; set IVANTI_API_KEY (a REST API key from "
        "Configuration console > Security Controls > API Keys) or IVANTI_USERNAME "
        "and IVANTI_PASSWORD"
    )


def _extra_fields(env: _Env) -> tuple[str, ...]:
    names: list[str] = []
    for name in env.items("IVANTI_EXTRA_FIELDS", ""):
        if len(name) > 100 or not _IDENTIFIER.fullmatch(name):
            raise ConfigError(
                f"IVANTI_EXTRA_FIELDS entry {_quote(name)} is not an Ivanti field name "
                "(at most 100 letters, digits, underscores); set it to e.g. Symptom,Service"
            )
        if name not in names:
            names.append(name)
    return tuple(names)


def validate_scope_filter(text: str) -> None:
    """Reject scope filters Ivanti would misread silently (ivanti-api.md §2.3).

    Ivanti documents only ``eq ne lt le gt ge and or``. Functions such as ``contains()`` are
    dropped without an error, so the daemon would page for every incident; ``substringof``
    and bare ``not`` are rejected by Ivanti, ``not (...)`` is ignored. The parse uses the
    real OData grammar of ``odata_query`` so a syntax error points at a position.
    """
    tree = _parse_odata(text)
    problem = _unsupported_odata(tree)
    if problem:
        raise ConfigError(
            f"IVANTI_SCOPE_FILTER uses {problem}, which Ivanti does not honour "
            "(functions such as contains/startswith/endswith are silently ignored, so "
            "every incident would match; see ivanti-api.md 2.3); use only "
            f"eq ne lt le gt ge and or, e.g. {_SCOPE_EXAMPLE}"
        )


def _parse_odata(text: str) -> object:
    from odata_query import exceptions as odata_errors
    from odata_query.grammar import ODataLexer, ODataParser

    try:
        return ODataParser().parse(ODataLexer().tokenize(text))
    except odata_errors.FunctionCallException as exc:
        name = getattr(exc, "function_name", "a function")
        raise ConfigError(
            f"IVANTI_SCOPE_FILTER uses the function {name}(); Ivanti silently ignores "
            "OData functions (contains, startswith, endswith...) and rejects substringof, "
            "see ivanti-api.md 2.3; use only eq ne lt le gt ge and or, "
            f"e.g. {_SCOPE_EXAMPLE}"
        ) from None
    except (odata_errors.TokenizingException, odata_errors.ParsingException) as exc:
        token = getattr(exc, "token", None)
        position = len(text) if token is None else int(token.index)
        where = (
            "at the end"
            if position >= len(text)
            else (f"at position {position + 1} (near {_quote(text[position : position + 20])})")
        )
        raise ConfigError(
            f"IVANTI_SCOPE_FILTER={_quote(text)} is not a valid OData filter: error {where}; "
            f"fix the expression, e.g. {_SCOPE_EXAMPLE}"
        ) from None
    except odata_errors.ODataException as exc:
        raise ConfigError(
            f"IVANTI_SCOPE_FILTER={_quote(text)} is not a valid OData filter ({exc}); "
            f"fix the expression, e.g. {_SCOPE_EXAMPLE}"
        ) from None


def _unsupported_odata(node: object) -> str | None:
    """Name the first construct outside Ivanti's eight operators, walking the parse tree."""
    from odata_query import ast

    if isinstance(node, ast.Call):
        return f"the function {node.func.name}()"
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return "'not'"
    if isinstance(node, ast.Compare) and isinstance(node.comparator, ast.In):
        return "'in'"
    if isinstance(node, ast.BinOp):
        return "arithmetic"
    if isinstance(node, ast.CollectionLambda):
        return "any()/all()"
    for child in _children(node):
        found = _unsupported_odata(child)
        if found:
            return found
    return None


def _children(node: object) -> list[object]:
    from dataclasses import fields, is_dataclass

    if not is_dataclass(node):
        return []
    out: list[object] = []
    for f in fields(node):
        value = getattr(node, f.name)
        out.extend(value if isinstance(value, list) else [value])
    return out


# --------------------------------------------------------------------------- xMatters


def _load_xmatters(env: _Env) -> XMattersSettings:
    """Each part is checked even when another failed (the errors are collected)."""
    base_url = env.attempt(lambda: _xmatters_base_url(env), None, "XMATTERS_BASE_URL")
    trigger_url = env.attempt(lambda: _xmatters_trigger(env, base_url), "", "XMATTERS_TRIGGER_URL")

    def form_trigger() -> str:
        form = env.secret("XMATTERS_FORM_TRIGGER_URL")
        return _trigger_url("XMATTERS_FORM_TRIGGER_URL", form, base_url) if form else trigger_url

    form_url = env.attempt(form_trigger, trigger_url, "XMATTERS_FORM_TRIGGER_URL")
    no_auth: tuple[str, str | None, str | None, str | None] = ("none", None, None, None)
    auth, username, password, client_id = env.attempt(
        lambda: _xmatters_auth(env, base_url), no_auth
    )
    mode = env.choice("XMATTERS_MODE", "workflow", ("workflow", "direct"))
    none: tuple[str, ...] = ()
    user_opts = env.attempt(
        lambda: _uuids(env, "XMATTERS_RESPONSES_USER"), none, "XMATTERS_RESPONSES_USER"
    )
    group_opts = env.attempt(
        lambda: _uuids(env, "XMATTERS_RESPONSES_GROUP"), none, "XMATTERS_RESPONSES_GROUP"
    )
    checked = ("XMATTERS_BASE_URL", "XMATTERS_RESPONSES_USER", "XMATTERS_RESPONSES_GROUP")
    if mode == "direct" and env.ok(*checked):
        env.attempt(lambda: _check_direct_mode(base_url, user_opts, group_opts), None)
    return XMattersSettings(
        trigger_url=trigger_url,
        base_url=base_url,
        form_trigger_url=form_url,
        username=username,
        password=password,
        auth=auth,  # type: ignore[arg-type]
        oauth_client_id=client_id,
        mode=mode,  # type: ignore[arg-type]
        user_response_options=user_opts,
        group_response_options=group_opts,
        notes_prefix=env.text("XMATTERS_NOTES_PREFIX", "[xMatters]"),
        recid_properties=env.items("XMATTERS_RECID_PROPERTY", "RecId#en,RecId"),
        event_priority=env.choice(  # type: ignore[arg-type]
            "XMATTERS_EVENT_PRIORITY", "MEDIUM", ("LOW", "MEDIUM", "HIGH")
        ),
        timeout=env.seconds("XMATTERS_TIMEOUT", 30.0, lo=0.1),
        rate_limit_per_s=env.decimal("XMATTERS_RATE_LIMIT", 100.0, lo=0.01),
        flood_limit_per_min=env.integer("XMATTERS_FLOOD_LIMIT", 4, lo=1),
    )


def _xmatters_trigger(env: _Env, base_url: str | None) -> str:
    trigger = env.secret("XMATTERS_TRIGGER_URL")
    if trigger is None:
        raise ConfigError(
            "XMATTERS_TRIGGER_URL is not set; set it to the full URL of the workflow's HTTP "
            "trigger, e.g. https://acme.xmatters.com/api/integration/1/functions/<id>/triggers"
        )
    return _trigger_url("XMATTERS_TRIGGER_URL", trigger, base_url)


def _xmatters_base_url(env: _Env) -> str | None:
    raw = env.raw("XMATTERS_BASE_URL")
    if raw is None:
        return None
    example = "https://acme.xmatters.com"
    url = _http_url("XMATTERS_BASE_URL", raw, secret=False, example=example)
    _reject_api_path("XMATTERS_BASE_URL", url, example)
    return url


def _trigger_url(name: str, value: str, base_url: str | None) -> str:
    """Absolute URL, or a path under /api/integration/ joined to XMATTERS_BASE_URL.

    A ``?apiKey=`` value is registered as a secret on its own too, so it is redacted even
    when a log line shows only the query string.
    """
    if value.startswith("/"):
        if not value.startswith("/api/integration/"):
            raise ConfigError(
                f"{name} (value hidden) is a relative path outside /api/integration/; "
                "give the full trigger URL or a path starting with /api/integration/"
            )
        if base_url is None:
            raise ConfigError(
                f"{name} is a relative path but XMATTERS_BASE_URL is not set; set "
                "XMATTERS_BASE_URL, e.g. https://acme.xmatters.com, or give the full URL"
            )
        value = base_url + value
    url = _http_url(
        name,
        value,
        secret=True,
        example="https://acme.xmatters.com/api/integration/1/functions/<id>/triggers",
    )
    _register_secret(url)
    for key, param in parse_qsl(urlsplit(url).query):
        if key.lower() == "apikey" and param:
            _register_secret(param)
    return url


def _xmatters_auth(
    env: _Env, base_url: str | None
) -> tuple[str, str | None, str | None, str | None]:
    """Pick the REST credentials: (auth, username-or-key, password-or-secret, client id)."""
    username = env.raw("XMATTERS_USERNAME")
    password = env.secret("XMATTERS_PASSWORD")
    api_key = env.raw("XMATTERS_API_KEY")
    api_secret = env.secret("XMATTERS_API_SECRET")
    client_id = env.raw("XMATTERS_OAUTH_CLIENT_ID")
    if (username or password) and (api_key or api_secret):
        raise ConfigError(
            "XMATTERS_USERNAME/XMATTERS_PASSWORD and XMATTERS_API_KEY/XMATTERS_API_SECRET "
            "are both set; pick one: unset the user and password or the API key and secret"
        )
    _check_pair("XMATTERS_USERNAME", username, "XMATTERS_PASSWORD", password)
    _check_pair("XMATTERS_API_KEY", api_key, "XMATTERS_API_SECRET", api_secret)
    if client_id and not username:
        raise ConfigError(
            "XMATTERS_OAUTH_CLIENT_ID is set but XMATTERS_USERNAME/XMATTERS_PASSWORD are "
            "not; the OAuth password grant needs a user: set both (an API key cannot be used)"
        )
    if base_url and not (username or api_key):
        raise ConfigError(
            "XMATTERS_BASE_URL is set but no xMatters REST credentials are; set "
            "XMATTERS_USERNAME and XMATTERS_PASSWORD (a REST Web Service User) or "
            "XMATTERS_API_KEY and XMATTERS_API_SECRET"
        )
    if client_id:
        return "oauth", username, password, client_id
    if username:
        return "basic", username, password, None
    if api_key:
        return "apikey", api_key, api_secret, None
    return "none", None, None, None


def _check_pair(first: str, a: str | None, second: str, b: str | None) -> None:
    if a and not b:
        raise ConfigError(f"{second} is not set but {first} is; set both or neither")
    if b and not a:
        raise ConfigError(f"{first} is not set but {second} is; set both or neither")


def _uuids(env: _Env, name: str) -> tuple[str, ...]:
    """Response option ids, separated by ';' or ',' like the original workflow's constants."""
    ids: list[str] = []
    for item in env.items(name, "", separators=";,"):
        try:
            ids.append(str(uuid.UUID(item)))
        except ValueError:
            raise ConfigError(
                f"{name} entry {_quote(item)} is not a UUID; copy the response option ids "
                f"from the xMatters Incident form, e.g. {_EXAMPLE_UUID}"
            ) from None
    return tuple(ids)


def _check_direct_mode(
    base_url: str | None, user_opts: tuple[str, ...], group_opts: tuple[str, ...]
) -> None:
    if base_url is None:
        raise ConfigError(
            "XMATTERS_MODE=direct needs XMATTERS_BASE_URL (events are terminated through "
            "the REST API); set it, e.g. https://acme.xmatters.com"
        )
    for name, opts in (
        ("XMATTERS_RESPONSES_USER", user_opts),
        ("XMATTERS_RESPONSES_GROUP", group_opts),
    ):
        if not opts:
            raise ConfigError(
                f"{name} is not set but XMATTERS_MODE=direct needs it; set it to the "
                f"response option ids of the Incident form, e.g. {_EXAMPLE_UUID}"
            )


# --------------------------------------------------------------------------- policy, runtime


# Ivanti's standard open statuses: listing one as terminal would end every incident at once
_OPEN_STATUSES = ("Logged", "Active")


def _load_policy(env: _Env) -> Policy:
    default_critical: tuple[str, ...] = ("1", "2")
    critical = env.attempt(
        lambda: _critical_priorities(env), default_critical, "IXM_CRITICAL_PRIORITIES"
    )
    classes: dict[str, frozenset[str]] = {}
    for name, default in (
        ("IXM_STATUS_RESOLVED", "Resolved"),
        ("IXM_STATUS_CLOSED", "Closed"),
        ("IXM_STATUS_CANCELED", "Canceled,Cancelled"),
    ):
        empty: frozenset[str] = frozenset()
        classes[name] = env.attempt(
            functools.partial(_status_class, env, name, default),
            empty,
            name,
        )
    env.attempt(lambda: _check_status_overlap(classes), None)
    return Policy(
        critical_priorities=frozenset(critical),
        resolved_statuses=classes["IXM_STATUS_RESOLVED"],
        closed_statuses=classes["IXM_STATUS_CLOSED"],
        canceled_statuses=classes["IXM_STATUS_CANCELED"],
        rules=env.attempt(lambda: _load_rules(env), None, "IXM_RULES_FILE"),
    )


def rules_fields(env_extra_fields: Iterable[str]) -> tuple[str, ...]:
    """The fields a rule's criterion may name: the ones the daemon reads from Ivanti."""
    from daemon.domain import CORE_FIELDS

    return tuple(CORE_FIELDS) + tuple(env_extra_fields)


def rules_file_settings(
    environ: Mapping[str, str] | None = None, *, env_file: str | Path | None = None
) -> tuple[str | None, tuple[str, ...]]:
    """IXM_RULES_FILE and IVANTI_EXTRA_FIELDS alone, for ``rules check`` (which reports
    the file's problems itself, and needs nothing else of the settings)."""
    env = _Env(_merged_environment(environ, env_file))
    path = env.raw("IXM_RULES_FILE")
    try:
        extras = _extra_fields(env)
    except ConfigError:
        extras = ()
    return (str(Path(path).expanduser()) if path else None), extras


def _load_rules(env: _Env) -> RuleSet | None:
    """IXM_RULES_FILE: unset, no rules (the settings decide as they always did)."""
    path = env.raw("IXM_RULES_FILE")
    if path is None:
        return None
    from daemon.rules import RulesError, load_rules

    try:
        extras = _extra_fields(env)
    except ConfigError:
        extras = ()  # reported on its own
    try:
        return load_rules(Path(path).expanduser(), known_fields=rules_fields(extras))
    except RulesError as exc:
        raise ConfigError(
            str(exc),
            problems=[
                f"IXM_RULES_FILE {exc.path} {p}; fix it (ivanti-xmatters rules check)"
                for p in exc.problems
            ],
        ) from None


def _critical_priorities(env: _Env) -> tuple[str, ...]:
    """Ivanti's Priority is a number held as text, "1" (highest) to "5" (ivanti-api.md):
    anything else never matches an incident, so nothing would ever page."""
    critical = env.items("IXM_CRITICAL_PRIORITIES", "1,2")
    if not critical:
        raise ConfigError(
            "IXM_CRITICAL_PRIORITIES lists no priority, so nothing would ever page; "
            "set it to e.g. 1,2"
        )
    for item in critical:
        if not item.isdigit() or int(item) < 1:
            raise ConfigError(
                f"IXM_CRITICAL_PRIORITIES entry {_quote(item)} is not an Ivanti priority "
                "(Ivanti's Priority is a number, 1 the highest, 1 to 5 on a standard tenant), "
                "so it would never page; set it to e.g. 1,2"
            )
    return critical


def _status_class(env: _Env, name: str, default: str) -> frozenset[str]:
    statuses = env.items(name, default)
    if not statuses:
        raise ConfigError(
            f"{name} lists no status, so no incident would ever count as that; "
            f"set it to e.g. {default} (or unset it for the default)"
        )
    for status in statuses:
        if status.casefold() in (s.casefold() for s in _OPEN_STATUSES):
            raise ConfigError(
                f"{name} lists {status!r}, the status of every open incident, so every "
                f"incident would end at once; remove it (e.g. {name}={default})"
            )
    return frozenset(s.casefold() for s in statuses)


def _check_status_overlap(classes: Mapping[str, frozenset[str]]) -> None:
    names = list(classes)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            shared = sorted(classes[first] & classes[second])
            if shared:
                raise ConfigError(
                    f"status {shared[0]!r} is listed in both {first} and {second}; "
                    "keep it in only one of them"
                )


def _load_poll(env: _Env) -> PollSettings:
    return PollSettings(
        interval=env.seconds("IXM_POLL_INTERVAL", 30.0, lo=1.0),
        overlap=env.seconds("IXM_OVERLAP", 60.0, lo=0.0),
        reconcile_interval=env.seconds("IXM_RECONCILE_INTERVAL", 3600.0, lo=0.0),
        page_size=env.integer(
            "IXM_PAGE_SIZE", 100, lo=1, hi=100, why="Ivanti rejects $top above 100"
        ),
        baseline_page_critical=env.boolean("IXM_BASELINE_PAGE_CRITICAL", False),
        paging=env.choice("IXM_PAGING", "safe", ("safe", "keyset")),
    )


def _load_delivery(env: _Env) -> DeliverySettings:
    base = env.decimal("IXM_BACKOFF_BASE", 2.0, lo=0.01)
    maximum = env.decimal("IXM_BACKOFF_MAX", 600.0, lo=0.01)
    if maximum < base and env.ok("IXM_BACKOFF_BASE", "IXM_BACKOFF_MAX"):
        env.errors.append(
            f"IXM_BACKOFF_MAX={_fmt_number(maximum)} is below IXM_BACKOFF_BASE="
            f"{_fmt_number(base)}; raise IXM_BACKOFF_MAX, e.g. to 600"
        )
    return DeliverySettings(
        interval=env.seconds("IXM_DELIVERY_INTERVAL", 5.0, lo=0.01),
        max_attempts=env.integer("IXM_MAX_ATTEMPTS", 12, lo=1),
        max_age=env.seconds("IXM_MAX_AGE", 86400.0, lo=1.0),
        backoff_base=base,
        backoff_max=maximum,
        event_timeout=env.seconds("IXM_EVENT_TIMEOUT", 120.0, lo=1.0),
    )


def _load_writeback(env: _Env, rest_available: bool, check_target: bool) -> WritebackSettings:
    enabled = env.boolean("IXM_WRITEBACK", rest_available)
    if enabled and check_target and not rest_available and env.ok("XMATTERS_BASE_URL"):
        env.errors.append(
            "IXM_WRITEBACK is on but XMATTERS_BASE_URL is not set, and write-back reads "
            "responses through the xMatters REST API; set XMATTERS_BASE_URL or IXM_WRITEBACK=false"
        )
    actions = env.text("IXM_RESPONSE_ACTIONS", "")
    env.attempt(lambda: _check_response_actions(actions), None, "IXM_RESPONSE_ACTIONS")
    return WritebackSettings(
        enabled=enabled,
        interval=env.seconds("IXM_WRITEBACK_INTERVAL", 2.0, lo=0.01),
        grace=env.seconds("IXM_WRITEBACK_GRACE", 3600.0, lo=0.0),
        delivery_notes=env.choice(  # type: ignore[arg-type]
            "IXM_DELIVERY_NOTES", "all", ("all", "failures", "summary")
        ),
        response_actions=actions,
        user_map=MappingProxyType(env.attempt(lambda: _user_map(env), {}, "IXM_USER_MAP")),
        note_max_chars=env.integer("IXM_NOTE_MAX_CHARS", 4000, lo=100),
        concurrency=env.integer("IXM_WRITEBACK_CONCURRENCY", 8, lo=1, hi=64),
        quiet_poll_every=env.integer("IXM_QUIET_POLL_EVERY", 4, lo=1),
        workflow_writeback=env.choice(  # type: ignore[arg-type]
            "IXM_WORKFLOW_WRITEBACK", "check", ("check", "on", "off")
        ),
        workflow_writeback_wait=env.seconds("IXM_WORKFLOW_WRITEBACK_WAIT", 5.0, lo=0.0),
    )


def _check_response_actions(raw: str) -> None:
    """Validated by the notes module's own parser, so there is one definition of the format."""
    if not raw:
        return
    try:
        from daemon.notes import parse_response_actions
    except ImportError:
        return
    try:
        parse_response_actions(raw)
    except ValueError as exc:
        raise ConfigError(
            f"IXM_RESPONSE_ACTIONS={_quote(raw)} is invalid: {exc}; fix it (see .env.example) "
            "or unset it to keep the original three responses"
        ) from None


def _user_map(env: _Env) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for entry in env.items("IXM_USER_MAP", "", separators=";,"):
        target, sep, login = (part.strip() for part in entry.partition("="))
        if not sep or not target or not login:
            raise ConfigError(
                f"IXM_USER_MAP entry {_quote(entry)} is not xmattersName=ivantiLogin; "
                "set it to e.g. jsmith=JSmith;bwong=BWong"
            )
        if target.casefold() in (k.casefold() for k in mapping):
            raise ConfigError(f"IXM_USER_MAP maps {target!r} twice; keep one entry for it")
        mapping[target] = login
    return mapping


def _load_ops(env: _Env, poll_interval: float) -> OpsSettings:
    deadman = env.seconds("IXM_DEADMAN", 600.0, lo=1.0)
    if deadman <= poll_interval and env.ok("IXM_DEADMAN", "IXM_POLL_INTERVAL"):
        env.errors.append(
            f"IXM_DEADMAN={_fmt_number(deadman)} must exceed IXM_POLL_INTERVAL="
            f"{_fmt_number(poll_interval)}, or every poll would look late; "
            "set it to several poll intervals, e.g. 600"
        )
    port: int | None = None
    if env.raw("IXM_METRICS_PORT") is not None:
        port = env.integer("IXM_METRICS_PORT", 9464, lo=1, hi=65535)
    return OpsSettings(
        log_level=env.choice("IXM_LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")),
        log_format=env.choice("IXM_LOG_FORMAT", "logfmt", ("logfmt", "json")),
        metrics_port=port,
        metrics_addr=env.attempt(lambda: _metrics_addr(env), "127.0.0.1", "IXM_METRICS_ADDR"),
        deadman=deadman,
        lease_ttl=env.seconds("IXM_LEASE_TTL", poll_interval, lo=1.0, hi=3600.0),
    )


def _metrics_addr(env: _Env) -> str:
    addr = env.text("IXM_METRICS_ADDR", "127.0.0.1")
    try:
        ipaddress.ip_address(addr)
    except ValueError:
        labels_ok = all(len(label) <= 63 for label in addr.split("."))
        if len(addr) > 253 or not labels_ok or not _HOSTNAME.fullmatch(addr):
            raise ConfigError(
                f"IXM_METRICS_ADDR={_quote(addr)} is not an IP address or host name; "
                "set it to e.g. 127.0.0.1 (or 0.0.0.0 to listen everywhere)"
            ) from None
    return addr


def _state_db_url(env: _Env) -> str:
    """IXM_STATE_DB as a URL or a plain path; default in $STATE_DIRECTORY (systemd) or cwd."""
    raw = env.raw("IXM_STATE_DB")
    if raw is not None and _URL_SCHEME.match(raw):
        password = urlsplit(raw).password
        if password:
            _register_secret(password)
        _check_db_driver(raw)
        return raw
    if raw is not None:
        path = Path(raw).expanduser()
    else:
        state_dirs = [d for d in env.text("STATE_DIRECTORY", "").split(":") if d]
        base = Path(state_dirs[0]) if state_dirs else Path.cwd()
        path = base / "ivanti-xmatters.db"
    return f"sqlite:///{path.absolute()}"


# The pip package for a DB driver module SQLAlchemy names, for the fix in the error.
_DRIVER_PACKAGES = {
    "psycopg": "psycopg[binary]",
    "psycopg2": "psycopg2-binary",
    "MySQLdb": "mysqlclient",
    "pymysql": "PyMySQL",
    "pyodbc": "pyodbc",
    "oracledb": "oracledb",
    "asyncpg": "asyncpg",
}


def _check_db_driver(url: str) -> None:
    """The URL parses, SQLAlchemy knows its dialect, and the driver module is installed.

    Checked here so ``postgresql://...`` without psycopg is a configuration error at
    start-up (exit 78), not an ImportError traceback from the first connection.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    shown = _quote(hide_url_password(url))
    try:
        parsed = make_url(url)
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        scheme = url.split("://", 1)[0]
        raise ConfigError(
            f"IXM_STATE_DB={shown} names the database kind {scheme!r}, which SQLAlchemy does "
            "not know; use a file path (SQLite, the default) or e.g. "
            "postgresql+psycopg://user@host/db"
        ) from None
    except (ArgumentError, ValueError):
        raise ConfigError(
            f"IXM_STATE_DB={shown} is not a database URL; use a file path (SQLite) or "
            "e.g. postgresql+psycopg://user@host/db"
        ) from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        module = (exc.name or getattr(dialect, "driver", "") or "its driver").split(".")[0]
        package = _DRIVER_PACKAGES.get(module, module)
        raise ConfigError(
            f"IXM_STATE_DB={shown} needs the Python module {module}, which is not installed; "
            f"install it into the daemon's environment (pip install '{package}') or use a "
            "file path (SQLite, the default)"
        ) from None


# --------------------------------------------------------------------------- entry point


def _merged_environment(
    environ: Mapping[str, str] | None, env_file: str | Path | None
) -> dict[str, str]:
    """``.env`` values overlaid by the environment (the environment wins)."""
    from dotenv import dotenv_values

    explicit = env_file is not None
    path = Path(env_file) if env_file is not None else Path.cwd() / ".env"
    merged: dict[str, str] = {}
    if path.is_file():
        try:
            loaded = dotenv_values(path, interpolate=False, encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"the settings file {path} cannot be read ({exc}); fix its permissions"
            ) from None
        merged.update({k: v for k, v in loaded.items() if v is not None})
    elif explicit and str(path) != os.devnull:  # --env-file /dev/null: no file at all
        raise ConfigError(
            f"the settings file {path} does not exist; create it from .env.example "
            "or pass the right path"
        )
    merged.update(os.environ if environ is None else environ)
    return merged


def unknown_settings(names: Iterable[str]) -> list[str]:
    """A warning line for each IXM_/IVANTI_/XMATTERS_ name the daemon does not read, with
    the closest known one (``IXM_POLL_INTERVALL``: did you mean ``IXM_POLL_INTERVAL``?)."""
    known = sorted(_KNOWN_NAMES - _TOOLING_NAMES)
    lines: list[str] = []
    for name in sorted(set(names)):
        if (
            not name.startswith(_SETTING_PREFIXES)
            or name in _KNOWN_NAMES
            or name.startswith(_TOOLING_PREFIXES)
        ):
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else "see .env.example for the settings"
        lines.append(f"{name} is not a setting and is ignored; {hint}")
    return lines


def _optional_section(loader: Callable[[_Env], _T], env: _Env, required: bool) -> _T | None:
    """``required=False``: the section is loaded only if it is complete and valid, and its
    problems are not reported (commands that only read the state DB do not need it)."""
    if required:
        return env.attempt(lambda: loader(env), None)
    errors, failed = list(env.errors), set(env.failed)
    try:
        section = loader(env)
    except ConfigError:
        section = None
    if len(env.errors) > len(errors):
        section = None
    env.errors[:], env.failed = errors, failed
    return section


def load_settings(
    environ: Mapping[str, str] | None = None,
    *,
    env_file: str | Path | None = None,
    require_targets: bool = True,
) -> Settings:
    """Read and validate everything; problems raise one ``ConfigError`` listing them all
    (``problems``, one line each) and the unknown settings seen (``warnings``).

    ``environ`` defaults to ``os.environ``; ``env_file`` to ``./.env`` (silently skipped when
    absent, an error when given explicitly and absent).
    """
    merged = _merged_environment(environ, env_file)
    env = _Env(merged)
    warnings = tuple(unknown_settings(merged))
    ivanti = _optional_section(_load_ivanti, env, require_targets)
    xmatters = _optional_section(_load_xmatters, env, require_targets)
    policy = env.attempt(lambda: _load_policy(env), Policy())
    poll = _load_poll(env)
    delivery = env.attempt(lambda: _load_delivery(env), DeliverySettings())
    rest_available = (
        xmatters.base_url is not None if xmatters else env.raw("XMATTERS_BASE_URL") is not None
    )
    writeback = env.attempt(
        lambda: _load_writeback(env, rest_available, check_target=require_targets),
        WritebackSettings(),
    )
    ops = env.attempt(lambda: _load_ops(env, poll.interval), OpsSettings())
    state_db_url = env.attempt(lambda: _state_db_url(env), "sqlite://", "IXM_STATE_DB")
    if env.errors:
        first, more = env.errors[0], len(env.errors) - 1
        summary = first if not more else f"{first} (and {more} more problem{'s' * (more > 1)})"
        raise ConfigError(summary, problems=env.errors, warnings=warnings)
    assert ivanti is not None or not require_targets
    return Settings(
        ivanti=ivanti,
        xmatters=xmatters,
        policy=policy,
        poll=poll,
        delivery=delivery,
        writeback=writeback,
        ops=ops,
        state_db_url=state_db_url,
        secret_sources=MappingProxyType(dict(env.secret_sources)),
        warnings=warnings,
    )
