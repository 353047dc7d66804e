"""Prometheus metrics: each series after recording, the store-backed delivery accounting,
and the HTTP endpoint."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon.deliverer import DeliveryResult
from daemon.domain import Transition, TransitionKind
from daemon.errors import AuthError, TransientError
from daemon.metrics import Metrics
from daemon.poller import PollResult
from daemon.store import Store

NOW = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, keyed by name and sorted labels."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(now=lambda: NOW)


@pytest.fixture
def store(state_db_url: str) -> Iterator[Store]:
    s = Store(state_db_url)
    yield s
    s.close()


def test_observe_poll_records_duration_transitions_lag_and_last_success(
    metrics: Metrics,
) -> None:
    result = PollResult(
        kind="poll",
        transitions=[
            Transition(TransitionKind.NEW_INCIDENT, "A", "r"),
            Transition(TransitionKind.NEW_INCIDENT, "B", "r"),
            Transition(TransitionKind.RESOLVED, "C", "r"),
        ],
        watermark_after=NOW - timedelta(seconds=90),
    )
    metrics.observe_poll(result, 1.5)
    got = samples(metrics)
    assert got[("ixm_cycle_duration_seconds_count", (("kind", "poll"),))] == 1
    assert got[("ixm_cycle_duration_seconds_sum", (("kind", "poll"),))] == 1.5
    assert got[("ixm_cycle_duration_seconds_bucket", (("kind", "poll"), ("le", "2.5")))] == 1
    assert got[("ixm_cycle_duration_seconds_bucket", (("kind", "poll"), ("le", "1.0")))] == 0
    assert got[("ixm_transitions_total", (("kind", "New Incident"),))] == 2
    assert got[("ixm_transitions_total", (("kind", "Resolved"),))] == 1
    assert got[("ixm_poll_lag_seconds", ())] == 90
    assert got[("ixm_last_successful_poll_timestamp_seconds", ())] == NOW.timestamp()


def test_observe_error_counts_status_and_auth_failures(metrics: Metrics) -> None:
    metrics.observe_error("ivanti", TransientError("ivanti", "query", "x", status=503))
    metrics.observe_error("ivanti", TransientError("ivanti", "query", "no answer"))
    metrics.observe_error("xmatters", AuthError("xmatters", "events", "bad", status=401))
    metrics.observe_error("xmatters", RuntimeError("bug"))
    got = samples(metrics)
    assert got[("ixm_api_errors_total", (("api", "ivanti"), ("status", "503")))] == 1
    assert got[("ixm_api_errors_total", (("api", "ivanti"), ("status", "transport")))] == 1
    assert got[("ixm_api_errors_total", (("api", "xmatters"), ("status", "401")))] == 1
    assert got[("ixm_api_errors_total", (("api", "xmatters"), ("status", "error")))] == 1
    assert got[("ixm_auth_failures_total", (("api", "xmatters"),))] == 1
    assert ("ixm_auth_failures_total", (("api", "ivanti"),)) not in got


def _action(store: Store, kind: str, http_status: int | None = None) -> int:
    with store.unit() as u:
        action = u.add_action(
            rec_id="R" + kind,
            incident_number=1,
            kind=kind,
            payload={},
            reason="test",
            now=NOW,
        )
        if http_status is not None:
            attempt = u.start_attempt(action, NOW)
            attempt.finished_at = NOW
            attempt.outcome = "retry"
            attempt.http_status = http_status
        return action.id


def test_observe_delivery_labels_by_kind_and_counts_failed_calls(
    metrics: Metrics, store: Store
) -> None:
    page = _action(store, "page")
    note = _action(store, "note", http_status=401)
    term = _action(store, "terminate", http_status=503)
    metrics.observe_delivery(
        DeliveryResult(done=[page], retried=[note], dead=[term], deferred=[]), store
    )
    metrics.observe_delivery(DeliveryResult(done=[99]))  # no store: kind unknown
    got = samples(metrics)
    assert got[("ixm_deliveries_total", (("kind", "page"), ("outcome", "ok")))] == 1
    assert got[("ixm_deliveries_total", (("kind", "note"), ("outcome", "retry")))] == 1
    assert got[("ixm_deliveries_total", (("kind", "terminate"), ("outcome", "dead")))] == 1
    assert got[("ixm_deliveries_total", (("kind", "unknown"), ("outcome", "ok")))] == 1
    assert got[("ixm_api_errors_total", (("api", "ivanti"), ("status", "401")))] == 1
    assert got[("ixm_api_errors_total", (("api", "xmatters"), ("status", "503")))] == 1
    assert got[("ixm_auth_failures_total", (("api", "ivanti"),))] == 1


def test_refresh_from_db_sets_outbox_gauge_and_lag(metrics: Metrics, store: Store) -> None:
    _action(store, "page")
    _action(store, "note")
    dead = _action(store, "terminate")
    with store.unit() as u:
        action = u.action(dead)
        assert action is not None
        action.state = "dead"
        u.set_state("watermark", "2026-11-27T09:58:00Z", NOW)
    with store.unit() as u:
        metrics.refresh_from_db(u)
    got = samples(metrics)
    assert got[("ixm_outbox_actions", (("state", "pending"),))] == 2
    assert got[("ixm_outbox_actions", (("state", "dead"),))] == 1
    assert got[("ixm_outbox_actions", (("state", "done"),))] == 0
    assert got[("ixm_outbox_actions", (("state", "skipped"),))] == 0
    assert got[("ixm_poll_lag_seconds", ())] == 120


def test_registries_are_independent() -> None:
    a, b = Metrics(), Metrics()
    a.observe_error("ivanti", TransientError("ivanti", "query", "x", status=500))
    assert ("ixm_api_errors_total", (("api", "ivanti"), ("status", "500"))) in samples(a)
    assert not any(name == "ixm_api_errors_total" for name, _ in samples(b))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_http_endpoint_serves_every_series(metrics: Metrics) -> None:
    metrics.observe_poll(PollResult(kind="baseline", watermark_after=NOW), 0.2)
    metrics.observe_error("xmatters", AuthError("xmatters", "events", "bad", status=401))
    metrics.observe_delivery(DeliveryResult(deferred=[1]))
    metrics.outbox.labels(state="pending").set(3)
    metrics.transitions.labels(kind="Closed").inc()
    port = _free_port()
    metrics.serve("127.0.0.1", port)
    try:
        with pytest.raises(RuntimeError):
            metrics.serve("127.0.0.1", port)
        body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    finally:
        metrics.close()
    for series in (
        "ixm_poll_lag_seconds",
        'ixm_cycle_duration_seconds_count{kind="baseline"}',
        'ixm_transitions_total{kind="Closed"}',
        'ixm_outbox_actions{state="pending"} 3.0',
        'ixm_deliveries_total{kind="unknown",outcome="deferred"} 1.0',
        'ixm_api_errors_total{api="xmatters",status="401"} 1.0',
        'ixm_auth_failures_total{api="xmatters"} 1.0',
        "ixm_last_successful_poll_timestamp_seconds",
    ):
        assert series in body, series
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_lag_beyond_overlap_is_what_a_threshold_should_watch() -> None:
    """The watermark trails by IXM_OVERLAP on purpose: the second gauge takes it off."""
    m = Metrics(now=lambda: NOW, overlap=60.0)
    m.observe_poll(PollResult(kind="poll", watermark_after=NOW - timedelta(seconds=75)), 0.1)
    got = samples(m)
    assert got[("ixm_poll_lag_seconds", ())] == 75
    assert got[("ixm_poll_lag_beyond_overlap_seconds", ())] == 15
    m.observe_poll(PollResult(kind="poll", watermark_after=NOW - timedelta(seconds=30)), 0.1)
    assert samples(m)[("ixm_poll_lag_beyond_overlap_seconds", ())] == 0


def test_settled_lag_is_now_less_the_settled_mark(store: Store) -> None:
    """ixm_poll_settled_lag_seconds: how far behind now the settle read has made rows final,
    from the poll's result and, after a restart or on a standby, from the state DB."""
    m = Metrics(now=lambda: NOW, overlap=60.0)
    settle = '{"at": "2026-11-27T09:58:30Z", "after": null, "limit": "2026-11-27T09:59:00Z"}'
    m.observe_poll(PollResult(kind="poll", settle_after=settle), 0.1)
    assert samples(m)[("ixm_poll_settled_lag_seconds", ())] == 90
    m.observe_poll(PollResult(kind="poll", settle_after="not json"), 0.1)
    assert samples(m)[("ixm_poll_settled_lag_seconds", ())] == 90  # unreadable: left as it was
    with store.unit() as u:
        u.set_state(
            "settle",
            '{"at": "2026-11-27T09:55:00Z", "after": 7, "limit": "2026-11-27T09:59:00Z"}',
            NOW,
        )
    with store.unit() as u:
        m.refresh_from_db(u)
    assert samples(m)[("ixm_poll_settled_lag_seconds", ())] == 300
