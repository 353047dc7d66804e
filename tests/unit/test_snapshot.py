from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import daemon.snapshot as snapshot_module
from daemon.domain import Snapshot
from daemon.snapshot import (
    MalformedRecord,
    parse_incident,
    snapshot_from_json,
    snapshot_from_text,
    snapshot_text,
    snapshot_to_json,
    workflow_payload,
)

PAYLOADS = Path("/work/shared/reference/ivanti-payloads")
REC = "085867F47547496783005D95CB82D557"
_MISSING = object()  # marks a key to leave out of the entity


def raw(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "RecId": REC,
        "IncidentNumber": 12345,
        "Status": "Logged",
        "Priority": "2",
        "Owner": "jsmith",
        "OwnerTeam": "Network",
        "LastModDateTime": "2020-08-12T16:33:37-07:00",
        "LastModBy": "admin",
        "Category": "Network",
        "Phone": "+1 555",
        "ProfileFullName": "Jane Customer",
        "Subject": "VPN down",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not _MISSING}


def test_parses_the_captured_rapid7_entity() -> None:
    path = PAYLOADS / "rapid7_get_incident_good.json.resp"
    if not path.exists():
        pytest.skip("reference payloads not present")
    entity = json.loads(path.read_text())["value"][0]
    snap = parse_incident(entity, extra_fields=["Symptom", "IsVIP"])
    assert snap.rec_id == REC
    assert snap.incident_number == 12345
    assert snap.status == "Logged"
    assert snap.priority == "5"
    assert snap.owner == "user"
    assert snap.owner_team == "Service Management Team"
    assert snap.last_mod == datetime(2020, 8, 12, 23, 33, 37, tzinfo=UTC)
    assert snap.payload_fields["Category"] == ""  # stripped from the fixture
    assert snap.payload_fields["Symptom"] == "Test incident created by InsightConnect"
    assert snap.payload_fields["IsVIP"] == "false"


def test_normalisation() -> None:
    snap = parse_incident(
        raw(
            RecId="085867f47547496783005d95cb82d557",
            IncidentNumber=" 42 ",
            Status="  Active ",
            Priority=1,
            Owner=None,
            OwnerTeam=" Network ",
            LastModBy=_MISSING,
        )
    )
    assert snap.rec_id == REC
    assert snap.incident_number == 42
    assert snap.status == "Active"
    assert snap.priority == "1"
    assert snap.owner == ""
    assert snap.owner_team == "Network"
    assert snap.last_mod_by == ""


def test_missing_priority_is_empty() -> None:
    assert parse_incident(raw(Priority=_MISSING)).priority == ""
    assert parse_incident(raw(Priority=None)).priority == ""


def test_payload_fields_are_flat_strings() -> None:
    snap = parse_incident(
        raw(Category=None, Phone=_MISSING, Flag=True, Count=3, Ratio=0.5, Nested={"a": [1, 2]}),
        extra_fields=["Flag", "Count", "Ratio", "Nested", "Absent"],
    )
    assert dict(snap.payload_fields) == {
        "Category": "",
        "Phone": "",
        "ProfileFullName": "Jane Customer",
        "Subject": "VPN down",
        "Flag": "true",
        "Count": "3",
        "Ratio": "0.5",
        "Nested": '{"a":[1,2]}',
        "Absent": "",
    }


@pytest.mark.parametrize(
    ("overrides", "field", "rec_id"),
    [
        ({"RecId": _MISSING}, "RecId", None),
        ({"RecId": ""}, "RecId", None),
        ({"RecId": "not-hex"}, "RecId", "not-hex"),
        ({"RecId": 123}, "RecId", None),
        ({"IncidentNumber": _MISSING}, "IncidentNumber", REC),
        ({"IncidentNumber": "12a"}, "IncidentNumber", REC),
        ({"IncidentNumber": True}, "IncidentNumber", REC),
        ({"IncidentNumber": 1.5}, "IncidentNumber", REC),
        ({"Status": _MISSING}, "Status", REC),
        ({"Status": ["Active"]}, "Status", REC),
        ({"Status": "  "}, "Status", REC),
        ({"Priority": ["1"]}, "Priority", REC),
        ({"Owner": 5}, "Owner", REC),
        ({"OwnerTeam": {"x": 1}}, "OwnerTeam", REC),
        ({"LastModDateTime": _MISSING}, "LastModDateTime", REC),
        ({"LastModDateTime": "0001-01-01T00:00:00Z"}, "LastModDateTime", REC),
        ({"LastModDateTime": 5}, "LastModDateTime", REC),
    ],
)
def test_malformed_records_name_the_field(
    overrides: dict[str, object], field: str, rec_id: str | None
) -> None:
    with pytest.raises(MalformedRecord) as info:
        parse_incident(raw(**overrides))
    assert info.value.rec_id == rec_id
    assert info.value.problem.startswith(field)
    assert isinstance(info.value, ValueError)


def test_bad_datetime_problem_quotes_the_value() -> None:
    with pytest.raises(MalformedRecord) as info:
        parse_incident(raw(LastModDateTime="20x6-11-27T10:15:30Z"))
    assert info.value.problem == (
        "LastModDateTime '20x6-11-27T10:15:30Z' is not an ISO-8601 datetime"
    )
    assert REC in str(info.value)


def test_workflow_payload_matches_the_original_web_connection() -> None:
    snap = parse_incident(raw(Symptom="it broke", Status="Logged"), extra_fields=["Symptom"])
    payload = workflow_payload(snap, "New Incident")
    assert list(payload) == [
        "Category",
        "IncidentID",
        "Owner",
        "OwnerTeam",
        "Phone",
        "RecId",
        "RequestedBy",
        "Status",
        "Summary",
        "Type",
        "Symptom",
    ]
    assert payload == {
        "Category": "Network",
        "IncidentID": "12345",
        "Owner": "jsmith",
        "OwnerTeam": "Network",
        "Phone": "+1 555",
        "RecId": REC,
        "RequestedBy": "Jane Customer",
        "Status": "Logged",
        "Summary": "VPN down",
        "Type": "New Incident",
        "Symptom": "it broke",
    }


def test_extra_fields_cannot_override_fixed_keys() -> None:
    snap = parse_incident(raw(Type="sneaky", Status="Active"), extra_fields=["Type", "Status"])
    payload = workflow_payload(snap, "Terminate")
    assert payload["Type"] == "Terminate"
    assert payload["Status"] == "Active"


_text = st.text(max_size=20)
snapshots = st.builds(
    Snapshot,
    rec_id=st.text(alphabet="0123456789ABCDEF", min_size=32, max_size=32),
    incident_number=st.integers(min_value=0, max_value=10**9),
    status=_text,
    priority=_text,
    owner=_text,
    owner_team=_text,
    last_mod=st.datetimes(
        min_value=datetime(1970, 1, 1), max_value=datetime(2300, 1, 1), timezones=st.just(UTC)
    ),
    last_mod_by=_text,
    payload_fields=st.dictionaries(_text, _text, max_size=6),
)


@given(snapshots)
def test_json_round_trip_is_lossless(snap: Snapshot) -> None:
    stored = json.loads(json.dumps(snapshot_to_json(snap)))
    back = snapshot_from_json(stored)
    assert back == snap
    assert list(back.payload_fields) == list(snap.payload_fields)


@given(snapshots)
def test_a_remembered_text_gives_what_decoding_it_gives(snap: Snapshot) -> None:
    text = snapshot_text(snap)
    assert text == json.dumps(snapshot_to_json(snap))  # as SQLAlchemy's JSON type writes it
    remembered = snapshot_from_text(text)
    snapshot_module._TEXTS.clear()
    decoded = snapshot_from_text(text)
    assert remembered is snap  # a lookup...
    assert decoded == snap  # ...of what decoding gives
    assert list(decoded.payload_fields) == list(snap.payload_fields)


def test_remembered_texts_are_bounded_and_the_ones_used_lately_stay() -> None:
    base = parse_incident(raw())
    size = snapshot_module._TEXTS.size
    texts = [snapshot_text(base.with_changes(incident_number=n)) for n in range(3 * size)]
    assert len(snapshot_module._TEXTS) <= 2 * size
    kept = texts[-2 * size :]
    assert all(snapshot_module._TEXTS.get(t) is not None for t in kept[size:])
    assert snapshot_module._TEXTS.get(texts[0]) is None  # forgotten, so decoded
    assert snapshot_from_text(texts[0]) == base.with_changes(incident_number=0)


def test_damaged_texts_raise() -> None:
    good = snapshot_to_json(parse_incident(raw()))
    for damaged in ("{", json.dumps({**good, "status": None}), "[]"):
        with pytest.raises(ValueError):
            snapshot_from_text(damaged)


def test_snapshot_from_json_rejects_damaged_records() -> None:
    good = snapshot_to_json(parse_incident(raw()))
    for key, bad in [("incident_number", "12"), ("status", None), ("last_mod", "nope")]:
        with pytest.raises(ValueError):
            snapshot_from_json({**good, key: bad})
    with pytest.raises(ValueError):
        snapshot_from_json({**good, "payload_fields": {"a": 1}})
