"""The pure decisions of the write-back: when a late Assign to me is applied."""

from __future__ import annotations

import os

import pytest

from daemon.config import load_settings
from daemon.ops.check import check_writeback
from daemon.writeback import why_not_assign, written_already
from tests.unit.test_config import rest_env


@pytest.mark.parametrize(
    ("status", "is_open", "superseded", "why"),
    [
        ("Active", True, False, None),
        ("Logged", True, False, None),
        ("Resolved", False, False, "the incident is Resolved"),
        ("Closed", False, True, "the incident is Closed"),  # the incident's state comes first
        ("Active", True, True, "event 5400001 was superseded by a newer page"),
        (None, False, False, "the incident is no longer in scope"),
    ],
)
def test_assignment_applies_only_to_an_open_incident_and_its_current_event(
    status: str | None, is_open: bool, superseded: bool, why: str | None
) -> None:
    assert (
        why_not_assign(
            incident_status=status, incident_open=is_open, event="5400001", superseded=superseded
        )
        == why
    )


# ----- who writes back: the journal check and what `check` says ----------------------------

NOTE = "[xMatters] Jane Smith | Mobile App responded [ Escalate ] with comment [ on it ]"
WORKFLOW = "[xMatters] Jane Smith | Mobile App responded [ Escalate ]"


@pytest.mark.parametrize(
    ("journal", "done_same", "unknown", "found"),
    [
        ([], 0, False, None),
        ([NOTE], 1, False, None),  # the daemon's own earlier identical note
        ([NOTE], 0, True, "earlier attempt"),
        ([NOTE], 0, False, "workflow"),
        ([WORKFLOW, "[xMatters] Jane Smith commented [ on it ]"], 0, False, "its wording"),
        (["[xMatters] Jane Smith | Mobile App responded [ Acknowledge ]"], 0, False, None),
    ],
)
def test_written_already_counts_only_notes_beyond_the_daemons_own(
    journal: list[str], done_same: int, unknown: bool, found: str | None
) -> None:
    why = written_already(journal, NOTE, WORKFLOW, done_same, unknown=unknown)
    assert (why is None) if found is None else (why is not None and found in why)


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({}, "each after looking in the incident's journal 5 s after the activity"),
        ({"IXM_WORKFLOW_WRITEBACK": "on"}, "the original workflow writes notes back"),
        ({"IXM_WORKFLOW_WRITEBACK": "off"}, "or each note is written twice"),
        ({"IXM_WRITEBACK": "false"}, "the daemon writes nothing back (IXM_WRITEBACK=false)"),
    ],
)
def test_check_says_which_side_writes_back(env: dict[str, str], words: str) -> None:
    settings = load_settings(rest_env(**env), env_file=os.devnull)
    result = check_writeback(settings)
    assert result.status == "OK" and words in result.message, result.message
