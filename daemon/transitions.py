"""THE place where an incident transition is decided.

The daemon sees an incident only as two snapshots, the one stored at the previous poll
(``prev``) and the current one (``cur``); whatever happened in between is invisible.
``decide`` therefore reports at most ONE transition per call, choosing by the first row
of this table that matches (top wins). "critical" means ``policy.is_critical(Priority)``
(usually Priority 1 or 2); open/terminal come from ``policy.status_class(Status)``.

=====  ============================================  ===========================================
rule   when                                          verdict
=====  ============================================  ===========================================
1a     prev None, baseline, page_baseline_critical,  NEW_INCIDENT (paged because of the option)
       cur open + critical
1b     prev None, baseline                           none: existing incident recorded at first
                                                     start, nobody paged
1c     prev None, cur open + critical                NEW_INCIDENT
1d     prev None, cur terminal                       none: created and already resolved between
                                                     two polls, nobody paged
1e     prev None, cur open, not critical             none: not critical
2a     cur terminal, prev in another class           RESOLVED / CLOSED / CANCELED by cur's class
       (open -> terminal, or e.g. Resolved ->        (terminal wins over everything else that
       Closed)                                       changed in the same interval)
2b     cur terminal, prev in the same class          none: still resolved/closed/canceled
3a     prev terminal, cur open + critical            REOPENED
3b     prev terminal, cur open, not critical         none: reopened but not critical
4a     both open, not critical -> critical           PRIORITY_UPGRADE (also when OwnerTeam
                                                     changed too: one event per cycle)
4b     both open, critical -> not critical           PRIORITY_DOWNGRADE
4c     both open, critical both, OwnerTeam changed   REASSIGNED
       (compared trimmed, case-insensitively)
4d     both open, anything else                      none, naming what changed and why it does
                                                     not page (Owner alone, Status within open,
                                                     Priority within the same band, ...)
=====  ============================================  ===========================================

``baseline`` only concerns first sightings (``prev is None``): it is set while the
daemon takes the incidents that exist at its first start as a baseline, when no
previous snapshot can exist. With a previous snapshot the normal rules apply.

The rules file (``policy.rules``, ``daemon/rules.py``) changes two things and nothing else:
"critical" is its ``critical`` criterion when it has one (evaluated on each snapshot, prev
and cur alike, so a changed criterion never makes an unchanged incident look upgraded),
and a use case the table chose fires only if the file leaves it on and its ``when``
matches ``cur``; otherwise the verdict is none, saying which rule held it back. Without
a file (or with an empty one) every verdict and reason is the same as before.

Every verdict carries a short human reason with the concrete values (old -> new):
operators read it in ``explain`` output and in the state DB.
"""

from __future__ import annotations

from daemon.domain import Policy, Snapshot, StatusClass, Transition, TransitionKind, Verdict
from daemon.rules import KEY_OF

_TERMINAL_KIND = {
    StatusClass.RESOLVED: TransitionKind.RESOLVED,
    StatusClass.CLOSED: TransitionKind.CLOSED,
    StatusClass.CANCELED: TransitionKind.CANCELED,
}


def _v(text: str) -> str:
    """A field value as shown in a reason; empty values must stay visible."""
    return text if text else "(none)"


def _critical_list(policy: Policy) -> str:
    def order(p: str) -> tuple[int, int, str]:
        return (0, int(p), p) if p.isdigit() else (1, 0, p)

    return ",".join(sorted(policy.critical_priorities, key=order)) or "(none)"


def _priority_phrase(priority: str) -> str:
    return f"Priority {priority}" if priority else "no Priority"


def _custom_critical(policy: Policy) -> str | None:
    """The rules file's ``critical`` criterion as shown in reasons, None when there is none."""
    if policy.rules is None or policy.rules.critical is None:
        return None
    return f"critical = {policy.rules.critical}"


def _not_critical(cur: Snapshot, policy: Policy) -> str:
    custom = _custom_critical(policy)
    if custom:
        return f"not critical ({_priority_phrase(cur.priority)}; {custom} does not match)"
    return f"not critical ({_priority_phrase(cur.priority)}; critical are {_critical_list(policy)})"


def _is_critical(cur: Snapshot, policy: Policy) -> str:
    """'Priority 1 is critical', or with a ``critical`` criterion what matched."""
    custom = _custom_critical(policy)
    if custom:
        return f"{_priority_phrase(cur.priority)} is critical ({custom} matches)"
    return f"{_priority_phrase(cur.priority)} is critical"


def _team_key(team: str) -> str:
    return " ".join(team.split()).casefold()


def _team_changed(prev: Snapshot, cur: Snapshot) -> bool:
    return _team_key(prev.owner_team) != _team_key(cur.owner_team)


def _change(name: str, old: str, new: str) -> str:
    return f"{name} {_v(old)} -> {_v(new)}"


def _other_changes(prev: Snapshot, cur: Snapshot) -> list[str]:
    """Changes besides Status, mentioned so a terminal verdict does not hide them."""
    changes = []
    if prev.priority != cur.priority:
        changes.append(_change("Priority", prev.priority, cur.priority))
    if _team_changed(prev, cur):
        changes.append(_change("OwnerTeam", prev.owner_team, cur.owner_team))
    if prev.owner != cur.owner:
        changes.append(_change("Owner", prev.owner, cur.owner))
    return changes


def _fire(kind: TransitionKind, cur: Snapshot, reason: str) -> Verdict:
    return Verdict(Transition(kind, cur.rec_id, reason), reason)


def _none(reason: str) -> Verdict:
    return Verdict(None, reason)


def _first_sighting(cur: Snapshot, policy: Policy, baseline: bool, page_critical: bool) -> Verdict:
    cls = policy.status_class(cur.status)
    open_critical = cls is StatusClass.OPEN and policy.critical(cur)
    if baseline:
        if page_critical and open_critical:
            return _fire(
                TransitionKind.NEW_INCIDENT,
                cur,
                f"baseline: open critical incident ({_priority_phrase(cur.priority)}, "
                f"Status {cur.status}) at first start, paged because page_baseline_critical is on",
            )
        return _none("baseline: existing incident recorded at first start, nobody paged")
    if open_critical:
        return _fire(
            TransitionKind.NEW_INCIDENT,
            cur,
            f"new incident, {_is_critical(cur, policy)} (Status {cur.status})",
        )
    if cls.terminal:
        return _none(
            f"created and already {cls.value} (Status {cur.status}) between two polls: nobody paged"
        )
    return _none(f"new incident, {_not_critical(cur, policy)}")


def _into_terminal(prev: Snapshot, cur: Snapshot, policy: Policy) -> Verdict:
    prev_cls, cur_cls = policy.status_class(prev.status), policy.status_class(cur.status)
    status = _change("Status", prev.status, cur.status)
    if prev_cls is cur_cls:
        detail = f" ({status})" if prev.status != cur.status else ""
        return _none(f"still {cur_cls.value}{detail}")
    others = _other_changes(prev, cur)
    also = f" (also changed: {', '.join(others)})" if others else ""
    return _fire(_TERMINAL_KIND[cur_cls], cur, f"{status}{also}")


def _reopened(prev: Snapshot, cur: Snapshot, policy: Policy) -> Verdict:
    status = _change("Status", prev.status, cur.status)
    if policy.critical(cur):
        return _fire(
            TransitionKind.REOPENED,
            cur,
            f"reopened: {status}, {_is_critical(cur, policy)}",
        )
    return _none(f"reopened ({status}) but {_not_critical(cur, policy)}")


def _both_open(prev: Snapshot, cur: Snapshot, policy: Policy) -> Verdict:
    was, now = policy.critical(prev), policy.critical(cur)
    priority = _change("Priority", prev.priority, cur.priority)
    if was != now and prev.priority == cur.priority:
        # only with a ``critical`` criterion over other fields: say what made the difference
        priority = f"Priority {_v(cur.priority)} unchanged, {_custom_critical(policy)} " + (
            "matches now" if now else "no longer matches"
        )
    team = _change("OwnerTeam", prev.owner_team, cur.owner_team)
    if now and not was:
        also = (
            f"; OwnerTeam also changed {_v(prev.owner_team)} -> {_v(cur.owner_team)} "
            "(one event per cycle)"
            if _team_changed(prev, cur)
            else ""
        )
        return _fire(TransitionKind.PRIORITY_UPGRADE, cur, f"{priority}, now critical{also}")
    if was and not now:
        return _fire(TransitionKind.PRIORITY_DOWNGRADE, cur, f"{priority}, no longer critical")
    if now and _team_changed(prev, cur):
        return _fire(
            TransitionKind.REASSIGNED,
            cur,
            f"reassigned: {team}, {_is_critical(cur, policy)}",
        )
    return _none(_quiet_changes(prev, cur, policy, now))


def _quiet_changes(prev: Snapshot, cur: Snapshot, policy: Policy, critical: bool) -> str:
    """Explain an open -> open change that does not page, naming each changed field."""
    parts = []
    if prev.status != cur.status:
        parts.append(f"{_change('Status', prev.status, cur.status)}, still open")
    if prev.priority != cur.priority:
        band = "still critical" if critical else "still not critical"
        parts.append(f"{_change('Priority', prev.priority, cur.priority)}, {band}")
    if _team_changed(prev, cur):
        team = _change("OwnerTeam", prev.owner_team, cur.owner_team)
        parts.append(f"{team} but {_not_critical(cur, policy)}")
    elif prev.owner_team != cur.owner_team:
        parts.append(
            f"OwnerTeam '{prev.owner_team}' -> '{cur.owner_team}' differs only in case or spacing"
        )
    if prev.owner != cur.owner:
        parts.append(
            f"Owner changed {_v(prev.owner)} -> {_v(cur.owner)}; "
            "Owner changes alone do not page (original use cases)"
        )
    return "; ".join(parts) if parts else "no change that pages"


def decide(
    prev: Snapshot | None,
    cur: Snapshot,
    policy: Policy,
    *,
    baseline: bool = False,
    page_baseline_critical: bool = False,
) -> Verdict:
    """Compare two snapshots of one incident and return at most one transition, with a reason.

    See the module docstring for the rule table; the rules are applied in its order,
    then the rules file's use-case rule (if any) lets the chosen use case fire or not.
    """
    return _use_case_rule(_table(prev, cur, policy, baseline, page_baseline_critical), cur, policy)


def _table(
    prev: Snapshot | None, cur: Snapshot, policy: Policy, baseline: bool, page_critical: bool
) -> Verdict:
    if prev is None:
        return _first_sighting(cur, policy, baseline, page_critical)
    prev_cls, cur_cls = policy.status_class(prev.status), policy.status_class(cur.status)
    if cur_cls.terminal:
        return _into_terminal(prev, cur, policy)
    if prev_cls.terminal:
        return _reopened(prev, cur, policy)
    return _both_open(prev, cur, policy)


def _use_case_rule(verdict: Verdict, cur: Snapshot, policy: Policy) -> Verdict:
    """The rules file's say on the use case the table chose: off, or a ``when`` that does
    not match, holds it back (verdict none, naming the rule); a rule that lets it fire
    is named in its reason."""
    transition = verdict.transition
    if transition is None or policy.rules is None:
        return verdict
    kind = transition.kind
    if kind not in policy.rules.use_cases:
        return verdict
    rule = policy.rules.rule(kind)
    where = f"rule use_cases.{KEY_OF[kind]} (rules file line {rule.line})"
    if not rule.enabled:
        return Verdict(
            None, f"{kind.value} not sent: {where} turns it off ({verdict.reason})", held=kind
        )
    if rule.when is not None and not rule.when.matches(cur):
        return Verdict(
            None,
            f"{kind.value} not sent: {where} when {rule.when} does not match ({verdict.reason})",
            held=kind,
        )
    when = f" when {rule.when} matched" if rule.when is not None else " is on"
    return _fire(kind, cur, f"{verdict.reason}; {where}{when}")
