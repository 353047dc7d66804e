"""sd_notify for ``Type=notify`` units: READY, WATCHDOG, STATUS, STOPPING.

A dozen lines of the documented datagram protocol (sd_notify(3)); no-ops when
the daemon is not started by systemd (``NOTIFY_SOCKET`` unset).
"""

from __future__ import annotations

import os
import socket


def notify(message: str) -> bool:
    """Send ``message`` to systemd; False when not running under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            # Never block: a notify socket nobody reads (a full queue) must not stall
            # the scheduler loop, and with it shutdown.
            sock.send(message.encode(), socket.MSG_DONTWAIT)
        except OSError:  # BlockingIOError included
            return False
    return True


def watchdog_period(default: float) -> float:
    """How often to feed the watchdog: half of ``WatchdogSec=`` (``WATCHDOG_USEC``)."""
    usec = os.environ.get("WATCHDOG_USEC")
    if usec and usec.isdigit() and int(usec) > 0:
        return min(default, int(usec) / 2_000_000)
    return default
