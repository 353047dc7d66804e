"""No password, key, secret, session key or token ever reaches a log line.

Every secret gets a distinctive value, the daemon runs cycles through failures
(expired sessions, 401s, 5xx with bodies, dropped connections, refused writes)
at DEBUG level, and the captured output is searched for each secret and for
each session key and token the simulators handed out.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator

import pytest

from daemon.config import load_settings
from daemon.logs import setup_logging
from daemon.service import Service
from daemon.simulators.clock import SimClock
from daemon.simulators.harness import SimPair
from tests.conftest import START

pytestmark = pytest.mark.e2e

IVANTI_PASSWORD = "Ivanti-Pa55-7Q2XZ"
IVANTI_API_KEY = "IVKEY9F3A1C7E5B2D4F6A8C0E2B4D6F8A"
XM_PASSWORD = "Xm-Pa55-K8L2MN"
XM_API_KEY = "0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9"
XM_API_SECRET = "Xm-Secret-R4T6Y8"
TRIGGER_KEY = "TriggerKey5H7J9K"


class _Remembering(dict):  # type: ignore[type-arg]
    """Remembers every key ever stored: session keys and tokens the simulators issue."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.issued: list[str] = list(self.keys())

    def __setitem__(self, key: str, value: object) -> None:
        self.issued.append(key)
        super().__setitem__(key, value)


@pytest.fixture
def secret_sims(sim_profile: str) -> Iterator[SimPair]:
    pair = SimPair(
        clock=SimClock(START, frozen=True),
        profile=sim_profile,
        ivanti_kwargs={
            "users": {"xmapi": (IVANTI_PASSWORD, {"Admin"})},
            "api_keys": {IVANTI_API_KEY: "xmapi"},
        },
        xmatters_kwargs={
            "users": {"xmrest": XM_PASSWORD},
            "api_keys": {XM_API_KEY: XM_API_SECRET},
            "trigger_api_key": TRIGGER_KEY,
        },
    )
    # what the simulators hand out: session keys, access and refresh tokens
    pair.ivanti._sessions = _Remembering()
    pair.xmatters._access = _Remembering()
    pair.xmatters._refresh = _Remembering()
    with pair:
        yield pair


def _run(sims: SimPair, env: dict[str, str]) -> None:
    svc = Service(load_settings(env, env_file=os.devnull), now=sims.clock.now)
    try:
        svc.cycle()  # baseline
        sims.clock.advance(30)
        inc = sims.ivanti.create_incident(Priority="1", OwnerTeam="Network Operations")
        sims.ivanti.expire_sessions()
        sims.xmatters.faults.inject("status", "/triggers", status=500)
        sims.ivanti.faults.inject("status", "/incidents", status=503, method="GET")
        svc.cycle()  # the poll fails with 503
        sims.clock.advance(30)
        svc.cycle()  # the poll works; the trigger fails with 500
        sims.xmatters.faults.inject("drop_after", "/triggers")
        for _ in range(4):
            sims.clock.advance(120)
            svc.cycle()
        events = sims.xmatters.live_events(inc["RecId"])
        assert len(events) == 1
        sims.xmatters.respond(
            events[0]["id"], person="jsmith", response="Assign to me", comment="on it"
        )
        sims.ivanti.expire_sessions()
        sims.clock.advance(16 * 60)  # OAuth access tokens expire after 15 minutes
        for _ in range(3):
            svc.cycle()
            sims.clock.advance(30)
    finally:
        svc.close()


@pytest.mark.parametrize(
    ("ivanti_auth", "xmatters_auth"),
    [("session", "oauth"), ("apikey", "apikey"), ("session", "basic")],
)
def test_no_secret_in_any_log_line(
    secret_sims: SimPair, state_db_url: str, ivanti_auth: str, xmatters_auth: str
) -> None:
    sims = secret_sims
    env = sims.daemon_env(state_db_url, ivanti_auth=ivanti_auth, xmatters_auth=xmatters_auth)
    if ivanti_auth == "apikey":
        env["IVANTI_API_KEY"] = IVANTI_API_KEY
    if xmatters_auth == "basic":
        env["XMATTERS_TRIGGER_URL"] = f"{sims.xmatters.trigger_url}?apiKey={TRIGGER_KEY}"
    env["XMATTERS_RATE_LIMIT"] = "1000"
    out = io.StringIO()
    setup_logging("DEBUG", out)
    try:
        _run(sims, env)
    finally:
        setup_logging("WARNING", io.StringIO())
        logging.getLogger().handlers.clear()
    text = out.getvalue()
    assert "poll failed" in text or "delivery failed" in text  # failures were logged
    handed_out = [
        *sims.ivanti._sessions.issued,  # type: ignore[attr-defined]
        *sims.xmatters._access.issued,  # type: ignore[attr-defined]
        *sims.xmatters._refresh.issued,  # type: ignore[attr-defined]
    ]
    if ivanti_auth == "session":
        assert len(sims.ivanti._sessions.issued) >= 2  # type: ignore[attr-defined]
    if xmatters_auth == "oauth":
        assert sims.xmatters._access.issued  # type: ignore[attr-defined]
    secrets = [
        IVANTI_PASSWORD,
        IVANTI_API_KEY,
        XM_PASSWORD,
        XM_API_KEY,
        XM_API_SECRET,
        TRIGGER_KEY,
        *handed_out,
    ]
    leaked = [s for s in secrets if s and s in text]
    assert leaked == [], f"secrets in logs: {leaked}"
