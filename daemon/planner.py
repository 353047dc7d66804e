"""From a transition verdict to the outbox actions that carry it out.

Payloads are frozen here, at decision time, so a retried delivery sends exactly what
was decided even if the incident has changed since.
"""

from __future__ import annotations

from daemon.domain import ActionKind, PlannedAction, Snapshot, Transition, Verdict
from daemon.snapshot import workflow_payload

# The original workflow's single Type for all four terminating use cases.
TERMINATE_TYPE = "Terminate"


def recipient_for(cur: Snapshot) -> dict[str, str]:
    """The event recipient as the original workflow chose it: the Owner, else the OwnerTeam.

    xMatters flood control keys on this recipient. When both are empty the recipient id
    is "" and the action is still planned: the deliverer dead-letters it with a clear
    reason, which is more visible than an incident that silently never pages.
    """
    if cur.owner:
        return {"id": cur.owner, "recipientType": "PERSON"}
    return {"id": cur.owner_team, "recipientType": "GROUP"}


def _page(transition: Transition, cur: Snapshot) -> PlannedAction:
    kind = transition.kind.value
    return PlannedAction(
        kind=ActionKind.PAGE,
        rec_id=cur.rec_id,
        payload={
            "type": kind,
            "workflow": workflow_payload(cur, kind),
            "recipient": recipient_for(cur),
        },
        reason=transition.reason,
    )


def _terminate(transition: Transition, cur: Snapshot) -> PlannedAction:
    return PlannedAction(
        kind=ActionKind.TERMINATE,
        rec_id=cur.rec_id,
        payload={
            "type": transition.kind.value,
            "workflow": workflow_payload(cur, TERMINATE_TYPE),
        },
        reason=transition.reason,
    )


def plan(verdict: Verdict, cur: Snapshot, *, alerting: bool) -> list[PlannedAction]:
    """Actions for one verdict; ``alerting`` = the incident has live (or pending) daemon events.

    A create always pages (the PAGE itself supersedes older events). A terminate is
    planned only while something is alerting: with nothing live there is nothing to
    end, and skipping it saves an xMatters call.
    """
    transition = verdict.transition
    if transition is None:
        return []
    if transition.kind.creates:
        return [_page(transition, cur)]
    if transition.kind.terminates and alerting:
        return [_terminate(transition, cur)]
    return []
