"""Polling Ivanti: incremental keyset reads, the reconcile sweep, and the diff.

Reading changes (``Poller.poll``)
    ``LastModDateTime ge <cursor>`` ordered by ``LastModDateTime asc, RecId asc``,
    ``$top`` = page size. After a full page the next query goes on from the last
    row's second with ``$skip`` = the rows of that second the page held less one, and
    must start with the page's last row: positions inside one second are the server's
    own order whatever it sorts by there (hidden sub-seconds, a uniqueidentifier
    collation), so this reads one row twice a page, not the whole second. When that
    check fails (a row of that second was saved again, or a late commit landed in it,
    while paging), the second is drained on its own, keyed by IncidentNumber (``ge S
    and lt S+1 and IncidentNumber gt N``, ordered by IncidentNumber alone), which
    compares as it sorts under every reading. No query puts a parenthesised group or
    an ``or`` anywhere but first, because Ivanti misreads both (ivanti-api.md §2.3).
    ``IXM_PAGING=keyset`` takes the exact continuation ``(second, RecId) > (S, R)``
    instead: it loses rows on a tenant that keeps sub-seconds or collates RecIds
    otherwise than it compares them (``check`` probes both).

The cursor and the settle read (issue 12)
    The cursor (state ``watermark``) moves past what was read: to the second after the
    newest row when the last page was served in a later second (a row of that second
    not seen by then was committed late), else to that second, read again next cycle
    (unless it holds more than a quarter page: then past it too). It comes from server
    values only, with one exception: when the server's Date shows its clock went back
    (behind the last read's), the poll re-reads from the server's time less the
    overlap and the cursor follows it back, because every change saved since carries
    a LastModDateTime behind the old cursor.

    Rows committed late (saved with a LastModDateTime up to ``IXM_OVERLAP`` behind
    what was already read past) are caught by reading what was read once more after
    its overlap has passed: the state ``settle`` (``Settle``) says up to where that is
    done. Each poll settles a slice sized by the versions already stored in it so that
    it fits beside the poll's new rows in the last page (``plan_slice``: at most half a
    page, a crowded second in parts by IncidentNumber): when little was read since the
    settled mark the poll simply reads from there (one range); otherwise the slice
    joins the poll's query as one leading OR-group, ``(slice or LastModDateTime ge
    cursor) and scope`` (a scope with ``or`` or parentheses cannot follow a group:
    then the slice is a query of its own). So an idle poll costs one request, also
    right after a mass update, and a busy one the lower bound ceil(changes / page) + 1
    but for a page edge now and then. A row committed up to the overlap late is seen
    by the second poll after ``overlap + interval`` past its LastModDateTime while the
    tenant changes fewer rows than fit (about half a page a poll beyond its own); under
    a heavier load the settle read falls behind (``status`` shows it) and a finished
    reconcile sweep, which read every open incident, moves it up to where the sweep
    began less the overlap.

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
from functools import partial
from typing import Any

from daemon.domain import ActionKind, PlannedAction, Policy, Snapshot, Transition, Verdict
from daemon.ivanti import IvantiClient, odata_quote
from daemon.logs import log_event
from daemon.models import Change, Incident
from daemon.planner import plan, recipient_key
from daemon.rules import holding_window
from daemon.snapshot import MalformedRecord, parse_incident
from daemon.store import IncidentState, Store, Unit
from daemon.timeutil import iso_utc, odata_datetime_literal, parse_ivanti_datetime, parse_utc
from daemon.transitions import decide

log = logging.getLogger("daemon.poller")

WATERMARK = "watermark"
BASELINE_DONE = "baseline_done"
LAST_RECONCILE = "last_reconcile"
BASELINE_PROGRESS = "baseline_progress"  # {"after": IncidentNumber, "started": iso} or ""
SETTLE = "settle"  # {"at": iso, "after": IncidentNumber or null, "limit": iso}: see Settle
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
    settle_after: str | None = None  # the SETTLE state a poll or baseline leaves
    reconciled_from: datetime | None = None  # a reconcile's first page's server date
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
    return dt.replace(microsecond=0) if dt.microsecond else dt  # (replace costs ~2 us)


_SECOND = timedelta(seconds=1)


@dataclass(frozen=True)
class Settle:
    """How much of what the poll read is final: every row modified before ``at`` (and,
    of ``at``'s own second, those numbered up to ``after``) was read by a read made
    after its overlap had passed, so a row committed up to ``overlap`` late is on
    the record. ``limit`` is the last read's server time less the overlap: what the
    next read, made later, makes final."""

    at: datetime
    after: int | None
    limit: datetime

    def dumps(self) -> str:
        return json.dumps(
            {"at": iso_utc(self.at), "after": self.after, "limit": iso_utc(self.limit)}
        )

    @staticmethod
    def loads(raw: str | None, cursor: datetime) -> Settle:
        """The stored state; without one (a state DB from before it), everything from
        the cursor on is unsettled and nothing more is final yet."""
        if raw:
            found = Settle.parse(raw)
            if found is not None:
                return found
            log_event(log, logging.WARNING, "unreadable settle state; settling from the cursor")
        return Settle(_floor(cursor), None, _floor(cursor))

    @staticmethod
    def parse(raw: str) -> Settle | None:
        """The stored state; None when it cannot be read."""
        try:
            data = json.loads(raw)
            after = data.get("after")
            return Settle(
                parse_utc(str(data["at"])),
                int(after) if after is not None else None,
                parse_utc(str(data["limit"])),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


@dataclass(frozen=True)
class Slice:
    """Part of what was read before, read once more now that its overlap has passed:
    the whole seconds [lo, hi), or (``partial``) of the one second ``lo`` the rows
    numbered in (after, upto] (None: unbounded), for a second holding more rows than
    a page."""

    lo: datetime
    hi: datetime
    after: int | None = None
    upto: int | None = None
    partial: bool = False

    def expr(self, second: datetime) -> str | None:
        """The slice's rows from ``second`` on, as a filter (None: none left)."""
        if self.partial:
            if second > self.lo:
                return None
            out = (
                f"LastModDateTime ge {odata_datetime_literal(self.lo)} and LastModDateTime lt "
                f"{odata_datetime_literal(self.lo + _SECOND)}"
            )
            if self.after is not None:
                out += f" and IncidentNumber gt {self.after}"
            if self.upto is not None:
                out += f" and IncidentNumber le {self.upto}"
            return out
        start = max(second, self.lo)
        if start >= self.hi:
            return None
        return (
            f"LastModDateTime ge {odata_datetime_literal(start)} and LastModDateTime lt "
            f"{odata_datetime_literal(self.hi)}"
        )

    def end(self) -> tuple[datetime, int | None]:
        """The settled mark once the slice is read."""
        if not self.partial:
            return self.hi, None
        if self.upto is not None:
            return self.lo, self.upto
        return self.lo + _SECOND, None


def plan_slice(
    at: datetime,
    after: int | None,
    hi: datetime,
    known: Sequence[tuple[datetime, int]],
    budget: int,
) -> Slice | None:
    """The next slice to settle from ``at`` (``after``), up to ``hi``, holding at most
    ``budget`` of the versions already read (``known``: their LastModDateTime and
    IncidentNumber from ``at`` on, in that order, at least ``budget + 1`` of them when
    there are that many). A page holds ``budget + 1`` rows, so reading the slice
    together with the cursor's new rows costs no request beyond the lower bound.
    A second with more known rows than that is taken in parts by IncidentNumber,
    which compares as it sorts under every reading of the feed. None: nothing to do."""
    if hi <= at:
        return None
    if after is not None:  # finish ``at``'s second first
        numbers = [n for m, n in known if _floor(m) == at]
        upto = numbers[budget - 1] if len(numbers) > budget else None
        return Slice(at, at + _SECOND, after, upto, partial=True)
    if len(known) <= budget:
        return Slice(at, hi)
    over = _floor(known[budget][0])
    if over > at:
        return Slice(at, over)
    return Slice(at, at + _SECOND, None, known[budget - 1][1], partial=True)


@dataclass
class _Read:
    """What one cycle's reads saw: the newest LastModDateTime, the first and last
    pages' server dates."""

    newest: datetime | None = None
    at_newest: int = 0  # rows read in the newest one's second
    first_date: datetime | None = None
    last_date: datetime | None = None
    _second: datetime | None = None  # the newest one's second

    def saw(self, last_mod: datetime) -> None:
        """A row read: the newest LastModDateTime, and how many share its second."""
        second = _floor(last_mod)
        if self._second is None or second > self._second:
            self.newest, self._second, self.at_newest = last_mod, second, 1
        elif second == self._second:
            self.at_newest += 1
            if self.newest is None or last_mod > self.newest:
                self.newest = last_mod


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
        fresh = parse_utc(raw_wm)
        with self.store.unit() as u:
            settle = Settle.loads(u.get_state(SETTLE), fresh)
        result = PollResult(kind="poll", watermark_before=fresh)
        cycle_id = self._start_cycle("poll", raw_wm, dry_run)
        result.cycle_id = cycle_id
        try:
            read = _Read()
            settle_next = self._read_planned(fresh, settle, result, read, dry_run)
            base = fresh
            if read.first_date is not None and _floor(read.first_date) - self.cfg.overlap < (
                settle.limit
            ):
                # Ivanti's clock went back: changes saved since carry LastModDateTimes
                # behind the cursor, and the read just made cannot see them. Read
                # again from the server's own time (rows seen already are skipped).
                base = _floor(read.first_date) - self.cfg.overlap
                log_event(
                    log,
                    logging.WARNING,
                    "Ivanti's clock is behind the poll cursor (set back?); re-reading from "
                    "its current time",
                    watermark=iso_utc(fresh),
                    server_date=iso_utc(read.first_date),
                )
                self._read_and_commit(self._plain(), base, result, dry_run, read, base)
                settle_next = Settle(min(settle.at, base), None, settle.limit)
            result.watermark_after, settled = self._next_cursors(base, settle_next, read)
            result.settle_after = settled.dumps()
            self._finish_cycle(result, dry_run, ok=True)
        except Exception as exc:
            self._finish_cycle(result, dry_run, ok=False, error=exc)
            raise
        return result

    def _read_planned(
        self, fresh: datetime, settle: Settle, result: PollResult, read: _Read, dry_run: bool
    ) -> Settle:
        """This cycle's reads: everything from the cursor ``fresh`` on, and once more
        (for rows committed late) a slice of what was read before but not yet after its
        overlap had passed, sized by the stored versions in it so that it costs no
        request beyond the lower bound. Returns how far that makes the read final."""
        budget = max(1, self.cfg.page_size // 2)  # room left for page edges
        with self.store.unit() as u:
            # what a read from the settled mark would read again (the cursor's own
            # second included, when it is read again)
            backlog = u.known_versions(settle.at, None, settle.after, budget + 1)
            again = len(u.known_versions(fresh, None, None, budget + 1))
            budget = max(1, budget - again)
            hi = min(settle.limit, fresh)
            known = (
                u.known_versions(settle.at, hi, settle.after, budget + 1) if hi > settle.at else []
            )
        if settle.after is None and len(backlog) <= budget:
            # Few rows read since the settled mark: one range from there costs nothing
            # more than reading from the cursor, and settles up to the limit.
            lower = min(settle.at, fresh)
            self._read_and_commit(self._plain(), lower, result, dry_run, read, lower)
            done = max(settle.at, settle.limit)
            return Settle(done, None, settle.limit)
        sl = plan_slice(settle.at, settle.after, hi, known, budget)
        if sl is None:
            self._read_and_commit(self._plain(), fresh, result, dry_run, read, fresh)
            return settle
        if self._union_ok():
            build = partial(self._union, sl, fresh)
            self._read_and_commit(build, min(sl.lo, fresh), result, dry_run, read, fresh)
        else:
            # A scope with ``or`` or parentheses cannot be followed by another group
            # (Ivanti misreads it): the slice is a read of its own.
            self._read_and_commit(self._plain(), fresh, result, dry_run, read, fresh)
            self._read_and_commit(partial(self._slice_only, sl), sl.lo, result, dry_run, read)
        at, after = sl.end()
        return Settle(at, after, settle.limit)

    def _next_cursors(
        self, base: datetime, settled: Settle, read: _Read
    ) -> tuple[datetime, Settle]:
        """(the next cursor, the settled mark) after a cycle that read from ``base``.

        The cursor moves past the newest second read when the last page was served in
        a later second (whatever else that second holds was committed by then; a row
        committed later still is late, and the settle read finds it), else to it. The
        settle limit becomes the last page's server time less the overlap: what the
        next read, made later, can take as final."""
        last = read.last_date
        cursor = base
        if read.newest is not None:
            newest = _floor(read.newest)
            if last is None:
                cursor = max(base, newest)
            elif newest < _floor(last):
                cursor = max(base, newest + _SECOND)
            elif newest == _floor(last) and read.at_newest > self.cfg.page_size // 4:
                # Read within the second it saved a crowd of rows in: re-reading them
                # would cost requests every cycle; what else that second gets is late
                # for this cursor, and the settle read finds it.
                cursor = max(base, newest + _SECOND)
            else:
                # Read within that second (or the server's clock is behind its rows):
                # read it again, it may get more rows.
                cursor = max(base, min(newest, _floor(last)))
        if last is not None:
            limit = _floor(last) - self.cfg.overlap
        elif read.newest is not None:
            limit = max(settled.limit, _floor(read.newest) - self.cfg.overlap)
        else:
            limit = settled.limit
        if settled.after is None and settled.at > cursor:
            cursor = settled.at  # all before it is read and final
        return cursor, Settle(min(settled.at, cursor), settled.after, limit)

    def _read_and_commit(
        self,
        build: Callable[[datetime], str | None],
        lower: datetime,
        result: PollResult,
        dry_run: bool,
        read: _Read,
        keyset_from: datetime | None = None,
    ) -> None:
        """Read and commit every row ``build`` selects from ``lower``'s second on,
        noting the newest LastModDateTime and the server dates in ``read``."""
        for page in self._read_changes(build, lower, result, keyset_from):
            if read.first_date is None:
                read.first_date = page.server_date
            if page.server_date is not None:
                read.last_date = page.server_date
            for snap in self._commit_page(page.rows, result, "poll", False, dry_run):
                read.saw(snap.last_mod)

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
                mark = result.watermark_after
                result.settle_after = Settle(mark, None, mark).dumps()
            else:
                result.watermark_after = result.watermark_before
                result.reconciled_from = first_date
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

    def _query(self, flt: str, orderby: str, result: PollResult, skip: int = 0) -> Any:
        page = self.ivanti.query_incidents(flt, orderby, top=self.cfg.page_size, skip=skip)
        result.requests += 1
        result.rows_read += len(page.rows)
        log.debug("ivanti query filter=%r skip=%d rows=%d", flt, skip, len(page.rows))
        return page

    def _read_changes(
        self,
        build: Callable[[datetime], str | None],
        lower: datetime,
        result: PollResult,
        keyset_from: datetime | None = None,
    ) -> Iterator[Any]:
        """Pages of the rows ``build(second)`` selects from ``lower``'s second on,
        continued after each full page from its last second (re-read, deduplicated),
        or by the exact keyset (``IXM_PAGING=keyset``) once the page's last row is at
        or after ``keyset_from`` (from there on ``build`` selects every row); ``build``
        answering None ends the read."""
        size = self.cfg.page_size
        second = _floor(lower)
        flt: str | None = build(second)
        skip = 0
        expect: str | None = None  # the RecId the page must start with (skip check)
        while flt is not None:
            page = self._query(flt, ORDER_CHANGES, result, skip)
            if expect is not None and (not page.rows or _rec_id(page.rows[0]) != expect):
                # The rows before the skipped-to position changed while paging (one
                # was saved again, or a late commit landed among them): read that
                # second whole, by IncidentNumber, then go on after it.
                yield page
                yield from self._drain_second(second, result)
                second += _SECOND
                flt, skip, expect = build(second), 0, None
                continue
            yield page
            if len(page.rows) < size:
                return
            keyset = None
            if self.cfg.paging == "keyset" and keyset_from is not None:
                edge = self._second_of(page.rows[-1])
                if edge is not None and edge >= _floor(keyset_from):
                    keyset = self._keyset_after(page.rows)
            if keyset is not None:
                flt, skip, expect = keyset, 0, None
                continue
            last_s = self._second_of(page.rows[-1])
            last_rec = _rec_id(page.rows[-1])
            if last_s is None or last_rec is None:
                # A malformed row at the page's edge: move past the page's known rows.
                known = [s for s in map(self._second_of, page.rows) if s is not None]
                if not known:
                    return
                second = max(known)
                yield from self._drain_second(second, result)
                second += _SECOND
                flt, skip, expect = build(second), 0, None
                continue
            # Go on from the last row's second, skipping the rows of it this page
            # already holds but the last: the next page must start with that one
            # (positions within a second are the server's own order, whatever it
            # sorts by inside a second), so nothing is read twice but one row.
            in_s = 0
            for row in reversed(page.rows):
                if self._second_of(row) != last_s:
                    break
                in_s += 1
            skip = (skip if last_s == second else 0) + in_s - 1
            second = last_s
            flt, expect = build(second), last_rec

    def _plain(self) -> Callable[[datetime], str]:
        return lambda second: self._scoped(f"LastModDateTime ge {odata_datetime_literal(second)}")

    def _union_ok(self) -> bool:
        """Whether a group may come first with the scope after it (no ``or`` nor
        parentheses in the scope: Ivanti misreads a group that is not first)."""
        scope = self.cfg.scope_filter.strip()
        return not ("(" in scope or " or " in f" {scope.casefold()} ")

    def _union(self, sl: Slice, fresh: datetime, second: datetime) -> str:
        """Rows from ``second`` on of the settle slice ``sl`` and of everything from
        the cursor ``fresh``: one OR-group, first, the scope after it."""
        fresh = max(_floor(fresh), second)
        part = sl.expr(second)
        if part is None:
            return self._plain()(fresh)
        if not sl.partial and sl.hi >= fresh:
            return self._plain()(max(second, sl.lo))  # contiguous: one range
        group = f"({part} or LastModDateTime ge {odata_datetime_literal(fresh)})"
        scope = self.cfg.scope_filter.strip()
        return f"{group} and {scope}" if scope else group

    def _slice_only(self, sl: Slice, second: datetime) -> str | None:
        part = sl.expr(second)
        return None if part is None else self._scoped(part)

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
                prev = None if state is None or state.deleted else state.snapshot
                # While the daemon's own Owner/Status write has not landed, Ivanti serves
                # the values from before it, which the stored snapshot no longer has:
                # judge the record as it will be once the write lands, so that only
                # that difference is taken as the daemon's, and any other field a person
                # saved (even in the same second) is still a change.
                pending = assigning.get(served.rec_id, ())
                snap = _as_if_assigned(served, prev, pending)
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
                        or (pending and _assignment_landed(pending, served))
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
    def _settle_by_reconcile(self, u: Unit, started: datetime, now: datetime) -> None:
        """A finished reconcile read every open incident in scope (and looked up each
        followed one it did not find) after ``started``: a row committed up to the
        overlap late and stamped before ``started - overlap`` was visible to it, so
        the settle read need not go back behind that (under a load heavier than it
        can settle beside the new rows, this is what bounds its lag)."""
        raw = u.get_state(SETTLE)
        cursor = u.get_state(WATERMARK)
        if raw is None or cursor is None:
            return
        settle = Settle.loads(raw, parse_utc(cursor))
        mark = min(_floor(started) - self.cfg.overlap, parse_utc(cursor))  # never past it
        if settle.at < mark:
            u.set_state(SETTLE, Settle(mark, None, settle.limit).dumps(), now)

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
                if result.settle_after is not None:
                    u.set_state(SETTLE, result.settle_after, now)
                if result.kind == "reconcile" and result.reconciled_from is not None:
                    self._settle_by_reconcile(u, result.reconciled_from, now)
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
            recipient=recipient_key(action.payload.get("recipient")),
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
            return IncidentState(rec_id, snap.last_mod, False, bool(alerting), None, snap)
        row.update(values)
        assert state is not None  # staged rows were seen earlier, so they have a state
        if alerting is not None:
            row["alerting"] = alerting
            state.alerting = alerting
        state.last_mod = snap.last_mod
        state.deleted = False
        state.snapshot = snap
        return state

    def write(self, u: Unit) -> None:
        ids = u.insert_changes(self.changes)
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


def _rec_id(row: Mapping[str, Any]) -> str | None:
    rec = row.get("RecId")
    return rec.strip().upper() if isinstance(rec, str) and rec.strip() else None


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
