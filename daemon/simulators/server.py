"""The HTTP plumbing both simulators share: routing, fault injection, request log.

Each simulator is a real HTTP/1.1 server on loopback (stdlib ``ThreadingHTTPServer``,
chosen over an ASGI stack because fault injection needs the raw socket: closing a
connection before or after acting, or sending half a body). Handlers run one at a
time under the simulator's lock, so simulated state needs no further locking.

Every simulator also serves a control surface under ``/_sim/`` (faults, request
log, clock); the same operations are methods on the Python object. ``GET /_sim/`` lists
the control routes (with a description and an example each, see ``control_docs``) and
the simulator's current switches (``switches()``).
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import re
import shlex
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.message import Message
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qsl, unquote, urlsplit

from daemon.simulators.clock import SimClock
from daemon.simulators.control_docs import CONTROL_DOCS, SHARED_DOCS, SWITCH_READERS, ControlDoc
from daemon.simulators.faults import Fault, FaultPlan

log = logging.getLogger("daemon.simulators")

CONTROL_PREFIX = "/_sim/"


class BadRequest(Exception):
    """Raised by handlers to answer with the service's error shape."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


@dataclass
class Request:
    method: str
    path: str
    raw_query: str
    query: dict[str, str]
    headers: Message
    body: bytes
    client: str

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def json(self) -> Any:
        if not self.body.strip():
            raise BadRequest(400, "Message body cannot be empty")
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise BadRequest(400, f"Invalid JSON body: {exc}") from exc


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, obj: Any, headers: Mapping[str, str] | None = None) -> Response:
        hdrs = {"Content-Type": "application/json; charset=utf-8"}
        hdrs.update(headers or {})
        return cls(status, json.dumps(obj).encode(), hdrs)

    @classmethod
    def empty(cls, status: int = 204) -> Response:
        return cls(status, b"", {})


Handler = Callable[[Request, "re.Match[str]"], Response]


@dataclass(frozen=True)
class RequestRecord:
    at: datetime
    method: str
    path: str
    query: str
    route: str
    status: int | None  # None when the connection was dropped
    fault: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "route": self.route,
            "status": self.status,
            "fault": self.fault,
        }


@dataclass
class _Route:
    method: str
    rx: re.Pattern[str]
    name: str
    handler: Handler
    control: bool
    pattern: str = ""


@dataclass
class RequestBudget:
    """A plan-level request limit: at most ``limit`` requests per fixed ``period`` of the
    simulated clock to paths starting with ``prefix``; more are refused with 429 and a
    ``Retry-After`` until the period ends. With ``headers``, every answer in scope says
    the budget as xMatters does (``x-ratelimit-limit``, ``-period_in_sec``, ``-used``);
    whether a real tenant sends them is an open question (xmatters-api.md §9.8)."""

    limit: int
    period: float = 60.0
    prefix: str = ""
    headers: bool = True
    window: int = field(default=-1)
    used: int = field(default=0)
    refused: int = field(default=0)

    def as_dict(self) -> dict[str, object]:
        return {
            "limit": self.limit,
            "period": self.period,
            "prefix": self.prefix,
            "headers": self.headers,
            "used": self.used,
            "refused": self.refused,
        }


class _TLSServer(ThreadingHTTPServer):
    """HTTPS: each accepted connection is wrapped, its handshake done in its own thread
    (on the first read), so a client that never shakes hands blocks nobody else."""

    tls: ssl.SSLContext

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        return self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr


class _Drop(Exception):
    """Internal: close the connection without an answer."""


class SimServer:
    """Base class: subclasses register routes and implement ``error_response``."""

    name = "sim"
    _constructed: dict[str, Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        """Keeps the constructor's arguments, so ``switches()`` can list any option a
        subclass takes without code of its own (its live attribute wins when it has one)."""
        self = super().__new__(cls)
        try:
            bound = inspect.signature(cls.__init__).bind_partial(None, *args, **kwargs)
        except TypeError:
            bound = None  # __init__ will say what is wrong
        given: dict[str, Any] = {}
        for name, value in (bound.arguments if bound else {}).items():
            if isinstance(value, dict) and name not in _switch_params(cls):
                given.update(value)  # a subclass's **kwargs, passed on to its base
            else:
                given[name] = value
        self._constructed = given
        return self

    def __init__(self, clock: SimClock | None = None, *, log_requests: bool = False) -> None:
        self.clock = clock or SimClock()
        self.faults = FaultPlan()
        self.budget: RequestBudget | None = None
        self._budget_lock = threading.Lock()
        self.lock = threading.RLock()
        self.log_requests = log_requests
        self._routes: list[_Route] = []
        self._records: list[RequestRecord] = []
        self._records_lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._tls: ssl.SSLContext | None = None
        self._add_control_routes()

    # ----- routing -------------------------------------------------------------------
    def add_route(
        self, method: str, pattern: str, handler: Handler, name: str, *, control: bool = False
    ) -> None:
        self._routes.append(
            _Route(
                method.upper(),
                re.compile(pattern + r"\Z", re.IGNORECASE),
                name,
                handler,
                control,
                pattern,
            )
        )

    def error_response(self, status: int, message: str, **extra: Any) -> Response:
        """The service's own error body; subclasses override."""
        return Response.json(status, {"error": message, **extra})

    # ----- lifecycle -----------------------------------------------------------------
    def start(
        self, host: str = "127.0.0.1", port: int = 0, *, tls: ssl.SSLContext | None = None
    ) -> SimServer:
        """Serve on ``host:port`` (0: any free port); with ``tls`` (a server-side context
        holding a certificate) over HTTPS, as the real services are: some clients build
        ``https://`` URLs whatever they are given."""
        server = self
        self._tls = tls

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # Headers and body leave in two writes; without TCP_NODELAY, Nagle and
                # delayed ACKs add ~40 ms to every request on a kept-alive connection.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, format: str, *args: Any) -> None:
                return

            def date_time_string(self, timestamp: float | None = None) -> str:
                # The Date header follows the simulated clock: the daemon takes its poll
                # cursor from server values, so they must agree with LastModDateTime.
                return formatdate(server.clock.now().timestamp(), usegmt=True)

            def _serve(self) -> None:
                server._dispatch(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        self._httpd = (_TLSServer if tls else ThreadingHTTPServer)((host, port), _Handler)
        if tls is not None:
            self._httpd.tls = tls  # type: ignore[attr-defined]
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{self.name}-http",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> SimServer:
        if self._httpd is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError(f"{self.name} simulator is not running")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def scheme(self) -> str:
        return "https" if self._tls is not None else "http"

    # ----- switches and the listing ----------------------------------------------------
    def switches(self) -> dict[str, Any]:
        """The options that change how this simulator behaves, with their current values.

        By default every constructor argument (of this class and its bases) whose value is
        a plain scalar, read from the attribute of that name (or ``_name``, or a reader in
        ``control_docs.SWITCH_READERS``) or else as given to the constructor; names that
        hold credentials, identities or wiring (``clock``, ``directory``, ``*_id``) are
        never listed. Subclasses may extend or override this."""
        readers = SWITCH_READERS.get(self.name, {})
        out: dict[str, Any] = {}
        for name, param in _switch_params(type(self)).items():
            if not _may_list(name):
                continue
            value = self._read_switch(name, param, readers.get(name))
            if value is not _UNREAD and _is_scalar(value):
                out[name] = value
        for name, reader in readers.items():
            if name not in out and _may_list(name):
                try:
                    value = reader(self)
                except AttributeError:
                    continue
                if _is_scalar(value):
                    out[name] = value
        with self._budget_lock:
            out["request_budget"] = self.budget.as_dict() if self.budget else None
        return out

    def switch_defaults(self) -> dict[str, Any]:
        """Each constructor switch's default, so a listing can show what was changed."""
        return {
            name: p.default
            for name, p in _switch_params(type(self)).items()
            if _may_list(name) and p.default is not inspect.Parameter.empty
        }

    def _read_switch(
        self, name: str, param: inspect.Parameter, reader: Callable[[Any], Any] | None
    ) -> Any:
        if reader is not None:
            try:
                return reader(self)
            except AttributeError:
                pass
        for attr in (name, "_" + name):
            value = getattr(self, attr, _UNREAD)
            if value is not _UNREAD and not callable(value):
                return value
        constructed: dict[str, Any] = getattr(self, "_constructed", {})
        if name in constructed:
            return constructed[name]
        return _UNREAD if param.default is inspect.Parameter.empty else param.default

    def control_routes(self, base: str | None = None) -> list[dict[str, str]]:
        """Every control route: method, path, one-line description, an example curl."""
        base = base or self.url
        docs = CONTROL_DOCS.get(self.name, {})
        out = []
        for r in self._routes:
            if not r.control:
                continue
            rel = r.pattern[len(CONTROL_PREFIX) :] if r.pattern.startswith(CONTROL_PREFIX) else ""
            doc = docs.get((r.method, rel)) or SHARED_DOCS.get((r.method, rel))
            path = CONTROL_PREFIX + ("" if rel == "?" else _display_path(rel))
            description = (
                doc.description if doc else _first_line(r.handler.__doc__) or "undocumented"
            )
            out.append(
                {
                    "method": r.method,
                    "path": path,
                    "description": description,
                    "example": _curl(base, r.method, path, doc),
                }
            )
        return out

    def listing(self, base: str | None = None) -> dict[str, Any]:
        """What ``GET /_sim/`` answers."""
        switches = self.switches()
        defaults = self.switch_defaults()
        return {
            "simulator": self.name,
            "control_routes": self.control_routes(base),
            "switches": {
                name: {"value": value, **({"default": defaults[name]} if name in defaults else {})}
                for name, value in switches.items()
            },
        }

    # ----- request log ---------------------------------------------------------------
    def requests(self, route: str | None = None) -> list[RequestRecord]:
        with self._records_lock:
            return [r for r in self._records if route is None or r.route == route]

    def request_counts(self) -> dict[str, int]:
        with self._records_lock:
            return dict(Counter(r.route for r in self._records))

    def clear_requests(self) -> None:
        with self._records_lock:
            self._records.clear()

    # ----- dispatch ------------------------------------------------------------------
    def _dispatch(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        path = unquote(parts.path)
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        req = Request(
            method=h.command.upper(),
            path=path,
            raw_query=parts.query,
            query=dict(parse_qsl(parts.query, keep_blank_values=True)),
            headers=h.headers,
            body=body,
            client=h.client_address[0],
        )
        route, match = self._match(req)
        control = route is not None and route.control
        fault = (
            None
            if control
            else self.faults.take(req.method, path, req.body.decode("utf-8", "replace"))
        )
        resp: Response | None = None
        try:
            resp = self._respond(req, route, match, fault)
        except _Drop:
            pass
        # Logged before answering, so whoever got the answer also finds it in the log.
        # Control requests are logged too but not recorded: the record is the traffic of
        # the clients under test, which tests count.
        self._log_request(
            req, parts.query, route, resp.status if resp else None, fault, record=not control
        )
        if resp is None:
            h.close_connection = True
            try:
                h.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        try:
            self._write(h, resp, fault)
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True

    def _log_request(
        self,
        req: Request,
        query: str,
        route: _Route | None,
        status: int | None,
        fault: Fault | None,
        *,
        record: bool = True,
    ) -> None:
        if record:
            entry = RequestRecord(
                at=self.clock.now(),
                method=req.method,
                path=req.path,
                query=query,
                route=route.name if route else "unknown",
                status=status,
                fault=fault.kind if fault else None,
            )
            with self._records_lock:
                self._records.append(entry)
        if self.log_requests:
            log.info(
                "%s %s %s%s -> %s%s",
                self.name,
                req.method,
                req.path,
                ("?" + query) if query else "",
                status if status is not None else "dropped",
                f" (fault {fault.kind})" if fault else "",
            )

    def _match(self, req: Request) -> tuple[_Route | None, re.Match[str] | None]:
        path_matched = False
        for route in self._routes:
            m = route.rx.match(req.path)
            if m is None:
                continue
            path_matched = True
            if route.method == req.method:
                return route, m
        if path_matched:
            return None, None
        return None, None

    def _respond(
        self,
        req: Request,
        route: _Route | None,
        match: re.Match[str] | None,
        fault: Fault | None,
    ) -> Response:
        over, budget_headers = self._spend_budget(req, route)
        if over is not None:
            return over
        resp = self._respond_unbudgeted(req, route, match, fault)
        resp.headers.update(budget_headers)
        return resp

    def set_request_budget(
        self, limit: int | None, *, period: float = 60.0, prefix: str = "", headers: bool = True
    ) -> None:
        """Turn the plan-level request limit on (``limit`` requests per ``period``) or off."""
        with self._budget_lock:
            self.budget = (
                None
                if limit is None
                else RequestBudget(int(limit), float(period), prefix, bool(headers))
            )

    def _spend_budget(
        self, req: Request, route: _Route | None
    ) -> tuple[Response | None, dict[str, str]]:
        """Count one request against the budget: (a 429 if over it, the headers to add)."""
        with self._budget_lock:
            b = self.budget
            if (
                b is None
                or (route is not None and route.control)
                or not req.path.startswith(b.prefix)
            ):
                return None, {}
            t = self.clock.now().timestamp()
            window = int(t // b.period)
            if window != b.window:
                b.window, b.used = window, 0
            over = b.used >= b.limit
            if not over:
                b.used += 1
            else:
                b.refused += 1
            headers = (
                {
                    "x-ratelimit-limit": str(b.limit),
                    "x-ratelimit-period_in_sec": f"{b.period:g}",
                    "x-ratelimit-used": str(b.used),
                }
                if b.headers
                else {}
            )
            if not over:
                return None, headers
            resp = self.error_response(429, "Too many requests: the plan's request limit")
            resp.headers["Retry-After"] = str(max(1, math.ceil((window + 1) * b.period - t)))
            resp.headers.update(headers)
            return resp, {}

    def _respond_unbudgeted(
        self,
        req: Request,
        route: _Route | None,
        match: re.Match[str] | None,
        fault: Fault | None,
    ) -> Response:
        if fault is not None:
            if fault.kind == "latency":
                if self.clock.frozen:
                    # Simulated time passes too: the request is acted on `delay`
                    # seconds after it arrived, as a slow real service would.
                    self.clock.advance(fault.delay)
                time.sleep(fault.delay)
            elif fault.kind == "timeout":
                time.sleep(fault.delay or 60.0)
                raise _Drop()
            elif fault.kind == "drop_before":
                raise _Drop()
            elif fault.kind == "status":
                extra_headers = {}
                if fault.retry_after is not None:
                    extra_headers["Retry-After"] = str(int(fault.retry_after))
                resp = self.error_response(fault.status, f"simulated fault {fault.status}")
                resp.headers.update(extra_headers)
                return resp
        if route is None or match is None:
            return self.error_response(404, f"No route for {req.method} {req.path}")
        with self.lock:
            try:
                resp = route.handler(req, match)
            except BadRequest as exc:
                resp = self.error_response(exc.status, exc.message, **exc.extra)
        if fault is not None and fault.kind == "drop_after":
            raise _Drop()
        if fault is not None and fault.kind == "stall_after":
            time.sleep(fault.delay)
        return resp

    def _write(self, h: BaseHTTPRequestHandler, resp: Response, fault: Fault | None) -> None:
        body = resp.body
        if fault is not None and fault.kind == "malformed":
            body = b"<html><body>502 Bad Gateway</body></html>"
            resp = Response(200, body, {"Content-Type": "application/json"})
        elif fault is not None and fault.kind == "truncated":
            body = body[: max(1, len(body) // 2)]
        h.send_response(resp.status)
        for k, v in resp.headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if body and h.command != "HEAD":
            h.wfile.write(body)

    # ----- control surface -----------------------------------------------------------
    def _add_control_routes(self) -> None:
        p = CONTROL_PREFIX
        self.add_route("GET", p + "?", self._ctl_listing, "sim.listing", control=True)
        self.add_route("GET", p + "faults", self._ctl_faults_get, "sim.faults", control=True)
        self.add_route("POST", p + "faults", self._ctl_faults_post, "sim.faults", control=True)
        self.add_route("DELETE", p + "faults", self._ctl_faults_delete, "sim.faults", control=True)
        self.add_route("GET", p + "requests", self._ctl_requests_get, "sim.requests", control=True)
        self.add_route(
            "DELETE", p + "requests", self._ctl_requests_delete, "sim.requests", control=True
        )
        self.add_route("GET", p + "clock", self._ctl_clock_get, "sim.clock", control=True)
        self.add_route("GET", p + "budget", self._ctl_budget_get, "sim.budget", control=True)
        self.add_route("POST", p + "budget", self._ctl_budget_post, "sim.budget", control=True)
        self.add_route("POST", p + "clock", self._ctl_clock_post, "sim.clock", control=True)

    def _ctl_listing(self, req: Request, m: re.Match[str]) -> Response:
        host = req.header("Host")
        listing = self.listing(f"{self.scheme}://{host}" if host else None)
        if req.query.get("format") == "text":
            return Response(
                200,
                render_listing(listing).encode(),
                {"Content-Type": "text/plain; charset=utf-8"},
            )
        return Response.json(200, listing)

    def _ctl_faults_get(self, req: Request, m: re.Match[str]) -> Response:
        return Response.json(200, [f.as_dict() for f in self.faults.pending()])

    def _ctl_faults_post(self, req: Request, m: re.Match[str]) -> Response:
        spec = req.json()
        try:
            fault = self.faults.add(Fault(**spec))
        except (TypeError, ValueError) as exc:
            raise BadRequest(400, f"bad fault: {exc}") from exc
        return Response.json(201, fault.as_dict())

    def _ctl_faults_delete(self, req: Request, m: re.Match[str]) -> Response:
        self.faults.clear()
        return Response.empty(204)

    def _ctl_requests_get(self, req: Request, m: re.Match[str]) -> Response:
        return Response.json(
            200,
            {
                "counts": self.request_counts(),
                "requests": [r.as_dict() for r in self.requests(req.query.get("route"))],
            },
        )

    def _ctl_requests_delete(self, req: Request, m: re.Match[str]) -> Response:
        self.clear_requests()
        return Response.empty(204)

    def _ctl_budget_get(self, req: Request, m: re.Match[str]) -> Response:
        with self._budget_lock:
            return Response.json(200, self.budget.as_dict() if self.budget else {"limit": None})

    def _ctl_budget_post(self, req: Request, m: re.Match[str]) -> Response:
        """``{"limit": 600, "period": 60, "prefix": "/api/xm/1", "headers": true}``;
        ``{"limit": null}`` turns it off."""
        spec = req.json()
        if not isinstance(spec, dict) or "limit" not in spec:
            raise BadRequest(400, 'give {"limit": N or null, "period": s, "prefix": "/…"}')
        try:
            self.set_request_budget(
                None if spec["limit"] is None else int(spec["limit"]),
                period=float(spec.get("period", 60.0)),
                prefix=str(spec.get("prefix", "")),
                headers=bool(spec.get("headers", True)),
            )
        except (TypeError, ValueError) as exc:
            raise BadRequest(400, f"bad budget: {exc}") from exc
        return self._ctl_budget_get(req, m)

    def _ctl_clock_get(self, req: Request, m: re.Match[str]) -> Response:
        return Response.json(
            200, {"now": self.clock.now().isoformat(), "frozen": self.clock.frozen}
        )

    def _ctl_clock_post(self, req: Request, m: re.Match[str]) -> Response:
        spec = req.json()
        if "advance" in spec:
            self.clock.advance(float(spec["advance"]))
        if "set" in spec:
            self.clock.set(datetime.fromisoformat(str(spec["set"]).replace("Z", "+00:00")))
        if "frozen" in spec:
            self.clock.freeze(bool(spec["frozen"]))
        return self._ctl_clock_get(req, m)


# ----- the listing's helpers -------------------------------------------------------------

_UNREAD = object()
_WIRING = frozenset({"clock", "log_requests", "directory", "self"})
_SECRET_NAME = re.compile(r"password|secret|token|api_?keys?|credential|users|clients", re.I)


def _switch_params(cls: type) -> dict[str, inspect.Parameter]:
    """Named constructor parameters of ``cls`` and its bases (the subclass's first)."""
    params: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and _scalar_annotation(p):
                params.setdefault(p.name, p)
    return params


def _scalar_annotation(p: inspect.Parameter) -> bool:
    """Unannotated, or a plain scalar type: lists and mappings are data, not switches."""
    ann = p.annotation
    if ann is inspect.Parameter.empty:
        return True
    text = ann if isinstance(ann, str) else getattr(ann, "__name__", str(ann))
    scalar = r"(?:bool|int|float|str|None|Literal\[[^]]*\])"
    return re.fullmatch(rf"{scalar}(?: \| {scalar})*", text) is not None


def _may_list(name: str) -> bool:
    return name not in _WIRING and not name.endswith("_id") and not _SECRET_NAME.search(name)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().split("\n", 1)[0].strip()


def _display_path(pattern: str) -> str:
    """``incidents/(?P<rec>[^/]+)`` -> ``incidents/<rec>``; regex escapes undone."""
    text = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"<\1>", pattern)
    return re.sub(r"\\(.)", r"\1", text)


def _curl(base: str, method: str, path: str, doc: ControlDoc | None) -> str:
    url = base + path + (f"?{doc.query}" if doc is not None and doc.query else "")
    parts = ["curl", "-s"]
    if method != "GET":
        parts += ["-X", method]
    parts.append(shlex.quote(url))
    if doc is not None and doc.example is not None:
        parts += ["-H", shlex.quote("Content-Type: application/json")]
        parts += ["-d", shlex.quote(json.dumps(doc.example))]
    return " ".join(parts)


def render_listing(listing: Mapping[str, Any]) -> str:
    """The listing as text for people (``GET /_sim/?format=text``)."""
    lines = [f"{listing['simulator']} simulator: control routes"]
    for r in listing["control_routes"]:
        lines.append(f"  {r['method']:<6} {r['path']}  {r['description']}")
        lines.append(f"         {r['example']}")
    lines.append("switches (value, default):")
    for name, s in listing["switches"].items():
        default = f"default {json.dumps(s['default'])}" if "default" in s else "set at run time"
        lines.append(f"  {name} = {json.dumps(s['value'])}  ({default})")
    return "\n".join(lines) + "\n"
