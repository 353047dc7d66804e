"""The rules file: parsing with line numbers, criteria evaluation, and its effect on the
pure transition rules and the planner (property tests over random rules and snapshots)."""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.config import ConfigError, load_settings
from daemon.domain import Policy, Snapshot, TransitionKind
from daemon.planner import plan
from daemon.rules import (
    KEY_OF,
    RulesError,
    RuleSet,
    TeamMap,
    UseCaseRule,
    compile_criterion,
    holding_window,
    parse_rules,
    priority_criterion,
)
from daemon.transitions import decide
from tests.unit.test_transitions import fired, snap, snapshots

EXAMPLE = """\
# which incidents are critical, for every use case
critical = "Priority eq '1' or Priority eq '2'"

[use_cases.new_incident]
when = "Priority eq '1' or (Priority eq '2' and Category eq 'Network')"

[use_cases.reassigned]
when = "OwnerTeam ne 'Service Desk'"

[use_cases.priority_downgrade]
enabled = false

[teams]
default = "ops-oncall"
[teams.groups]
"Network Ops (EMEA)" = "netops-emea"
"""


def with_fields(s: Snapshot, **fields: str) -> Snapshot:
    return s.with_changes(payload_fields=dict(fields))


def rules_policy(text: str) -> Policy:
    return Policy(rules=parse_rules(text))


# ---------------------------------------------------------------- criteria


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Priority eq '1'", True),
        ("Priority eq 1", True),
        ("Priority le 2", True),
        ("Priority gt 1", False),
        ("ownerteam eq 'NETWORK'", True),
        ("OwnerTeam in ('Database', 'network')", True),
        ("Category eq 'Hardware' or contains(Category, 'net')", True),
        ("startswith(Subject, 'core') and not (Status eq 'Active')", False),
        ("Owner eq '$NULL'", False),
        ("Phone eq '$NULL'", True),
        ("Phone eq null", True),
        ("tolower(OwnerTeam) eq 'network'", True),
        ("Service eq 'Email'", True),
    ],
)
def test_criteria_read_the_snapshot_as_ivanti_reads_a_filter(text: str, expected: bool) -> None:
    s = with_fields(snap("Active", "1"), Category="Network", Subject="Core switch", Service="email")
    criterion = compile_criterion(
        text,
        known_fields=(
            "Priority",
            "OwnerTeam",
            "Category",
            "Subject",
            "Status",
            "Owner",
            "Phone",
            "Service",
        ),
    )
    assert criterion.matches(s) is expected


def test_a_criterion_naming_an_unknown_field_says_which_and_the_closest() -> None:
    with pytest.raises(RulesError) as err:
        parse_rules('[use_cases.new_incident]\nwhen = "Prioritty eq 1"\n')
    assert err.value.problems == (
        "line 2: use_cases.new_incident.when = 'Prioritty eq 1': field 'Prioritty' is not "
        "read from Ivanti; did you mean 'Priority'? use one of the incident fields "
        "(Priority, OwnerTeam, Status, Category, ...) or add it to IVANTI_EXTRA_FIELDS",
    )


def test_every_problem_is_reported_with_its_line() -> None:
    text = (
        'critical = "Priority eq"\n'  # 1
        "bogus = 1\n"  # 2
        "[use_cases.reasigned]\n"  # 3
        "enabled = false\n"
        "[use_cases.resolved]\n"  # 5
        "enabled = 'no'\n"  # 6
        "[teams.groups]\n"
        "'Network' = ''\n"  # 8
    )
    with pytest.raises(RulesError) as err:
        parse_rules(text)
    lines = [p.split(":", 1)[0] for p in err.value.problems]
    assert lines == ["line 2", "line 1", "line 3", "line 6", "line 8"], err.value.problems
    assert "did you mean 'reassigned'?" in err.value.problems[2]


def test_a_toml_syntax_error_names_its_line() -> None:
    with pytest.raises(RulesError) as err:
        parse_rules("critical = \"Priority eq '1'\"\n[use_cases\n")
    assert err.value.problems[0].startswith("line 2: not valid TOML")


def test_an_empty_file_is_the_same_as_none() -> None:
    rules = parse_rules("")
    assert rules.critical is None and not rules.use_cases and not rules.teams.groups


# ---------------------------------------------------------------- the settings


def test_a_broken_rules_file_is_a_config_error_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text('[use_cases.new_incident]\nwhen = "Priority eq"\n')
    with pytest.raises(ConfigError) as err:
        load_settings({"IXM_RULES_FILE": str(path)}, env_file=os.devnull, require_targets=False)
    assert str(err.value).startswith(f"IXM_RULES_FILE {path} line 2: use_cases.new_incident.when")
    assert "\n" not in str(err.value)


def test_a_missing_rules_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(
            {"IXM_RULES_FILE": str(tmp_path / "nope.toml")},
            env_file=os.devnull,
            require_targets=False,
        )


def test_extra_fields_may_be_named_by_criteria(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text("[use_cases.reassigned]\nwhen = \"Service ne 'Email'\"\n")
    env = {"IXM_RULES_FILE": str(path)}
    with pytest.raises(ConfigError, match="IVANTI_EXTRA_FIELDS"):
        load_settings(env, env_file=os.devnull, require_targets=False)
    settings_ = load_settings(
        {**env, "IVANTI_EXTRA_FIELDS": "Service"}, env_file=os.devnull, require_targets=False
    )
    assert settings_.policy.rules is not None
    assert ("IXM_RULES_FILE", str(path)) in settings_.describe()


# ---------------------------------------------------------------- decisions


def test_a_use_case_criterion_narrows_it_and_names_the_rule() -> None:
    policy = rules_policy(EXAMPLE)
    p2_net = with_fields(snap("Logged", "2"), Category="Network")
    p2_hw = with_fields(snap("Logged", "2"), Category="Hardware")
    verdict = decide(None, p2_net, policy)
    assert fired(verdict) is TransitionKind.NEW_INCIDENT
    assert "rule use_cases.new_incident (rules file line 4) when `Priority eq '1' or" in (
        verdict.reason
    )
    held = decide(None, p2_hw, policy)
    assert held.transition is None
    assert held.reason.startswith(
        "New Incident not sent: rule use_cases.new_incident (rules file line 4) when"
    )
    assert "does not match (new incident, Priority 2 is critical" in held.reason


def test_a_use_case_turned_off_never_fires() -> None:
    policy = rules_policy(EXAMPLE)
    verdict = decide(snap("Active", "1"), snap("Active", "4"), policy)
    assert verdict.transition is None
    assert "Priority Downgrade not sent: rule use_cases.priority_downgrade" in verdict.reason
    assert "turns it off" in verdict.reason


def test_never_reassigned_for_one_team() -> None:
    policy = rules_policy(EXAMPLE)
    to_desk = decide(
        snap("Active", "1", team="Network"), snap("Active", "1", team="Service Desk"), policy
    )
    assert to_desk.transition is None
    to_db = decide(
        snap("Active", "1", team="Network"), snap("Active", "1", team="Database"), policy
    )
    assert fired(to_db) is TransitionKind.REASSIGNED


def test_a_critical_criterion_replaces_the_priorities() -> None:
    policy = rules_policy("critical = \"Priority eq '1' or Category eq 'Security'\"\n")
    sec = with_fields(snap("Logged", "4"), Category="Security")
    verdict = decide(None, sec, policy)
    assert fired(verdict) is TransitionKind.NEW_INCIDENT
    assert "Priority 4 is critical (critical = `Priority eq '1' or Category eq 'Security'` " in (
        verdict.reason
    )
    assert decide(None, snap("Logged", "2"), policy).transition is None
    assert "critical = `Priority eq '1' or" in decide(None, snap("Logged", "2"), policy).reason


# Random rule sets: each use case on/off, with or without a `when`, and maybe `critical`.
CRITERIA = [
    "Priority eq '1'",
    "Priority le 2",
    "OwnerTeam eq 'Network'",
    "OwnerTeam ne 'Database' and Priority ne '3'",
    "Owner eq '$NULL'",
    "Status eq 'Logged' or Priority eq '2'",
]


@st.composite
def rule_sets(draw: st.DrawFn) -> RuleSet:
    use_cases = {}
    for kind in draw(st.frozensets(st.sampled_from(list(TransitionKind)))):
        when = draw(st.none() | st.sampled_from(CRITERIA))
        use_cases[kind] = UseCaseRule(
            kind,
            draw(st.booleans()),
            compile_criterion(when) if when else None,
            line=3,
        )
    critical = draw(st.none() | st.sampled_from(CRITERIA))
    return RuleSet(critical=compile_criterion(critical) if critical else None, use_cases=use_cases)


@settings(max_examples=300)
@given(st.none() | snapshots, snapshots, st.booleans(), st.booleans())
def test_with_todays_defaults_as_rules_the_decisions_equal_todays(
    prev: Snapshot | None, cur: Snapshot, baseline: bool, option: bool
) -> None:
    """An empty rules file, or one spelling out the defaults, changes no verdict; a
    `critical` equal to the priorities changes no decision."""
    today = Policy()
    kw = {"baseline": baseline, "page_baseline_critical": option}
    expected = decide(prev, cur, today, **kw)
    assert decide(prev, cur, Policy(rules=RuleSet()), **kw) == expected
    all_on = RuleSet(use_cases={k: UseCaseRule(k) for k in TransitionKind})
    assert fired(decide(prev, cur, Policy(rules=all_on), **kw)) is fired(expected)
    same = RuleSet(critical=compile_criterion(priority_criterion(today.critical_priorities)))
    assert fired(decide(prev, cur, Policy(rules=same), **kw)) is fired(expected)


@settings(max_examples=400)
@given(st.none() | snapshots, snapshots, rule_sets(), st.booleans(), st.booleans())
def test_rules_only_ever_hold_back_what_the_table_chose(
    prev: Snapshot | None, cur: Snapshot, rules: RuleSet, baseline: bool, option: bool
) -> None:
    """With `critical` unchanged a use-case rule never invents a transition, only holds one
    back (off, or its `when` fails on cur), and whatever fires names its rule."""
    kw = {"baseline": baseline, "page_baseline_critical": option}
    without = decide(prev, cur, Policy(rules=replace(rules, critical=None)), **kw)
    table = decide(prev, cur, Policy(), **kw)
    assert fired(without) in (None, fired(table))
    kind = fired(table)
    if kind is not None:
        rule = rules.use_cases.get(kind)
        allowed = rule is None or (rule.enabled and (rule.when is None or rule.when.matches(cur)))
        assert (fired(without) is kind) is allowed
        if rule is not None:
            assert f"use_cases.{KEY_OF[kind]}" in without.reason
    assert without.reason


@settings(max_examples=300)
@given(snapshots, rule_sets())
def test_a_changed_rule_never_fires_on_an_unchanged_incident(cur: Snapshot, rules: RuleSet) -> None:
    """No storm on a reload: the same snapshot seen again under new rules pages nobody."""
    assert decide(cur, cur, Policy(rules=rules)).transition is None


# ---------------------------------------------------------------- team map


def test_team_map_compares_like_teams_and_falls_back_to_default() -> None:
    teams = TeamMap({"Network Ops (EMEA)": "netops-emea"}, default="ops-oncall")
    assert teams.group_for(" network ops  (emea) ") == "netops-emea"
    assert teams.group_for("Database") == "ops-oncall"
    assert teams.group_for("") == "ops-oncall"
    assert TeamMap({"A": "a"}).group_for("B") == "B"


def test_planner_maps_the_team_in_the_payload_and_the_recipient() -> None:
    policy = rules_policy(EXAMPLE)
    cur = snap("Logged", "1", owner="", team="Network Ops (EMEA)")
    verdict = decide(None, cur, policy)
    (page,) = plan(verdict, cur, alerting=False, policy=policy)
    assert page.payload["recipient"] == {"id": "netops-emea", "recipientType": "GROUP"}
    assert page.payload["workflow"]["OwnerTeam"] == "netops-emea"  # type: ignore[index]
    (unmapped,) = plan(verdict, cur, alerting=False)
    assert unmapped.payload["recipient"] == {"id": "Network Ops (EMEA)", "recipientType": "GROUP"}
    resolved = decide(cur, cur.with_changes(status="Resolved"), policy)
    (end,) = plan(resolved, cur, alerting=True, policy=policy)
    assert end.payload["workflow"]["OwnerTeam"] == "netops-emea"  # type: ignore[index]


# ---------------------------------------------------------------- maintenance windows

WINDOWS = """\
[[windows]]
name = "core-switch upgrade"
teams = ["Network"]
start = 2026-12-02T00:00:00Z
end = 2026-12-02T02:00:00Z

[[windows]]
name = "saturday patching"
when = "Category eq 'Server'"
cron = "0 1 * * 6"
duration = "3h"
timezone = "Europe/Berlin"
"""


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_a_one_off_window_is_open_from_start_to_end_for_its_teams() -> None:
    (one_off, _) = parse_rules(WINDOWS).windows
    assert one_off.open_until(utc(2026, 12, 2, 1, 0)) == utc(2026, 12, 2, 2, 0)
    assert one_off.open_until(utc(2026, 12, 2, 2, 0)) is None
    assert one_off.open_until(utc(2026, 12, 1, 23, 59)) is None
    assert one_off.covers(snap(team=" network "))
    assert not one_off.covers(snap(team="Database"))


def test_a_recurring_window_follows_cron_in_its_time_zone() -> None:
    (_, weekly) = parse_rules(WINDOWS).windows
    # Saturday 5 December 2026, 01:00 in Berlin is 00:00 UTC; open for 3 h
    assert weekly.open_until(utc(2026, 12, 5, 0, 0)) == utc(2026, 12, 5, 3, 0)
    assert weekly.open_until(utc(2026, 12, 5, 2, 59)) == utc(2026, 12, 5, 3, 0)
    assert weekly.open_until(utc(2026, 12, 5, 3, 0)) is None
    assert weekly.open_until(utc(2026, 12, 4, 0, 30)) is None  # a Friday
    assert weekly.shown(utc(2026, 12, 5, 3, 0)) == "2026-12-05 04:00 Europe/Berlin"
    assert weekly.covers(with_fields(snap(), Category="server"))
    assert not weekly.covers(with_fields(snap(), Category="Network"))


def test_holding_window_picks_the_open_window_that_closes_last() -> None:
    rules = parse_rules(
        WINDOWS.replace('teams = ["Network"]', "")
        + '[[windows]]\nname = "long"\nstart = 2026-12-01T00:00:00Z\nend = 2026-12-03T00:00:00Z\n'
    )
    found = holding_window(rules.windows, with_fields(snap(), Category="Server"), utc(2026, 12, 2))
    assert found is not None and found[0].name == "long"
    assert holding_window(rules.windows, snap(), utc(2026, 12, 4)) is None


def test_window_problems_are_reported_with_the_line_of_their_table() -> None:
    text = (
        "[[windows]]\n"  # 1
        'name = "a"\n'
        'cron = "0 25 * * *"\n'
        'duration = "2h"\n'
        "[[windows]]\n"  # 5
        'name = "b"\n'
        "start = 2026-12-02T00:00:00Z\n"
        "[[windows]]\n"  # 8
        'name = "c"\n'
        'timezone = "Mars/Olympus"\n'
        'cron = "0 1 * * *"\n'
        'duration = "1h"\n'
    )
    with pytest.raises(RulesError) as err:
        parse_rules(text)
    assert [p.split(":", 1)[0] for p in err.value.problems] == ["line 1", "line 5", "line 8"]
    assert "cron '0 25 * * *' is not a crontab line" in err.value.problems[0]
    assert "start and end must both be date-times" in err.value.problems[1]
    assert "timezone 'Mars/Olympus' is not a time zone" in err.value.problems[2]


def test_becoming_critical_by_another_field_is_an_upgrade_that_says_so() -> None:
    policy = rules_policy("critical = \"Priority eq '1' or Category eq 'Security'\"\n")
    before = with_fields(snap("Active", "4"), Category="Network")
    after = with_fields(snap("Active", "4"), Category="Security")
    up = decide(before, after, policy)
    assert fired(up) is TransitionKind.PRIORITY_UPGRADE
    assert up.reason.startswith(
        "Priority 4 unchanged, critical = `Priority eq '1' or Category eq 'Security'` matches now"
    )
    down = decide(after, before, policy)
    assert fired(down) is TransitionKind.PRIORITY_DOWNGRADE
    assert "no longer matches, no longer critical" in down.reason
