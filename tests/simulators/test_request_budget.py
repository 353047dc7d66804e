"""The plan-level request limit both simulators can enforce: 429s and x-ratelimit headers."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from daemon.simulators.clock import SimClock
from daemon.simulators.xmatters import DEFAULT_USERS, XMattersSimulator

USER = next(iter(DEFAULT_USERS.items()))


@pytest.fixture
def sim() -> Iterator[XMattersSimulator]:
    s = XMattersSimulator(SimClock())
    s.start()
    yield s
    s.stop()


def test_budget_refuses_with_429_until_the_period_ends(sim: XMattersSimulator) -> None:
    sim.set_request_budget(3, period=60, prefix="/api/xm/1")
    with httpx.Client(base_url=sim.url, auth=USER, timeout=5) as c:
        answers = [c.get("/api/xm/1/events", params={"limit": "1"}) for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert answers[2].headers["x-ratelimit-used"] == "3"
        assert answers[0].headers["x-ratelimit-limit"] == "3"
        assert answers[0].headers["x-ratelimit-period_in_sec"] == "60"
        assert 1 <= int(answers[3].headers["Retry-After"]) <= 60
        assert c.get("/_sim/budget").json()["refused"] == 1
        sim.clock.advance(60)
        assert c.get("/api/xm/1/events", params={"limit": "1"}).status_code == 200


def test_budget_without_headers_and_off_again(sim: XMattersSimulator) -> None:
    with httpx.Client(base_url=sim.url, auth=USER, timeout=5) as c:
        c.post("/_sim/budget", json={"limit": 1, "headers": False})
        first = c.get("/api/xm/1/events", params={"limit": "1"})
        assert first.status_code == 200 and "x-ratelimit-limit" not in first.headers
        assert c.get("/api/xm/1/events", params={"limit": "1"}).status_code == 429
        c.post("/_sim/budget", json={"limit": None})
        assert c.get("/api/xm/1/events", params={"limit": "1"}).status_code == 200
