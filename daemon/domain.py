"""The product's vocabulary: incident snapshots, transitions, planned actions.

Plain frozen values with no I/O, shared by the pure core (``transitions``,
``planner``, ``notes``), the edges (Ivanti and xMatters clients) and the store.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from daemon.rules import RuleSet


class TransitionKind(StrEnum):
    """The eight use cases of the original integration (its ``xmTrigger`` values)."""

    NEW_INCIDENT = "New Incident"
    REASSIGNED = "Reassigned"
    REOPENED = "Reopened"
    PRIORITY_UPGRADE = "Priority Upgrade"
    PRIORITY_DOWNGRADE = "Priority Downgrade"
    RESOLVED = "Resolved"
    CLOSED = "Closed"
    CANCELED = "Canceled"

    @property
    def creates(self) -> bool:
        return self in CREATE_KINDS

    @property
    def terminates(self) -> bool:
        return self in TERMINATE_KINDS


CREATE_KINDS = frozenset(
    {
        TransitionKind.NEW_INCIDENT,
        TransitionKind.REASSIGNED,
        TransitionKind.REOPENED,
        TransitionKind.PRIORITY_UPGRADE,
    }
)
TERMINATE_KINDS = frozenset(
    {
        TransitionKind.PRIORITY_DOWNGRADE,
        TransitionKind.RESOLVED,
        TransitionKind.CLOSED,
        TransitionKind.CANCELED,
    }
)


class StatusClass(StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"
    CLOSED = "closed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self is not StatusClass.OPEN


# Ivanti fields the daemon reads for every incident (besides configured extra fields).
CORE_FIELDS: tuple[str, ...] = (
    "RecId",
    "IncidentNumber",
    "Status",
    "Priority",
    "Owner",
    "OwnerTeam",
    "LastModDateTime",
    "LastModBy",
    "Category",
    "Phone",
    "ProfileFullName",
    "Subject",
)


@dataclass(frozen=True)
class Snapshot:
    """What the daemon knows of one incident at one ``LastModDateTime``.

    ``payload_fields`` holds the flat string values forwarded to xMatters
    (Category, Phone, ProfileFullName, Subject and any configured extra fields),
    keyed by Ivanti field name; missing values are "".
    """

    rec_id: str
    incident_number: int
    status: str
    priority: str
    owner: str
    owner_team: str
    last_mod: datetime  # timezone-aware UTC
    last_mod_by: str = ""
    payload_fields: Mapping[str, str] = field(default_factory=dict)

    def with_changes(self, **changes: object) -> Snapshot:
        from dataclasses import replace

        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Policy:
    """Site rules that decide which changes page whom. Status names compare case-insensitively."""

    critical_priorities: frozenset[str] = frozenset({"1", "2"})
    resolved_statuses: frozenset[str] = frozenset({"resolved"})
    closed_statuses: frozenset[str] = frozenset({"closed"})
    canceled_statuses: frozenset[str] = frozenset({"canceled", "cancelled"})
    # The rules file (IXM_RULES_FILE): per-use-case criteria, "critical", the team map.
    # None: no file, every decision as the settings above make it.
    rules: RuleSet | None = None

    def status_class(self, status: str) -> StatusClass:
        """Resolved/closed/canceled by name; every other status (Logged, Active, Waiting…) is open."""
        s = status.strip().casefold()
        if s in self.resolved_statuses:
            return StatusClass.RESOLVED
        if s in self.closed_statuses:
            return StatusClass.CLOSED
        if s in self.canceled_statuses:
            return StatusClass.CANCELED
        return StatusClass.OPEN

    def is_critical(self, priority: str) -> bool:
        return priority.strip() in self.critical_priorities

    def critical(self, snap: Snapshot) -> bool:
        """Critical by the rules file's ``critical`` criterion if it has one, else by Priority."""
        if self.rules is not None and self.rules.critical is not None:
            return self.rules.critical.matches(snap)
        return self.is_critical(snap.priority)


@dataclass(frozen=True)
class Transition:
    kind: TransitionKind
    rec_id: str
    reason: str  # which rule fired and on what values, for people reading the state DB


@dataclass(frozen=True)
class Verdict:
    """The outcome of comparing two snapshots: at most one transition, always a reason."""

    transition: Transition | None
    reason: str
    # The use case the rules file held back (off, or its ``when`` did not match), if any.
    held: TransitionKind | None = None


class ActionKind(StrEnum):
    PAGE = "page"  # create an xMatters event (supersedes the incident's live ones)
    TERMINATE = "terminate"  # terminate the incident's live events
    NOTE = "note"  # write a note (and maybe Owner/Status) back to the Ivanti incident


@dataclass(frozen=True)
class PlannedAction:
    """An action to put in the outbox. ``payload`` is frozen at decision time."""

    kind: ActionKind
    rec_id: str
    payload: Mapping[str, object]
    reason: str


# Maximum lengths of the properties of the original workflow's form "Incident"
# (reference original-workflow.md, "Form properties and limits"); xMatters
# refuses longer values.
FORM_PROPERTY_LIMITS: Mapping[str, int] = {
    "Category": 100,
    "Description": 2000,
    "IncidentID": 100,
    "Owner": 100,
    "OwnerTeam": 100,
    "Phone": 30,
    "RecId": 100,
    "RequestedBy": 100,
    "Status": 100,
    "Summary": 255,
    "Type": 100,
}
