"""Wiring: settings -> clients, store, poller, deliverer, write-back; and the scheduler.

The scheduler only wires the pieces. Jobs (poll, deliver, write-back, reconcile)
run one at a time under one lock, so a poll never reads an Ivanti change while
the deliverer is half-way through recording it, and each job has one instance,
coalesced (a late run is not repeated). A sweep (the first-start baseline, the
reconcile) holds that lock one page at a time, so polls and deliveries go on
between its pages, and each page it commits is a sign of life for the watchdog. SIGTERM/SIGINT let the running step
finish and commit, then the process exits 0.
"""

from __future__ import annotations

import errno
import gc
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from daemon import systemd
from daemon.config import ConfigError, Settings
from daemon.deliverer import Deliverer, DeliveryConfig, DeliveryResult
from daemon.domain import PlannedAction
from daemon.ivanti import IvantiClient
from daemon.lease import FencedTransport, Leadership, is_postgres
from daemon.logs import log_event
from daemon.metrics import Metrics
from daemon.notes import DEFAULT_RESPONSE_ACTIONS, parse_response_actions
from daemon.poller import Poller, PollerConfig, PollResult
from daemon.store import LeaseLost, Store, open_dry_run
from daemon.writeback import WriteBack, WritebackConfig, WritebackResult
from daemon.xmatters import XMattersClient

log = logging.getLogger("daemon.service")

# A live event unread for longer than this means the request budget cannot keep up.
WRITEBACK_LAG_WARN_S = 60.0


def _one_line(text: str, limit: int = 200) -> str:
    """A STATUS= value: one line, short, no secret (systemctl status shows it to anyone)."""
    from daemon.redact import redact

    flat = " ".join(redact(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def utcnow() -> datetime:
    return datetime.now(UTC)


def settle_heap() -> None:
    """Start-up is done: what is alive now (modules, settings, the ORM's mappings: about
    110,000 objects the cyclic garbage collector tracks) lives as long as the process,
    so take it out of the collector's reach (``gc.freeze``); what is created later is
    collected as usual. Every full collection walked them all again: at 1,000 changes
    a cycle, the collector's time fell from about 41 to 25 ms a cycle (20 cycles of
    the benchmark's random mix, gc.callbacks). A process-wide choice, so the process
    makes it (``ivanti-xmatters run``), once, before its first job."""
    gc.collect()
    gc.freeze()


@dataclass
class CycleReport:
    poll: PollResult | None = None
    delivery: DeliveryResult = field(default_factory=DeliveryResult)
    writeback: WritebackResult | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def build_ivanti(settings: Settings, **kwargs: Any) -> IvantiClient:
    iv = settings.ivanti
    assert iv is not None
    return IvantiClient(
        iv.base_url,
        api_key=iv.api_key,
        tenant=iv.tenant or None,
        username=iv.username,
        password=iv.password,
        role=iv.role,
        timeout=iv.timeout,
        update_method=iv.update_method,
        **kwargs,
    )


def build_xmatters(settings: Settings, **kwargs: Any) -> XMattersClient:
    xm = settings.xmatters
    assert xm is not None
    return XMattersClient(
        xm.base_url or "",
        xm.trigger_url,
        username=xm.username,
        password=xm.password,
        oauth_client_id=xm.oauth_client_id,
        timeout=xm.timeout,
        rate_limit_per_s=xm.rate_limit_per_s,
        form_trigger_url=xm.form_trigger_url or None,
        **kwargs,
    )


class Service:
    def __init__(
        self,
        settings: Settings,
        *,
        store: Store | None = None,
        ivanti: IvantiClient | None = None,
        xmatters: XMattersClient | None = None,
        now: Callable[[], datetime] = utcnow,
        dry_run: bool = False,
    ) -> None:
        self.settings = settings
        self.dry_run = dry_run  # poll and diff only: nothing sent, nothing written
        # SIGHUP (systemctl reload): read the rules file again at the next watchdog tick
        self.reload_requested = threading.Event()
        self.now = now
        # A dry run never touches the state DB: it reads a private copy (or, for a
        # database that cannot be copied, reads it with every transaction rolled back).
        self.dry_run_note = ""
        if store is None and dry_run:
            store, self.dry_run_note = open_dry_run(settings.state_db_url)
            log_event(log, logging.WARNING, "dry run: " + self.dry_run_note)
        self.store = store or Store(settings.state_db_url)
        # PostgreSQL: replicas compete for a leader lease (active in run() and `once`);
        # no request goes out while this replica does not lead
        self.leadership: Leadership | None = None
        http: dict[str, Any] = {}
        if is_postgres(settings.state_db_url) and not dry_run:
            self.leadership = Leadership(self.store, settings.ops.lease_ttl)
            self.store.replica = self.leadership.holder  # on each attempt it makes
            http = {"transport": FencedTransport(self.leadership)}
        self.ivanti = ivanti or build_ivanti(settings, **http)
        self.xm = xmatters or build_xmatters(settings, **http)
        self.lock = threading.Lock()
        self.metrics = Metrics(now=now, overlap=settings.poll.overlap)
        self.last_poll_ok: datetime | None = None
        self.last_progress: datetime | None = None  # a sweep's last committed page
        # the jobs running now (poll, deliver, write-back, reconcile) and since when
        # (time.monotonic()): one that runs for longer than IXM_DEADMAN is stuck
        self._running: dict[str, float] = {}
        self._running_lock = threading.Lock()
        self._wb_behind = False  # the write-back lag is over WRITEBACK_LAG_WARN_S
        self.last_error: dict[str, str] = {}
        xs = settings.xmatters
        assert xs is not None and settings.ivanti is not None
        self.poller = Poller(
            self.ivanti,
            self.store,
            PollerConfig(
                policy=settings.policy,
                scope_filter=settings.ivanti.scope_filter,
                extra_fields=settings.ivanti.extra_fields,
                page_size=settings.poll.page_size,
                overlap=timedelta(seconds=settings.poll.overlap),
                baseline_page_critical=settings.poll.baseline_page_critical,
                paging=settings.poll.paging,
            ),
            now=now,
            step_lock=self.lock,
            on_progress=self._sweep_progress,
        )
        d = settings.delivery
        self.deliverer = Deliverer(
            self.store,
            self.xm,
            self.ivanti,
            DeliveryConfig(
                mode=xs.mode,
                settle=timedelta(seconds=max(xs.timeout, settings.ivanti.timeout) + 5),
                max_attempts=d.max_attempts,
                max_age=timedelta(seconds=d.max_age),
                backoff_base=d.backoff_base,
                backoff_max=d.backoff_max,
                event_timeout=timedelta(seconds=d.event_timeout),
                flood_limit_per_min=xs.flood_limit_per_min,
                recid_properties=xs.recid_properties,
                user_response_options=xs.user_response_options,
                group_response_options=xs.group_response_options,
                event_priority=xs.event_priority,
                form_trigger_url=xs.form_trigger_url or None,
            ),
            policy=settings.policy,
            notes_prefix=xs.notes_prefix,
            now=now,
        )
        wb = settings.writeback
        self.writeback: WriteBack | None = None
        if xs.rest_enabled:  # event ids are learned even when nothing is written back
            actions = (
                parse_response_actions(wb.response_actions)
                if wb.response_actions
                else dict(DEFAULT_RESPONSE_ACTIONS)
            )
            self.writeback = WriteBack(
                self.store,
                self.xm,
                WritebackConfig(
                    notes_prefix=xs.notes_prefix,
                    grace=timedelta(seconds=wb.grace),
                    delivery_notes=wb.delivery_notes,
                    response_actions=actions,
                    user_map=dict(wb.user_map),
                    note_max_chars=wb.note_max_chars,
                    concurrency=wb.concurrency,
                    quiet_poll_every=wb.quiet_poll_every,
                    write_notes=wb.enabled and wb.workflow_writeback != "on",
                    workflow_check=wb.workflow_writeback == "check",
                    workflow_wait=timedelta(seconds=wb.workflow_writeback_wait),
                ),
                now=now,
            )

    # ----- jobs --------------------------------------------------------------------------
    def poll_job(self, *, dry_run: bool = False) -> PollResult:
        dry_run = dry_run or self.dry_run
        t0 = time.monotonic()
        started = self.now()
        try:
            result = self.poller.poll(dry_run=dry_run)  # takes self.lock itself
        except Exception as exc:
            self.metrics.observe_cycle("poll", time.monotonic() - t0)
            self._failed("ivanti", "poll", exc)
            raise
        if not dry_run:
            self.metrics.observe_poll(result, time.monotonic() - t0)
        self.last_poll_ok = self.now()
        self.last_error.pop("ivanti", None)
        log_event(log, logging.INFO, f"{result.kind} done", dry_run=dry_run, **result.summary())
        if not dry_run:  # after the poll's bookkeeping: the poll itself succeeded
            result.actions.extend(self.release_windows(closed_by=started))
        return result

    def reconcile_job(self) -> PollResult:
        t0 = time.monotonic()
        try:
            result = self.poller.reconcile(dry_run=self.dry_run)  # self.lock page by page
        except Exception as exc:
            self.metrics.observe_cycle("reconcile", time.monotonic() - t0)
            self._failed("ivanti", "reconcile", exc)
            raise
        if not self.dry_run:
            self.metrics.observe_poll(result, time.monotonic() - t0)
        log_event(log, logging.INFO, "reconcile done", dry_run=self.dry_run, **result.summary())
        return result

    def _sweep_progress(self) -> None:
        self.last_progress = self.now()

    def deliver_job(self) -> DeliveryResult:
        if self.dry_run:
            return DeliveryResult()
        with self.lock:
            return self._deliver_locked()

    def _deliver_locked(self) -> DeliveryResult:
        result = self.deliverer.drain()
        self.metrics.observe_delivery(result, self.store)
        with self.store.unit() as u:
            self.metrics.refresh_from_db(u)
        if result.attempted or result.deferred:
            log_event(
                log,
                logging.INFO,
                "delivery round",
                done=len(result.done),
                retrying=len(result.retried),
                dead=len(result.dead),
                deferred=len(result.deferred),
            )
        return result

    def scheduled_poll(self) -> None:
        """The scheduler's poll: a poll that planned actions delivers them at once
        rather than at the delivery job's next tick, so detection latency is the poll
        interval alone."""
        result = self.poll_job()
        if result.actions:
            self.deliver_job()

    def writeback_loop(self, stop: threading.Event) -> None:
        """Write-back passes back to back, one at most every ``IXM_WRITEBACK_INTERVAL``:
        a pass never overlaps itself and is never skipped (a scheduler's interval job
        skips a run that is due while the last one still reads). A pass that queued
        notes hands them to the deliverer at once, so an answer shows in Ivanti as soon
        as it is read. When reading falls behind (``lag``), a WARNING says so."""
        period = self.settings.writeback.interval
        one_pass = self._safe(self._writeback_pass)  # a standby reads nothing
        while not stop.is_set():
            t0 = time.monotonic()
            one_pass()
            stop.wait(max(0.0, period - (time.monotonic() - t0)))

    def _writeback_pass(self) -> None:
        result = self.writeback_job()
        if result is not None and result.notes:
            self.deliver_job()
        self._wb_behind = self._watch_writeback_lag(self._wb_behind)

    def _watch_writeback_lag(self, behind: bool) -> bool:
        """Publish how long the least recently read live event has gone unread; WARN
        once when it passes WRITEBACK_LAG_WARN_S, INFO when it is back under."""
        with self.store.unit(rollback=True) as u:  # a read: no write lock
            lag = u.writeback_lag(self.now())
        self.metrics.observe_writeback_lag(lag, self.xm.limiter.rate)
        if lag > WRITEBACK_LAG_WARN_S and not behind:
            log_event(
                log,
                logging.WARNING,
                "write-back is falling behind: a live event went unread for longer than "
                f"{WRITEBACK_LAG_WARN_S:g} s (the xMatters request budget cannot keep up: "
                "raise XMATTERS_RATE_LIMIT or IXM_WRITEBACK_CONCURRENCY if the plan allows)",
                lag=f"{lag:.0f}s",
                rate=f"{self.xm.limiter.rate:g}/s",
            )
            return True
        if lag <= WRITEBACK_LAG_WARN_S and behind:
            log_event(log, logging.INFO, "write-back caught up", lag=f"{lag:.0f}s")
            return False
        return behind

    def writeback_job(self) -> WritebackResult | None:
        """Reading xMatters audits can take a while (2,000 live events are 500 requests
        a pass), so it runs beside the other jobs, not under their lock: it only adds
        note actions, in their own transactions."""
        if self.writeback is None or self.dry_run:
            return None
        try:
            result = self.writeback.run_once()
        except Exception as exc:
            self._failed("xmatters", "writeback", exc)
            raise
        if result.records or result.errors:
            log_event(
                log,
                logging.INFO,
                "write-back round",
                events=result.events_polled,
                records=result.records,
                notes=result.notes,
                errors=len(result.errors),
            )
        return result

    def _failed(self, api: str, job: str, exc: BaseException) -> None:
        self.metrics.observe_error(api, exc)
        self.last_error[api] = f"{self.now().isoformat()} {exc}"
        log_event(log, logging.ERROR, f"{job} failed", error=str(exc))

    def cycle(self, *, dry_run: bool = False) -> CycleReport:
        """One full cycle: poll, deliver, write back, deliver (what `once` runs)."""
        report = CycleReport()
        dry_run = dry_run or self.dry_run
        try:
            report.poll = self.poll_job(dry_run=dry_run)
            if dry_run:
                return report
            report.delivery = self.deliver_job()
            report.writeback = self.writeback_job()
            more = self.deliver_job()
            report.delivery.done += more.done
            report.delivery.retried += more.retried
            report.delivery.dead += more.dead
        except Exception as exc:
            report.error = str(exc)
        return report

    # ----- long-running ------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Run the jobs on their schedules until ``stop`` is set."""
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.schedulers.background import BackgroundScheduler

        s = self.settings
        scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=4)},  # one per job
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=UTC,
        )
        now = datetime.now(UTC)
        scheduler.add_job(
            self._safe(self.scheduled_poll),
            "interval",
            seconds=s.poll.interval,
            id="poll",
            next_run_time=now,
        )
        scheduler.add_job(
            self._safe(self.deliver_job),
            "interval",
            seconds=s.delivery.interval,
            id="deliver",
            next_run_time=now + timedelta(seconds=1),
        )
        writeback: threading.Thread | None = None
        if self.writeback is not None:
            writeback = threading.Thread(
                target=self.writeback_loop, args=(stop,), name="writeback", daemon=True
            )
        if s.poll.reconcile_interval:
            scheduler.add_job(
                self._safe(self.reconcile_job),
                "interval",
                seconds=s.poll.reconcile_interval,
                id="reconcile",
            )
        if s.ops.metrics_port is not None:
            self._serve_metrics(s.ops.metrics_addr, s.ops.metrics_port)
        lead = self.leadership
        lease_thread: threading.Thread | None = None
        lease_stop = threading.Event()  # set only once the last step has finished
        if lead is not None:
            self.lead_step(activate=True)
            lease_thread = threading.Thread(
                target=self._lease_loop, args=(lease_stop, scheduler), name="lease", daemon=True
            )
        scheduler.start()
        if lease_thread is not None:
            lease_thread.start()
        if writeback is not None:
            writeback.start()
        log_event(
            log,
            logging.INFO,
            "daemon running",
            poll_interval=s.poll.interval,
            mode=s.xmatters.mode if s.xmatters else "?",
            writeback=self.writeback is not None,
        )
        # READY as soon as the state DB is migrated (Service()) and the settings are valid:
        # an Ivanti or xMatters outage must not hold `systemctl start` for TimeoutStartSec
        # and then loop. STATUS= says what the daemon waits for; the watchdog and the
        # dead-man below still judge the polls.
        systemd.notify("READY=1\nSTATUS=" + self._status(xmatters_ok=False))
        log_event(log, logging.INFO, "ready: state DB migrated, settings valid")
        deadman = timedelta(seconds=s.ops.deadman)
        started = self.now()
        stalled_logged = stuck_logged = False
        standby_status = ""
        xmatters_ok, next_probe, status, current = False, 0.0, "", ""
        try:
            while not stop.wait(timeout=systemd.watchdog_period(default=5.0)):
                if self.reload_requested.is_set():
                    self.reload_requested.clear()
                    self.reload_rules()
                if lead is not None and not lead.is_leader():
                    # a standby is healthy while it hears from the DB; as leader its
                    # dead-man counts from when it took over
                    text = f"standby, leader is {lead.leader_text()}"
                    if text != standby_status:
                        systemd.notify(f"READY=1\nSTATUS={text}")
                        standby_status = status = text
                    if lead.last_contact is not None and (
                        time.monotonic() - lead.last_contact <= s.ops.deadman
                    ):
                        systemd.notify("WATCHDOG=1")
                    started, self.last_poll_ok, xmatters_ok = self.now(), None, False
                    continue
                standby_status = ""
                alive = [t for t in (self.last_poll_ok, self.last_progress) if t is not None]
                healthy_since = max(alive, default=started)
                if not xmatters_ok and self.last_poll_ok and time.monotonic() >= next_probe:
                    xmatters_ok = self._xmatters_answers()
                    next_probe = time.monotonic() + s.poll.interval
                    if xmatters_ok:
                        log_event(log, logging.INFO, "both APIs answered: polling")
                stuck = self.stuck_job(s.ops.deadman)
                if stuck is not None:
                    if not stuck_logged:
                        log_event(
                            log,
                            logging.ERROR,
                            "a job is stuck: no longer feeding the systemd watchdog, so "
                            "systemd restarts the daemon (another replica takes the lease)",
                            job=stuck[0].removesuffix("_job").lstrip("_"),
                            running=f"{stuck[1]:.0f}s",
                            deadman=f"{s.ops.deadman:g}s",
                        )
                        stuck_logged = True
                    current = f"stuck: {stuck[0]} has run for {stuck[1]:.0f} s"
                elif self.now() - healthy_since <= deadman:
                    systemd.notify("WATCHDOG=1")
                    stalled_logged = stuck_logged = False
                    current = self._status(xmatters_ok=xmatters_ok)
                elif not stalled_logged:
                    log_event(
                        log,
                        logging.ERROR,
                        "dead-man: no successful poll; no longer feeding the systemd watchdog",
                        since=healthy_since.isoformat(),
                        deadman=f"{s.ops.deadman:g}s",
                        last_error=self.last_error.get("ivanti", "none"),
                    )
                    current = "no successful poll within IXM_DEADMAN"
                    stalled_logged = True
                if current != status:
                    systemd.notify("STATUS=" + current)
                    status = current
        finally:
            systemd.notify("STOPPING=1")
            log_event(log, logging.INFO, "stopping: finishing the current step")
            scheduler.shutdown(wait=True)
            if writeback is not None:
                writeback.join(timeout=120.0)  # a pass in flight finishes its requests
            lease_stop.set()
            if lease_thread is not None:
                lease_thread.join(timeout=30)
            if lead is not None:
                lead.release()  # a clean stop hands over at the standby's next try
                lead.active, self.store.fence = False, None
            log_event(log, logging.INFO, "stopped")

    def release_windows(self, *, closed_by: datetime) -> list[PlannedAction]:
        """Page, once, what the maintenance windows closed by ``closed_by`` held and is
        still open and critical (``daemon/windows.py``); after a successful poll, so the
        incidents' state is the one read since the window closed."""
        from daemon.windows import release_due

        now = self.now()
        with self.lock, self.store.unit() as u:
            planned = release_due(u, self.settings.policy, closed_by=closed_by, now=now)
        for action in planned:
            log_event(
                log,
                logging.INFO,
                "maintenance window closed: paging what it held",
                rec_id=action.rec_id,
                kind=str(action.payload.get("type")),
                reason=action.reason,
            )
        return planned

    def reload_rules(self) -> bool:
        """Read the rules file (IXM_RULES_FILE, as at start) again and use it for the
        changes seen from now on; a broken file keeps the rules in use (logged as errors).

        Like a restart it pages nobody for what the new rules newly match: rules judge
        changes only. Swapped under the step lock, so no page is judged half by each.
        """
        from dataclasses import replace

        from daemon.config import rules_fields
        from daemon.rules import RulesError, load_rules

        current = self.settings.policy.rules
        if current is None:
            log_event(
                log,
                logging.WARNING,
                "reload: no rules file was set at start (IXM_RULES_FILE); restart to add one",
            )
            return False
        extras = self.settings.ivanti.extra_fields if self.settings.ivanti else ()
        try:
            rules = load_rules(current.path, known_fields=rules_fields(extras))
        except RulesError as exc:
            for problem in exc.problems:
                log_event(
                    log,
                    logging.ERROR,
                    "reload refused: the rules file is broken; the rules in use stay",
                    file=exc.path,
                    problem=problem,
                )
            return False
        policy = replace(self.settings.policy, rules=rules)
        with self.lock:
            self.settings = replace(self.settings, policy=policy)
            self.poller.cfg = replace(self.poller.cfg, policy=policy)
            self.deliverer.policy = policy
        log_event(log, logging.INFO, "rules file reloaded", file=rules.path)
        return True

    def _status(self, *, xmatters_ok: bool) -> str:
        """One line for ``systemctl status``: what the daemon waits for, if anything."""
        if self.last_poll_ok is None:
            error = self.last_error.get("ivanti")
            why = f" (last error: {error.split(' ', 1)[-1]})" if error else ""
            return _one_line("waiting for the first successful poll of Ivanti" + why)
        if not xmatters_ok:
            error = self.last_error.get("xmatters")
            why = f" (last error: {error.split(' ', 1)[-1]})" if error else ""
            return _one_line("polling; waiting for the xMatters REST API to answer" + why)
        return "polling"

    def _serve_metrics(self, addr: str, port: int) -> None:
        """A port that cannot be bound is a configuration error (exit 78), not a traceback."""
        try:
            self.metrics.serve(addr, port)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            if exc.errno == errno.EADDRINUSE:
                reason = "another process already listens there"
            raise ConfigError(
                f"IXM_METRICS_PORT={port} cannot be served on {addr}:{port} ({reason}); "
                "pick a free port (ss -ltnp shows who holds it) or unset IXM_METRICS_PORT"
            ) from None

    def _xmatters_answers(self) -> bool:
        """Part of readiness: one cheap REST call (a search for a random requestId, which
        matches nothing). Without REST credentials the trigger is the only xMatters call,
        and it is not probed: a trigger POST would create an alert."""
        xs = self.settings.xmatters
        if xs is None or not xs.base_url or xs.auth == "none":
            return True
        try:
            self.xm.find_events(request_id=str(uuid.uuid4()), limit=1)
        except Exception as exc:
            self._failed("xmatters", "readiness check", exc)
            return False
        return True

    # ----- the leader lease (PostgreSQL) --------------------------------------------------
    def lead_step(self, *, activate: bool = False) -> bool:
        """Renew or take the lease once (``activate``: from now on units are fenced)."""
        lead = self.leadership
        if lead is None:
            return True
        if activate:
            lead.active = True
            self.store.fence = lead
        before = lead.changes
        leading = lead.step()
        self.metrics.leader.set(1 if leading else 0)
        if lead.changes != before:
            self.metrics.lease_changes.inc(lead.changes - before)
        return leading

    def _lease_loop(self, stop: threading.Event, scheduler: Any) -> None:
        lead = self.leadership
        assert lead is not None
        while not stop.wait(timeout=lead.ttl / 3):
            was = lead.is_leader()
            if self.lead_step() and not was:
                # the new leader's first cycle now: it picks up where the last commit left off
                for job_id in ("poll", "deliver"):
                    try:
                        scheduler.modify_job(job_id, next_run_time=datetime.now(UTC))
                    except Exception:
                        pass

    def _safe(self, job: Callable[..., Any]) -> Callable[[], None]:
        def run() -> None:
            if self.leadership is not None and not self.leadership.is_leader():
                return  # a standby does no work
            with self._running_lock:
                self._running[run.__name__] = time.monotonic()
            try:
                job()
            except LeaseLost as exc:  # the lease ran out under this replica
                log_event(log, logging.WARNING, "fenced: nothing committed", error=str(exc))
            except Exception:  # already logged by the job; keep the scheduler alive
                pass
            finally:
                with self._running_lock:
                    self._running.pop(run.__name__, None)

        run.__name__ = getattr(job, "__name__", "job")
        return run

    def stuck_job(self, limit: float) -> tuple[str, float] | None:
        """A job that has run for longer than ``limit`` seconds without a sign of life
        (a poll or sweep that commits a page shows one), and for how long; else None.

        A thread can hang where no timeout reaches (seen: a connection check inside the
        PostgreSQL driver after the server restarted), and the other jobs go on, so the
        dead-man alone would never notice that, say, answers stop reaching Ivanti."""
        now = time.monotonic()
        alive = self.last_progress
        since_alive = (self.now() - alive).total_seconds() if alive is not None else float("inf")
        with self._running_lock:
            running = list(self._running.items())
        for name, started in running:
            age = now - started
            if name in ("scheduled_poll", "reconcile_job"):
                age = min(age, since_alive)  # a long sweep that commits pages is alive
            if age > limit:
                return name, age
        return None

    def close(self) -> None:
        if self.leadership is not None:
            self.leadership.release()
        self.metrics.close()
        try:
            self.ivanti.close()
        finally:
            self.xm.close()
            self.store.close()
