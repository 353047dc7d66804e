"""systemd start-up does not wait for the APIs: READY once the DB is migrated, STATUS= says why."""

from __future__ import annotations

import pytest

from daemon.simulators.harness import SimPair
from tests.e2e.test_service_run import FakeSystemd, _service, _start, systemd  # noqa: F401

pytestmark = pytest.mark.e2e


def statuses(messages: list[str]) -> list[str]:
    return [
        line[len("STATUS=") :]
        for m in messages
        for line in m.splitlines()
        if line.startswith("STATUS=")
    ]


def test_ready_at_once_while_ivanti_is_down_and_status_says_why(
    sims: SimPair,
    state_db_url: str,
    systemd: FakeSystemd,  # noqa: F811
) -> None:
    sims.ivanti.faults.inject("status", "/incidents", status=503, times=0)
    svc = _service(sims, state_db_url, IXM_DEADMAN="600")
    stop, thread = _start(svc)
    try:
        systemd.wait_for(lambda m: any(x.startswith("READY=1") for x in m), timeout=10)
        ready = next(x for x in systemd.drain() if x.startswith("READY=1"))
        assert "STATUS=waiting for the first successful poll of Ivanti" in ready
        assert svc.last_poll_ok is None  # READY did not wait for a poll
        systemd.wait_for(lambda m: any("last error:" in s and "503" in s for s in statuses(m)))
        systemd.wait_for(lambda m: m.count("WATCHDOG=1") >= 3)  # fed: within the dead-man
        sims.ivanti.faults.clear()
        systemd.wait_for(lambda m: statuses(m)[-1:] == ["polling"])
    finally:
        stop.set()
        thread.join(timeout=20)
        svc.close()
    assert not thread.is_alive()


def test_status_names_xmatters_when_only_its_rest_api_is_down(
    sims: SimPair,
    state_db_url: str,
    systemd: FakeSystemd,  # noqa: F811
) -> None:
    sims.xmatters.faults.inject("status", "/api/xm/1/events", status=503, times=0)
    svc = _service(sims, state_db_url)
    stop, thread = _start(svc)
    try:
        systemd.wait_for(
            lambda m: any(
                s.startswith("polling; waiting for the xMatters REST API") for s in statuses(m)
            )
        )
        sims.xmatters.faults.clear()
        systemd.wait_for(lambda m: statuses(m)[-1:] == ["polling"], timeout=30)
    finally:
        stop.set()
        thread.join(timeout=20)
        svc.close()
