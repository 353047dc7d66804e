"""Polling Ivanti: incremental keyset reads, the reconcile sweep, and the diff.

Reading changes (``Poller.poll``)
    ``LastModDateTime ge <watermark>`` ordered by ``LastModDateTime asc, RecId asc``,
    ``$top`` = page size. After a full page the next query starts at the last
    row's second (``ge``), re-reading that second's rows, which are skipped as
    already seen (by RecId and LastModDateTime). When a whole page falls inside one
    second (more than a page of incidents share a LastModDateTime), that second
    is drained on its own, keyed by IncidentNumber (``ge S and lt S+1 and
    IncidentNumber gt N``, ordered by IncidentNumber alone), before moving on past
    it: no row is lost however many share a timestamp, and no query puts a
    parenthesised group or an ``or`` anywhere but first, because Ivanti misreads
    both (reference ivanti-api.md §2.3).

    This path ("safe", the default) assumes nothing the reference leaves open: not
    that Ivanti stores whole seconds (if it keeps sub-seconds but serves whole
    seconds, rows of one served second come back in their hidden sub-second order),
    and not that ``RecId gt`` compares in the collation ``$orderby`` sorts by. An
    integer compares as it sorts under every reading. ``IXM_PAGING=keyset`` takes
    the cheaper exact continuation ``(second, RecId) > (S, R)`` and drains a crowded
    second by RecId: exactly ceil(changes / page size) + 1 requests, but it loses
    rows on a tenant where either assumption is false.

The watermark
    comes from server values only: after a cycle it is
    ``min(newest LastModDateTime seen, server Date of the first page - overlap)``,
    never moving backwards, with one exception: when the server's Date shows its
    clock went back behind the watermark, the poll re-reads from the server's time
    and the watermark follows it back, because every change saved since carries a
    LastModDateTime behind the old watermark. So each cycle re-reads the last
    ``overlap`` seconds, catching rows committed late with an older
    LastModDateTime; the re-read rows cost requests but never transitions.

Which rows are new
    A row counts as seen when both its LastModDateTime and its content match the
    stored snapshot: Ivanti keeps whole seconds, so an edit in the same second as
    the daemon's last read carries the same LastModDateTime yet is a new version.
    A row served with a LastModDateTime *older* than the stored one is new too:
    Ivanti serves only current records, so that means its clock was set back.

The reconcile sweep (``Poller.reconcile``)
    re-reads every open incident in scope (keyset on IncidentNumber) and
    processes any it has not seen at that LastModDateTime; tracked incidents that
    are no longer open in Ivanti's answer are fetched one by one, so a change the
    incremental read missed, or a deleted incident, is still acted on. At first
    start the same sweep takes the baseline: existing incidents are recorded and
    nobody is paged.

    A sweep reads and commits one page at a time under ``step_lock`` (the service's
    job lock) and lets go of it between pages, so polls and deliveries go on during
    an hour-long sweep of a large tenant; ``on_progress`` is called after each page
    (the service counts it as a sign of life). The baseline records how far it got
    (the last IncidentNumber and its start) in each page's transaction, so after a
    restart it resumes there instead of starting over; its cursor starts where the
    baseline began, so what changed meanwhile is still polled. An incident the
    baseline reads that was created after it began (while it ran, or while the
    daemon was down half-way) did not exist "at first start": it is judged as any
    new incident, paged if critical.

Each page is committed in one transaction: snapshots, the changes seen, the
transitions and the outbox actions they cause, together.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from daemon.domain import ActionKind, PlannedAction, Policy, Snapshot, Transition, Verdict
from daemon.ivanti import IvantiClient, odata_quote
from daemon.logs import log_event
from daemon.models import Change, Incident
from daemon.planner import plan
from daemon.rules import holding_window
from daemon.snapshot import MalformedRecord, parse_incident, snapshot_from_json
from daemon.store import IncidentState, Store, Unit
from daemon.timeutil import iso_utc, odata_datetime_literal, parse_ivanti_datetime, parse_utc
from daemon.transitions import decide

log = logging.getLogger("daemon.poller")

WATERMARK = "watermark"
BASELINE_DONE = "baseline_done"
LAST_RECONCILE = "last_reconcile"
BASELINE_PROGRESS = "baseline_progress"  # {"after": IncidentNumber, "started": iso} or ""
ORDER_CHANGES = "LastModDateTime asc,RecId asc"


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class PollerConfig:
    policy: Policy
    scope_filter: str = ""
    extra_fields: tuple[str, ...] = ()
    page_size: int = 100
    overlap: timedelta = timedelta(seconds=60)
    baseline_page_critical: bool = False
    paging: str = "safe"  # or "keyset": see the module docstring


@dataclass
class PollResult:
    kind: str
    cycle_id: int | None = None
    rows_read: int = 0
    changes: int = 0
    rejected: int = 0
    requests: int = 0
    transitions: list[Transition] = field(default_factory=list)
    # use cases the rules file held back (off, or its criterion did not match), with why
    held: list[Transition] = field(default_factory=list)
    actions: list[PlannedAction] = field(default_factory=list)
    watermark_before: datetime | None = None
    watermark_after: datetime | None = None
    baseline: bool = False

    def summary(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "cycle": self.cycle_id,
            "rows": self.rows_read,
            "changes": self.changes,
            "transitions": len(self.transitions),
            "actions": len(self.actions),
            "rejected": self.rejected,
            "requests": self.requests,
            "watermark": iso_utc(self.watermark_after) if self.watermark_after else None,
        }


def _floor(dt: datetime) -> datetime:
    return dt.replace(microsecond=0)


class Poller:
    def __init__(
        self,
        ivanti: IvantiClient,
        store: Store,
        config: PollerConfig,
        *,
        now: Callable[[], datetime] = utcnow,
        step_lock: AbstractContextManager[Any] | None = None,
        on_progress: Callable[[], None] | None = None,
    ) -> None:
        self.ivanti = ivanti
        self.store = store
        self.cfg = config
        self.now = now
        self.step_lock: AbstractContextManager[Any] = step_lock or nullcontext()
        self.on_progress = on_progress
        self._sweeping = threading.Lock()  # one sweep (baseline or reconcile) at a time

    # ----- public ------------------------------------------------------------------------
    def poll(self, *, dry_run: bool = False) -> PollResult:
        """One incremental read of what changed since the watermark (baseline at first start)."""
        with self.step_lock:
            with self.store.unit() as u:
                raw_wm = u.get_state(WATERMARK)
            if raw_wm is not None:
                return self._poll_from(raw_wm, dry_run)
        return self.reconcile(dry_run=dry_run, baseline=True)

    def _poll_from(self, raw_wm: str, dry_run: bool) -> PollResult:
        watermark = parse_utc(raw_wm)
        result = PollResult(kind="poll", watermark_before=watermark)
        cycle_id = self._start_cycle("poll", raw_wm, dry_run)
        result.cycle_id = cycle_id
        try:
            newest, first_date = self._read_and_commit(watermark, result, dry_run)
            lower = watermark
            if first_date is not None and _floor(first_date) - self.cfg.overlap < watermark:
                # Ivanti's clock went back: changes saved since carry LastModDateTimes
                # behind the watermark, and the read just made cannot see them. Read
                # again from the server's own time (rows seen already are skipped).
                lower = _floor(first_date) - self.cfg.overlap
                log_event(
                    log,
                    logging.WARNING,
                    "Ivanti's clock is behind the poll cursor (set back?); re-reading from "
                    "its current time",
                    watermark=iso_utc(watermark),
                    server_date=iso_utc(first_date),
                )
                again, _ = self._read_and_commit(lower, result, dry_run)
                if again is not None and (newest is None or again > newest):
                    newest = again
            result.watermark_after = self._next_watermark(lower, newest, first_date)
            self._finish_cycle(result, dry_run, ok=True)
        except Exception as exc:
            self._finish_cycle(result, dry_run, ok=False, error=exc)
            raise
        return result

    def _read_and_commit(
        self, lower: datetime, result: PollResult, dry_run: bool
    ) -> tuple[datetime | None, datetime | None]:
        """Read and commit every change from ``lower`` on: (newest LastModDateTime seen,
        server Date of the first page)."""
        first_date: datetime | None = None
        newest: datetime | None = None
        for page in self._read_changes(lower, result):
            if first_date is None:
                first_date = page.server_date
            for snap in self._commit_page(page.rows, result, "poll", False, dry_run):
                if newest is None or snap.last_mod > newest:
                    newest = snap.last_mod
        return newest, first_date

    def reconcile(self, *, dry_run: bool = False, baseline: bool = False) -> PollResult:
        """Re-read every open incident in scope and fix drift (level-triggered); the
        baseline when nothing is followed yet. One page at a time under ``step_lock``."""
        with self._sweeping:
            with self.step_lock, self.store.unit() as u:
                raw_wm = u.get_state(WATERMARK)
                raw_progress = u.get_state(BASELINE_PROGRESS) or ""
            if raw_wm is None:
                baseline = True  # nothing followed yet: any sweep is the baseline
            elif baseline:
                return self.poll(dry_run=dry_run)  # taken meanwhile by another sweep
            return self._sweep(raw_wm, raw_progress if baseline else "", dry_run, baseline)

    def _sweep(
        self, raw_wm: str | None, raw_progress: str, dry_run: bool, baseline: bool
    ) -> PollResult:
        kind = "baseline" if baseline else "reconcile"
        result = PollResult(kind=kind, baseline=baseline)
        result.watermark_before = parse_utc(raw_wm) if raw_wm else None
        with self.step_lock:
            result.cycle_id = self._start_cycle(kind, raw_wm, dry_run)
        try:
            first_date, resume_after = _baseline_progress(raw_progress)
            if resume_after is not None:
                log_event(
                    log,
                    logging.INFO,
                    "resuming the first-start baseline where it stopped",
                    after_incident=resume_after,
                    started=iso_utc(first_date) if first_date else "?",
                )
            missing: list[str] = []
            after: int | None = None  # IncidentNumbers up to here are compared already
            pages = self._read_open(result, resume_after)
            while True:
                with self.step_lock:
                    page = next(pages, None)
                    if page is None:
                        break
                    if first_date is None:
                        first_date = page.server_date or self.now()
                    progress = None
                    numbers = _numbers(page.rows)
                    if baseline and numbers:
                        progress = {
                            BASELINE_PROGRESS: json.dumps(
                                {"after": max(numbers), "started": iso_utc(first_date)}
                            )
                        }
                    born = _created_since(page.rows, first_date) if baseline else frozenset()
                    self._commit_page(
                        page.rows, result, kind, baseline, dry_run, progress, not_baseline=born
                    )
                    if not baseline:  # at first start nothing can be missing
                        after = self._collect_missing(page.rows, after, missing)
                if self.on_progress is not None:
                    self.on_progress()
            self._recheck_missing(missing, result, dry_run)
            if baseline:
                start = first_date or self.now()
                result.watermark_after = _floor(start) - self.cfg.overlap
            else:
                result.watermark_after = result.watermark_before
            with self.step_lock:
                self._finish_cycle(result, dry_run, ok=True)
        except Exception as exc:
            with self.step_lock:
                self._finish_cycle(result, dry_run, ok=False, error=exc)
            raise
        return result

    # ----- reading -----------------------------------------------------------------------
    def _scoped(self, expr: str) -> str:
        scope = self.cfg.scope_filter.strip()
        return f"({scope}) and {expr}" if scope else expr

    def _query(self, flt: str, orderby: str, result: PollResult) -> Any:
        page = self.ivanti.query_incidents(flt, orderby, top=self.cfg.page_size)
        result.requests += 1
        result.rows_read += len(page.rows)
        log.debug("ivanti query filter=%r rows=%d", flt, len(page.rows))
        return page

    def _read_changes(self, watermark: datetime, result: PollResult) -> Iterator[Any]:
        size = self.cfg.page_size
        flt = self._scoped(f"LastModDateTime ge {odata_datetime_literal(_floor(watermark))}")
        while True:
            page = self._query(flt, ORDER_CHANGES, result)
            yield page
            if len(page.rows) < size:
                return
            keyset = self._keyset_after(page.rows) if self.cfg.paging == "keyset" else None
            if keyset is not None:
                flt = keyset
                continue
            first_s = self._second_of(page.rows[0])
            last_s = self._second_of(page.rows[-1])
            if first_s is None or last_s is None:
                # A malformed timestamp at a page edge: move past the page's known rows.
                known = [s for s in map(self._second_of, page.rows) if s is not None]
                if not known:
                    return
                last_s = max(known)
                first_s = min(known)
            if first_s == last_s:
                yield from self._drain_second(last_s, result)
                last_s += timedelta(seconds=1)
            flt = self._scoped(f"LastModDateTime ge {odata_datetime_literal(last_s)}")

    def _keyset_after(self, rows: Sequence[Mapping[str, Any]]) -> str | None:
        """The exact continuation after a full page: rows later than the last one in
        (LastModDateTime, RecId) order, so no row is read twice and the requests
        equal ceil(changes / page size).

        Only when that order is the order the filter can express: every timestamp on
        the page is a whole second (as Ivanti stores them; with sub-seconds, RecId
        order inside one second is not the served order), and the scope filter has
        neither ``or`` nor parentheses (the continuation's group must come first, and
        Ivanti misreads a later group or an ``and`` after an ``or``). Otherwise None:
        the caller re-reads the last second, deduplicated.
        """
        scope = self.cfg.scope_filter.strip()
        if "(" in scope or " or " in f" {scope.casefold()} ":
            return None
        stamps = []
        for row in rows:
            try:
                stamp = parse_ivanti_datetime(row.get("LastModDateTime"))
            except ValueError:
                return None
            if stamp is None or stamp.microsecond:
                return None
            stamps.append(stamp)
        rec = rows[-1].get("RecId")
        if not isinstance(rec, str) or not rec:
            return None
        second = odata_datetime_literal(stamps[-1])
        after = odata_datetime_literal(stamps[-1] + timedelta(seconds=1))
        group = (
            f"(LastModDateTime ge {second} and LastModDateTime lt {after} and RecId gt "
            f"{odata_quote(rec.upper())} or LastModDateTime ge {after})"
        )
        return f"{group} and {scope}" if scope else group

    def _drain_second(self, second: datetime, result: PollResult) -> Iterator[Any]:
        """Every row inside one second (for > page-size ties): keyed by IncidentNumber,
        which compares as it sorts; by RecId only with ``IXM_PAGING=keyset``."""
        lo = odata_datetime_literal(second)
        hi = odata_datetime_literal(second + timedelta(seconds=1))
        if self.cfg.paging != "keyset":
            number: int | None = None
            while True:
                expr = f"LastModDateTime ge {lo} and LastModDateTime lt {hi}"
                if number is not None:
                    expr += f" and IncidentNumber gt {number}"
                page = self._query(self._scoped(expr), "IncidentNumber asc", result)
                yield page
                numbers = [
                    n
                    for n in (r.get("IncidentNumber") for r in page.rows)
                    if isinstance(n, int) and not isinstance(n, bool)
                ]
                if len(page.rows) < self.cfg.page_size or not numbers:
                    return
                number = max(numbers)
        after = ""
        while True:
            expr = f"LastModDateTime ge {lo} and LastModDateTime lt {hi}"
            if after:
                expr += f" and RecId gt {odata_quote(after)}"
            page = self._query(self._scoped(expr), "RecId asc", result)
            yield page
            ids = self._rec_ids(page.rows)
            if len(page.rows) < self.cfg.page_size or not ids:
                return
            after = max(ids)

    def _read_open(self, result: PollResult, after: int | None = None) -> Iterator[Any]:
        terminal = sorted(
            self.cfg.policy.resolved_statuses
            | self.cfg.policy.closed_statuses
            | self.cfg.policy.canceled_statuses
        )
        status_expr = " and ".join(f"Status ne {odata_quote(s)}" for s in terminal)
        while True:
            expr = status_expr
            if after is not None:
                expr = (
                    f"{expr} and IncidentNumber gt {after}"
                    if expr
                    else f"IncidentNumber gt {after}"
                )
            page = self._query(self._scoped(expr), "IncidentNumber asc", result)
            yield page
            numbers = [
                n for n in (r.get("IncidentNumber") for r in page.rows) if isinstance(n, int)
            ]
            if len(page.rows) < self.cfg.page_size or not numbers:
                return
            after = max(numbers)

    @staticmethod
    def _rec_ids(rows: Sequence[Mapping[str, Any]]) -> list[str]:
        return [str(r["RecId"]).upper() for r in rows if isinstance(r.get("RecId"), str)]

    @staticmethod
    def _second_of(row: Mapping[str, Any]) -> datetime | None:
        try:
            dt = parse_ivanti_datetime(row.get("LastModDateTime"))
        except ValueError:
            return None
        return _floor(dt) if dt else None

    def _collect_missing(
        self, rows: Sequence[Mapping[str, Any]], after: int | None, missing: list[str]
    ) -> int | None:
        """Tracked open incidents the sweep passed over without seeing (it reads in
        IncidentNumber order): those numbered after ``after`` and up to this page's
        last number (or beyond, on the last page) that are not on the page. Compared
        page by page, so memory does not grow with the tenant. Returns the new
        ``after``."""
        numbers = [n for n in (r.get("IncidentNumber") for r in rows) if isinstance(n, int)]
        last_page = len(rows) < self.cfg.page_size or not numbers
        upto = None if last_page else max(numbers)
        on_page = set(self._rec_ids(rows))
        with self.store.unit() as u:
            missing.extend(r for r in u.open_incident_ids(after, upto) if r not in on_page)
        return upto

    def _recheck_missing(self, missing: list[str], result: PollResult, dry_run: bool) -> None:
        """Tracked open incidents absent from the open sweep: fetch each to learn why.

        With a scope filter, each is first looked up within the scope: one that is
        still in Ivanti but no longer in scope (moved to a team the daemon does not
        page, say) is not judged at all (that would page the team out of scope), it
        stops being followed, as one that was deleted."""
        for rec_id in missing:
            with self.step_lock:
                self._recheck_one(rec_id, result, dry_run)
            if self.on_progress is not None:
                self.on_progress()

    def _recheck_one(self, rec_id: str, result: PollResult, dry_run: bool) -> None:
        """One tracked open incident the sweep did not see (under the step lock)."""
        if self.cfg.scope_filter.strip():
            page = self._query(self._scoped(f"RecId eq {odata_quote(rec_id)}"), "RecId asc", result)
            rows = [r for r in page.rows if str(r.get("RecId", "")).upper() == rec_id.upper()]
            if rows:
                self._commit_page(rows[:1], result, "reconcile", False, dry_run)
                return
        raw = self.ivanti.get_incident(rec_id)
        result.requests += 1
        if raw is None:
            self._mark_deleted(rec_id, result, dry_run)
        elif self.cfg.scope_filter.strip():
            result.rows_read += 1
            log_event(
                log,
                logging.WARNING,
                "incident left IVANTI_SCOPE_FILTER; no longer followed (its page, if "
                "any, is ended; nobody out of scope is paged)",
                rec_id=rec_id,
                owner_team=str(raw.get("OwnerTeam", "")),
            )
            self._mark_deleted(
                rec_id,
                result,
                dry_run,
                reason="incident left IVANTI_SCOPE_FILTER (e.g. moved to a team out of "
                "scope): no longer followed, nobody out of scope paged",
            )
        else:
            result.rows_read += 1
            self._commit_page([raw], result, "reconcile", False, dry_run)

    def _mark_deleted(
        self,
        rec_id: str,
        result: PollResult,
        dry_run: bool,
        *,
        reason: str = "incident no longer exists in Ivanti (deleted or out of reach)",
    ) -> None:
        now = self.now()
        with self.store.unit(rollback=dry_run) as u:
            row = u.incident(rec_id)
            if row is None or row.deleted:
                return
            change = self._change_row(
                row,
                Unit.snapshot_of(row),
                Unit.snapshot_of(row),
                None,
                reason,
                now,
                result,
                "reconcile",
            )
            change.transition = None
            u.add_change(change, need_id=True)
            result.changes += 1
            if row.alerting:
                snap = Unit.snapshot_of(row)
                from daemon.snapshot import workflow_payload

                action = PlannedAction(
                    kind=ActionKind.TERMINATE,
                    rec_id=rec_id,
                    payload={"type": "Deleted", "workflow": workflow_payload(snap, "Terminate")},
                    reason=reason,
                )
                u.add_action(
                    rec_id=rec_id,
                    incident_number=row.incident_number,
                    kind=action.kind.value,
                    payload=dict(action.payload),
                    reason=reason,
                    now=now,
                    change_id=change.id,
                )
                result.actions.append(action)
            row.deleted = True
            row.alerting = False
            row.updated_at = now

    # ----- diff and commit -------------------------------------------------------------
    def _commit_page(
        self,
        rows: Sequence[Mapping[str, Any]],
        result: PollResult,
        source: str,
        baseline: bool,
        dry_run: bool,
        extra_state: Mapping[str, str] | None = None,
        *,
        not_baseline: frozenset[str] = frozenset(),
    ) -> list[Snapshot]:
        """Diff one page against the stored snapshots and commit it in one transaction.

        The stored state is read with one select and the results are written in bulk
        (changes, actions, new and updated incidents: one statement each), because
        an ORM object per row cost more than the diff itself (a 1,000-change poll
        must not take seconds). Rows are still judged one by one in page order, each
        seeing the state the rows before it left, so one incident twice on a page is
        two versions, as it would be on two pages.
        """
        if not rows:
            return []
        now = self.now()
        processed: list[Snapshot] = []
        snaps: list[Snapshot] = []
        with self.store.unit(rollback=dry_run) as u:
            for raw in rows:
                try:
                    snaps.append(parse_incident(raw, self.cfg.extra_fields))
                except MalformedRecord as exc:
                    self._reject(u, result, raw, exc, now)
            stored = u.incident_states(s.rec_id for s in snaps)
            assigning = u.pending_assignments(stored)
            writes = _PageWrites(self.cfg.policy, now, baseline)
            for served in snaps:
                state = stored.get(served.rec_id)
                prev = (
                    None if state is None or state.deleted else snapshot_from_json(state.snapshot)
                )
                # While the daemon's own Owner/Status write has not landed, Ivanti serves
                # the values from before it, which the stored snapshot no longer has:
                # judge the record as it will be once the write lands, so that only
                # that difference is taken as the daemon's, and any other field a person
                # saved (even in the same second) is still a change.
                snap = _as_if_assigned(served, prev, assigning.get(served.rec_id, ()))
                if (
                    state is not None
                    and prev is not None
                    and state.last_mod == snap.last_mod
                    and prev == snap
                ):
                    processed.append(snap)
                    continue  # seen as it is already (overlap re-read)
                if prev is not None and state is not None and snap.last_mod < state.last_mod:
                    # Ivanti serves only a record's current version, so an older
                    # LastModDateTime means its clock was set back, not a stale read:
                    # skipping it would lose the change until the clock caught up.
                    log_event(
                        log,
                        logging.WARNING,
                        "incident's LastModDateTime went backwards (Ivanti's clock set "
                        "back?); taking the version Ivanti serves now",
                        rec_id=snap.rec_id,
                        stored=iso_utc(state.last_mod),
                        served=iso_utc(snap.last_mod),
                    )
                row_baseline = baseline and snap.rec_id not in not_baseline
                verdict = decide(
                    prev,
                    snap,
                    self.cfg.policy,
                    baseline=row_baseline,
                    page_baseline_critical=self.cfg.baseline_page_critical,
                )
                hold = _window_hold(verdict, snap, self.cfg.policy, now)
                if hold is not None:
                    verdict = hold[0]
                alerting = state.alerting if state is not None else False
                actions = plan(verdict, snap, alerting=alerting, policy=self.cfg.policy)
                reason = verdict.reason
                if (
                    verdict.transition is None
                    and state is not None
                    and (
                        (state.own_write_at is not None and snap.last_mod == state.own_write_at)
                        or _assignment_landed(assigning.get(snap.rec_id, ()), served)
                    )
                ):
                    reason = f"the daemon's own write-back (note/Owner/Status): {reason}"
                change = writes.add_change(
                    self._change_values(prev, snap, verdict.transition, reason, now, result, source)
                )
                if hold is not None:
                    writes.add_hold(change, snap, verdict, *hold[1:])
                result.changes += 1
                new_alerting: bool | None = None
                for action in actions:
                    writes.add_action(change, snap, action)
                    new_alerting = action.kind is ActionKind.PAGE
                if verdict.transition is not None:
                    result.transitions.append(verdict.transition)
                    log_event(
                        log,
                        logging.INFO,
                        "transition",
                        incident=snap.incident_number,
                        rec_id=snap.rec_id,
                        kind=verdict.transition.kind.value,
                        reason=verdict.transition.reason,
                        actions=",".join(a.kind.value for a in actions) or "none",
                        dry_run=dry_run,
                    )
                if verdict.held is not None:
                    result.held.append(Transition(verdict.held, snap.rec_id, verdict.reason))
                    log_event(
                        log,
                        logging.INFO,
                        "page held back (rules file: a use-case rule or a maintenance window)",
                        incident=snap.incident_number,
                        rec_id=snap.rec_id,
                        kind=verdict.held.value,
                        reason=verdict.reason,
                        dry_run=dry_run,
                    )
                result.actions.extend(actions)
                stored[snap.rec_id] = writes.save_snapshot(
                    snap, state, new_alerting, baseline=row_baseline
                )
                processed.append(snap)
            writes.write(u)
            for name, value in (extra_state or {}).items():
                u.set_state(name, value, now)  # in the page's transaction
        return processed

    def _reject(
        self,
        u: Unit,
        result: PollResult,
        raw: Mapping[str, Any],
        exc: MalformedRecord,
        now: datetime,
    ) -> None:
        result.rejected += 1
        log_event(
            log,
            logging.WARNING,
            "malformed incident record skipped (kept in rejected_records)",
            rec_id=exc.rec_id or "?",
            problem=exc.problem,
        )
        u.add_rejected(result.cycle_id, now, exc.rec_id, exc.problem, dict(raw))

    @staticmethod
    def _change_row(
        row: Incident | None,
        prev: Snapshot | None,
        snap: Snapshot,
        transition: Transition | None,
        reason: str,
        now: datetime,
        result: PollResult,
        source: str,
    ) -> Change:
        return Change(**Poller._change_values(prev, snap, transition, reason, now, result, source))

    @staticmethod
    def _change_values(
        prev: Snapshot | None,
        snap: Snapshot,
        transition: Transition | None,
        reason: str,
        now: datetime,
        result: PollResult,
        source: str,
    ) -> dict[str, Any]:
        """The columns of one ``changes`` row."""
        return {
            "cycle_id": result.cycle_id,
            "rec_id": snap.rec_id,
            "incident_number": snap.incident_number,
            "seen_at": now,
            "last_mod": snap.last_mod,
            "last_mod_by": snap.last_mod_by,
            "prev_status": prev.status if prev else None,
            "status": snap.status,
            "prev_priority": prev.priority if prev else None,
            "priority": snap.priority,
            "prev_owner_team": prev.owner_team if prev else None,
            "owner_team": snap.owner_team,
            "prev_owner": prev.owner if prev else None,
            "owner": snap.owner,
            "transition": transition.kind.value if transition else None,
            "reason": reason,
            "source": source,
        }

    # ----- cycle bookkeeping ------------------------------------------------------------
    def _next_watermark(
        self, current: datetime, newest: datetime | None, server_date: datetime | None
    ) -> datetime:
        candidates = []
        if newest is not None:
            candidates.append(_floor(newest))
        if server_date is not None:
            candidates.append(_floor(server_date) - self.cfg.overlap)
        elif newest is not None:
            candidates = [_floor(newest) - self.cfg.overlap]
        if not candidates:
            return current
        return max(current, min(candidates))

    def _start_cycle(self, kind: str, watermark: str | None, dry_run: bool) -> int | None:
        if dry_run:
            return None
        with self.store.unit() as u:
            return u.start_cycle(kind, self.now(), watermark).id

    def _finish_cycle(
        self, result: PollResult, dry_run: bool, *, ok: bool, error: BaseException | None = None
    ) -> None:
        if dry_run or result.cycle_id is None:
            return
        now = self.now()
        with self.store.unit() as u:
            cycle = u.cycle(result.cycle_id)
            cycle.finished_at = now
            cycle.ok = ok
            cycle.rows_read = result.rows_read
            cycle.changes = result.changes
            cycle.transitions = len(result.transitions)
            cycle.actions = len(result.actions)
            cycle.requests = result.requests
            cycle.rejected = result.rejected
            cycle.error = str(error)[:2000] if error else None
            if ok and result.watermark_after is not None:
                cycle.watermark_after = iso_utc(result.watermark_after)
                if result.kind != "reconcile":  # polls run beside it and move the cursor
                    u.set_state(WATERMARK, iso_utc(result.watermark_after), now)
                if result.kind == "baseline":
                    u.set_state(BASELINE_DONE, iso_utc(now), now)
                    u.set_state(BASELINE_PROGRESS, "", now)
                if result.kind in ("baseline", "reconcile"):
                    u.set_state(LAST_RECONCILE, iso_utc(now), now)
                u.set_state(f"last_ok_{result.kind}", iso_utc(now), now)


class _PageWrites:
    """What one page writes, gathered while its rows are judged and written in bulk at
    the end: one executemany of the changes (their ids back, in order, when actions
    point at them), one of the actions, one each for new and updated incidents. An
    incident seen twice on the page is written once, as it ends up."""

    def __init__(self, policy: Policy, now: datetime, baseline: bool) -> None:
        self.policy = policy
        self.now = now
        self.baseline = baseline
        self.changes: list[dict[str, Any]] = []
        self.actions: list[tuple[int, dict[str, Any]]] = []
        self.holds: list[tuple[int, dict[str, Any]]] = []
        self.inserts: dict[str, dict[str, Any]] = {}
        self.updates: dict[str, dict[str, Any]] = {}

    def add_change(self, values: dict[str, Any]) -> int:
        """Stage a change row; its index, for ``add_action``."""
        self.changes.append(values)
        return len(self.changes) - 1

    def add_action(self, change: int, snap: Snapshot, action: PlannedAction) -> None:
        values = Unit.action_values(
            rec_id=snap.rec_id,
            incident_number=snap.incident_number,
            kind=action.kind.value,
            payload=dict(action.payload),
            reason=action.reason,
            now=self.now,
            recipient=_recipient_key(action.payload.get("recipient")),
        )
        self.actions.append((change, values))

    def add_hold(
        self, change: int, snap: Snapshot, verdict: Verdict, window: str, until: datetime
    ) -> None:
        """A page a maintenance window holds, released when it closes (daemon/windows.py)."""
        assert verdict.held is not None
        values = {
            "rec_id": snap.rec_id,
            "incident_number": snap.incident_number,
            "window": window,
            "kind": verdict.held.value,
            "reason": verdict.reason,
            "held_at": self.now,
            "until": until,
        }
        self.holds.append((change, values))

    def save_snapshot(
        self,
        snap: Snapshot,
        state: IncidentState | None,
        alerting: bool | None,
        *,
        baseline: bool | None = None,
    ) -> IncidentState:
        """Stage the incident row as ``Unit.save_snapshot`` would set it (``alerting``
        None leaves it as it is; ``baseline`` only on a first sighting) and return the
        state later rows of the page compare with."""
        values = Unit.snapshot_values(snap, self.policy, self.now)
        rec_id = snap.rec_id
        row = self.inserts.get(rec_id)
        if row is None and state is not None:
            row = self.updates.setdefault(rec_id, {"rec_id": rec_id})
        if row is None:
            self.inserts[rec_id] = {
                "rec_id": rec_id,
                "first_seen_at": self.now,
                "baseline": self.baseline if baseline is None else baseline,
                "alerting": bool(alerting),
                **values,
            }
            return IncidentState(
                rec_id, snap.last_mod, False, bool(alerting), None, values["snapshot"]
            )
        row.update(values)
        assert state is not None  # staged rows were seen earlier, so they have a state
        if alerting is not None:
            row["alerting"] = alerting
            state.alerting = alerting
        state.last_mod = snap.last_mod
        state.deleted = False
        state.snapshot = values["snapshot"]
        return state

    def write(self, u: Unit) -> None:
        ids = u.insert_changes(
            self.changes, need_id=[i for i, _ in self.actions] + [i for i, _ in self.holds]
        )
        u.insert_actions([{**values, "change_id": ids[i]} for i, values in self.actions])
        u.insert_holds([{**values, "change_id": ids[i]} for i, values in self.holds])
        u.insert_incidents(list(self.inserts.values()))
        u.update_incidents(list(self.updates.values()))


def _window_hold(
    verdict: Verdict, snap: Snapshot, policy: Policy, now: datetime
) -> tuple[Verdict, str, datetime] | None:
    """A page the rules file's maintenance windows hold: (the verdict that says so, the
    window's name, its end); None when nothing holds it. Ends are never held."""
    transition = verdict.transition
    if transition is None or not transition.kind.creates or policy.rules is None:
        return None
    found = holding_window(policy.rules.windows, snap, now)
    if found is None:
        return None
    window, until = found
    reason = (
        f"{transition.kind.value} held by window '{window.name}' until {window.shown(until)}"
        f" ({verdict.reason})"
    )
    return Verdict(None, reason, held=transition.kind), window.name, until


def _assignment_landed(pending: Sequence[Mapping[str, Any]], served: Snapshot) -> bool:
    """Whether the served record already shows the Owner and Status of one of the
    daemon's own pending assignments: the write reached Ivanti but its answer was
    lost, so the change it made is the daemon's own.

    (While such a write has not reached Ivanti yet, the served record differs from
    the stored snapshot, on which the deliverer recorded the write before sending
    it, at the same LastModDateTime: that difference is not a person's edit either.)
    """
    return any(
        str(a.get("owner", "")).casefold() == served.owner.casefold()
        and str(a.get("status", "Active")).casefold() == served.status.casefold()
        for a in pending
    )


def _numbers(rows: Sequence[Mapping[str, Any]]) -> list[int]:
    return [
        n
        for n in (r.get("IncidentNumber") for r in rows)
        if isinstance(n, int) and not isinstance(n, bool)
    ]


def _created_since(rows: Sequence[Mapping[str, Any]], start: datetime | None) -> frozenset[str]:
    """RecIds (upper case) of the rows created in a second after the one the baseline
    began in (``start``, Ivanti's clock): they are new incidents, not the baseline's.
    (The second it began in counts as "at first start".)"""
    if start is None:
        return frozenset()
    cutoff = _floor(start) + timedelta(seconds=1)
    out = set()
    for row in rows:
        try:
            created = parse_ivanti_datetime(row.get("CreatedDateTime"))
        except ValueError:
            continue
        rec = row.get("RecId")
        if created is not None and created >= cutoff and isinstance(rec, str):
            out.add(rec.strip().upper())
    return frozenset(out)


def _baseline_progress(raw: str) -> tuple[datetime | None, int | None]:
    """(when the interrupted baseline started, the last IncidentNumber it committed),
    or (None, None) when there is none to resume."""
    if not raw:
        return None, None
    try:
        data = json.loads(raw)
        return parse_utc(str(data["started"])), int(data["after"])
    except (ValueError, KeyError, TypeError):
        log_event(log, logging.WARNING, "unreadable baseline progress; starting it over")
        return None, None


def _as_if_assigned(
    served: Snapshot, stored: Snapshot | None, pending: Sequence[Mapping[str, Any]]
) -> Snapshot:
    """The served record with a pending assignment's Owner/Status applied, when the
    deliverer has recorded that assignment on the stored snapshot and Ivanti still
    serves the Owner/Status from before it (the write has not landed yet); otherwise
    the served record as it is. Only those two fields are taken over, and only while
    both still hold the values from before the write, so a person's own change of
    Owner or Status, or of anything else, stays visible."""
    if stored is None:
        return served
    for a in pending:
        before = a.get("prev")
        if not isinstance(before, Mapping):
            continue  # not sent yet: the stored snapshot was not patched either
        owner, status = str(a.get("owner", "")), str(a.get("status", "Active"))
        if (
            stored.owner.casefold() == owner.casefold()
            and stored.status.casefold() == status.casefold()
            and served.owner.casefold() == str(before.get("owner", "")).casefold()
            and served.status.casefold() == str(before.get("status", "")).casefold()
        ):
            return served.with_changes(owner=stored.owner, status=stored.status)
    return served


def _recipient_key(recipient: object) -> str | None:
    if isinstance(recipient, Mapping):
        return f"{recipient.get('recipientType', '')}:{recipient.get('id', '')}".casefold()
    return None
