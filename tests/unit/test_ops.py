"""The operations CLI against a state DB made by actually running the daemon on the simulators.

Every command is invoked in-process through ``daemon.cli.main`` with the environment
pointing at that DB, as a person would run it next to the service.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import inspect, make_url, text

from daemon.cli import main
from daemon.config import load_settings
from daemon.ops import render
from daemon.ops.check import check_trigger
from daemon.service import Service
from daemon.simulators.harness import SimPair
from daemon.store import MIGRATIONS_DIR, Store, current_revision, head_revision, make_engine
from tests.conftest import MakeService, is_sqlite

NET = "Network Operations"
DB = "Database Team"
VIEWS = ("v_incident_timeline", "v_pending_actions", "v_dead_letters", "v_live_events")


# --------------------------------------------------------------------------- fixtures


def _sqlite_file(url: str) -> Path:
    return Path(make_url(url).database or "")


def _created_nothing(url: str) -> bool:
    """No SQLite file appeared, or the PostgreSQL database is still without a schema."""
    if is_sqlite(url):
        return not _sqlite_file(url).exists()
    engine = make_engine(url)
    try:
        return inspect(engine).get_table_names() == []
    finally:
        engine.dispose()


@dataclass
class Story:
    """A DB holding one incident of each kind an operator asks about."""

    svc: Service
    url: str  # the state DB
    baseline: dict[str, Any]  # existed at first start: recorded, nobody paged
    resolved: dict[str, Any]  # paged, answered "Assign to me", resolved (event terminated)
    dead: dict[str, Any]  # its page was refused (400): dead letter
    pending: dict[str, Any]  # its page keeps failing (503): pending, retrying
    dead_action: int
    pending_action: int


def _env(sims: SimPair, db: str) -> dict[str, str]:
    env = sims.daemon_env(db)
    env["XMATTERS_RATE_LIMIT"] = "1000"
    return env


@pytest.fixture
def cli_env(
    sims: SimPair, state_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """The process environment of an operator's shell, and ``now`` on the simulated clock."""
    for name in list(os.environ):
        if name.startswith(("IVANTI_", "XMATTERS_", "IXM_")):
            monkeypatch.delenv(name)
    env = _env(sims, state_db_url)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(render, "utcnow", sims.clock.now)
    yield env


def _cycle(svc: Service, sims: SimPair) -> None:
    report = svc.cycle()
    assert report.ok, report.error
    sims.clock.advance(30)


@pytest.fixture
def story(sims: SimPair, make_service: MakeService, cli_env: dict[str, str]) -> Story:
    svc = make_service()
    baseline = sims.ivanti.create_incident(Priority="1", OwnerTeam=NET, Subject="old outage")
    _cycle(svc, sims)  # baseline
    resolved = sims.ivanti.create_incident(Priority="1", OwnerTeam=NET, Subject="core down")
    _cycle(svc, sims)  # page
    _cycle(svc, sims)  # event discovered
    event = sims.xmatters.events(resolved["RecId"])[0]
    sims.xmatters.respond(event["id"], person="jsmith", response="Assign to me", comment="on it")
    _cycle(svc, sims)  # response -> note
    _cycle(svc, sims)  # own write seen
    sims.ivanti.edit_incident(resolved["RecId"], Status="Resolved")
    _cycle(svc, sims)  # terminate
    sims.xmatters.faults.inject("status", "/triggers", method="POST", status=400, times=1)
    dead = sims.ivanti.create_incident(Priority="2", OwnerTeam=NET, Subject="refused")
    _cycle(svc, sims)
    sims.xmatters.faults.inject("status", "/triggers", method="POST", status=503, times=0)
    pending = sims.ivanti.create_incident(Priority="1", OwnerTeam=DB, Subject="flaky")
    _cycle(svc, sims)
    with svc.store.unit() as u:
        dead_ids = [a.id for a in u.outbox(["dead"])]
        pending_ids = [a.id for a in u.outbox(["pending"])]
    assert len(dead_ids) == 1 and len(pending_ids) == 1
    return Story(
        svc=svc,
        url=cli_env["IXM_STATE_DB"],
        baseline=baseline,
        resolved=resolved,
        dead=dead,
        pending=pending,
        dead_action=dead_ids[0],
        pending_action=pending_ids[0],
    )


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["--env-file", os.devnull, *argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code, out, _ = run(capsys, *argv, "--json")
    return code, json.loads(out)


def action_state(story: Story, action_id: int) -> tuple[str, str | None]:
    with story.svc.store.unit() as u:
        a = u.action(action_id)
        assert a is not None
        return a.state, a.outcome


# --------------------------------------------------------------------------- status


def test_status_before_any_db_says_how_to_create_it(
    cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    url = cli_env["IXM_STATE_DB"]
    code, out, err = run(capsys, "status")
    assert code == 1
    assert out == ""
    # SQLite: no file yet; PostgreSQL: the database is made by its admin, empty
    assert ("no state DB" if is_sqlite(url) else "has no schema yet") in err
    assert "ivanti-xmatters db upgrade" in err
    code, data = run_json(capsys, "status")
    assert code == 1 and data["ok"] is False and "db upgrade" in data["error"]
    assert _created_nothing(url)  # looking must not create an empty DB
    if is_sqlite(url):
        _sqlite_file(url).touch()  # e.g. created by hand: there, but without a schema
    code, out, err = run(capsys, "incidents")
    assert code == 1 and "has no schema yet" in err and "db upgrade" in err


def test_status_shows_health(story: Story, capsys: pytest.CaptureFixture[str]) -> None:
    code, data = run_json(capsys, "status", "--cycles", "3")
    assert code == 0
    now = story.svc.now()
    last_poll = now - timedelta(seconds=30)
    assert data["last_ok_poll"] == render.iso(last_poll)
    assert data["last_ok_poll_age_s"] == 30 and data["stale"] is False
    assert data["watermark"] is not None and data["lag_s"] > 0
    assert data["schema"]["revision"] == head_revision() and data["schema"]["up_to_date"]
    assert [c["kind"] for c in data["cycles"]] == ["poll"] * 3
    assert data["cycles"][0]["transitions"] == 1 and data["cycles"][0]["ok"] is True
    assert data["outbox"]["dead"] == 1 and data["outbox"]["pending"] == 1
    assert data["dead_letters"] == 1
    assert data["live_events"] == 0
    assert data["incidents"] == {"total": 4, "open": 3, "alerting": 2}
    xm = data["last_errors"]["xmatters"]
    assert xm["action_id"] == story.pending_action and xm["http_status"] == 503
    assert data["last_errors"]["ivanti"] is None

    code, out, _ = run(capsys, "status")
    assert code == 0
    assert f"last good poll  {render.iso(last_poll)} (30s ago)" in out
    assert "dead 1" in out and "pending 1" in out and "outbox --dead" in out
    assert "HTTP 503" in out
    assert "recent cycles:" in out and "baseline" in out


def test_status_flags_a_stale_daemon_and_ivanti_errors(
    story: Story, sims: SimPair, capsys: pytest.CaptureFixture[str]
) -> None:
    sims.ivanti.faults.inject("status", "/api/odata", status=500, times=0)
    assert not story.svc.cycle().ok
    sims.clock.advance(3600)
    code, data = run_json(capsys, "status")
    assert code == 0 and data["stale"] is True
    err = data["last_errors"]["ivanti"]
    assert err["kind"] == "poll" and err["recovered"] is False and "500" in err["error"]
    code, out, _ = run(capsys, "status")
    assert "STALE" in out and "NOT recovered" in out


# --------------------------------------------------------------------------- incidents


def test_incidents_lists_and_filters(story: Story, capsys: pytest.CaptureFixture[str]) -> None:
    code, items = run_json(capsys, "incidents")
    assert code == 0
    numbers = [i["number"] for i in items]
    assert numbers == sorted(numbers, reverse=True) and len(numbers) == 4
    by_number = {i["number"]: i for i in items}
    base = by_number[story.baseline["IncidentNumber"]]
    assert base["baseline"] is True and base["alerting"] is False
    assert "baseline" in base["last_change"]["reason"] and base["last_change"]["transition"] is None
    assert by_number[story.resolved["IncidentNumber"]]["last_change"]["transition"] == "Resolved"

    _, alerting = run_json(capsys, "incidents", "--state", "alerting")
    assert {i["number"] for i in alerting} == {
        story.dead["IncidentNumber"],
        story.pending["IncidentNumber"],
    }
    _, resolved = run_json(capsys, "incidents", "--state", "resolved")
    assert [i["rec_id"] for i in resolved] == [story.resolved["RecId"]]
    _, team = run_json(capsys, "incidents", "--team", DB.upper())
    assert [i["number"] for i in team] == [story.pending["IncidentNumber"]]
    _, p2 = run_json(capsys, "incidents", "--priority", "2")
    assert [i["number"] for i in p2] == [story.dead["IncidentNumber"]]
    _, limited = run_json(capsys, "incidents", "--limit", "1")
    assert len(limited) == 1

    code, out, _ = run(capsys, "incidents")
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["NUMBER", "RECID", "STATUS"]
    assert any(
        str(story.baseline["IncidentNumber"]) in ln and "no transition" in ln for ln in lines
    )
    code, out, _ = run(capsys, "incidents", "--team", "nobody")
    assert code == 0 and "no tracked incident matches" in out


# --------------------------------------------------------------------------- explain


def test_explain_tells_the_story_of_a_paged_and_resolved_incident(
    story: Story, capsys: pytest.CaptureFixture[str]
) -> None:
    code, data = run_json(capsys, "explain", str(story.resolved["IncidentNumber"]))
    assert code == 0
    assert data["incident"]["rec_id"] == story.resolved["RecId"]
    timeline = data["timeline"]
    kinds = [e["kind"] for e in timeline]
    assert kinds[0] == "change" and timeline[0]["transition"] == "New Incident"
    for kind in ("action:page", "attempt", "xm_event", "audit", "action:note", "action:terminate"):
        assert kind in kinds, kind
    assert kinds.index("action:page") < kinds.index("audit") < kinds.index("action:terminate")
    assert kinds.index("action:terminate") < kinds.index("xm_event_terminated")
    times = [e["at"] for e in timeline]
    assert times == sorted(times)
    response = next(
        e for e in timeline if e["kind"] == "audit" and e["type"] == "RESPONSE_RECEIVED"
    )
    note = next(e for e in timeline if e.get("action_id") == response["note_action_id"])
    assert note["kind"] == "action:note" and note["state"] == "done"
    own = [e for e in timeline if e["kind"] == "change" and "own write-back" in e["reason"]]
    assert own and own[0]["transition"] is None
    resolved = [e for e in timeline if e["kind"] == "change" and e["transition"] == "Resolved"]
    assert resolved and "Logged -> Resolved" in resolved[0]["detail"]

    code, out, _ = run(capsys, "explain", story.resolved["RecId"].lower())
    assert code == 0
    assert out.startswith(
        f"Incident {story.resolved['IncidentNumber']}  RecId {story.resolved['RecId']}"
    )
    assert "transition New Incident" in out and "transition Resolved" in out
    assert "try 1: ok" in out and "jsmith responded" in out and "-> note action #" in out
    assert "why nothing fired: the daemon's own write-back" in out
    # who made each attempt: this process here (on replicas, the lease holder)
    assert f"by {socket.gethostname()} pid {os.getpid()}" in out


def test_explain_a_baseline_incident_says_why_nobody_was_paged(
    story: Story, capsys: pytest.CaptureFixture[str]
) -> None:
    code, data = run_json(capsys, "explain", story.baseline["RecId"])
    assert code == 0
    assert [e["kind"] for e in data["timeline"]] == ["change"]
    assert "baseline" in data["timeline"][0]["reason"]
    code, out, _ = run(capsys, "explain", str(story.baseline["IncidentNumber"]))
    assert "nobody was paged" in out and "why nothing fired: baseline" in out


def test_explain_unknown_incident(story: Story, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "explain", "999999")
    assert code == 1 and out == ""
    assert "'999999' is not tracked" in err
    code, data = run_json(capsys, "explain", "NOPE")
    assert code == 1 and "not tracked" in data["error"]


# --------------------------------------------------------------------------- outbox


def test_outbox_lists_actions(story: Story, capsys: pytest.CaptureFixture[str]) -> None:
    code, items = run_json(capsys, "outbox")
    assert code == 0
    ids = [i["id"] for i in items]
    assert ids == sorted(ids, reverse=True)
    states = {i["id"]: i["state"] for i in items}
    assert states[story.dead_action] == "dead" and states[story.pending_action] == "pending"
    pending = next(i for i in items if i["id"] == story.pending_action)
    assert pending["next_attempt"] is not None and "503" in pending["last_error"]

    _, dead = run_json(capsys, "outbox", "--dead")
    assert [i["id"] for i in dead] == [story.dead_action] and "400" in dead[0]["last_error"]
    _, only = run_json(capsys, "outbox", "--state", "pending")
    assert [i["id"] for i in only] == [story.pending_action]
    _, two = run_json(capsys, "outbox", "--limit", "2")
    assert len(two) == 2

    code, out, _ = run(capsys, "outbox", "--dead")
    header, row = out.splitlines()
    assert header.split()[:4] == ["ID", "INCIDENT", "KIND", "STATE"]
    assert row.split()[:4] == [
        str(story.dead_action),
        str(story.dead["IncidentNumber"]),
        "page",
        "dead",
    ]
    assert "HTTP 400" in row


# --------------------------------------------------------------------------- retry / skip


def test_retry_requeues_dead_actions_only(
    story: Story, sims: SimPair, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "retry", str(story.pending_action))
    assert code == 1 and "is pending, not dead" in err
    code, out, err = run(capsys, "retry", str(story.dead_action), "424242")
    assert code == 1 and "no outbox action #424242" in err
    assert action_state(story, story.dead_action)[0] == "dead"  # refused: nothing changed
    code, out, err = run(capsys, "retry")
    assert code == 2

    code, out, _ = run(capsys, "retry", str(story.dead_action))
    assert code == 0
    assert (
        f"requeued action #{story.dead_action} page for incident {story.dead['IncidentNumber']}"
        in out
    )
    assert action_state(story, story.dead_action)[0] == "pending"
    sims.xmatters.faults.clear()
    story.svc.cycle()
    assert action_state(story, story.dead_action)[0] == "done"  # the daemon picked it up


def test_retry_all_dead_as_json(story: Story, capsys: pytest.CaptureFixture[str]) -> None:
    code, data = run_json(capsys, "retry", "--all-dead")
    assert code == 0 and [d["id"] for d in data["requeued"]] == [story.dead_action]
    code, out, _ = run(capsys, "retry", "--all-dead")
    assert code == 0 and "nothing to requeue" in out


def test_skip_records_who_and_why(
    story: Story, sims: SimPair, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "skip", str(story.pending_action), "--reason", "paged by phone")
    assert code == 0 and f"skipped action #{story.pending_action} page" in out
    state, outcome = action_state(story, story.pending_action)
    assert state == "skipped" and outcome == "skipped by operator: paged by phone"
    with story.svc.store.unit() as u:
        action = u.action(story.pending_action)
        assert action is not None and action.done_at == story.svc.now()
    triggers = len(sims.xmatters.triggers())
    sims.xmatters.faults.clear()
    story.svc.cycle()
    assert len(sims.xmatters.triggers()) == triggers  # the daemon no longer sends it

    code, out, err = run(capsys, "skip", str(story.pending_action), "--reason", "again")
    assert code == 1 and "is skipped: only pending or dead" in err
    code, data = run_json(capsys, "skip", str(story.dead_action), "--reason", "dup")
    assert code == 0 and data["skipped"]["state"] == "skipped"
    assert data["skipped"]["outcome"] == "skipped by operator: dup"
    code, out, err = run(capsys, "skip", "424242", "--reason", "x")
    assert code == 1 and "no outbox action #424242" in err


# --------------------------------------------------------------------------- check


def test_check_passes_against_the_simulators_and_creates_nothing(
    sims: SimPair, cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "check")
    assert code == 0, out
    assert "effective settings (secrets masked):" in out
    assert cli_env["IVANTI_API_KEY"] not in out and cli_env["XMATTERS_PASSWORD"] not in out
    for name in (
        "config",
        "state DB",
        "write-back",
        "ivanti",
        "ivanti clock",
        "xmatters REST",
        "xmatters trigger",
    ):
        assert any(
            line.startswith("OK") and f"  {name}  " in f"{line}  " for line in out.splitlines()
        ), name
    assert out.rstrip().endswith("checks passed")
    assert sims.xmatters.triggers() == []
    assert sims.xmatters.events() == []
    assert _created_nothing(cli_env["IXM_STATE_DB"])

    code, data = run_json(capsys, "check", "--quiet")
    assert code == 0 and data["ok"] is True and "settings" not in data
    assert {c["status"] for c in data["checks"]} <= {"OK", "SKIP"}


def test_check_names_a_rejected_ivanti_key(
    sims: SimPair,
    cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("IVANTI_API_KEY", "WRONGKEY0000000000000000000000ZZ")
    code, out, _ = run(capsys, "check", "--quiet")
    assert code == 1
    line = next(ln for ln in out.splitlines() if "  ivanti  " in f"{ln}  ")
    assert line.startswith("FAIL") and "IVANTI_API_KEY was rejected (401" in line
    assert "WRONGKEY" not in out
    code, data = run_json(capsys, "check", "--quiet")
    assert data["ok"] is False
    assert next(c for c in data["checks"] if c["name"] == "ivanti")["status"] == "FAIL"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("problem", ["nothing listening", "not a trigger path"])
def test_check_fails_on_a_wrong_trigger_url(
    problem: str,
    sims: SimPair,
    cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if problem == "nothing listening":
        url = f"http://127.0.0.1:{_free_port()}/api/integration/1/functions/{uuid.uuid4()}/triggers"
        expected = "cannot reach XMATTERS_TRIGGER_URL"
    else:
        url = sims.xmatters.url + "/api/xm/1/events"
        expected = "does not look like an xMatters trigger URL"
    monkeypatch.setenv("XMATTERS_TRIGGER_URL", url)
    monkeypatch.setenv("XMATTERS_FORM_TRIGGER_URL", url)
    code, out, _ = run(capsys, "check", "--quiet")
    assert code == 1
    line = next(ln for ln in out.splitlines() if "xmatters trigger" in ln)
    assert line.startswith("FAIL") and expected in line
    assert url not in out  # the trigger URL is a secret (it may carry an apiKey)


def test_check_reports_clock_skew(
    sims: SimPair,
    cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(render, "utcnow", lambda: sims.clock.now() + timedelta(minutes=5))
    code, data = run_json(capsys, "check", "--quiet")
    assert code == 1
    clocks = {c["name"]: c for c in data["checks"] if c["name"].endswith("clock")}
    assert set(clocks) == {"ivanti clock", "xmatters clock"}
    assert all(c["status"] == "FAIL" and "5m ahead of" in c["message"] for c in clocks.values())


def test_check_config_error_exits_78(
    cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("IVANTI_BASE_URL")
    code, out, _ = run(capsys, "check")
    assert code == 78
    assert out.startswith("FAIL") and "IVANTI_BASE_URL" in out
    code, data = run_json(capsys, "check")
    assert code == 78 and "IVANTI_BASE_URL" in data["config_error"]


def _trigger_settings() -> Any:
    base = "https://acme.xmatters.com"
    env = {
        "IVANTI_BASE_URL": "https://acme.saasit.com",
        "IVANTI_API_KEY": "K" * 32,
        "XMATTERS_BASE_URL": base,
        "XMATTERS_USERNAME": "rest",
        "XMATTERS_PASSWORD": "pw",
        "XMATTERS_TRIGGER_URL": f"{base}/api/integration/1/functions/{uuid.uuid4()}/triggers",
        "IXM_STATE_DB": "sqlite://",
    }
    return load_settings(env, env_file=os.devnull)


@pytest.mark.parametrize(
    ("real", "unknown", "status", "words"),
    [
        (405, 404, "OK", "trigger found"),
        (404, 405, "FAIL", "was not found (404"),
        (404, 404, "OK", "cannot be checked without sending a trigger"),
        (502, 404, "FAIL", "server-side problem"),
    ],
)
def test_trigger_probe_compares_with_an_unknown_trigger(
    real: int, unknown: int, status: str, words: str
) -> None:
    settings = _trigger_settings()
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        mine = request.url.path == httpx.URL(settings.xmatters.trigger_url).path
        return httpx.Response(real if mine else unknown)

    result, _ = check_trigger(
        "xmatters trigger",
        "XMATTERS_TRIGGER_URL",
        settings.xmatters.trigger_url,
        settings,
        httpx.MockTransport(answer),
    )
    assert (result.status, words in result.message) == (status, True), result.message
    assert [r.method for r in seen] == ["GET", "GET"]  # never a POST: nothing is created
    assert all("authorization" not in r.headers for r in seen)


# --------------------------------------------------------------------------- SQL views


def _alembic(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url)
    return cfg


def _views(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_view_names())
    finally:
        engine.dispose()


def test_views_migration_applies_to_an_existing_0001_db(state_db_url: str) -> None:
    url = state_db_url
    engine = make_engine(url)
    cfg = _alembic(url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    assert current_revision(engine) == "0001" and _views(url) == set()
    Store(url).close()  # what the daemon does at start
    assert current_revision(engine) == head_revision() and _views(url) == set(VIEWS)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0001")
    assert _views(url) == set()
    engine.dispose()


def test_db_upgrade_command_adds_the_views(
    cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    url = cli_env["IXM_STATE_DB"]
    engine = make_engine(url)
    cfg = _alembic(url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    engine.dispose()
    code, out, _ = run(capsys, "db", "upgrade")
    assert code == 0 and f"0001 -> {head_revision()}" in out
    assert _views(url) == set(VIEWS)


def test_views_answer_questions_in_plain_sql(story: Story) -> None:
    """What a person types into sqlite3 or psql (plain SQL, through the DB URL)."""
    engine = make_engine(story.url)
    with engine.connect() as conn:

        def rows(sql: str, **params: Any) -> list[tuple[Any, ...]]:
            return [tuple(r) for r in conn.execute(text(sql), params)]

        timeline = rows(
            "SELECT at, kind, what, detail FROM v_incident_timeline WHERE incident_number = :n",
            n=story.resolved["IncidentNumber"],
        )
        pending = rows("SELECT id, incident_number, attempts FROM v_pending_actions")
        dead = rows("SELECT id, dead_reason, last_http_status FROM v_dead_letters")
        live = rows("SELECT event_id FROM v_live_events")
        base = rows(
            "SELECT kind, what, detail FROM v_incident_timeline WHERE rec_id = :r",
            r=story.baseline["RecId"],
        )
    engine.dispose()
    kinds = [k for _, k, _, _ in timeline]
    assert [at for at, *_ in timeline] == sorted(at for at, *_ in timeline)
    assert kinds[0] == "change" and timeline[0][2] == "New Incident"
    for kind in (
        "action:page",
        "attempt",
        "xm_event",
        "xm_event_terminated",
        "audit",
        "action:terminate",
    ):
        assert kind in kinds, kind
    assert kinds.index("action:page") + 1 == kinds.index("attempt")
    assert pending == [(story.pending_action, story.pending["IncidentNumber"], 1)]
    assert [(d[0], d[2]) for d in dead] == [(story.dead_action, 400)] and "refused" in dead[0][1]
    assert live == []
    assert base[0][:2] == ("change", "no transition") and "baseline" in base[0][2]


# --------------------------------------------------------------------------- formatting


def test_table_aligns_and_truncates() -> None:
    text = render.table(["ID", "NAME"], [[7, "x" * 100], [12, "short\nline"]], max_width=10)
    lines = text.splitlines()
    assert lines[0] == "ID  NAME"
    assert lines[1] == " 7  xxxxxxxxx…"
    assert lines[2] == "12  short line"


def test_times_and_ages() -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 11, 27, 10, 0, 0, 500000, tzinfo=UTC)
    assert render.iso(now) == "2026-11-27T10:00:00Z"
    assert render.ago(now - timedelta(minutes=3), now) == "3m ago"
    assert render.ago(now - timedelta(hours=2, minutes=5), now) == "2h 5m ago"
    assert render.ago(now + timedelta(seconds=45), now) == "in 45s"
    assert render.ago(now, now) == "just now"
    assert render.when(None, now) == "never"
    assert render.when(now - timedelta(days=3, hours=4), now) == "2026-11-24T06:00:00Z (3d 4h ago)"


def test_check_says_a_trigger_only_setup_may_page_twice(
    sims: SimPair,
    cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in ("XMATTERS_BASE_URL", "XMATTERS_USERNAME", "XMATTERS_PASSWORD"):
        monkeypatch.delenv(name)
    monkeypatch.delenv("XMATTERS_FORM_TRIGGER_URL", raising=False)
    monkeypatch.setenv(
        "XMATTERS_TRIGGER_URL",
        f"{sims.xmatters.trigger_url}?apiKey={sims.xmatters.trigger_api_key}",
    )
    monkeypatch.setenv("IXM_WRITEBACK", "false")
    _code, out, _ = run(capsys, "check", "--quiet")
    line = next(ln for ln in out.splitlines() if "xmatters REST" in ln)
    assert line.startswith("SKIP") and "may page twice after a timeout" in line, out
