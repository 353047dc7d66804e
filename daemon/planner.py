"""From a transition verdict to the outbox actions that carry it out.

Payloads are frozen here, at decision time, so a retried delivery sends exactly what
was decided even if the incident has changed since.

The rules file's team map (``[teams]``, ``daemon/rules.py``) turns the Ivanti OwnerTeam
into the xMatters group in both modes: the direct-mode GROUP recipient, and the
workflow payload's ``OwnerTeam`` (the workflow targets the group named there).
"""

from __future__ import annotations

from collections.abc import Mapping

from daemon.domain import ActionKind, PlannedAction, Policy, Snapshot, Transition, Verdict
from daemon.rules import TeamMap
from daemon.snapshot import workflow_payload

# The original workflow's single Type for all four terminating use cases.
TERMINATE_TYPE = "Terminate"


def _teams(policy: Policy | None) -> TeamMap | None:
    return policy.rules.teams if policy is not None and policy.rules is not None else None


def _payload(cur: Snapshot, type_: str, teams: TeamMap | None) -> dict[str, str]:
    payload = workflow_payload(cur, type_)
    if teams is not None:
        payload["OwnerTeam"] = teams.group_for(cur.owner_team)
    return payload


def recipient_for(cur: Snapshot, teams: TeamMap | None = None) -> dict[str, str]:
    """The event recipient as the original workflow chose it: the Owner, else the OwnerTeam
    (its xMatters group by the team map, when there is one).

    xMatters flood control keys on this recipient. When both are empty the recipient id
    is "" and the action is still planned: the deliverer dead-letters it with a clear
    reason, which is more visible than an incident that silently never pages.
    """
    if cur.owner:
        return {"id": cur.owner, "recipientType": "PERSON"}
    group = teams.group_for(cur.owner_team) if teams is not None else cur.owner_team
    return {"id": group, "recipientType": "GROUP"}


def recipient_key(recipient: object) -> str | None:
    """A planned page's recipient as the outbox keys it for flood control
    (``type:id``, casefolded); None when the payload names none."""
    if isinstance(recipient, Mapping):
        return f"{recipient.get('recipientType', '')}:{recipient.get('id', '')}".casefold()
    return None


def _page(transition: Transition, cur: Snapshot, teams: TeamMap | None) -> PlannedAction:
    kind = transition.kind.value
    return PlannedAction(
        kind=ActionKind.PAGE,
        rec_id=cur.rec_id,
        payload={
            "type": kind,
            "workflow": _payload(cur, kind, teams),
            "recipient": recipient_for(cur, teams),
        },
        reason=transition.reason,
    )


def _terminate(transition: Transition, cur: Snapshot, teams: TeamMap | None) -> PlannedAction:
    return PlannedAction(
        kind=ActionKind.TERMINATE,
        rec_id=cur.rec_id,
        payload={
            "type": transition.kind.value,
            "workflow": _payload(cur, TERMINATE_TYPE, teams),
        },
        reason=transition.reason,
    )


def plan(
    verdict: Verdict, cur: Snapshot, *, alerting: bool, policy: Policy | None = None
) -> list[PlannedAction]:
    """Actions for one verdict; ``alerting`` = the incident has live (or pending) daemon events.

    A create always pages (the PAGE itself supersedes older events). A terminate is
    planned only while something is alerting: with nothing live there is nothing to
    end, and skipping it saves an xMatters call.
    """
    transition = verdict.transition
    if transition is None:
        return []
    teams = _teams(policy)
    if transition.kind.creates:
        return [_page(transition, cur, teams)]
    if transition.kind.terminates and alerting:
        return [_terminate(transition, cur, teams)]
    return []
