"""A seeded soak: random but reproducible cycles of edits, responses and faults,
checked after every cycle against an independent reference model.

The model does not call the daemon's code. At every successful poll it takes the
state Ivanti serves, compares it with the state it recorded at the previous
successful poll, and applies the use-case table itself (first sighting, into a
terminal class, reopened, priority band crossed, team changed while critical) to
say which triggers xMatters must receive: a create (``(RecId, use case)``), or a
``Terminate`` while the incident is paging. The daemon's own Owner/Status writes
("Assign to me") are, by design, not transitions: the model folds them into its
recorded state.

After every cycle each incident's triggers must be a prefix of the model's, in
order; every few cycles, and at the end, the outbox is drained and they must be
equal, with one live event per paging incident and none otherwise, every response
written back as exactly one note, and nothing suppressed by flood control.

The fault mix includes slow triggers, 401s and dropped answers; a seed also picks how
long the simulated workflow takes to make its event (0, 4 or 12 s after the 202), and
the model checks no Status is written to an incident it last saw ended (a late answer).

The seed comes from ``IXM_SOAK_SEED`` (or is random) and is in every failure
message. ``pytest tests/e2e/test_soak.py --soak [--soak-cycles N]`` runs the long
variant.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any

import pytest

from daemon.service import Service
from daemon.simulators import ivanti as ivanti_sim
from daemon.simulators.harness import SimPair
from tests.conftest import MakeService
from tests.e2e.test_faults import IVANTI_QUERY, IVANTI_RECORD, TRIGGERS, XM_EVENTS, pending

pytestmark = pytest.mark.e2e

CI_CYCLES = 60
TEAMS = ("Network Operations", "Database Team", "Service Desk")
MEMBERS = {
    "Network Operations": ("jsmith", "bwong"),
    "Database Team": ("apatel", "mgarcia"),
    "Service Desk": ("mgarcia", "lchen", "obrien"),
}
PEOPLE = ("jsmith", "bwong", "apatel", "mgarcia", "lchen", "obrien")
OPEN_STATUSES = ("Logged", "Active", "Waiting for Customer", "Waiting for 3rd Party")
TERMINAL = {"resolved": "resolved", "closed": "closed", "cancelled": "canceled"}
CREATES = {"New Incident", "Reassigned", "Reopened", "Priority Upgrade"}

# (simulator, path, method, fault kwargs) — each armed once, at a low rate per cycle
FAULTS: list[tuple[str, str, str | None, dict[str, Any]]] = [
    ("xmatters", TRIGGERS, None, {"kind": "status", "status": 503}),
    ("xmatters", TRIGGERS, None, {"kind": "status", "status": 429, "retry_after": 20}),
    ("xmatters", TRIGGERS, None, {"kind": "drop_after"}),
    ("xmatters", TRIGGERS, None, {"kind": "drop_before"}),
    ("xmatters", XM_EVENTS, "GET", {"kind": "status", "status": 503}),
    ("ivanti", IVANTI_QUERY, "GET", {"kind": "status", "status": 503}),
    ("ivanti", IVANTI_QUERY, "GET", {"kind": "status", "status": 429}),
    ("ivanti", IVANTI_QUERY, "GET", {"kind": "drop_after"}),
    ("ivanti", IVANTI_QUERY, "GET", {"kind": "malformed"}),
    ("ivanti", IVANTI_RECORD, "PATCH|PUT", {"kind": "status", "status": 503}),
    ("ivanti", IVANTI_RECORD, "PATCH|PUT", {"kind": "drop_after"}),
    # the seams: a slow trigger (xMatters counts it late), auth blips on either API
    ("xmatters", TRIGGERS, None, {"kind": "latency", "delay": 1.0}),
    ("xmatters", TRIGGERS, None, {"kind": "status", "status": 401}),
    ("ivanti", IVANTI_RECORD, "PATCH|PUT", {"kind": "status", "status": 401}),
]


# ----- the reference model ----------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """What the model needs of one incident as the daemon polled it."""

    status: str
    priority: str
    team: str

    @property
    def cls(self) -> str:
        return TERMINAL.get(self.status.casefold(), "open")

    @property
    def critical(self) -> bool:
        return self.priority in ("1", "2")


def use_case(prev: Seen | None, cur: Seen) -> str | None:
    """The original integration's use-case table, written out independently."""
    if prev is None:
        return "New Incident" if cur.cls == "open" and cur.critical else None
    if cur.cls != "open":
        return (
            {"resolved": "Resolved", "closed": "Closed", "canceled": "Canceled"}[cur.cls]
            if (prev.cls != cur.cls)
            else None
        )
    if prev.cls != "open":
        return "Reopened" if cur.critical else None
    if cur.critical and not prev.critical:
        return "Priority Upgrade"
    if prev.critical and not cur.critical:
        return "Priority Downgrade"
    if (
        cur.critical
        and " ".join(prev.team.split()).casefold() != " ".join(cur.team.split()).casefold()
    ):
        return "Reassigned"
    return None


@dataclass
class Model:
    seen: dict[str, Seen] = field(default_factory=dict)
    paging: set[str] = field(default_factory=set)
    triggers: dict[str, list[str]] = field(default_factory=dict)
    writes_applied: int = 0

    def baseline(self, sims: SimPair) -> None:
        for rec, cur in current(sims).items():
            self.seen[rec] = cur

    def polled(self, state: dict[str, Seen]) -> None:
        for rec, cur in state.items():
            prev = self.seen.get(rec)
            if prev == cur:
                continue
            kind = use_case(prev, cur)
            self.seen[rec] = cur
            if kind in CREATES:
                self.triggers.setdefault(rec, []).append(kind)
                self.paging.add(rec)
            elif kind is not None and rec in self.paging:
                self.triggers.setdefault(rec, []).append("Terminate")
                self.paging.discard(rec)

    def own_writes(self, sims: SimPair) -> None:
        """The daemon's accepted Owner/Status writes are its own, not transitions."""
        writes = sims.ivanti.writes()
        for w in writes[self.writes_applied :]:
            if w["ok"] and "Status" in w["fields"] and w["rec_id"] in self.seen:
                rec = w["rec_id"]
                # A late Assign to me never reopens: the daemon judges by the state it
                # polled last, which is the model's.
                assert self.seen[rec].cls == "open", (
                    f"incident {rec}: Status={w['fields']['Status']} written while it was "
                    f"{self.seen[rec].status}"
                )
                self.seen[rec] = replace(self.seen[rec], status=str(w["fields"]["Status"]))
        self.writes_applied = len(writes)


def current(sims: SimPair) -> dict[str, Seen]:
    out = {}
    for rec in list_recs(sims):
        inc = sims.ivanti.incident(rec)
        out[rec] = Seen(str(inc["Status"]), str(inc["Priority"]), str(inc["OwnerTeam"]))
    return out


_RECS: dict[int, list[str]] = {}


def list_recs(sims: SimPair) -> list[str]:
    return _RECS.setdefault(id(sims), [])


def received(sims: SimPair) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for t in sims.xmatters.triggers():
        out.setdefault(str(t["payload"]["RecId"]), []).append(str(t["payload"]["Type"]))
    return out


def fits(got: list[str], want: list[str], *, complete: bool) -> bool:
    """Whether xMatters' triggers for an incident are (a prefix of, with ``complete``
    all of) the model's, where a create the model expects may be missing if the model's
    next trigger for it is a Terminate: a page still queued when its incident stopped
    paging is not sent (it would reach someone only to be ended at once). That
    Terminate is then missing too when nothing sent before it is live (seed
    1154416949: the incident was never paged, so there is nothing to end)."""

    @cache
    def rest_fits(i: int, j: int, live: bool) -> bool:  # live: an event sent is live
        if j == len(want):
            return i == len(got)
        if i == len(got) and not complete:
            return True  # the rest may still come
        if i < len(got) and got[i] == want[j] and rest_fits(i + 1, j + 1, want[j] in CREATES):
            return True
        if want[j] in CREATES and j + 1 < len(want) and want[j + 1] == "Terminate":
            return rest_fits(i, j + 1 if live else j + 2, live)  # the stale page, skipped
        return False

    return rest_fits(0, 0, False)


# ----- the scenario -------------------------------------------------------------------------


@dataclass
class Soak:
    sims: SimPair
    svc: Service
    rng: random.Random
    model: Model = field(default_factory=Model)
    responses: dict[str, list[str]] = field(default_factory=dict)
    n_responses: int = 0

    def create(self, **extra: Any) -> str:
        rng = self.rng
        fields: dict[str, Any] = {
            "Priority": rng.choice("11233345"),
            "OwnerTeam": rng.choice(TEAMS),
            "Category": rng.choice(["", "Network", "Database"]),
            **extra,
        }
        if rng.random() < 0.3:
            fields["Owner"] = rng.choice(PEOPLE)
        rec = str(self.sims.ivanti.create_incident(**fields)["RecId"])
        list_recs(self.sims).append(rec)
        return rec

    def edit(self) -> None:
        rng, recs = self.rng, list_recs(self.sims)
        rec = rng.choice(recs)
        roll = rng.random()
        if roll < 0.35:
            change: dict[str, Any] = {"Priority": rng.choice("12345")}
        elif roll < 0.55:
            change = {"OwnerTeam": rng.choice(TEAMS)}
        elif roll < 0.85:
            change = {"Status": rng.choice([*OPEN_STATUSES, "Resolved", "Closed", "Cancelled"])}
        elif roll < 0.95:
            change = {"Owner": rng.choice(["", *PEOPLE])}
        else:
            change = {"Priority": rng.choice("12"), "OwnerTeam": rng.choice(TEAMS)}
        self.sims.ivanti.edit_incident(rec, **change)

    def respond(self) -> None:
        live = [e for e in self.sims.xmatters.events(status="ACTIVE")]
        if not live:
            return
        event = self.rng.choice(live)
        (target,) = event["recipients"]["data"]
        if target["recipientType"] == "PERSON":
            person, answers = target["targetName"], ["Acknowledge"]
        else:
            person = self.rng.choice(MEMBERS[target["targetName"]])
            answers = ["Escalate", "Escalate", "Assign to me"]
        self.n_responses += 1
        token = f"r{self.n_responses}"
        self.sims.xmatters.respond(
            event["id"], person=person, response=self.rng.choice(answers), comment=token
        )
        rec = str(event["properties"]["RecId"])
        self.responses.setdefault(rec, []).append(token)

    def arm_fault(self) -> None:
        sim_name, path, method, spec = self.rng.choice(FAULTS)
        sim = self.sims.xmatters if sim_name == "xmatters" else self.sims.ivanti
        if any(f.path == path for f in sim.faults.pending()):
            return
        kwargs = dict(spec)
        kind = kwargs.pop("kind")
        sim.faults.inject(kind, path, method=method, **kwargs)

    def cycle(self) -> None:
        """One poll interval: people act, maybe a fault, then the daemon's cycle."""
        state = current(self.sims)  # what this cycle's poll will read
        report = self.svc.cycle()
        if report.poll is not None:
            self.model.polled(state)
        self.model.own_writes(self.sims)
        self.sims.clock.advance(30)

    def drain(self) -> None:
        self.sims.xmatters.faults.clear()
        self.sims.ivanti.faults.clear()
        for _ in range(40):
            self.cycle()
            if not pending(self.svc) and self.notes_due() == 0:
                return
            self.sims.clock.advance(31)
        raise AssertionError(f"outbox never drained: {pending(self.svc)}")

    def notes_due(self) -> int:
        """Responses not yet written back (the write-back reads quiet events only every
        few cycles, so an empty outbox alone does not mean it is done)."""
        due = 0
        for rec, tokens in self.responses.items():
            bodies = [str(n["NotesBody"]) for n in self.sims.ivanti.notes(rec)]
            due += sum(
                1 for t in tokens if not any(b.endswith(f" with comment [ {t} ]") for b in bodies)
            )
        return due

    # ----- checks ----------------------------------------------------------------------

    def check_prefix(self) -> None:
        got, want = received(self.sims), self.model.triggers
        for rec, types in got.items():
            assert fits(types, want.get(rec, []), complete=False), (
                f"incident {rec}: xMatters got {types}, the model allows {want.get(rec, [])}"
            )

    def check_settled(self) -> None:
        got, want = received(self.sims), self.model.triggers
        assert set(got) <= set(want), (set(got) - set(want), "triggered, not in the model")
        for rec, types in want.items():
            assert fits(got.get(rec, []), types, complete=True), (
                f"incident {rec}: xMatters got {got.get(rec, [])}, the model wants {types}"
            )
        for rec in list_recs(self.sims):
            live = len(self.sims.xmatters.live_events(rec))
            assert live == (1 if rec in self.model.paging else 0), f"incident {rec}: {live} live"
        assert self.sims.xmatters.suppressions() == []
        with self.svc.store.unit() as u:
            dead = u.outbox(["dead"])
        assert dead == [], [(a.kind, a.outcome) for a in dead]
        for rec, tokens in self.responses.items():
            bodies = [str(n["NotesBody"]) for n in self.sims.ivanti.notes(rec)]
            for token in tokens:
                hits = [b for b in bodies if b.endswith(f" with comment [ {token} ]")]
                assert len(hits) == 1, f"incident {rec}: note {token} written {len(hits)} times"
            others = [b for b in bodies if " with comment [ r" not in b]
            assert all(
                "Assignment to" in b and ("failed" in b or "not applied" in b) for b in others
            ), others


def run_soak(
    sims: SimPair,
    make_service: MakeService,
    seed: int,
    cycles: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(seed)
    ids = random.Random(seed + 1)
    # RecIds decide the order rows come back in (ties on LastModDateTime sort by RecId),
    # hence which action meets which fault: seed them too, or a seed would not replay.
    monkeypatch.setattr(ivanti_sim, "_new_rec_id", lambda: f"{ids.getrandbits(128):032X}")
    _RECS.pop(id(sims), None)
    # slow flows: the workflow makes its event this long after the 202 (0: at once)
    sims.xmatters.set_flows(delay=random.Random(seed + 2).choice([0, 0, 4, 12]))
    svc = make_service()
    svc.deliverer.rng = random.Random(seed)  # retry jitter too: the same seed, the same run
    soak_ = Soak(sims, svc, rng)
    for _ in range(8):
        soak_.create()
    soak_.model.baseline(sims)
    report = soak_.svc.cycle()
    assert report.ok and report.poll is not None and report.poll.kind == "baseline"
    sims.clock.advance(30)
    for n in range(1, cycles + 1):
        if len(list_recs(sims)) < 20 and rng.random() < 0.25:
            soak_.create()
        for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
            soak_.edit()
        if rng.random() < 0.3:
            soak_.respond()
        if rng.random() < 0.25:
            soak_.arm_fault()
        soak_.cycle()
        soak_.check_prefix()
        if n % 20 == 0 or n == cycles:
            soak_.drain()
            soak_.check_settled()
    assert sum(len(v) for v in soak_.model.triggers.values()) > 0


@pytest.fixture
def seed() -> Iterator[int]:
    value = int(os.environ.get("IXM_SOAK_SEED") or random.SystemRandom().randrange(2**32))
    yield value


def _soak_or_report(
    sims: SimPair,
    make_service: MakeService,
    seed: int,
    cycles: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    try:
        run_soak(sims, make_service, seed, cycles, monkeypatch)
    except AssertionError as exc:
        raise AssertionError(
            f"soak failed with seed {seed} (reproduce: IXM_SOAK_SEED={seed} pytest "
            f"tests/e2e/test_soak.py): {exc}"
        ) from exc


def test_soak_ci(
    sims: SimPair, make_service: MakeService, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    _soak_or_report(sims, make_service, seed, CI_CYCLES, monkeypatch)


def test_soak_long(
    sims: SimPair,
    make_service: MakeService,
    seed: int,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if not request.config.getoption("--soak"):
        pytest.skip("the long soak runs with --soak")
    cycles = int(request.config.getoption("--soak-cycles"))
    _soak_or_report(sims, make_service, seed, cycles, monkeypatch)


def test_model_follows_the_use_case_table() -> None:
    """The model itself, on the table's rows (so a wrong model cannot pass silently)."""
    t = "Network Operations"
    assert use_case(None, Seen("Logged", "1", t)) == "New Incident"
    assert use_case(None, Seen("Resolved", "1", t)) is None
    assert use_case(None, Seen("Logged", "3", t)) is None
    assert use_case(Seen("Active", "1", t), Seen("Resolved", "4", "x")) == "Resolved"
    assert use_case(Seen("Resolved", "1", t), Seen("Closed", "1", t)) == "Closed"
    assert use_case(Seen("Closed", "1", t), Seen("Cancelled", "1", t)) == "Canceled"
    assert use_case(Seen("Resolved", "1", t), Seen("Resolved", "2", t)) is None
    assert use_case(Seen("Resolved", "1", t), Seen("Active", "2", t)) == "Reopened"
    assert use_case(Seen("Resolved", "1", t), Seen("Active", "3", t)) is None
    assert use_case(Seen("Active", "3", t), Seen("Active", "2", "x")) == "Priority Upgrade"
    assert use_case(Seen("Active", "2", t), Seen("Logged", "4", t)) == "Priority Downgrade"
    assert use_case(Seen("Active", "2", t), Seen("Active", "1", "Database Team")) == "Reassigned"
    assert use_case(Seen("Active", "2", t), Seen("Active", "1", " network  operations")) is None
    assert use_case(Seen("Active", "3", t), Seen("Active", "4", "x")) is None


def test_fits_lets_a_stale_page_and_its_needless_terminate_go_missing_only() -> None:
    up, end = ["Priority Upgrade", "Terminate"], ["New Incident", "Priority Upgrade", "Terminate"]
    assert fits(["Priority Upgrade", "Terminate"], up, complete=True)
    assert fits([], up, complete=True)  # never paged: nothing to end
    assert not fits(["Terminate"], up, complete=True)  # a Terminate that ends nothing
    assert fits(["New Incident", "Terminate"], end, complete=True)  # the older event ended
    assert not fits(["New Incident"], end, complete=True)  # ... and must be
    assert fits(["New Incident"], end, complete=False)  # the Terminate may still come
    assert not fits(["Reassigned"], up, complete=False)
    # the one page sent may be either of the model's two: both readings are tried
    assert fits(["Priority Upgrade"], [*up, "Priority Upgrade"], complete=True)
