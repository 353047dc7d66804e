"""The long-running service: systemd readiness, watchdog feeding and the dead-man."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.config import load_settings
from daemon.service import Service
from daemon.simulators.harness import SimPair

pytestmark = pytest.mark.e2e


class FakeSystemd:
    """A NOTIFY_SOCKET that records what the daemon tells systemd, read continuously
    as systemd does (the kernel queues only a few datagrams)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.messages: list[str] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append(data.decode())

    def drain(self) -> list[str]:
        with self._lock:
            return list(self.messages)

    def wait_for(self, predicate: Callable[[list[str]], bool], timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.drain()):
                return
            time.sleep(0.02)
        raise AssertionError(f"systemd never got it; messages: {self.drain()[-10:]}")

    def close(self) -> None:
        self._closed.set()
        self._reader.join(timeout=5)
        self.sock.close()


@pytest.fixture
def systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # feed every 0.1 s
    yield fake
    fake.close()


def _service(sims: SimPair, state_db_url: str, **env: str) -> Service:
    settings_env = sims.daemon_env(state_db_url)
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


def test_ready_then_pages_and_stops_cleanly(
    sims: SimPair, state_db_url: str, systemd: FakeSystemd
) -> None:
    svc = _service(sims, state_db_url)
    stop, thread = _start(svc)
    try:
        systemd.wait_for(lambda m: any(x.startswith("READY=1") for x in m))
        systemd.wait_for(lambda m: any(x.endswith("STATUS=polling") for x in m))
        systemd.wait_for(lambda m: m.count("WATCHDOG=1") >= 3)
        sims.clock.advance(30)
        inc = sims.ivanti.create_incident(Priority="1", OwnerTeam="Network Operations")
        deadline = time.monotonic() + 20
        while not sims.xmatters.live_events(inc["RecId"]) and time.monotonic() < deadline:
            sims.settle()  # the clock is frozen: let an asynchronous flow run
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
    sims: SimPair, state_db_url: str, systemd: FakeSystemd, capsys: pytest.CaptureFixture[str]
) -> None:
    svc = _service(sims, state_db_url, IXM_DEADMAN="2")
    stop, thread = _start(svc)
    try:
        # READY comes before the first poll; STATUS=polling once a poll succeeded
        systemd.wait_for(lambda m: "STATUS=polling" in m)
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


def test_notify_never_blocks_on_a_socket_nobody_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel queues only a few datagrams (net.unix.max_dgram_qlen, often 10): a
    blocking send to a full queue would hang the scheduler loop, and shutdown with it."""
    from daemon import systemd as sd

    path = tmp_path / "unread.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    try:
        sent = [sd.notify("WATCHDOG=1") for _ in range(2000)]
    finally:
        sock.close()
    assert sent[0] is True
    assert sent[-1] is False  # queue full: dropped, not blocked


def test_write_back_passes_run_back_to_back_and_notes_go_out_at_once(
    sims: SimPair, state_db_url: str, systemd: FakeSystemd
) -> None:
    """Write-back runs in its own loop at the default 2 s interval (no skipped runs), a
    pass that queued notes delivers them without waiting for the deliverer's tick, and
    the lag of the least recently read event is published."""
    svc = _service(sims, state_db_url, IXM_DELIVERY_INTERVAL="3600")  # only the loop delivers
    stop, thread = _start(svc)
    try:
        systemd.wait_for(lambda m: any(x.endswith("STATUS=polling") for x in m))
        sims.clock.advance(30)
        inc = sims.ivanti.create_incident(Priority="1", OwnerTeam="Network Operations")
        rec = str(inc["RecId"])
        deadline = time.monotonic() + 20
        while not sims.xmatters.live_events(rec) and time.monotonic() < deadline:
            sims.settle()  # the clock is frozen: let an asynchronous flow run
            time.sleep(0.05)
        if sims.xmatters.flow_delay:
            # the flow made the event after the trigger answered: the deliverer's tick (an
            # hour here) is what sees it, so the test stands in for that tick
            svc.deliver_job()
        [ev] = sims.xmatters.live_events(rec)
        sims.xmatters.comment(str(ev["id"]), person="jsmith", text="on my way")
        sims.clock.advance(10)  # past the wait for the workflow's own write-back
        deadline = time.monotonic() + 30
        while not sims.ivanti.notes(rec) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any("on my way" in str(n["NotesBody"]) for n in sims.ivanti.notes(rec))
        assert svc.metrics.writeback_lag._value.get() >= 0  # published by the loop
        # the settled mark trails the newest read by at least the overlap (60 s default)
        assert svc.metrics.poll_settled_lag._value.get() >= svc.settings.poll.overlap
        assert threading.active_count() > 1
    finally:
        stop.set()
        thread.join(timeout=30)
        svc.close()
    assert not thread.is_alive()
    assert not any(t.name == "writeback" for t in threading.enumerate())


def test_a_standby_is_ready_and_names_the_leader(
    sims: SimPair, pg_state_db_url: str, systemd: FakeSystemd
) -> None:
    """PostgreSQL: two replicas; the second tells systemd it is a standby, and who leads."""
    leader = _service(sims, pg_state_db_url)
    stop_a, thread_a = _start(leader)
    try:
        systemd.wait_for(lambda m: any(x.endswith("STATUS=polling") for x in m))
        standby = _service(sims, pg_state_db_url)
        stop_b, thread_b = _start(standby)
        try:
            assert leader.leadership is not None
            holder = leader.leadership.holder
            systemd.wait_for(
                lambda m: any(
                    x.startswith(f"READY=1\nSTATUS=standby, leader is {holder}") for x in m
                )
            )
            assert leader.metrics.leader._value.get() == 1
            assert standby.metrics.leader._value.get() == 0
        finally:
            stop_b.set()
            thread_b.join(timeout=20)
            standby.close()
    finally:
        stop_a.set()
        thread_a.join(timeout=20)
        leader.close()


def test_a_stuck_write_back_pass_stops_the_watchdog_so_systemd_restarts_the_daemon(
    sims: SimPair, state_db_url: str, systemd: FakeSystemd, caplog: pytest.LogCaptureFixture
) -> None:
    """A thread can hang where no timeout reaches (seen: the PostgreSQL driver's connection
    check after the server restarted) while polls go on: answers would stop reaching Ivanti
    and nobody would know. A job running past IXM_DEADMAN stops the watchdog instead."""
    svc = _service(sims, state_db_url, IXM_DEADMAN="2", IXM_WRITEBACK_INTERVAL="0.2")
    assert svc.writeback is not None
    release = threading.Event()
    hung = threading.Event()

    def hangs() -> Any:
        hung.set()
        release.wait(30)
        raise RuntimeError("released")

    stop, thread = _start(svc)
    try:
        systemd.wait_for(lambda m: any(x.endswith("STATUS=polling") for x in m))
        svc.writeback.run_once = hangs  # type: ignore[method-assign]
        assert hung.wait(10)
        systemd.wait_for(lambda m: any("STATUS=stuck: _writeback_pass" in x for x in m))
        fed = systemd.drain().count("WATCHDOG=1")
        time.sleep(1.0)  # ten watchdog periods
        assert systemd.drain().count("WATCHDOG=1") == fed, "still feeding the watchdog"
        assert any("a job is stuck" in r.getMessage() for r in caplog.records)
    finally:
        release.set()
        stop.set()
        thread.join(timeout=20)
        svc.close()
