from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.notes import (
    DEFAULT_RESPONSE_ACTIONS,
    TRUNCATION_MARKER,
    ResponseAction,
    action_for,
    comment_note,
    delivery_note,
    parse_response_actions,
    response_note,
    sanitize,
    split_target_name,
    summary_note,
)

P = "[xMatters]"


def test_response_note() -> None:
    assert (
        response_note(P, "Jane", "Smith", "Mobile App", "Acknowledge")
        == "[xMatters] Jane Smith | Mobile App responded [ Acknowledge ]"
    )


def test_response_note_with_comment() -> None:
    assert response_note(P, "Jane", "Smith", "Mobile App", "Acknowledge", "on my way") == (
        "[xMatters] Jane Smith | Mobile App responded [ Acknowledge ] with comment [ on my way ]"
    )


def test_blank_comment_is_no_comment() -> None:
    assert response_note(P, "Jane", "Smith", "Mobile App", "Escalate", " \n\x00") == (
        "[xMatters] Jane Smith | Mobile App responded [ Escalate ]"
    )


def test_missing_names_and_device_degrade_readably() -> None:
    assert response_note(P, None, None, None, "Acknowledge") == (
        "[xMatters] (unknown) responded [ Acknowledge ]"
    )
    assert response_note("", "Jane", "", "Email", "Acknowledge") == (
        "Jane | Email responded [ Acknowledge ]"
    )


def test_custom_prefix() -> None:
    assert comment_note("[XM]", "Jane", "Smith", "hi") == "[XM] Jane Smith commented [ hi ]"


def test_comment_note() -> None:
    assert comment_note(P, "Jane", "Smith", "text") == "[xMatters] Jane Smith commented [ text ]"


def test_delivery_failed_uses_the_target_name_as_given() -> None:
    assert delivery_note(P, "FAILED", "jsmith|Mobile App", "Jane", "Smith", "Mobile App") == (
        "[xMatters] Notification FAILED to jsmith|Mobile App"
    )


def test_delivery_other_status_names_person_and_device() -> None:
    assert delivery_note(P, "DELIVERED", "jsmith|Mobile App", "Jane", "Smith", "Mobile App") == (
        "[xMatters] Notification DELIVERED to Jane Smith | Mobile App"
    )


def test_delivery_falls_back_to_target_name_parts() -> None:
    assert delivery_note(P, "delivered", "jsmith|Work Email", None, None, None) == (
        "[xMatters] Notification DELIVERED to jsmith | Work Email"
    )


def test_delivery_unchanged_writes_nothing() -> None:
    assert delivery_note(P, "UNCHANGED", "jsmith|Mobile App", "Jane", "Smith", "Mobile App") is None


def test_summary_note() -> None:
    assert summary_note(P, "1234567", 3, 1, 1) == (
        "[xMatters] Event 1234567 notifications: 3 delivered, 1 failed, 1 responded"
    )


def test_split_target_name() -> None:
    assert split_target_name("jsmith|Mobile App") == ("jsmith", "Mobile App")
    assert split_target_name("jsmith") == ("jsmith", "")
    assert split_target_name("a|b|c") == ("a", "b|c")


def test_sanitize_removes_control_and_format_characters() -> None:
    text = "line1\nline2\tcol\r\n\x00nul\x07bell\x1b[31mred\x7fdel\x85nel\u202eevil\u200bzw"
    assert sanitize(text, 1000) == "line1 line2 col nulbell[31mreddelnelevilzw"


def test_sanitize_collapses_whitespace_and_strips() -> None:
    assert sanitize("   a   \n\n  b  ", 100) == "a b"


def test_markup_is_kept_as_plain_text() -> None:
    comment = '<script>alert("x")</script> <b>bold</b> & ]'
    note = comment_note(P, "Jane", "Smith", comment)
    assert note == f"[xMatters] Jane Smith commented [ {comment} ]"


def test_untrusted_names_are_sanitized() -> None:
    note = response_note(P, "Ja\nne", "Sm\x00ith", "Mob\u202eile", "Ack\tnowledge")
    assert note == "[xMatters] Ja ne Smith | Mobile responded [ Ack nowledge ]"


def test_megabyte_comment_is_capped_with_marker() -> None:
    comment = "x" * 1_000_000
    note = response_note(P, "Jane", "Smith", "Mobile App", "Acknowledge", comment)
    assert len(note) <= 4000
    assert TRUNCATION_MARKER in note
    assert note.startswith("[xMatters] Jane Smith | Mobile App responded [ Acknowledge ]")
    assert note.endswith(f"{TRUNCATION_MARKER} ]")
    short = comment_note(P, "Jane", "Smith", comment, limit=500)
    assert len(short) <= 500
    assert TRUNCATION_MARKER in short


def test_tiny_limit_still_respected() -> None:
    note = response_note(P, "Jane", "Smith", "Mobile App", "Acknowledge", "a comment", limit=30)
    assert len(note) <= 30


@given(st.text(max_size=300), st.integers(min_value=0, max_value=200))
def test_sanitize_properties(text: str, limit: int) -> None:
    out = sanitize(text, limit)
    assert len(out) <= limit
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in out)
    assert out == out.strip()
    assert "  " not in out
    if len(" ".join(text.split())) <= limit and text.isprintable():
        assert out == " ".join(text.split())


@given(st.text(), st.text(), st.text(), st.text(), st.text() | st.none(), st.integers(0, 300))
def test_response_note_never_exceeds_limit(
    first: str, last: str, device: str, response: str, comment: str | None, limit: int
) -> None:
    assert len(response_note(P, first, last, device, response, comment, limit=limit)) <= limit


def test_default_response_actions() -> None:
    assert action_for("Assign to me", None, DEFAULT_RESPONSE_ACTIONS) is ResponseAction.ASSIGN
    assert action_for("acknowledge", None, DEFAULT_RESPONSE_ACTIONS) is ResponseAction.NOTE
    assert action_for("Escalate", None, DEFAULT_RESPONSE_ACTIONS) is ResponseAction.NOTE
    assert action_for("Something new", None, DEFAULT_RESPONSE_ACTIONS) is ResponseAction.NOTE
    assert action_for(None, None, DEFAULT_RESPONSE_ACTIONS) is ResponseAction.NOTE


def test_parse_response_actions() -> None:
    actions = parse_response_actions("Assign to me=assign;Acknowledge=note;Escalate=NOTE;")
    assert actions == {
        "assign to me": ResponseAction.ASSIGN,
        "acknowledge": ResponseAction.NOTE,
        "escalate": ResponseAction.NOTE,
    }
    assert parse_response_actions("") == {}


def test_option_uuid_wins_over_text() -> None:
    uuid = "8C0F6E4A-3B7A-4D55-9A0E-1F5C8A1B2C3D"
    actions = parse_response_actions(f"{uuid}=assign;Take it=note")
    assert action_for("Take it", uuid.lower(), actions) is ResponseAction.ASSIGN
    assert action_for("TAKE IT", "other-id", actions) is ResponseAction.NOTE


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("Assign to me", "Assign to me"),
        ("=assign", "=assign"),
        ("Acknowledge=page", "page"),
        ("Ack=note;Ack=assign", "Ack=assign"),
    ],
)
def test_parse_response_actions_rejects_bad_parts(spec: str, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_response_actions(spec)
    assert fragment in str(info.value)
