"""What ``GET /_sim/`` says about each control route, and how it reads a few switches.

Kept apart from the simulators so their serving code stays as it is: a control route is
described here by ``(simulator name, method, pattern after /_sim/)``. A route missing here
is still listed, with its handler's docstring (or "undocumented"), and
``tests/simulators/test_sim_listing.py`` fails until it has a line of its own.

``example`` is the JSON body a POST/PATCH example sends (``None``: no body). Path
parameters are shown as ``<name>`` (``<rec>`` an incident's RecId, ``<eid>`` an event's
id or number).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ControlDoc:
    description: str
    example: Any = None  # the JSON body an example request sends; None: no body
    query: str = ""  # the query string an example request adds, without "?"


_SHARED: dict[tuple[str, str], ControlDoc] = {
    ("GET", "?"): ControlDoc("This listing: the control routes and the current switches"),
    ("GET", "faults"): ControlDoc("Faults waiting to be injected into non-control requests"),
    ("POST", "faults"): ControlDoc(
        "Inject a fault (status, latency, timeout, drop_before, drop_after, stall_after, "
        "malformed, truncated) into the next matching request(s)",
        {"kind": "status", "status": 503, "times": 1},
    ),
    ("DELETE", "faults"): ControlDoc("Forget every pending fault"),
    ("GET", "requests"): ControlDoc(
        "The request log (non-control requests) and counts per route; ?route= filters",
    ),
    ("DELETE", "requests"): ControlDoc("Clear the request log"),
    ("GET", "clock"): ControlDoc("The simulated clock: now, and whether it is frozen"),
    ("POST", "clock"): ControlDoc(
        "Move the simulated clock: advance by seconds, set to an instant, freeze or thaw",
        {"advance": 60},
    ),
    ("GET", "budget"): ControlDoc("The plan-level request limit (429 past it), if any"),
    ("POST", "budget"): ControlDoc(
        "Set the plan-level request limit (limit per period seconds under prefix); "
        "limit null turns it off",
        {"limit": 600, "period": 60, "prefix": "/api", "headers": True},
    ),
}

_IVANTI: dict[tuple[str, str], ControlDoc] = {
    ("POST", "incidents"): ControlDoc(
        "Create an incident as a person would (any incident fields; by= the creator)",
        {"Subject": "Database down", "Priority": "1", "OwnerTeam": "Database Team"},
    ),
    ("POST", "incidents/bulk"): ControlDoc(
        "Create n incidents at once (spacing= seconds apart), for load tests",
        {"n": 100, "Priority": "3"},
    ),
    ("GET", "incidents/(?P<rec>[^/]+)"): ControlDoc("One incident as stored (by RecId)"),
    ("PATCH", "incidents/(?P<rec>[^/]+)"): ControlDoc(
        "Edit an incident as a person would (bumps LastModDateTime)",
        {"Status": "Resolved"},
    ),
    ("DELETE", "incidents/(?P<rec>[^/]+)"): ControlDoc("Delete an incident"),
    ("GET", "incidents/(?P<rec>[^/]+)/notes"): ControlDoc("An incident's journal notes"),
    ("GET", "writes"): ControlDoc("Every write the API accepted or refused, in order"),
    ("POST", "sessions/expire"): ControlDoc(
        "Expire every session key (each answers 401), as after the idle timeout"
    ),
}

_XMATTERS: dict[tuple[str, str], ControlDoc] = {
    ("GET", "config"): ControlDoc(
        "Trigger URLs and ids, REST users, response options: what a client needs to connect"
    ),
    ("GET", "events"): ControlDoc(
        "Events as the simulator holds them; ?rec_id= and ?status= filter",
        query="status=ACTIVE",
    ),
    ("POST", "events/(?P<eid>[^/]+)/responses"): ControlDoc(
        "A recipient answers an event (person, response option text or id, comment)",
        {"person": "jsmith", "response": "Acknowledge", "comment": "on it"},
    ),
    ("POST", "events/(?P<eid>[^/]+)/comments"): ControlDoc(
        "A recipient comments on an event (an annotation)",
        {"person": "jsmith", "text": "looking"},
    ),
    ("POST", "events/(?P<eid>[^/]+)/deliveries"): ControlDoc(
        "Record a notification's delivery status for a recipient's device",
        {"person": "jsmith", "device": "Mobile App", "status": "DELIVERED"},
    ),
    ("GET", "triggers"): ControlDoc("Every trigger request received, with its payload"),
    ("GET", "terminations"): ControlDoc("Events the workflow terminated, and why"),
    ("GET", "suppressions"): ControlDoc("Alerts flood control suppressed (202 but no event)"),
    ("POST", "flood-control"): ControlDoc(
        "Turn alert flood control on or off, and set how many alerts pass per minute",
        {"enabled": False, "limit": 4},
    ),
    ("POST", "events/(?P<eid>[^/]+)/complete"): ControlDoc(
        "The event ends by itself: TERMINATED with an EVENT_COMPLETED audit"
    ),
    ("POST", "events/(?P<eid>[^/]+)/expire"): ControlDoc(
        "The event expires: TERMINATED, audited as the expiry_audit switch says"
    ),
    ("POST", "flows"): ControlDoc(
        "Asynchronous flows: the event appears delay seconds after the 202; the next "
        "fail_next flows create nothing",
        {"delay": 5, "fail_next": 0},
    ),
}

CONTROL_DOCS: dict[str, dict[tuple[str, str], ControlDoc]] = {
    "ivanti": _IVANTI,
    "xmatters": _XMATTERS,
}
SHARED_DOCS = _SHARED

# Switches whose current value lives under another name than the constructor argument,
# and switches set at run time (by a control route) rather than by the constructor.
SWITCH_READERS: dict[str, dict[str, Callable[[Any], Any]]] = {
    "xmatters": {
        "flood_control": lambda s: s._flood_enabled,
        "flood_limit": lambda s: s._flood_limit,
        "flow_delay": lambda s: s._flow_delay,
        "flows_fail_next": lambda s: s._flows_failing,
        "workflow_writeback": lambda s: s._writeback is not None,
    },
}
