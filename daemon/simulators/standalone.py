"""``ivanti-xmatters simulate``: both simulators as long-running local services."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from daemon.simulators.clock import SimClock
from daemon.simulators.harness import SimPair

log = logging.getLogger("daemon.simulators")


def run_simulators(
    *,
    host: str,
    ivanti_port: int,
    xmatters_port: int,
    quirks: bool = True,
    flood_control: bool = True,
    seed: int = 0,
    profile: str = "default",
) -> int:
    pair = SimPair(
        clock=SimClock(frozen=False),
        quirks=quirks,
        flood_control=flood_control,
        log_requests=True,
        profile=profile,
    )
    pair.start(host, ivanti_port, xmatters_port)
    for i in range(seed):
        pair.ivanti.create_incident(
            Subject=f"Sample incident {i + 1}",
            Priority=str(1 + i % 5),
            OwnerTeam=("Network Operations", "Database Team", "Service Desk")[i % 3],
        )
    env = pair.daemon_env("ivanti-xmatters.db")
    print(f"Simulators running, {profile} profile (Ctrl-C to stop). Point the daemon at them with:")
    for k, v in env.items():
        if k != "IXM_LOG_LEVEL":
            print(f"  export {k}='{v}'")
    print(f"Control surface: {pair.ivanti.url}/_sim/  and  {pair.xmatters.url}/_sim/")
    print("  GET /_sim/ on each lists its control routes (an example curl each) and switches;")
    print(f"  as text: curl -s '{pair.xmatters.url}/_sim/?format=text'")
    print(f'  e.g. curl -X POST {pair.ivanti.url}/_sim/incidents -d \'{{"Priority": "1"}}\'')
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        stop.wait()
    finally:
        pair.stop()
    return 0
