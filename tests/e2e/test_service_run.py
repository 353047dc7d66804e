"""The long-running service: systemd readiness, watchdog feeding and the dead-man."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from daemon.config import load_settings
from daemon.service import Service
from daemon.simulators.harness import SimPair

pytestmark = pytest.mark.e2e


class FakeSystemd:
    """A NOTIFY_SOCKET that records what the daemon tells systemd."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                return self.messages

    def wait_for(self, predicate: Callable[[list[str]], bool], timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.drain()):
                return
        raise AssertionError(f"systemd never got it; messages: {self.messages[-10:]}")


@pytest.fixture
def systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # feed every 0.1 s
    yield fake
    fake.sock.close()


def _service(sims: SimPair, tmp_path: Path, **env: str) -> Service:
    settings_env = sims.daemon_env(tmp_path / "state.db")
    settings_env.update(
        {"IXM_POLL_INTERVAL": "1", "IXM_DELIVERY_INTERVAL": "0.1", "XMATTERS_RATE_LIMIT": "100"}
    )
    settings_env.update(env)
    return Service(load_settings(settings_env, env_file=os.devnull), now=sims.clock.now)


def _start(svc: Service) -> tuple[threading.Event, threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(target=svc.run, args=(stop,), daemon=True)
    thread.start()
    return stop, thread


def test_ready_after_first_poll_then_pages_and_stops_cleanly(
    sims: SimPair, tmp_path: Path, systemd: FakeSystemd
) -> None:
    svc = _service(sims, tmp_path)
    stop, thread = _start(svc)
    try:
        systemd.wait_for(lambda m: any(x.startswith("READY=1") for x in m))
        systemd.wait_for(lambda m: m.count("WATCHDOG=1") >= 3)
        sims.clock.advance(30)
        inc = sims.ivanti.create_incident(Priority="1", OwnerTeam="Network Operations")
        deadline = time.monotonic() + 20
        while not sims.xmatters.live_events(inc["RecId"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(sims.xmatters.live_events(inc["RecId"])) == 1
    finally:
        stop.set()
        thread.join(timeout=20)
        svc.close()
    assert not thread.is_alive()
    assert "STOPPING=1" in systemd.drain()
    with svc.store.unit() as u:
        assert all(a.finished_at is not None for a in u.attempts_for(1))


def test_dead_man_stops_feeding_the_watchdog(
    sims: SimPair, tmp_path: Path, systemd: FakeSystemd, capsys: pytest.CaptureFixture[str]
) -> None:
    svc = _service(sims, tmp_path, IXM_DEADMAN="2")
    stop, thread = _start(svc)
    try:
        systemd.wait_for(lambda m: any(x.startswith("READY=1") for x in m))
        sims.ivanti.faults.inject("status", "/incidents", status=503, times=0)
        # the clock the daemon judges by is the simulated one: move it past the dead-man
        sims.clock.advance(5)
        systemd.wait_for(lambda m: any("IXM_DEADMAN" in x for x in m))
        fed_before = systemd.drain().count("WATCHDOG=1")
        time.sleep(0.5)
        assert systemd.drain().count("WATCHDOG=1") == fed_before  # no longer fed
        sims.ivanti.faults.clear()
        sims.clock.advance(1)
        systemd.wait_for(lambda m: m.count("WATCHDOG=1") > fed_before)  # recovers
    finally:
        stop.set()
        thread.join(timeout=20)
        svc.close()
