"""Paging edge cases: ties on LastModDateTime, edits while the daemon pages, an outage
of hours followed by catch-up, and a first start on a large tenant.

Every test runs under three readings of what the reference leaves open (ivanti-api.md
§8): today's simulator (whole seconds, RecIds compared as they sort), a tenant that
stores sub-seconds but serves whole seconds, and one that sorts RecIds as SQL Server
sorts a uniqueidentifier while ``RecId gt`` compares text."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from daemon.models import Change, Incident
from daemon.simulators.clock import SimClock
from daemon.simulators.harness import SimPair
from daemon.timeutil import parse_utc
from tests.conftest import MakeService
from tests.e2e.test_faults import (
    IVANTI_QUERY,
    change_counts,
    on_query,
    settle,
    started,
    trigger_log,
)

pytestmark = pytest.mark.e2e

NET = "Network Operations"
DB = "Database Team"
DESK = "Service Desk"

READINGS: dict[str, dict[str, Any]] = {
    "whole-seconds": {},
    "subsecond-stored": {"subsecond_times": True},
    "recid-guid-sort": {"recid_sort": "guid"},
}


@pytest.fixture(params=list(READINGS))
def sims(clock: SimClock, request: pytest.FixtureRequest, sim_profile: str) -> Iterator[SimPair]:
    with SimPair(clock=clock, ivanti_kwargs=READINGS[request.param], profile=sim_profile) as pair:
        yield pair


def reading(sims: SimPair) -> str:
    iv = sims.ivanti
    return "subsecond" if iv.subsecond_times else "guid" if iv.recid_sort == "guid" else "today"


def crowded_second(sims: SimPair, n: int, **fields: Any) -> list[str]:
    """``n`` incidents saved one after the other in one second, RecIds chosen so that
    neither the save order nor SQL Server's uniqueidentifier order is the text order
    ``RecId gt`` compares in: newest first in text order, and in guid order."""
    recs = []
    for i in reversed(range(n)):
        rec = f"{i:02d}{'0' * 18}{99 - i:02d}{'0' * 10}"
        recs.append(sims.ivanti.create_incident(RecId=rec, **fields)["RecId"])
    return recs


@pytest.mark.parametrize("paging", ["safe", "keyset"])
def test_a_crowded_second_under_every_reading(
    sims: SimPair, make_service: MakeService, paging: str
) -> None:
    """Eight incidents saved within one second, read three a page. The default paging
    reads all eight under every reading; the RecId keyset (IXM_PAGING=keyset) loses
    rows when Ivanti keeps sub-seconds it does not serve, or sorts RecIds in another
    order than it compares them, which is why it is not the default."""
    svc = started(make_service, sims, IXM_PAGE_SIZE="3", IXM_PAGING=paging)
    recs = crowded_second(sims, 8, Priority="3", OwnerTeam=NET)
    assert len({sims.ivanti.incident(r)["LastModDateTime"] for r in recs}) == 1
    report = svc.cycle()
    assert report.ok, report.error
    if paging == "keyset" and reading(sims) != "today":
        assert len(change_counts(svc)) < len(recs)  # the staged loss
        return
    assert change_counts(svc) == {r: 1 for r in recs}
    sims.clock.advance(30)
    again = svc.cycle()
    assert again.ok and again.poll is not None and again.poll.changes == 0
    assert change_counts(svc) == {r: 1 for r in recs}


def test_crowded_seconds_straddling_pages_under_every_reading(
    sims: SimPair, make_service: MakeService
) -> None:
    """Rows of one second on both sides of a page edge, one second after another,
    then a critical one: each read once, the critical one paged once."""
    svc = started(make_service, sims, IXM_PAGE_SIZE="4")
    recs = []
    for _ in range(3):
        recs += [
            sims.ivanti.create_incident(Priority="4", OwnerTeam=NET)["RecId"] for _ in range(5)
        ]
        sims.clock.advance(1)
    critical = sims.ivanti.create_incident(Priority="1", OwnerTeam=DB)["RecId"]
    report = svc.cycle()
    assert report.ok, report.error
    assert change_counts(svc) == {r: 1 for r in [*recs, critical]}
    assert trigger_log(sims) == [(critical, "New Incident", "created")]


def test_300_changes_sharing_one_lastmoddatetime(sims: SimPair, make_service: MakeService) -> None:
    svc = started(make_service, sims)
    recs = sims.ivanti.bulk_create(300, Priority="3", OwnerTeam=NET)
    stamps = {sims.ivanti.incident(r)["LastModDateTime"] for r in recs[::50]}
    assert len(stamps) == 1
    report = svc.cycle()
    assert report.ok, report.error
    assert change_counts(svc) == {r: 1 for r in recs}
    # pages inside one second, each continued from the last one's position in it
    # (one row read twice a page, checked): the lower bound ceil(300 / 100) + 1
    assert report.poll is not None and report.poll.requests == 300 // 100 + 1
    for _ in range(6):  # the overlap passes: the second is read once more, in parts
        sims.clock.advance(30)
        again = svc.cycle()
        assert again.ok and again.poll is not None and again.poll.changes == 0
        assert again.poll.requests == 1  # idle: one request, also while settling
    assert change_counts(svc) == {r: 1 for r in recs}
    assert trigger_log(sims) == []


@pytest.mark.parametrize(
    "scope",
    [
        "",  # exact (second, RecId) keyset continuation
        "Priority ne '5'",  # the same, with an and-only scope appended
        # a scope with `or` cannot follow the keyset group (Ivanti misreads it): the
        # last second is re-read instead, and a page inside one second drained by RecId
        "OwnerTeam eq 'Service Desk' or OwnerTeam eq 'Database Team'",
    ],
)
def test_tie_straddling_page_edges(sims: SimPair, make_service: MakeService, scope: str) -> None:
    """50 rows in one second, 300 in the next, 50 in the one after: pages cut across
    the seconds and no row is lost or recorded twice, whichever way the reads go."""
    svc = started(make_service, sims, IVANTI_SCOPE_FILTER=scope)
    before = sims.ivanti.bulk_create(50, Priority="4")
    sims.clock.advance(1)
    tie = sims.ivanti.bulk_create(300, Priority="4")
    sims.clock.advance(1)
    after = sims.ivanti.bulk_create(49, Priority="4")
    critical = sims.ivanti.create_incident(Priority="1", OwnerTeam=DB)["RecId"]
    report = svc.cycle()
    assert report.ok, report.error
    assert change_counts(svc) == {r: 1 for r in [*before, *tie, *after, critical]}
    assert trigger_log(sims) == [(critical, "New Incident", "created")]
    assert report.poll is not None


@pytest.mark.parametrize("scope", ["", "Priority ne '5'"])
def test_keyset_paging_costs_the_lower_bound(
    sims: SimPair, make_service: MakeService, scope: str
) -> None:
    """IXM_PAGING=keyset, on a tenant that stores whole seconds and compares RecIds as
    it sorts them: the exact (second, RecId) continuation reads 400 rows in exactly
    ceil(400 / 100) + 1 requests (the benchmark's lower bound)."""
    if reading(sims) != "today":
        pytest.skip("the keyset's assumptions do not hold under this reading")
    svc = started(make_service, sims, IVANTI_SCOPE_FILTER=scope, IXM_PAGING="keyset")
    recs = sims.ivanti.bulk_create(50, Priority="4")
    sims.clock.advance(1)
    recs += sims.ivanti.bulk_create(300, Priority="4")
    sims.clock.advance(1)
    recs += sims.ivanti.bulk_create(50, Priority="4")
    report = svc.cycle()
    assert report.ok, report.error
    assert change_counts(svc) == {r: 1 for r in recs}
    assert report.poll is not None and report.poll.requests == 400 // 100 + 1


def test_edit_in_the_same_second_as_the_read(sims: SimPair, make_service: MakeService) -> None:
    """Ivanti keeps whole seconds: an edit in the second the daemon last read the
    incident carries the same LastModDateTime, yet it is a new version."""
    svc = started(make_service, sims)
    rec = sims.ivanti.create_incident(Priority="3", OwnerTeam=NET)["RecId"]
    svc.cycle()
    sims.ivanti.edit_incident(rec, Priority="1")  # same (frozen) second
    svc.cycle()
    assert trigger_log(sims) == [(rec, "Priority Upgrade", "created")]
    svc.cycle()
    assert trigger_log(sims) == [(rec, "Priority Upgrade", "created")]
    assert change_counts(svc) == {rec: 2}


def test_incidents_edited_while_the_daemon_pages(sims: SimPair, make_service: MakeService) -> None:
    svc = started(make_service, sims, IXM_PAGE_SIZE="10")
    recs = []
    for _ in range(35):
        recs.append(sims.ivanti.create_incident(Priority="3", OwnerTeam=NET)["RecId"])
        sims.clock.advance(1)
    read_early, read_late = recs[3], recs[28]
    created_mid: list[str] = []

    def hook(n: int) -> None:
        if n == 2:  # page 1 has been read, pages 2-4 not yet
            sims.clock.advance(1)
            sims.ivanti.edit_incident(read_early, Priority="1")
            sims.ivanti.edit_incident(read_late, OwnerTeam=DB, Priority="2")
            created_mid.append(sims.ivanti.create_incident(Priority="2", OwnerTeam=DESK)["RecId"])

    on_query(svc, hook)
    report = svc.cycle()
    assert report.ok, report.error
    sims.clock.advance(30)
    settle(svc, sims)
    (mid,) = created_mid
    assert sorted(trigger_log(sims)) == sorted(
        [
            (read_early, "Priority Upgrade", "created"),
            (read_late, "New Incident", "created"),  # first seen already critical
            (mid, "New Incident", "created"),
        ]
    )
    expected = {r: 1 for r in recs} | {read_early: 2, mid: 1}
    assert change_counts(svc) == expected


def test_outage_of_hours_then_catch_up(sims: SimPair, make_service: MakeService) -> None:
    """Ivanti answers 503 for three hours while people keep working. When it is back,
    the daemon pages the CURRENT state once, replays nothing stale, and keeps within
    xMatters' flood control."""
    svc = started(make_service, sims)
    up_then_resolved = sims.ivanti.create_incident(Priority="3", OwnerTeam=NET)["RecId"]
    flapping = sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)["RecId"]
    moved = sims.ivanti.create_incident(Priority="2", OwnerTeam=NET)["RecId"]
    ended = sims.ivanti.create_incident(Priority="1", OwnerTeam=DB)["RecId"]
    quiet = sims.ivanti.create_incident(Priority="4", OwnerTeam=DB)["RecId"]
    settle(svc, sims)
    assert sorted(trigger_log(sims)) == sorted(
        (r, "New Incident", "created") for r in (flapping, moved, ended)
    )
    baseline_triggers = len(trigger_log(sims))

    outage = sims.ivanti.faults.inject("status", IVANTI_QUERY, method="GET", status=503, times=0)
    born: list[str] = []
    for step in range(36):  # 36 failed polls over three hours
        sims.clock.advance(300)
        if step == 2:
            sims.ivanti.edit_incident(up_then_resolved, Priority="1")
        if step == 9:
            sims.ivanti.edit_incident(up_then_resolved, Status="Resolved")
        if step in (4, 20):
            sims.ivanti.edit_incident(flapping, Priority="4")
        if step in (5, 21):
            sims.ivanti.edit_incident(flapping, Priority="1")
        if step in (7, 14, 30):
            sims.ivanti.edit_incident(moved, OwnerTeam=[DB, DESK, DB][(step // 10) % 3])
        if step == 12:
            sims.ivanti.edit_incident(ended, Status="Closed")
        if step == 15:
            sims.ivanti.edit_incident(quiet, Subject="still not critical")
        if 20 <= step < 30:
            born.append(sims.ivanti.create_incident(Priority="2", OwnerTeam=NET)["RecId"])
        report = svc.cycle()
        assert not report.ok
    assert len(trigger_log(sims)) == baseline_triggers
    assert outage.hits == 36
    sims.ivanti.faults.clear()
    settle(svc, sims, step=15)
    caught_up = trigger_log(sims)[baseline_triggers:]
    assert sorted(caught_up) == sorted(
        [
            (moved, "Reassigned", "created"),  # NET -> DB: one page for the current team
            (ended, "Terminate", "terminated_only"),
            *[(r, "New Incident", "created") for r in born],
        ]
    )
    assert sims.xmatters.suppressions() == []
    assert sims.xmatters.live_events(up_then_resolved) == []
    assert len(sims.xmatters.live_events(flapping)) == 1  # untouched: same as before
    # flood control: never more than four creates a minute to one recipient
    creates = [t for t in sims.xmatters.triggers() if t["outcome"] == "created"]
    by_team: dict[str, list[datetime]] = {}
    for t in creates:
        by_team.setdefault(t["payload"]["OwnerTeam"], []).append(parse_utc(t["at"]))
    for team, times in by_team.items():
        for i, start in enumerate(times):
            window = [t for t in times[i:] if t - start < timedelta(seconds=60)]
            assert len(window) <= 4, (team, times)


def test_first_start_on_a_tenant_with_5000_open_incidents(
    sims: SimPair, make_service: MakeService
) -> None:
    recs = sims.ivanti.bulk_create(4997, Priority="3", OwnerTeam=NET)
    recs += sims.ivanti.bulk_create(3, Priority="1", OwnerTeam=DB)  # critical: still no page
    svc = make_service()
    report = svc.cycle()
    assert report.ok, report.error
    assert report.poll is not None and report.poll.kind == "baseline"
    # 50 full pages, then the empty one that says there is no more
    assert report.poll.requests == math.ceil(5000 / 100) + 1
    assert sims.xmatters.triggers() == []
    with svc.store.unit() as u:
        stored = Counter(i.rec_id for i in u.s.scalars(select(Incident)))
        changes = list(u.s.scalars(select(Change.transition)))
    assert stored == Counter(recs)
    assert changes == [None] * len(recs)
    sims.clock.advance(30)
    after = svc.cycle()  # re-reads the overlap: nothing new, nobody paged
    assert after.ok and after.poll is not None and after.poll.changes == 0
    assert sims.xmatters.triggers() == []


def test_reconcile_sweep_finds_deletions_on_every_page(
    sims: SimPair, make_service: MakeService
) -> None:
    """35 open incidents read 10 a page: deleted ones on the first, a middle and the
    last page are found, and only they (the sweep compares page by page in
    IncidentNumber order); the paging ones among them are terminated."""
    svc = started(make_service, sims, IXM_PAGE_SIZE="10")
    people = ["jsmith", "bwong", "apatel", "mgarcia", "lchen", "obrien"]
    recs = [
        sims.ivanti.create_incident(
            Priority="1" if i % 5 == 0 else "3", Owner=people[i % 6], OwnerTeam=NET
        )["RecId"]
        for i in range(35)
    ]
    svc.cycle()
    sims.settle()
    assert len([t for t in sims.xmatters.triggers() if t["outcome"] == "created"]) == 7
    sims.clock.advance(30)
    gone = [recs[0], recs[20], recs[34]]  # first page, third page, last page
    for rec in gone:
        sims.ivanti.delete_incident(rec)
    report = svc.reconcile_job()
    with svc.store.unit() as u:
        deleted = sorted(r.rec_id for r in u.list_incidents() if r.deleted)
    assert deleted == sorted(gone)
    svc.deliver_job()
    ends = [
        t["payload"]["RecId"]
        for t in sims.xmatters.triggers()
        if t["payload"]["Type"] == "Terminate"
    ]
    assert sorted(ends) == sorted([recs[0], recs[20]])  # recs[34] was not paging
    # 32 open incidents left: 4 pages of 10 (the last one short), one GET per missing one
    assert report.requests == math.ceil(32 / 10) + 3


@pytest.mark.parametrize("paging", ["safe", "keyset"])
def test_check_tells_whether_keyset_paging_holds(
    sims: SimPair,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    paging: str,
) -> None:
    """`check` probes the tenant on a sample: under either unknown it refutes the RecId
    keyset (FAIL when IXM_PAGING=keyset is set); under today's reading it says so."""
    import json

    from daemon.cli import main

    for key, value in sims.daemon_env(tmp_path / "state.db", IXM_PAGING=paging).items():
        monkeypatch.setenv(key, value)
    crowded_second(sims, 8, Priority="3", OwnerTeam=NET)
    sims.clock.advance(1)
    sims.ivanti.create_incident(Priority="3", OwnerTeam=NET)
    capsys.readouterr()
    code = main(["--env-file", "/dev/null", "check", "--quiet", "--json"])
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    result = checks["ivanti paging"]
    if reading(sims) == "today":
        assert result["status"] == "OK" and "stores whole seconds" in result["message"]
    elif paging == "keyset":
        assert code == 1 and result["status"] == "FAIL"
        assert "IXM_PAGING=keyset loses rows" in result["message"]
    else:
        assert result["status"] == "OK" and "as this tenant needs" in result["message"]
    expected = {"subsecond": "sub-seconds", "guid": "sorts RecIds"}.get(reading(sims))
    if expected:
        assert expected in result["message"]
