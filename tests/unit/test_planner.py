from __future__ import annotations

from datetime import UTC, datetime

import pytest

from daemon.domain import (
    CREATE_KINDS,
    TERMINATE_KINDS,
    ActionKind,
    Snapshot,
    Transition,
    TransitionKind,
    Verdict,
)
from daemon.planner import plan

REC = "085867F47547496783005D95CB82D557"


def snap(owner: str = "jsmith", team: str = "Network") -> Snapshot:
    return Snapshot(
        rec_id=REC,
        incident_number=77,
        status="Active",
        priority="1",
        owner=owner,
        owner_team=team,
        last_mod=datetime(2026, 11, 27, 10, 0, tzinfo=UTC),
        payload_fields={
            "Category": "Network",
            "Phone": "555",
            "ProfileFullName": "Jane Customer",
            "Subject": "VPN down",
            "Symptom": "it broke",
        },
    )


def verdict(kind: TransitionKind) -> Verdict:
    return Verdict(Transition(kind, REC, f"because {kind.value}"), f"because {kind.value}")


@pytest.mark.parametrize("kind", sorted(CREATE_KINDS))
@pytest.mark.parametrize("alerting", [True, False])
def test_creates_page_whether_or_not_alerting(kind: TransitionKind, alerting: bool) -> None:
    (action,) = plan(verdict(kind), snap(), alerting=alerting)
    assert action.kind is ActionKind.PAGE
    assert action.rec_id == REC
    assert action.reason == f"because {kind.value}"
    assert action.payload["type"] == kind.value
    assert action.payload["recipient"] == {"id": "jsmith", "recipientType": "PERSON"}
    workflow = action.payload["workflow"]
    assert isinstance(workflow, dict)
    assert workflow["Type"] == kind.value
    assert workflow["IncidentID"] == "77"
    assert workflow["Symptom"] == "it broke"


def test_page_without_owner_goes_to_the_team() -> None:
    (action,) = plan(verdict(TransitionKind.NEW_INCIDENT), snap(owner=""), alerting=False)
    assert action.payload["recipient"] == {"id": "Network", "recipientType": "GROUP"}


def test_page_without_owner_or_team_is_still_planned_with_empty_recipient() -> None:
    (action,) = plan(verdict(TransitionKind.NEW_INCIDENT), snap(owner="", team=""), alerting=False)
    assert action.payload["recipient"] == {"id": "", "recipientType": "GROUP"}


@pytest.mark.parametrize("kind", sorted(TERMINATE_KINDS))
def test_terminates_only_while_alerting(kind: TransitionKind) -> None:
    (action,) = plan(verdict(kind), snap(), alerting=True)
    assert action.kind is ActionKind.TERMINATE
    assert action.reason == f"because {kind.value}"
    assert action.payload["type"] == kind.value
    workflow = action.payload["workflow"]
    assert isinstance(workflow, dict)
    assert workflow["Type"] == "Terminate"
    assert "recipient" not in action.payload
    assert plan(verdict(kind), snap(), alerting=False) == []


@pytest.mark.parametrize("alerting", [True, False])
def test_no_transition_no_action(alerting: bool) -> None:
    assert plan(Verdict(None, "no change that pages"), snap(), alerting=alerting) == []
