"""The naive poller the benchmark sets beside the daemon.

It does what simple integrations do (reference ivanti-api.md §2.5, e.g. the syn-con n8n
node): every cycle it reads *every* incident in scope with ``$top=100&$skip=n``, stops
on a short page, and compares each record with the copy it keeps in memory since the
previous cycle. A record whose ``LastModDateTime`` moved is a change; it pages on the
same transitions as the daemon (``daemon.transitions.decide`` / ``daemon.planner.plan``)
by posting the original workflow payload straight to the xMatters trigger.

What it deliberately lacks, because simple integrations lack it: a watermark, a state
DB (a restart forgets everything it knew), an outbox (a failed trigger is lost), and
write-back (so its xMatters cost is its triggers alone, whatever is live).

Pages are ordered by ``RecId``: a unique key no edit changes, so ``$skip`` neither skips
nor repeats rows while incidents are being edited mid-scan (ordering by a field edits
move, such as ``LastModDateTime``, would). It is also the order Ivanti's ``$skip`` is
cheapest in, which keeps the comparison fair to the naive side.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from daemon.domain import ActionKind, Policy, Snapshot
from daemon.planner import plan
from daemon.snapshot import MalformedRecord, parse_incident
from daemon.transitions import decide

ODATA_INCIDENTS = "/api/odata/businessobject/incidents"
PAGE_SIZE = 100  # Ivanti's maximum $top


@dataclass(frozen=True)
class NaiveConfig:
    ivanti_url: str
    ivanti_api_key: str
    trigger_url: str
    xm_username: str
    xm_password: str
    policy: Policy = field(default_factory=Policy)
    scope_filter: str = ""
    page_size: int = PAGE_SIZE
    timeout: float = 30.0

    @classmethod
    def from_env(cls, env: Mapping[str, str], policy: Policy | None = None) -> NaiveConfig:
        """The same settings the daemon is given (``SimPair.daemon_env`` names)."""
        return cls(
            ivanti_url=env["IVANTI_BASE_URL"].rstrip("/"),
            ivanti_api_key=env["IVANTI_API_KEY"],
            trigger_url=env["XMATTERS_TRIGGER_URL"],
            xm_username=env["XMATTERS_USERNAME"],
            xm_password=env["XMATTERS_PASSWORD"],
            policy=policy or Policy(),
            scope_filter=env.get("IVANTI_SCOPE_FILTER", ""),
        )


@dataclass
class NaiveResult:
    """One scan: what it cost and what it found."""

    requests: int = 0
    rows_read: int = 0
    changes: int = 0
    transitions: int = 0
    triggers: int = 0
    rejected: int = 0
    baseline: bool = False


class NaivePoller:
    """Full re-read every cycle, diffed against an in-memory dict of snapshots."""

    def __init__(
        self, config: NaiveConfig, *, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.cfg = config
        self.known: dict[str, Snapshot] = {}
        self.alerting: set[str] = set()
        self._scanned = False
        self._ivanti = httpx.Client(
            timeout=config.timeout,
            transport=transport,
            headers={
                "Accept": "application/json",
                "Authorization": f"rest_api_key={config.ivanti_api_key}",
            },
        )
        self._xm = httpx.Client(
            timeout=config.timeout,
            transport=transport,
            auth=(config.xm_username, config.xm_password),
        )

    def close(self) -> None:
        self._ivanti.close()
        self._xm.close()

    # ----- one cycle ---------------------------------------------------------------------
    def cycle(self) -> NaiveResult:
        """Read everything; the first scan only records (nobody is paged for old incidents)."""
        result = NaiveResult(baseline=not self._scanned)
        skip = 0
        while True:
            rows = self._page(skip, result)
            for raw in rows:
                self._compare(raw, result)
            skip += len(rows)
            if len(rows) < self.cfg.page_size:
                break
        self._scanned = True
        return result

    def run(
        self,
        stop: threading.Event,
        interval: float,
        on_cycle: Callable[[NaiveResult], None] | None = None,
    ) -> None:
        """Scan, sleep ``interval``, repeat: the loop simple integrations run."""
        while not stop.is_set():
            result = self.cycle()
            if on_cycle is not None:
                on_cycle(result)
            stop.wait(interval)

    # ----- reading -----------------------------------------------------------------------
    def _page(self, skip: int, result: NaiveResult) -> list[dict[str, Any]]:
        params = {
            "$top": str(self.cfg.page_size),
            "$skip": str(skip),
            "$orderby": "RecId asc",
        }
        if self.cfg.scope_filter:
            params["$filter"] = self.cfg.scope_filter
        response = self._ivanti.get(self.cfg.ivanti_url + ODATA_INCIDENTS, params=params)
        result.requests += 1
        response.raise_for_status()
        if response.status_code == 204 or not response.content.strip():
            return []  # Ivanti answers "no rows" with an empty body
        value = response.json().get("value")
        rows = value if isinstance(value, list) else []
        result.rows_read += len(rows)
        return rows

    # ----- diff and page -----------------------------------------------------------------
    def _compare(self, raw: Mapping[str, Any], result: NaiveResult) -> None:
        try:
            snap = parse_incident(raw)
        except MalformedRecord:
            result.rejected += 1
            return
        prev = self.known.get(snap.rec_id)
        if prev is not None and prev.last_mod == snap.last_mod:
            return
        self.known[snap.rec_id] = snap
        if result.baseline:
            return
        result.changes += 1
        verdict = decide(prev, snap, self.cfg.policy, baseline=False)
        if verdict.transition is None:
            return
        result.transitions += 1
        for action in plan(verdict, snap, alerting=snap.rec_id in self.alerting):
            self._trigger(action.payload["workflow"], result)
            if action.kind is ActionKind.PAGE:
                self.alerting.add(snap.rec_id)
            else:
                self.alerting.discard(snap.rec_id)

    def _trigger(self, payload: object, result: NaiveResult) -> None:
        """Fire and forget, as simple integrations do: no retry, no look-up, no outbox."""
        response = self._xm.post(self.cfg.trigger_url, json=payload)
        result.triggers += 1
        response.raise_for_status()
