"""The pure decisions of the write-back: when a late Assign to me is applied."""

from __future__ import annotations

import pytest

from daemon.writeback import why_not_assign


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
