from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.domain import Policy, Snapshot, StatusClass, TransitionKind, Verdict
from daemon.transitions import decide

REC = "085867F47547496783005D95CB82D557"
T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
POLICY = Policy()


def snap(
    status: str = "Active",
    priority: str = "1",
    owner: str = "jsmith",
    team: str = "Network",
    minutes: int = 0,
) -> Snapshot:
    return Snapshot(
        rec_id=REC,
        incident_number=100,
        status=status,
        priority=priority,
        owner=owner,
        owner_team=team,
        last_mod=T0 + timedelta(minutes=minutes),
    )


def fired(verdict: Verdict) -> TransitionKind | None:
    return verdict.transition.kind if verdict.transition else None


# (description, prev, cur, expected kind, fragment the reason must contain)
USE_CASES: list[tuple[str, Snapshot | None, Snapshot, TransitionKind | None, str]] = [
    ("new critical", None, snap("Logged", "1"), TransitionKind.NEW_INCIDENT, "Priority 1"),
    (
        "new not critical",
        None,
        snap("Logged", "3"),
        None,
        "not critical (Priority 3; critical are 1,2)",
    ),
    ("new without priority", None, snap("Logged", ""), None, "no Priority"),
    (
        "new already resolved",
        None,
        snap("Resolved", "1"),
        None,
        "already resolved (Status Resolved) between two polls: nobody paged",
    ),
    (
        "reassigned",
        snap(team="Network"),
        snap(team="Database", minutes=1),
        TransitionKind.REASSIGNED,
        "OwnerTeam Network -> Database",
    ),
    (
        "reopened",
        snap("Resolved", "2"),
        snap("Active", "2"),
        TransitionKind.REOPENED,
        "Status Resolved -> Active",
    ),
    (
        "reopened not critical",
        snap("Resolved", "4"),
        snap("Active", "4"),
        None,
        "reopened (Status Resolved -> Active) but not critical (Priority 4",
    ),
    (
        "upgrade",
        snap(priority="3"),
        snap(priority="1"),
        TransitionKind.PRIORITY_UPGRADE,
        "Priority 3 -> 1, now critical",
    ),
    (
        "upgrade with team change",
        snap(priority="3", team="Network"),
        snap(priority="2", team="Database"),
        TransitionKind.PRIORITY_UPGRADE,
        "OwnerTeam also changed Network -> Database",
    ),
    (
        "downgrade",
        snap(priority="2"),
        snap(priority="4"),
        TransitionKind.PRIORITY_DOWNGRADE,
        "Priority 2 -> 4, no longer critical",
    ),
    (
        "resolved",
        snap("Active"),
        snap("Resolved"),
        TransitionKind.RESOLVED,
        "Status Active -> Resolved",
    ),
    (
        "resolved with other changes",
        snap("Active", "1", team="Network"),
        snap("Resolved", "4", team="Database"),
        TransitionKind.RESOLVED,
        "also changed: Priority 1 -> 4, OwnerTeam Network -> Database",
    ),
    ("closed", snap("Active"), snap("Closed"), TransitionKind.CLOSED, "Status Active -> Closed"),
    (
        "resolved then closed",
        snap("Resolved"),
        snap("Closed"),
        TransitionKind.CLOSED,
        "Status Resolved -> Closed",
    ),
    (
        "canceled (two l)",
        snap("Logged", "5"),
        snap("Cancelled", "5"),
        TransitionKind.CANCELED,
        "Status Logged -> Cancelled",
    ),
    ("still resolved", snap("Resolved"), snap("Resolved", owner="bwong"), None, "still resolved"),
    (
        "still canceled, spelling changed",
        snap("Canceled"),
        snap("Cancelled"),
        None,
        "still canceled (Status Canceled -> Cancelled)",
    ),
    (
        "owner only",
        snap(owner="jsmith"),
        snap(owner="bwong"),
        None,
        "Owner changed jsmith -> bwong; Owner changes alone do not page (original use cases)",
    ),
    ("nothing", snap(), snap(minutes=5), None, "no change that pages"),
    (
        "status within open",
        snap("Logged"),
        snap("Active"),
        None,
        "Status Logged -> Active, still open",
    ),
    (
        "priority within critical",
        snap(priority="1"),
        snap(priority="2"),
        None,
        "Priority 1 -> 2, still critical",
    ),
    (
        "team change not critical",
        snap(priority="3", team="Network"),
        snap(priority="3", team="Database"),
        None,
        "OwnerTeam Network -> Database but not critical (Priority 3",
    ),
    (
        "team change only in case",
        snap(team="Network"),
        snap(team=" network "),
        None,
        "differs only in case or spacing",
    ),
    ("owner cleared", snap(owner="jsmith"), snap(owner=""), None, "jsmith -> (none)"),
]


@pytest.mark.parametrize(
    ("prev", "cur", "kind", "fragment"),
    [case[1:] for case in USE_CASES],
    ids=[case[0] for case in USE_CASES],
)
def test_use_case_table(
    prev: Snapshot | None, cur: Snapshot, kind: TransitionKind | None, fragment: str
) -> None:
    verdict = decide(prev, cur, POLICY)
    assert fired(verdict) == kind
    assert fragment in verdict.reason
    if verdict.transition is not None:
        assert verdict.transition.reason == verdict.reason
        assert verdict.transition.rec_id == REC


def test_every_kind_is_covered_by_the_table() -> None:
    assert {case[3] for case in USE_CASES} >= set(TransitionKind)


def test_baseline_records_without_paging() -> None:
    verdict = decide(None, snap("Logged", "1"), POLICY, baseline=True)
    assert verdict.transition is None
    assert verdict.reason == "baseline: existing incident recorded at first start, nobody paged"


def test_baseline_option_pages_open_critical_only() -> None:
    paged = decide(None, snap("Active", "1"), POLICY, baseline=True, page_baseline_critical=True)
    assert fired(paged) is TransitionKind.NEW_INCIDENT
    assert "page_baseline_critical" in paged.reason
    for cur in (snap("Active", "3"), snap("Resolved", "1")):
        verdict = decide(None, cur, POLICY, baseline=True, page_baseline_critical=True)
        assert verdict.transition is None


def test_option_without_baseline_changes_nothing() -> None:
    verdict = decide(None, snap("Active", "3"), POLICY, page_baseline_critical=True)
    assert verdict.transition is None


def test_site_policy_is_honoured() -> None:
    policy = Policy(
        critical_priorities=frozenset({"P1"}),
        resolved_statuses=frozenset({"fixed"}),
        closed_statuses=frozenset(),
        canceled_statuses=frozenset({"withdrawn"}),
    )
    assert fired(decide(None, snap("Logged", "P1"), policy)) is TransitionKind.NEW_INCIDENT
    assert fired(decide(None, snap("Logged", "1"), policy)) is None
    assert fired(decide(snap("Active", "P1"), snap("FIXED", "P1"), policy)) is (
        TransitionKind.RESOLVED
    )
    # "Closed" is not terminal under this policy: just another open status
    assert fired(decide(snap("Active", "P1"), snap("Closed", "P1"), policy)) is None
    assert "critical are P1" in decide(None, snap("Logged", "2"), policy).reason


# ---------------------------------------------------------------- property tests

STATUSES = [
    "Logged",
    "Active",
    "Waiting for Customer",
    "Resolved",
    "Closed",
    "Canceled",
    "RESOLVED",
]
PRIORITIES = ["1", "2", "3", "4", "5", "", " 1 ", "P1"]
PEOPLE = ["", "jsmith", "bwong"]
TEAMS = ["", "Network", "network", "Database"]

snapshots = st.builds(
    snap,
    status=st.sampled_from(STATUSES) | st.text(max_size=12),
    priority=st.sampled_from(PRIORITIES) | st.text(max_size=4),
    owner=st.sampled_from(PEOPLE) | st.text(max_size=8),
    team=st.sampled_from(TEAMS) | st.text(max_size=8),
    minutes=st.integers(0, 10),
)
policies = st.builds(
    Policy,
    critical_priorities=st.frozensets(st.sampled_from(["1", "2", "3", "P1"]), max_size=3),
    resolved_statuses=st.frozensets(st.sampled_from(["resolved", "fixed"]), max_size=2),
    closed_statuses=st.frozensets(st.sampled_from(["closed"]), max_size=1),
    canceled_statuses=st.frozensets(st.sampled_from(["canceled", "cancelled"]), max_size=2),
)


def is_open_critical(s: Snapshot, policy: Policy) -> bool:
    return policy.status_class(s.status) is StatusClass.OPEN and policy.is_critical(s.priority)


@settings(max_examples=400)
@given(st.none() | snapshots, snapshots, policies, st.booleans(), st.booleans())
def test_decide_never_raises_and_yields_at_most_one(
    prev: Snapshot | None, cur: Snapshot, policy: Policy, baseline: bool, option: bool
) -> None:
    verdict = decide(prev, cur, policy, baseline=baseline, page_baseline_critical=option)
    assert isinstance(verdict, Verdict)
    assert verdict.reason
    if verdict.transition is not None:
        assert verdict.transition.rec_id == cur.rec_id


@settings(max_examples=300)
@given(st.none() | snapshots, snapshots, policies, st.booleans(), st.booleans())
def test_creates_only_for_open_critical_and_terminal_never_creates(
    prev: Snapshot | None, cur: Snapshot, policy: Policy, baseline: bool, option: bool
) -> None:
    kind = fired(decide(prev, cur, policy, baseline=baseline, page_baseline_critical=option))
    if kind is not None and kind.creates:
        assert is_open_critical(cur, policy)
    if policy.status_class(cur.status).terminal:
        assert kind is None or not kind.creates


@given(snapshots, policies, st.booleans(), st.booleans())
def test_first_sighting_of_a_terminal_incident_never_pages(
    cur: Snapshot, policy: Policy, baseline: bool, option: bool
) -> None:
    verdict = decide(None, cur, policy, baseline=baseline, page_baseline_critical=option)
    if policy.status_class(cur.status).terminal:
        assert verdict.transition is None


@given(snapshots, policies, st.booleans())
def test_baseline_pages_only_with_option_and_open_critical(
    cur: Snapshot, policy: Policy, option: bool
) -> None:
    kind = fired(decide(None, cur, policy, baseline=True, page_baseline_critical=option))
    if option and is_open_critical(cur, policy):
        assert kind is TransitionKind.NEW_INCIDENT
    else:
        assert kind is None


@given(snapshots, policies, st.booleans(), st.integers(0, 10))
def test_identical_snapshots_never_transition(
    s: Snapshot, policy: Policy, baseline: bool, minutes: int
) -> None:
    later = s.with_changes(last_mod=s.last_mod + timedelta(minutes=minutes))
    assert decide(s, later, policy, baseline=baseline).transition is None


@settings(max_examples=300)
@given(snapshots, snapshots, policies)
def test_priority_upgrade_iff_open_to_open_noncritical_to_critical(
    prev: Snapshot, cur: Snapshot, policy: Policy
) -> None:
    both_open = not policy.status_class(prev.status).terminal and not (
        policy.status_class(cur.status).terminal
    )
    was, now = policy.is_critical(prev.priority), policy.is_critical(cur.priority)
    kind = fired(decide(prev, cur, policy))
    assert (kind is TransitionKind.PRIORITY_UPGRADE) == (both_open and not was and now)
    assert (kind is TransitionKind.PRIORITY_DOWNGRADE) == (both_open and was and not now)


@settings(max_examples=300)
@given(snapshots, snapshots, policies)
def test_terminal_class_change_always_terminates_by_class(
    prev: Snapshot, cur: Snapshot, policy: Policy
) -> None:
    prev_cls, cur_cls = policy.status_class(prev.status), policy.status_class(cur.status)
    kind = fired(decide(prev, cur, policy))
    if cur_cls.terminal and prev_cls is not cur_cls:
        assert kind is not None and kind.value.casefold() == cur_cls.value
    if cur_cls.terminal and prev_cls is cur_cls:
        assert kind is None
