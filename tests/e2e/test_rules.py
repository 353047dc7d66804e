"""The rules file end to end, through both simulators: a per-use-case criterion, the team
map in both modes, the tools (rules check / rules test / explain / once --dry-run), and a
rules change across a restart that pages nobody for what was already open."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from daemon.cli import main
from daemon.simulators.harness import SimPair
from tests.conftest import MakeService

pytestmark = pytest.mark.e2e

NET = "Network Operations"
DB = "Database Team"
DESK = "Service Desk"
ENV_FILE = ["--env-file", os.devnull]

RULES = """\
# New Incident: every P1, and P2 only for networking
[use_cases.new_incident]
when = "Priority eq '1' or (Priority eq '2' and Category eq 'Network')"

# never page a reassignment to the Service Desk
[use_cases.reassigned]
when = "OwnerTeam ne 'Service Desk'"

[teams.groups]
"Network Ops (EMEA)" = "Network Operations"
"""


def tick(sims: SimPair, seconds: float = 30) -> None:
    sims.clock.advance(seconds)


def write(tmp_path: Path, text: str, name: str = "rules.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def started(make_service: MakeService, sims: SimPair, **env: str) -> Any:
    svc = make_service(**env)
    report = svc.cycle()
    assert report.ok, report.error
    tick(sims)
    return svc


def cycle(svc: Any, sims: SimPair) -> None:
    report = svc.cycle()
    assert report.ok, report.error
    tick(sims)


def created_types(sims: SimPair) -> list[tuple[str, str]]:
    return [
        (str(t["payload"].get("IncidentID")), str(t["payload"].get("Type")))
        for t in sims.xmatters.triggers()
        if t.get("outcome") == "created"
    ]


def cli_env(
    sims: SimPair, state_db_url: str, monkeypatch: pytest.MonkeyPatch, **extra: str
) -> None:
    for key, value in {**sims.daemon_env(state_db_url), **extra}.items():
        monkeypatch.setenv(key, value)


def test_a_per_use_case_criterion_pages_only_what_it_matches(
    sims: SimPair,
    make_service: MakeService,
    state_db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rules = write(tmp_path, RULES)
    svc = started(make_service, sims, IXM_RULES_FILE=rules)
    p1 = sims.ivanti.create_incident(Priority="1", OwnerTeam=NET, Category="Hardware")
    p2_net = sims.ivanti.create_incident(Priority="2", OwnerTeam=NET, Category="Network")
    p2_hw = sims.ivanti.create_incident(Priority="2", OwnerTeam=NET, Category="Hardware")
    cycle(svc, sims)
    numbers = {p1["IncidentNumber"], p2_net["IncidentNumber"]}
    assert {n for n, _ in created_types(sims)} == {str(n) for n in numbers}
    # a reassignment to the Service Desk is held back, one to the DB team pages
    sims.ivanti.edit_incident(p1["RecId"], OwnerTeam=DESK)
    sims.ivanti.edit_incident(p2_net["RecId"], OwnerTeam=DB)
    cycle(svc, sims)
    assert created_types(sims)[2:] == [(str(p2_net["IncidentNumber"]), "Reassigned")]

    # explain names the rule behind each decision
    cli_env(sims, state_db_url, monkeypatch, IXM_RULES_FILE=rules)
    capsys.readouterr()
    assert main(["explain", str(p2_hw["IncidentNumber"]), *ENV_FILE]) == 0
    out = capsys.readouterr().out
    assert "New Incident not sent: rule use_cases.new_incident (rules file line 2) when" in out
    assert main(["explain", str(p2_net["IncidentNumber"]), *ENV_FILE]) == 0
    out = capsys.readouterr().out
    assert "rule use_cases.new_incident (rules file line 2) when `Priority eq '1' or" in out
    assert "rule use_cases.reassigned (rules file line 6) when `OwnerTeam ne 'Service Desk'`" in (
        out
    )

    # rules test: the stored snapshot judged under the file
    assert main(["rules", "test", str(p1["IncidentNumber"]), *ENV_FILE]) == 0
    out = capsys.readouterr().out
    assert "critical: yes (by IXM_CRITICAL_PRIORITIES 1,2)" in out
    assert "Reassigned         on (use_cases.reassigned, line 6), when `OwnerTeam ne " in out
    assert "does NOT match" in out
    assert "its last change, judged again: nothing fires: Reassigned not sent" in out
    assert main(["rules", "test", str(p1["IncidentNumber"]), "--json", *ENV_FILE]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["as_new"]["fires"] == "New Incident"
    assert data["last_change"]["held"] == "Reassigned"

    # --dry-run shows what fires and what the rules hold back, with the rule
    new_p1 = sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)
    sims.ivanti.edit_incident(p2_net["RecId"], OwnerTeam=DESK)  # held back
    # rules test --live: Ivanti's record now against the stored one (what the next poll does)
    assert main(["rules", "test", str(p2_net["IncidentNumber"]), "--live", *ENV_FILE]) == 0
    out = capsys.readouterr().out
    assert "(as read from Ivanti now)" in out
    assert "against the stored snapshot (the next poll): nothing fires: Reassigned not sent" in out
    assert main(["once", "--dry-run", *ENV_FILE]) == 0
    out = capsys.readouterr().out
    assert f"transition {'New Incident':<18} INC {new_p1['IncidentNumber']}" in out
    assert f"held back  Reassigned         INC {p2_net['IncidentNumber']}" in out
    assert "rule use_cases.reassigned (rules file line 6) when" in out


@pytest.mark.parametrize("mode", ["workflow", "direct"])
def test_the_team_map_routes_to_the_xmatters_group_in_both_modes(
    sims: SimPair, make_service: MakeService, tmp_path: Path, mode: str
) -> None:
    # The simulators know the same three teams on both sides, so the map crosses them: the
    # Database Team is paged as the xMatters group "Network Operations", any other team
    # (here Network Operations itself) as the default "Service Desk".
    rules = write(
        tmp_path,
        '[teams]\ndefault = "Service Desk"\n[teams.groups]\n"database  team" = "Network Operations"\n',
    )
    svc = started(make_service, sims, mode=mode, IXM_RULES_FILE=rules)
    emea = sims.ivanti.create_incident(Priority="1", OwnerTeam=DB)
    other = sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)
    cycle(svc, sims)
    cycle(svc, sims)  # the direct mode's events are confirmed on the next delivery

    def group_of(rec_id: str) -> list[str]:
        (event,) = sims.xmatters.events(rec_id)
        return [r["targetName"] for r in event["recipients"]["data"]]

    assert group_of(emea["RecId"]) == ["Network Operations"]
    assert group_of(other["RecId"]) == ["Service Desk"]
    if mode == "workflow":  # the workflow targets the group the payload's OwnerTeam names
        teams = {t["payload"]["RecId"]: t["payload"]["OwnerTeam"] for t in sims.xmatters.triggers()}
        assert teams == {emea["RecId"]: "Network Operations", other["RecId"]: "Service Desk"}
    # ends reach the same events
    sims.ivanti.edit_incident(emea["RecId"], Status="Resolved")
    cycle(svc, sims)
    cycle(svc, sims)
    assert sims.xmatters.live_events(emea["RecId"]) == []
    assert len(sims.xmatters.live_events(other["RecId"])) == 1


def test_changing_the_rules_across_a_restart_pages_nobody_for_what_is_open(
    sims: SimPair, make_service: MakeService, tmp_path: Path
) -> None:
    """Rules that newly match open incidents do not page them (no storm); they apply to
    the changes seen from then on."""
    path = tmp_path / "rules.toml"
    path.write_text("critical = \"Priority eq '1'\"\n")
    svc = started(make_service, sims, IXM_RULES_FILE=str(path))
    p2s = [sims.ivanti.create_incident(Priority="2", OwnerTeam=NET) for _ in range(5)]
    cycle(svc, sims)
    assert created_types(sims) == []  # P2 is not critical under these rules
    svc.close()

    # the operator widens the rules and restarts the daemon
    path.write_text(
        "critical = \"Priority eq '1' or Priority eq '2'\"\n"
        "[use_cases.reassigned]\nwhen = \"OwnerTeam ne 'Service Desk'\"\n"
    )
    svc = make_service(IXM_RULES_FILE=str(path), IXM_RECONCILE_INTERVAL="1")
    sims.ivanti.edit_incident(p2s[0]["RecId"], Subject="still looking")  # no transition
    cycle(svc, sims)
    svc.reconcile_job()  # re-reads every open incident: still nothing
    cycle(svc, sims)
    assert created_types(sims) == []
    # new changes are judged by the new rules
    sims.ivanti.edit_incident(p2s[1]["RecId"], OwnerTeam=DB)
    sims.ivanti.edit_incident(p2s[2]["RecId"], OwnerTeam=DESK)
    fresh = sims.ivanti.create_incident(Priority="2", OwnerTeam=NET)
    cycle(svc, sims)
    assert sorted(created_types(sims)) == sorted(
        [
            (str(p2s[1]["IncidentNumber"]), "Reassigned"),
            (str(fresh["IncidentNumber"]), "New Incident"),
        ]
    )


def test_rules_check_reports_every_problem_with_its_line_and_start_refuses(
    sims: SimPair,
    state_db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = write(
        tmp_path,
        "[use_cases.new_incident]\n"
        "when = \"Priority eq '1' and Categry eq 'Network'\"\n"
        "[use_cases.reasigned]\n"
        "enabled = false\n",
    )
    cli_env(sims, state_db_url, monkeypatch, IXM_RULES_FILE=bad)
    capsys.readouterr()
    assert main(["rules", "check", *ENV_FILE]) == 78
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"{bad}:2: use_cases.new_incident.when = ")
    assert "did you mean 'Category'?" in err[0]
    assert err[1] == f"{bad}:3: unknown use case 'reasigned'; did you mean 'reassigned'?"
    assert err[2] == "2 problems; nothing starts with this file"
    # nothing starts with it: one line per problem, exit 78
    assert main(["once", *ENV_FILE]) == 78
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"configuration error: IXM_RULES_FILE {bad} line 2: ")
    assert len([e for e in err if e.startswith("configuration error")]) == 2
    good = write(tmp_path, RULES, "good.toml")
    assert main(["rules", "check", good, *ENV_FILE]) == 0
    out = capsys.readouterr().out
    assert f"{good}: ok" in out
    assert "team 'Network Ops (EMEA)' -> xMatters group 'Network Operations'" in out


def test_a_reload_applies_new_rules_to_new_changes_only_and_a_broken_file_is_refused(
    sims: SimPair, make_service: MakeService, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGHUP (systemctl reload) swaps the rules in the running daemon: no storm for what
    the new rules newly match; a broken file keeps the rules in use."""
    path = tmp_path / "rules.toml"
    path.write_text("critical = \"Priority eq '1'\"\n")
    svc = started(make_service, sims, IXM_RULES_FILE=str(path))
    open_p2 = [sims.ivanti.create_incident(Priority="2", OwnerTeam=NET) for _ in range(3)]
    cycle(svc, sims)
    path.write_text('critical = "Priority le 2"\n')
    assert svc.reload_rules()
    for inc in open_p2:
        sims.ivanti.edit_incident(inc["RecId"], Subject="edited after the reload")
    cycle(svc, sims)
    assert created_types(sims) == []
    fresh = sims.ivanti.create_incident(Priority="2", OwnerTeam=NET)
    cycle(svc, sims)
    assert created_types(sims) == [(str(fresh["IncidentNumber"]), "New Incident")]

    path.write_text('critical = "Priority eq"\n')
    assert not svc.reload_rules()
    assert "reload refused: the rules file is broken" in caplog.text
    another = sims.ivanti.create_incident(Priority="2", OwnerTeam=NET)
    cycle(svc, sims)  # still the rules from before: P2 is critical
    assert created_types(sims)[-1] == (str(another["IncidentNumber"]), "New Incident")


def test_a_window_holds_pages_then_releases_what_is_still_open_and_critical_once(
    sims: SimPair,
    make_service: MakeService,
    state_db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    now = sims.clock.now()
    start, end = now - timedelta(minutes=1), now + timedelta(minutes=10)
    rules = write(
        tmp_path,
        "[[windows]]\n"
        'name = "core-switch upgrade"\n'
        f'teams = ["{NET}"]\n'
        f"start = {start:%Y-%m-%dT%H:%M:%S}Z\n"
        f"end = {end:%Y-%m-%dT%H:%M:%S}Z\n",
    )
    svc = started(make_service, sims, IXM_RULES_FILE=rules)
    kept = sims.ivanti.create_incident(Priority="1", OwnerTeam=NET, Subject="switch down")
    fixed = sims.ivanti.create_incident(Priority="2", OwnerTeam=NET)
    lowered = sims.ivanti.create_incident(Priority="1", OwnerTeam=NET)
    elsewhere = sims.ivanti.create_incident(Priority="1", OwnerTeam=DB)
    cycle(svc, sims)
    # only the team outside the window is paged
    assert created_types(sims) == [(str(elsewhere["IncidentNumber"]), "New Incident")]
    # during the window: one is resolved, one lowered, one reassigned within the team
    sims.ivanti.edit_incident(fixed["RecId"], Status="Resolved")
    sims.ivanti.edit_incident(lowered["RecId"], Priority="4")
    cycle(svc, sims)
    assert len(created_types(sims)) == 1
    assert sims.xmatters.triggers()[1:] == []  # nothing to terminate either: nothing paged

    cli_env(sims, state_db_url, monkeypatch, IXM_RULES_FILE=rules)
    capsys.readouterr()
    assert main(["explain", str(kept["IncidentNumber"]), *ENV_FILE]) == 0
    until = f"{end:%Y-%m-%d %H:%M} UTC"
    assert f"New Incident held by window 'core-switch upgrade' until {until}" in (
        capsys.readouterr().out
    )

    sims.clock.advance(10 * 60)  # the window closes
    cycle(svc, sims)
    assert created_types(sims)[1:] == [(str(kept["IncidentNumber"]), "New Incident")]
    for _ in range(3):  # level-triggered, once: later polls page nobody again
        cycle(svc, sims)
    assert len(created_types(sims)) == 2
    with svc.store.unit() as u:
        outcomes = {
            h.incident_number: h.outcome
            for rec in (kept, fixed, lowered)
            for h in u.holds_for(rec["RecId"])
        }
    assert outcomes[kept["IncidentNumber"]].startswith("paged: action #")
    assert outcomes[fixed["IncidentNumber"]] == (
        "not paged: resolved during the window (Status Resolved)"
    )
    assert outcomes[lowered["IncidentNumber"]] == "not paged: no longer critical (Priority 4)"
    assert main(["explain", str(kept["IncidentNumber"]), *ENV_FILE]) == 0
    out = capsys.readouterr().out
    assert "window 'core-switch upgrade' closed" in out
    assert "still open and critical, paging the New Incident held" in out


def test_sighup_reloads_the_rules_of_the_running_service(
    live_sims: SimPair, tmp_path: Path, state_db_url: str
) -> None:
    """`systemctl reload` (ExecReload sends SIGHUP) to the real process: the new rules
    apply to new changes, nothing already open is paged, the daemon keeps running."""
    import signal

    from tests.e2e.daemons import Daemon, StateDB, daemon_env, started, wait_until

    sims = live_sims
    path = tmp_path / "rules.toml"
    path.write_text("critical = \"Priority eq '1'\"\n")
    d = Daemon(daemon_env(sims, state_db_url, IXM_RULES_FILE=str(path)), tmp_path / "d.log")
    db = StateDB(state_db_url)
    try:
        started(d, db)
        open_p2 = sims.ivanti.create_incident(Priority="2", OwnerTeam=NET)
        wait_until(lambda: db.changes(open_p2["RecId"]) == 1, what="the P2 seen")
        path.write_text('critical = "Priority le 2"\n')
        assert d.proc is not None
        d.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "rules file reloaded" in d.log() or not d.alive(), what="the reload")
        assert d.alive(), d.log()
        fresh = sims.ivanti.create_incident(Priority="2", OwnerTeam=NET)
        wait_until(lambda: len(created_types(sims)) >= 1, what="the new P2 paged")
        sims.ivanti.edit_incident(open_p2["RecId"], Subject="edited after the reload")
        wait_until(lambda: db.changes(open_p2["RecId"]) == 2, what="the edit seen")
        assert created_types(sims) == [(str(fresh["IncidentNumber"]), "New Incident")]
        assert d.terminate() == 0, d.log()
    finally:
        d.cleanup()
        db.close()


def test_page_open_pages_what_new_rules_newly_match_only_when_asked(
    sims: SimPair,
    make_service: MakeService,
    state_db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "rules.toml"
    path.write_text("critical = \"Priority eq '1'\"\n")
    svc = started(make_service, sims, IXM_RULES_FILE=str(path))
    p2 = sims.ivanti.create_incident(Priority="2", OwnerTeam=NET)
    p3 = sims.ivanti.create_incident(Priority="3", OwnerTeam=NET)
    cycle(svc, sims)
    path.write_text('critical = "Priority le 2"\n')
    svc.close()
    cli_env(sims, state_db_url, monkeypatch, IXM_RULES_FILE=str(path))
    monkeypatch.setattr("daemon.rules_cli.utcnow", sims.clock.now)  # the daemon's clock
    capsys.readouterr()
    assert main(["rules", "page-open", *ENV_FILE]) == 0
    out = capsys.readouterr().out
    assert f"would page 1 open incident not paging:\n  INC {p2['IncidentNumber']}: new" in out
    svc = make_service(IXM_RULES_FILE=str(path))
    cycle(svc, sims)
    assert created_types(sims) == []  # the restart alone pages nobody
    assert main(["rules", "page-open", "--apply", *ENV_FILE]) == 0
    assert "queued a page for 1 open incident" in capsys.readouterr().out
    cycle(svc, sims)
    cycle(svc, sims)
    assert created_types(sims) == [(str(p2["IncidentNumber"]), "New Incident")]
    assert main(["rules", "page-open", *ENV_FILE]) == 0  # once: it is paging now
    assert "would page 0 open incidents" in capsys.readouterr().out
    assert p3  # never critical: never listed
