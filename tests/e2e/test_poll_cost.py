"""What a poll costs at default settings, and that the cheaper reads lose nothing.

The cursor moves past what was read; what was read before its overlap had passed is
read once more after it (the settle read, sized to fit in the cycle's last page). These
tests hold the costs to issue 12's targets and show a row committed late (saved with a
LastModDateTime behind what the daemon had already read past) is still seen, under
every reading of the feed (whole seconds, sub-seconds served as whole seconds, RecIds
sorted as SQL Server sorts a uniqueidentifier)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from daemon.service import Service
from daemon.simulators.clock import SimClock
from daemon.simulators.harness import SimPair
from daemon.timeutil import parse_utc
from tests.conftest import MakeService
from tests.e2e.test_faults import change_counts, started, trigger_log
from tests.e2e.test_paging import READINGS

pytestmark = pytest.mark.e2e

NET = "Network Operations"
DB = "Database Team"
OR_SCOPE = f"OwnerTeam eq '{NET}' or OwnerTeam eq '{DB}'"
INTERVAL = 30  # IXM_POLL_INTERVAL's default
# a row committed up to IXM_OVERLAP (60 s) late is seen by the first poll that starts
# overlap + one interval after its LastModDateTime, and the one after: 4 polls at 30 s
LATE_WITHIN = 5


@pytest.fixture(params=list(READINGS))
def sims(clock: SimClock, request: pytest.FixtureRequest) -> Iterator[SimPair]:
    with SimPair(clock=clock, ivanti_kwargs=READINGS[request.param]) as pair:
        yield pair


def bound(changes: int) -> int:
    return math.ceil(changes / 100) + 1


def poll(svc: Service) -> Any:
    report = svc.cycle()
    assert report.ok, report.error
    assert report.poll is not None
    return report.poll


def busy_cycle(sims: SimPair, svc: Service, recs: list[str], tag: str) -> Any:
    """Each of ``recs`` edited once (a Subject: pages nobody), spread over one poll
    interval, then the poll."""
    step = INTERVAL / len(recs)
    for i, rec in enumerate(recs):
        sims.ivanti.edit_incident(rec, Subject=f"{tag} {i}")
        sims.clock.advance(step)
    return poll(svc)


def test_idle_cycles_cost_one_request_after_a_mass_update(
    sims: SimPair, make_service: MakeService
) -> None:
    """150 incidents saved in one second: read once at the lower bound, then every idle
    poll costs one request, also while that second is read once more after its
    overlap (in parts: it holds more rows than fit beside a page's new ones)."""
    svc = started(make_service, sims)
    recs = sims.ivanti.bulk_create(150, Priority="4", OwnerTeam=NET)
    sims.clock.advance(5)
    first = poll(svc)
    assert first.changes == 150 and first.requests <= bound(150)
    costs = []
    for _ in range(8):
        sims.clock.advance(INTERVAL)
        costs.append(poll(svc).requests)
    assert costs == [1] * 8
    assert change_counts(svc) == {r: 1 for r in recs}


@pytest.mark.parametrize("changes", [60, 300])
def test_busy_cycles_cost_at_most_a_quarter_over_the_lower_bound(
    sims: SimPair, make_service: MakeService, changes: int
) -> None:
    """Changes every cycle on different incidents, at default settings (nothing moved
    past the overlap): each cycle at most 1.25 x (ceil(changes / 100) + 1) requests,
    though it also reads the earlier cycles' changes once more."""
    svc = started(make_service, sims)
    tenant = sims.ivanti.bulk_create(changes * 4, Priority="4", OwnerTeam=NET)
    sims.clock.advance(5)
    poll(svc)
    for c in range(4):
        result = busy_cycle(sims, svc, tenant[c * changes : (c + 1) * changes], f"c{c}")
        assert result.changes == changes
        assert result.requests <= 1.25 * bound(changes), (c, result.requests)
    assert sum(change_counts(svc).values()) == changes * 4 * 2  # created, then edited once


def late_edit(sims: SimPair, rec: str, behind: float, **fields: Any) -> None:
    """A save committed ``behind`` seconds after it was stamped: it appears now with
    that older LastModDateTime."""
    when = sims.clock.now() - timedelta(seconds=behind)
    sims.ivanti.edit_incident(rec, LastModDateTime=when, **fields)


@pytest.mark.parametrize("load", [0, 150])
@pytest.mark.parametrize("scope", ["", OR_SCOPE])
def test_a_row_committed_late_is_paged(
    sims: SimPair, make_service: MakeService, load: int, scope: str
) -> None:
    """An incident raised to P1 by a save committed 50 s late (its LastModDateTime is
    behind what the daemon had read past), on a quiet tenant and amid 150 changes a
    cycle, with a scope the settle read can join the poll's query and one (with ``or``)
    it cannot: paged within LATE_WITHIN polls, once."""
    svc = started(make_service, sims, IVANTI_SCOPE_FILTER=scope)
    tenant = sims.ivanti.bulk_create(max(load, 1) * 4, Priority="4", OwnerTeam=NET)
    target = sims.ivanti.create_incident(Priority="4", OwnerTeam=DB)["RecId"]
    sims.clock.advance(5)
    poll(svc)
    c = 0

    def cycle() -> None:
        nonlocal c
        if load:
            busy_cycle(sims, svc, tenant[(c % 4) * load : (c % 4 + 1) * load], f"c{c}")
        else:
            sims.clock.advance(INTERVAL)
            poll(svc)
        c += 1

    cycle()
    cycle()
    late_edit(sims, target, 50, Priority="1")
    for _ in range(LATE_WITHIN):
        cycle()
        if trigger_log(sims):
            break
    assert trigger_log(sims) == [(target, "Priority Upgrade", "created")]
    for _ in range(4):
        cycle()
    assert trigger_log(sims) == [(target, "Priority Upgrade", "created")]


def test_a_late_second_save_of_an_incident_already_read(
    sims: SimPair, make_service: MakeService
) -> None:
    """An incident saved (read by the daemon), then saved again with a commit that
    lands 40 s late, stamped before the daemon's cursor: still seen, and paged."""
    svc = started(make_service, sims)
    tenant = sims.ivanti.bulk_create(600, Priority="4", OwnerTeam=NET)
    sims.clock.advance(5)
    poll(svc)
    target = tenant[0]
    busy_cycle(sims, svc, tenant[0:150], "a")
    late_edit(sims, target, 40, Priority="1", OwnerTeam=DB)
    for n in range(LATE_WITHIN):
        busy_cycle(sims, svc, tenant[150 * (n % 3 + 1) : 150 * (n % 3 + 2)], f"b{n}")
        if trigger_log(sims):
            break
    assert trigger_log(sims) == [(target, "Priority Upgrade", "created")]


def test_a_late_row_inside_a_crowded_second(sims: SimPair, make_service: MakeService) -> None:
    """A mass update of 150 in one second, and a save committed late into that very
    second: found when the second is read once more, in parts by IncidentNumber."""
    svc = started(make_service, sims)
    tenant = sims.ivanti.bulk_create(150, Priority="4", OwnerTeam=NET)
    target = sims.ivanti.create_incident(Priority="4", OwnerTeam=DB)["RecId"]
    sims.clock.advance(5)
    poll(svc)
    stamp = sims.clock.now()
    for rec in tenant:
        sims.ivanti.edit_incident(rec, Subject="mass update")
    sims.clock.advance(5)
    poll(svc)
    sims.clock.advance(20)
    late_edit(sims, target, (sims.clock.now() - stamp).total_seconds(), Priority="1")
    assert (
        sims.ivanti.incident(target)["LastModDateTime"]
        == (sims.ivanti.incident(tenant[0])["LastModDateTime"])
    )
    for _ in range(LATE_WITHIN + 1):
        sims.clock.advance(INTERVAL)
        poll(svc)
        if trigger_log(sims):
            break
    assert trigger_log(sims) == [(target, "Priority Upgrade", "created")]


def test_a_second_changing_between_pages_is_read_whole(
    sims: SimPair, make_service: MakeService
) -> None:
    """250 saves in one second, read a page at a time by skipping within it; between
    the pages one row of the first page is saved again (the positions move): the next
    page does not start with the row it must, so that second is read whole by
    IncidentNumber. No row is lost, and the one saved again is seen as it is now."""
    svc = started(make_service, sims)
    recs = sims.ivanti.bulk_create(250, Priority="4", OwnerTeam=NET)
    sims.clock.advance(1)
    first_page: list[str] = []
    real = svc.poller.ivanti.query_incidents

    def spy(*args: Any, **kwargs: Any) -> Any:
        page = real(*args, **kwargs)
        if not first_page:
            first_page.extend(str(r["RecId"]) for r in page.rows)
            sims.ivanti.edit_incident(first_page[0], Priority="1", OwnerTeam=DB)
        return page

    svc.poller.ivanti.query_incidents = spy  # type: ignore[method-assign]
    result = poll(svc)
    counts = change_counts(svc)
    assert set(counts) == set(recs)
    assert counts[first_page[0]] == 2 and sum(counts.values()) == 251
    assert result.requests > bound(251)  # the drain's price, paid only when it happens
    assert trigger_log(sims) == [(first_page[0], "Priority Upgrade", "created")]


def settled_at(svc: Service) -> Any:
    from daemon.poller import SETTLE, Settle

    with svc.store.unit() as u:
        raw, cursor = u.get_state(SETTLE), u.get_state("watermark")
    assert raw is not None and cursor is not None
    return Settle.loads(raw, parse_utc(cursor)).at


def test_under_sustained_load_the_reconcile_bounds_the_settle_lag(
    sims: SimPair, make_service: MakeService
) -> None:
    """300 changes every cycle: the settle read (what fits beside each poll's new rows)
    falls behind; a save committed late meanwhile is found by the reconcile sweep, which
    reads every open incident, and the settle read then goes on from where the sweep
    began, less the overlap."""
    svc = started(make_service, sims)
    tenant = sims.ivanti.bulk_create(1200, Priority="4", OwnerTeam=NET)
    target = sims.ivanti.create_incident(Priority="4", OwnerTeam=DB)["RecId"]
    sims.clock.advance(5)
    poll(svc)
    for c in range(10):
        result = busy_cycle(sims, svc, tenant[(c % 4) * 300 : (c % 4 + 1) * 300], f"c{c}")
        assert result.requests <= 1.25 * bound(300)
    late_edit(sims, target, 50, Priority="1")
    busy_cycle(sims, svc, tenant[0:300], "c10")
    behind = sims.clock.now() - settled_at(svc)
    assert behind > timedelta(seconds=60 + 2 * INTERVAL)  # more than when keeping up
    assert trigger_log(sims) == []  # the late row is not read yet
    began = sims.clock.now()
    svc.reconcile_job()
    svc.deliver_job()
    assert trigger_log(sims) == [(target, "Priority Upgrade", "created")]
    assert settled_at(svc) >= began - timedelta(seconds=60)
    for c in range(11, 14):  # and polls go on from there, nothing doubled
        busy_cycle(sims, svc, tenant[(c % 4) * 300 : (c % 4 + 1) * 300], f"c{c}")
    assert trigger_log(sims) == [(target, "Priority Upgrade", "created")]
