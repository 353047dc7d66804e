"""Which xMatters event proves that a given page landed (pure: no HTTP, no SQL).

After an attempt whose outcome is unknown (a timeout, a dropped connection, the daemon
died mid-request), and after every accepted trigger, the deliverer needs to know
whether *this* page made an event. Any live event of the incident is no proof: it may
be the earlier page's event that the daemon has not learnt yet, or one the old Web
Connection left. An event is proof only if it matches the page:

- it is not an event the daemon already ties to another action;
- it was created no earlier than the first attempt of this page began (less
  ``margin`` for the two clocks' difference);
- its ``Type`` property is this page's Type (New Incident, Reassigned, ...);
- its recipients include this page's recipient (the Owner, else the Owner Team).

An event that lacks what is needed to tell (no properties, no recipients, no creation
time) is no proof either: the caller then re-sends, as a possible duplicate beats a
certain miss, and says so.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from daemon.timeutil import parse_utc


def _properties(event: Mapping[str, Any]) -> dict[str, Any]:
    """Event properties by plain name: ``Type#en`` and ``Type`` both read as ``Type``."""
    props = event.get("properties")
    if not isinstance(props, Mapping):
        return {}
    return {str(k).split("#", 1)[0]: v for k, v in props.items()}


def event_property(event: Mapping[str, Any], name: str) -> Any:
    """An event property by its plain name (``RecId`` reads ``RecId#en`` too); None if absent."""
    return _properties(event).get(name)


def _recipient_names(event: Mapping[str, Any]) -> set[str] | None:
    """Casefolded ids and targetNames of the event's recipients; None when absent."""
    block = event.get("recipients")
    items = block.get("data") if isinstance(block, Mapping) else block
    if not isinstance(items, list):
        return None
    names: set[str] = set()
    for r in items:
        if isinstance(r, Mapping):
            for key in ("targetName", "id"):
                value = r.get(key)
                if isinstance(value, str) and value:
                    names.add(value.casefold())
    return names


def _created(event: Mapping[str, Any]) -> datetime | None:
    value = event.get("created")
    if not isinstance(value, str):
        return None
    try:
        return parse_utc(value)
    except ValueError:
        return None


def mismatch(
    event: Mapping[str, Any],
    *,
    page_type: str,
    recipient: str,
    since: datetime,
    margin: timedelta,
) -> str | None:
    """Why ``event`` is no proof of the page, or None when it is."""
    created = _created(event)
    if created is None:
        return "no creation time"
    if created < since - margin:
        return f"created {created.isoformat()}, before the page was first sent"
    props = _properties(event)
    if "Type" not in props:
        return "no Type property"
    if str(props["Type"]) != page_type:
        return f"Type {props['Type']!r}, not {page_type!r}"
    names = _recipient_names(event)
    if names is None:
        return "no recipients listed"
    if recipient.casefold() not in names:
        return f"not sent to {recipient}"
    return None


def proof_of_page(
    events: Iterable[Mapping[str, Any]],
    *,
    page_type: str,
    recipient: str,
    since: datetime,
    known: Collection[str] = (),
    margin: timedelta = timedelta(seconds=10),
) -> list[dict[str, Any]]:
    """The events among ``events`` that prove the page landed (oldest first)."""
    out = [
        dict(e)
        for e in events
        if str(e.get("id")) not in known
        and mismatch(e, page_type=page_type, recipient=recipient, since=since, margin=margin)
        is None
    ]
    return sorted(out, key=lambda e: str(e.get("created")))
