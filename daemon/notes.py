"""Texts of the notes written back to Ivanti, and what each xMatters response does there.

The formats are the original workflow's (``[xMatters] Jane Smith | Mobile App responded
[ Acknowledge ]`` ...), so people who know the push integration recognise them. Every
piece that comes from outside the daemon (names, device names, responses, comments) is
untrusted: it goes through ``sanitize`` so control and invisible formatting characters
cannot reach Ivanti, and the whole note is capped at ``limit`` characters. Markup such as
``<b>`` is kept as literal text: the note is sent as a JSON string value and Ivanti
stores it as plain text, so escaping it would only garble what the responder wrote.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType

NOTE_LIMIT = 4000
TRUNCATION_MARKER = " …[truncated]"

# Names, device names and response texts are short; a longer one is garbage or abuse.
_SHORT_PIECE_LIMIT = 200
# Below this many characters a comment is not worth keeping inside the brackets.
_MIN_COMMENT_ROOM = len(TRUNCATION_MARKER) + 8

_WHITESPACE_CONTROLS = frozenset("\n\t\r")
_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs"})


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    if limit <= len(TRUNCATION_MARKER):
        return text[:limit].rstrip()  # no room for the marker; never end on a space
    return text[: limit - len(TRUNCATION_MARKER)].rstrip() + TRUNCATION_MARKER


def sanitize(text: str, limit: int) -> str:
    """Make untrusted text safe for a one-line note: no control characters, capped length.

    Newlines, tabs and carriage returns become spaces (words must not run together);
    all other control (Cc), invisible format (Cf, e.g. bidi overrides, zero-width) and
    lone surrogate (Cs) characters are dropped. Whitespace runs collapse to one space.
    A text over ``limit`` is cut and ends with the visible marker `` …[truncated]``,
    the total never exceeding ``limit``.
    """
    if limit < 0:
        raise ValueError(f"limit must not be negative, got {limit}")
    kept = []
    for ch in text:
        if ch in _WHITESPACE_CONTROLS:
            kept.append(" ")
        elif unicodedata.category(ch) not in _DROPPED_CATEGORIES:
            kept.append(ch)
    return _truncate(" ".join("".join(kept).split()), limit)


def _short(text: str | None, limit: int) -> str:
    return sanitize(text or "", min(_SHORT_PIECE_LIMIT, limit))


def _join(*parts: str) -> str:
    return " ".join(p for p in parts if p)


def _person(first: str | None, last: str | None, limit: int) -> str:
    return _join(_short(first, limit), _short(last, limit)) or "(unknown)"


def _person_device(first: str | None, last: str | None, device: str | None, limit: int) -> str:
    person = _person(first, last, limit)
    dev = _short(device, limit)
    return f"{person} | {dev}" if dev else person


def _with_tail(head: str, tail_template: str, untrusted: str | None, limit: int) -> str:
    """``head`` + the template filled with as much of the untrusted text as fits in ``limit``."""
    room = limit - len(head) - len(tail_template.format(""))
    if untrusted is None:
        return _truncate(head, limit)
    if room < _MIN_COMMENT_ROOM:
        return _truncate(head + tail_template.format(sanitize(untrusted, limit)), limit)
    return head + tail_template.format(sanitize(untrusted, room))


def response_note(
    prefix: str,
    first: str | None,
    last: str | None,
    device: str | None,
    response: str | None,
    comment: str | None = None,
    limit: int = NOTE_LIMIT,
) -> str:
    """``[xMatters] Jane Smith | Mobile App responded [ Acknowledge ]``.

    With a non-empty comment `` with comment [ … ]`` follows; the comment is what gets
    cut when the note would exceed ``limit``, so the note's structure stays readable.
    """
    head = _join(
        prefix.strip(),
        f"{_person_device(first, last, device, limit)} responded [ {_short(response, limit)} ]",
    )
    if comment is not None and not sanitize(comment, limit):
        comment = None
    return _with_tail(head, " with comment [ {} ]", comment, limit)


def comment_note(
    prefix: str, first: str | None, last: str | None, comment: str | None, limit: int = NOTE_LIMIT
) -> str:
    """``[xMatters] Jane Smith commented [ text ]``."""
    head = _join(prefix.strip(), f"{_person(first, last, limit)} commented")
    return _with_tail(head, " [ {} ]", comment or "", limit)


def split_target_name(target_name: str) -> tuple[str, str]:
    """Split an xMatters device target name ``person|device`` into (person, device)."""
    person, _, device = target_name.partition("|")
    return person.strip(), device.strip()


def delivery_note(
    prefix: str,
    status: str,
    target_name: str | None,
    first: str | None,
    last: str | None,
    device: str | None,
    limit: int = NOTE_LIMIT,
) -> str | None:
    """Delivery update note; ``None`` for UNCHANGED (the original writes nothing then).

    FAILED names the raw target (``jsmith|Mobile App``) as the original does; other
    statuses name the person and device, falling back to the parts of the target name
    when xMatters did not supply first/last name or device.
    """
    state = sanitize(status, _SHORT_PIECE_LIMIT).upper()
    if state == "UNCHANGED":
        return None
    if state == "FAILED":
        target = _short(target_name, limit) or "(unknown)"
        return _truncate(_join(prefix.strip(), f"Notification FAILED to {target}"), limit)
    person, target_device = split_target_name(target_name or "")
    if not _join(_short(first, limit), _short(last, limit)):
        first, last = person, ""
    who = _person_device(first, last, device or target_device, limit)
    return _truncate(_join(prefix.strip(), f"Notification {state} to {who}"), limit)


def summary_note(
    prefix: str,
    event_id_short: str | int,
    delivered: int,
    failed: int,
    responded: int,
    limit: int = NOTE_LIMIT,
) -> str:
    """One rolling note per event instead of one per delivery, for busy escalations."""
    event = _short(str(event_id_short), limit)
    body = (
        f"Event {event} notifications: {delivered} delivered, {failed} failed, "
        f"{responded} responded"
    )
    return _truncate(_join(prefix.strip(), body), limit)


class ResponseAction(StrEnum):
    """What an xMatters response does in Ivanti."""

    NOTE = "note"  # add a note only
    ASSIGN = "assign"  # add a note, set Owner = responder and Status = Active


DEFAULT_RESPONSE_ACTIONS: Mapping[str, ResponseAction] = MappingProxyType(
    {
        "assign to me": ResponseAction.ASSIGN,
        "acknowledge": ResponseAction.NOTE,
        "escalate": ResponseAction.NOTE,
    }
)


def _key(text: str) -> str:
    return " ".join(text.split()).casefold()


def parse_response_actions(spec: str) -> dict[str, ResponseAction]:
    """Parse ``"Assign to me=assign;Acknowledge=note"`` into {casefolded key: action}.

    Keys are response texts or response-option UUIDs. The action is after the LAST
    ``=`` so a response text may itself contain ``=``. Empty parts (a trailing ``;``)
    are ignored; an empty spec gives an empty mapping (every response then only notes).
    """
    actions: dict[str, ResponseAction] = {}
    for part in spec.split(";"):
        if not part.strip():
            continue
        key_text, sep, action_text = part.rpartition("=")
        key = _key(key_text)
        if not sep or not key:
            raise ValueError(f"response action {part.strip()!r}: expected '<response>=note|assign'")
        try:
            action = ResponseAction(action_text.strip().casefold())
        except ValueError:
            raise ValueError(
                f"response action {part.strip()!r}: unknown action {action_text.strip()!r} "
                "(expected note or assign)"
            ) from None
        if actions.get(key, action) is not action:
            raise ValueError(f"response action {part.strip()!r} contradicts an earlier entry")
        actions[key] = action
    return actions


def action_for(
    response_text: str | None, option_id: str | None, actions: Mapping[str, ResponseAction]
) -> ResponseAction:
    """The configured action for a response, by option UUID first, then text; else NOTE.

    Unknown responses only add a note: writing Owner/Status needs an explicit opt-in.
    """
    lookup = {_key(k): v for k, v in actions.items()}
    for candidate in (option_id, response_text):
        if candidate and _key(candidate) in lookup:
            return lookup[_key(candidate)]
    return ResponseAction.NOTE
