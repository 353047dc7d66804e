"""Prometheus metrics for the daemon (optional ``/metrics`` endpoint, ``IXM_METRICS_PORT``).

Why a private ``CollectorRegistry`` rather than prometheus-client's global one: every
``Metrics`` object is then independent, so tests (and a second ``Service`` in one process)
never collide on "Duplicated timeseries", and ``/metrics`` shows only this daemon's series.

What each series answers for the person on call:

* ``ixm_poll_lag_seconds`` - how far behind Ivanti the daemon reads (now - watermark). The
  watermark is the poll cursor: just past the newest row read while changes come in, and
  ``IXM_OVERLAP`` behind the last poll when none do, so a healthy daemon sits between
  about 0 and overlap + poll interval; a steadily growing value means polls are failing.
  (How far late commits are read is the settle mark in ``status``.)
* ``ixm_poll_lag_beyond_overlap_seconds`` - the same lag less ``IXM_OVERLAP`` (never below
  0): about 0 to one poll interval when healthy, whatever the overlap is set to, so a plain
  threshold (say, 5 poll intervals) reads it right. Alert on this one.
* ``ixm_poll_settled_lag_seconds`` - how far behind now the settle read is (now - the
  settled mark, state ``settle``): everything modified before the mark was read again after
  its overlap had passed, so a save committed up to ``IXM_OVERLAP`` late is on the record.
  Healthy: about overlap + one or two poll intervals; it grows while more rows change a
  poll than the settle read fits beside them (it catches up when the load drops, and a
  finished reconcile sweep moves the mark up to where the sweep began less the overlap).
* ``ixm_last_successful_poll_timestamp_seconds`` - for "no successful poll in N minutes"
  alerts that survive restarts of Prometheus (``time() - metric``).
* ``ixm_cycle_duration_seconds{kind}`` - poll / baseline / reconcile durations.
* ``ixm_transitions_total{kind}`` - transitions detected, by use case ("New Incident"...).
* ``ixm_outbox_actions{state}`` - outbox rows by state; ``dead`` > 0 needs a person.
* ``ixm_deliveries_total{kind,outcome}`` - delivery attempts: ok / retry / dead / deferred / skipped / no_event (accepted by xMatters, no event appeared).
* ``ixm_api_errors_total{api,status}`` - failed API calls by HTTP status (``transport`` when
  no answer came back, ``error`` for anything that is not an API error).
* ``ixm_auth_failures_total{api}`` - credentials rejected: never fixes itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)

from daemon.errors import ApiError, AuthError

if TYPE_CHECKING:
    from daemon.deliverer import DeliveryResult
    from daemon.poller import PollResult
    from daemon.store import Store, Unit

OUTBOX_STATES: tuple[str, ...] = ("pending", "done", "dead", "skipped")
# Cycle durations: a quiet poll takes well under a second, a baseline of a large tenant minutes.
DURATION_BUCKETS: tuple[float, ...] = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)
# Which API an outbox action talks to, for api error accounting of delivery failures.
API_OF_KIND = {"page": "xmatters", "terminate": "xmatters", "note": "ivanti"}


def utcnow() -> datetime:
    return datetime.now(UTC)


class Metrics:
    """The daemon's series in one private registry, and the optional HTTP endpoint."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        now: Callable[[], datetime] = utcnow,
        overlap: float = 0.0,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.now = now
        self.overlap = overlap  # IXM_OVERLAP: how far the watermark trails on purpose
        self._server: Any = None
        self._thread: threading.Thread | None = None
        r = self.registry
        self.poll_lag = Gauge(
            "ixm_poll_lag_seconds",
            "Seconds between now and the poll watermark (includes the deliberate IXM_OVERLAP)",
            registry=r,
        )
        self.poll_lag_beyond_overlap = Gauge(
            "ixm_poll_lag_beyond_overlap_seconds",
            "Seconds the poll watermark trails beyond the deliberate IXM_OVERLAP "
            "(healthy: under a poll interval or two); alert on this, not on ixm_poll_lag_seconds",
            registry=r,
        )
        self.poll_settled_lag = Gauge(
            "ixm_poll_settled_lag_seconds",
            "Seconds between now and the settled mark: changes older than it were read again "
            "after IXM_OVERLAP, so late commits up to the overlap are caught (healthy: about "
            "overlap + a poll interval or two)",
            registry=r,
        )
        self.cycle_duration = Histogram(
            "ixm_cycle_duration_seconds",
            "Duration of poll / baseline / reconcile cycles",
            ["kind"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.transitions = Counter(
            "ixm_transitions_total",
            "Transitions detected, by use case",
            ["kind"],
            registry=r,
        )
        self.outbox = Gauge(
            "ixm_outbox_actions",
            "Outbox actions by state (dead ones wait for a person)",
            ["state"],
            registry=r,
        )
        self.deliveries = Counter(
            "ixm_deliveries_total",
            "Outbox delivery results by action kind and outcome (ok, retry, dead, deferred)",
            ["kind", "outcome"],
            registry=r,
        )
        self.api_errors = Counter(
            "ixm_api_errors_total",
            "Failed API calls by API and HTTP status (transport: no answer)",
            ["api", "status"],
            registry=r,
        )
        self.auth_failures = Counter(
            "ixm_auth_failures_total",
            "Credentials rejected by an API",
            ["api"],
            registry=r,
        )
        self.writeback_lag = Gauge(
            "ixm_writeback_lag_seconds",
            "Seconds the least recently read live xMatters event has gone unread: an answer "
            "given on it now shows in Ivanti at most about this much later",
            registry=r,
        )
        self.xmatters_rate = Gauge(
            "ixm_xmatters_request_rate",
            "Requests a second the daemon allows itself towards xMatters now (the ceiling "
            "XMATTERS_RATE_LIMIT, lowered by x-ratelimit headers and 429s)",
            registry=r,
        )
        self.last_ok_poll = Gauge(
            "ixm_last_successful_poll_timestamp_seconds",
            "Unix time of the last successful poll (baseline and reconcile count)",
            registry=r,
        )
        self.leader = Gauge(
            "ixm_leader",
            "1 on the replica holding the leader lease (PostgreSQL), 0 on a standby",
            registry=r,
        )
        self.lease_changes = Counter(
            "ixm_lease_changes_total",
            "Leader lease acquisitions and losses by this replica",
            registry=r,
        )

    # ----- recording ---------------------------------------------------------------------
    def observe_writeback_lag(self, lag_s: float, rate: float | None = None) -> None:
        self.writeback_lag.set(max(0.0, lag_s))
        if rate is not None:
            self.xmatters_rate.set(rate)

    def observe_cycle(self, kind: str, duration_s: float) -> None:
        """A finished cycle, successful or not (failed ones matter most when they hang)."""
        self.cycle_duration.labels(kind=kind).observe(max(0.0, duration_s))

    def observe_poll(self, result: PollResult, duration_s: float) -> None:
        """A successful poll, baseline or reconcile cycle."""
        now = self.now()
        self.observe_cycle(result.kind, duration_s)
        for transition in result.transitions:
            self.transitions.labels(kind=transition.kind.value).inc()
        self.last_ok_poll.set(now.timestamp())
        if result.watermark_after is not None:
            self._set_lag((now - result.watermark_after).total_seconds())
        self._set_settled_lag(result.settle_after, now)

    def observe_delivery(self, result: DeliveryResult, store: Store | None = None) -> None:
        """One deliverer round.

        ``DeliveryResult`` holds only action ids, so with ``store`` the kinds and the
        failed attempts' HTTP statuses are looked up (one query): a delivery failure then
        also counts as an API error, and a 401 as an auth failure, without the deliverer
        knowing about metrics. Without ``store`` the kind label is ``unknown``.
        """
        groups: Sequence[tuple[str, Iterable[int]]] = (
            ("ok", result.done),
            ("retry", result.retried),
            ("dead", result.dead),
            ("deferred", result.deferred),
            ("skipped", result.skipped),
            ("no_event", result.no_event),  # accepted by xMatters, no event appeared
        )
        ids = [i for _, members in groups for i in members]
        facts: dict[int, tuple[str, int | None]] = {}
        if store is not None and ids:
            with store.unit() as u:
                facts = {
                    action.id: (action.kind, attempt.http_status if attempt else None)
                    for action, attempt in u.actions_with_last_attempt(ids)
                }
        for outcome, members in groups:
            for action_id in members:
                kind, http_status = facts.get(action_id, ("unknown", None))
                self.deliveries.labels(kind=kind, outcome=outcome).inc()
                if outcome in ("retry", "dead"):
                    self._count_failure(API_OF_KIND.get(kind, "unknown"), http_status)

    def observe_error(self, api: str, exc: BaseException) -> None:
        """A failed call outside the outbox (poll, reconcile, write-back reads)."""
        status: int | None = exc.status if isinstance(exc, ApiError) else None
        if isinstance(exc, AuthError):
            self.auth_failures.labels(api=api).inc()
            self.api_errors.labels(api=api, status=str(status) if status else "auth").inc()
            return
        if isinstance(exc, ApiError):
            self.api_errors.labels(api=api, status=str(status) if status else "transport").inc()
        else:
            self.api_errors.labels(api=api, status="error").inc()

    def _count_failure(self, api: str, http_status: int | None) -> None:
        self.api_errors.labels(
            api=api, status=str(http_status) if http_status else "transport"
        ).inc()
        if http_status == 401:
            self.auth_failures.labels(api=api).inc()

    def refresh_from_db(self, unit: Unit) -> None:
        """Outbox gauge and lag from the state DB (the truth, whoever wrote it last)."""
        counts = unit.outbox_counts()
        for state in sorted(set(OUTBOX_STATES) | set(counts)):
            self.outbox.labels(state=state).set(counts.get(state, 0))
        raw = unit.get_state("watermark")
        if raw:
            from daemon.timeutil import parse_utc

            try:
                watermark = parse_utc(raw)
            except ValueError:
                return
            self._set_lag((self.now() - watermark).total_seconds())
        self._set_settled_lag(unit.get_state("settle"), self.now())

    def _set_settled_lag(self, raw: str | None, now: datetime) -> None:
        """From the poller's ``settle`` state (its ``at`` is the settled mark); an
        absent or unreadable one leaves the gauge as it is."""
        from daemon.poller import Settle

        settle = Settle.parse(raw) if raw else None
        if settle is not None:
            self.poll_settled_lag.set(max(0.0, (now - settle.at).total_seconds()))

    def _set_lag(self, lag_s: float) -> None:
        self.poll_lag.set(max(0.0, lag_s))
        self.poll_lag_beyond_overlap.set(max(0.0, lag_s - self.overlap))

    # ----- exposition --------------------------------------------------------------------
    def render(self) -> bytes:
        """The text exposition format, as served on ``/metrics``."""
        return generate_latest(self.registry)

    def serve(self, addr: str, port: int) -> None:
        """Serve ``/metrics`` from a daemon thread (``IXM_METRICS_ADDR``/``IXM_METRICS_PORT``)."""
        if self._server is not None:
            raise RuntimeError("the metrics endpoint is already being served")
        started = start_http_server(port, addr, registry=self.registry)
        # prometheus-client >= 0.17 returns (server, thread); older versions return None.
        if isinstance(started, tuple):
            self._server, self._thread = started

    def close(self) -> None:
        """Stop the endpoint (tests, and a clean service shutdown)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
