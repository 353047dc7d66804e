"""Faults a simulator can be told to inject, per route.

A fault matches a request by HTTP method (or any), a regular expression
searched in the request path and, optionally, one searched in the request body
(e.g. only the writes that set ``Owner``), and applies to the next ``times`` matching
requests (``times=0`` means until cleared).

Kinds:
  status         answer ``status`` with the service's error body (``retry_after``
                 adds a Retry-After header) without acting
  latency        wait ``delay`` seconds, then act normally (a frozen simulated
                 clock moves by ``delay`` too, so the act happens that much later)
  timeout        wait ``delay`` seconds (make it longer than the client timeout),
                 then drop the connection without acting
  drop_before    close the connection without acting and without answering
  drop_after     act (the change is made) then close the connection unanswered
  stall_after    act, then wait ``delay`` seconds before answering (a crash test
                 kills the client in that window: the peer acted, the client
                 has not recorded it)
  malformed      act, then answer 200 with a body that is not JSON
  truncated      act, then answer with only the first half of the JSON body
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Literal

FaultKind = Literal[
    "status",
    "latency",
    "timeout",
    "drop_before",
    "drop_after",
    "stall_after",
    "malformed",
    "truncated",
]
FAULT_KINDS: tuple[str, ...] = (
    "status",
    "latency",
    "timeout",
    "drop_before",
    "drop_after",
    "stall_after",
    "malformed",
    "truncated",
)


@dataclass
class Fault:
    kind: FaultKind
    path: str = ""  # regular expression searched in the request path ("" matches all)
    method: str | None = None  # None matches every method; "PATCH|PUT" either of them
    status: int = 500
    retry_after: float | None = None
    delay: float = 0.0
    times: int = 1  # 0 = until cleared
    body: str = ""  # regular expression searched in the request body ("" matches all)
    hits: int = field(default=0)

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; use one of {FAULT_KINDS}")
        self._rx = re.compile(self.path)
        self._body_rx = re.compile(self.body) if self.body else None

    def matches(self, method: str, path: str, body: str = "") -> bool:
        if self.method is not None and method.upper() not in self.method.upper().split("|"):
            return False
        if self._body_rx is not None and self._body_rx.search(body) is None:
            return False
        return self._rx.search(path) is not None

    def as_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "path": self.path,
            "method": self.method,
            "status": self.status,
            "retry_after": self.retry_after,
            "delay": self.delay,
            "times": self.times,
            "body": self.body,
            "hits": self.hits,
        }


class FaultPlan:
    """Thread-safe list of pending faults; the first matching one wins."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def inject(self, kind: FaultKind, path: str = "", **kwargs: object) -> Fault:
        """Shorthand: ``plan.inject("status", "/triggers", status=429, retry_after=2)``."""
        return self.add(Fault(kind=kind, path=path, **kwargs))  # type: ignore[arg-type]

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def pending(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    def take(self, method: str, path: str, body: str = "") -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path, body):
                    fault.hits += 1
                    if fault.times and fault.hits >= fault.times:
                        self._faults.remove(fault)
                    return fault
        return None
