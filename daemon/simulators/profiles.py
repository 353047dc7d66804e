"""Named sets of simulator switches: ``default`` (today's readings) and ``strict``.

Every open question of the reference (``ivanti-api.md`` §8, ``xmatters-api.md`` §9) is a
constructor switch of a simulator, with one reading as its default. ``strict`` turns on,
at once, the hardest reading a real tenant might have, so the daemon is tested against
the service at its least kind: ``SimPair(profile="strict")``, ``ivanti-xmatters simulate
--profile strict``, and the test suite under ``IXM_SIM_PROFILE=strict``.

Left out of ``strict``, on purpose:

* the plan-level request budget (``set_request_budget``): it counts per minute of the sim
  clock, and most tests freeze that clock, so a budget would never refill; the tests of
  the budget and of the daemon's rate limiter set it themselves;
* ``quirks=False``: the quirks *are* the strict reading (they are on in both profiles).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PROFILES = ("default", "strict")


@dataclass(frozen=True)
class Profile:
    name: str
    ivanti: Mapping[str, Any] = field(default_factory=dict)
    xmatters: Mapping[str, Any] = field(default_factory=dict)
    why: Mapping[str, str] = field(default_factory=dict)


STRICT = Profile(
    "strict",
    ivanti={
        "subsecond_times": True,
        "recid_sort": "guid",
        "put_semantics": "replace",
        "odata_count": "unreliable",
        "default_order": "unordered",
        "session_idle_timeout": 300.0,
        "session_cap": 3,
    },
    xmatters={
        "property_filter": "plain",
        "property_keys": "suffixed",
        "recipients": "embedded",
        "response_option": "options.data",
        "trigger_status": 200,
        "flow_delay": 2.0,
        "expiry_audit": "EVENT_TERMINATED",
    },
    why={
        "subsecond_times": "saves stored with sub-seconds, served in whole seconds (§8.5)",
        "recid_sort": "$orderby sorts RecId as a uniqueidentifier, gt compares text (§8.5)",
        "put_semantics": "PUT empties every text field its body omits (§8.10)",
        "odata_count": "@odata.count served as 0 beside real rows (§2.1, §8.7)",
        "default_order": "no $orderby: an order unrelated to any field (§8.8)",
        "session_idle_timeout": "sessions time out after 5 idle minutes (§8.1)",
        "session_cap": "at most 3 live sessions per user; the next login is refused (§8.3)",
        "property_filter": "only propertyName=RecId finds events, not RecId#en (§9.4)",
        "property_keys": "event properties served as Type#en, RecId#en (§9.4)",
        "recipients": "an event's recipients only with embed=recipients",
        "response_option": "a response audit's option under options.data (§9.6)",
        "trigger_status": "the trigger answers 200, not 202 (§9.5)",
        "flow_delay": "the flow creates the event 2 s after the trigger answered",
        "expiry_audit": "an expired event is audited EVENT_TERMINATED, not EVENT_COMPLETED",
    },
)

_BY_NAME = {"default": Profile("default"), "strict": STRICT}


def profile(name: str) -> Profile:
    """The profile called ``name``; ValueError naming the known ones otherwise."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(
            f"unknown simulator profile {name!r}: use one of {', '.join(PROFILES)}"
        ) from None
