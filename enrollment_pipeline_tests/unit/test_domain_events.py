"""Contract 1 parsing: every dead-letter reason, strictness, and the canonical form."""

from __future__ import annotations

import copy
import json
from datetime import UTC, date, datetime
from typing import Any

import pytest

from enrollment_pipeline.domain.events import (
    EnrollmentEvent,
    EventType,
    Rejection,
    RejectReason,
    parse_archive_line,
    parse_record,
)
from enrollment_pipeline_tests.factories import SUBMITTED_WIRE as SUBMITTED

PAYLOADS: dict[str, dict[str, Any]] = {
    "ApplicationSubmitted": SUBMITTED["payload"],
    "ApplicationUpdated": {"changes": {"applicant": {"phone": None}, "marketing_consent": False}},
    "BrokerAssigned": {"broker": {"broker_id": "BRK-2", "name": "Bea", "email": "bea@b.test"}},
    "BrokerSignatureReceived": {"broker_id": "BRK-1", "signed_at": "2026-11-27T08:30:00+01:00"},
    "ApplicationApproved": {},
    "ApplicationDeclined": {"reason": "underwriting"},
    "ApplicationWithdrawn": {"reason": "changed mind"},
    "EnrollmentCompleted": {"policy_number": "POL-9", "effective_date": "2027-01-01"},
}


def record(**overrides: Any) -> dict[str, Any]:
    doc = copy.deepcopy(SUBMITTED)
    doc.update(overrides)
    return doc


def with_payload(path: str, value: Any) -> dict[str, Any]:
    """The submitted record with one payload field (dotted path) replaced or removed."""
    doc = record()
    *parents, leaf = path.split(".")
    node = doc["payload"]
    for part in parents:
        node = node[part]
    if value is _DROP:
        del node[leaf]
    else:
        node[leaf] = value
    return doc


_DROP = object()


def encode(doc: Any) -> bytes:
    return json.dumps(doc).encode("utf-8")


def test_valid_record_parses_into_typed_event() -> None:
    event = parse_record(b"APP-1", encode(SUBMITTED))
    assert isinstance(event, EnrollmentEvent)
    assert event.event_type is EventType.SUBMITTED
    assert event.occurred_at == datetime(2026, 11, 26, 10, tzinfo=UTC)
    assert event.payload.applicant.date_of_birth == date(1990, 12, 10)
    assert event.payload.plan.coverage_start == date(2027, 1, 1)


@pytest.mark.parametrize("event_type", list(PAYLOADS))
def test_every_event_type_parses_and_round_trips(event_type: str) -> None:
    doc = record(event_type=event_type, payload=PAYLOADS[event_type])
    event = parse_archive_line(encode(doc))
    assert isinstance(event, EnrollmentEvent)
    assert EnrollmentEvent.from_document(event.to_document()) == event
    assert EnrollmentEvent.from_document(event.to_document()).content_hash() == (
        event.content_hash()
    )
    json.dumps(event.to_document())  # JSON-able


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        pytest.param(b"APP-1", b"x" * 101, RejectReason.OVERSIZED, id="oversized"),
        pytest.param(b"APP-1", None, RejectReason.SCHEMA_VIOLATION, id="tombstone"),
        pytest.param(b"APP-1", b'{"a": "\xff"}', RejectReason.INVALID_UTF8, id="bad-utf8"),
        pytest.param(b"APP-1", b'{"event_id": ', RejectReason.INVALID_JSON, id="truncated"),
        pytest.param(b"APP-1", b'{"x": NaN}', RejectReason.INVALID_JSON, id="nan"),
        pytest.param(b"APP-1", b'{"x": Infinity}', RejectReason.INVALID_JSON, id="inf"),
        pytest.param(b"APP-1", b'{"x": -Infinity}', RejectReason.INVALID_JSON, id="-inf"),
        pytest.param(b"APP-1", b'{"a": 1, "a": 2}', RejectReason.INVALID_JSON, id="dup-key"),
        pytest.param(b"APP-1", b"[1, 2]", RejectReason.SCHEMA_VIOLATION, id="array"),
        pytest.param(b"APP-1", b'"text"', RejectReason.SCHEMA_VIOLATION, id="string"),
        pytest.param(
            b"APP-1",
            encode(record(event_type="ApplicationReopened")),
            RejectReason.UNKNOWN_EVENT_TYPE,
            id="unknown-type",
        ),
        pytest.param(
            b"APP-1",
            encode(record(schema_version=2)),
            RejectReason.UNSUPPORTED_SCHEMA_VERSION,
            id="version-2",
        ),
        pytest.param(
            b"APP-1",
            encode(record(schema_version="1")),
            RejectReason.UNSUPPORTED_SCHEMA_VERSION,
            id="version-string",
        ),
        pytest.param(
            b"APP-1",
            encode(record(schema_version=True)),
            RejectReason.UNSUPPORTED_SCHEMA_VERSION,
            id="version-bool",
        ),
        pytest.param(
            b"APP-1",
            encode(record(schema_version=1.0)),
            RejectReason.UNSUPPORTED_SCHEMA_VERSION,
            id="version-float",
        ),
        pytest.param(
            b"APP-1",
            encode(record(unexpected="x")),
            RejectReason.SCHEMA_VIOLATION,
            id="extra-field",
        ),
        pytest.param(None, encode(SUBMITTED), RejectReason.NULL_KEY, id="null-key"),
        pytest.param(b"APP-2", encode(SUBMITTED), RejectReason.KEY_MISMATCH, id="other-key"),
        pytest.param(b"\xffAPP", encode(SUBMITTED), RejectReason.KEY_MISMATCH, id="key-utf8"),
    ],
)
def test_reject_reasons(key: bytes | None, value: bytes | None, reason: RejectReason) -> None:
    result = parse_record(key, value, max_bytes=100 if reason is RejectReason.OVERSIZED else 10**6)
    assert isinstance(result, Rejection)
    assert result.reason is reason
    assert result.detail


def test_tombstone_detail_says_empty_record() -> None:
    assert parse_record(b"k", None) == Rejection(RejectReason.SCHEMA_VIOLATION, "empty record")


def test_size_limit_is_inclusive() -> None:
    value = encode(SUBMITTED)
    assert isinstance(parse_record(b"APP-1", value, max_bytes=len(value)), EnrollmentEvent)
    rejected = parse_record(b"APP-1", value, max_bytes=len(value) - 1)
    assert isinstance(rejected, Rejection) and rejected.reason is RejectReason.OVERSIZED


def test_checks_run_in_contract_order() -> None:
    # Oversized wins over bad UTF-8; a schema violation wins over a wrong key.
    assert parse_record(b"k", b"\xff" * 10, max_bytes=5).reason is RejectReason.OVERSIZED
    invalid = encode(with_payload("channel", "FAX"))
    assert parse_record(None, invalid).reason is RejectReason.SCHEMA_VIOLATION
    unknown = encode(record(event_type="Nope", schema_version=7))
    assert parse_record(b"APP-1", unknown).reason is RejectReason.UNKNOWN_EVENT_TYPE


@pytest.mark.parametrize(
    ("doc", "expected_path"),
    [
        pytest.param(with_payload("marketing_consent", "true"), "marketing_consent", id="str-bool"),
        pytest.param(with_payload("marketing_consent", 1), "marketing_consent", id="int-bool"),
        pytest.param(with_payload("applicant.first_name", 1), "first_name", id="int-str"),
        pytest.param(with_payload("applicant.first_name", ""), "first_name", id="empty-str"),
        pytest.param(with_payload("applicant.email", "not-an-email"), "email", id="email"),
        pytest.param(with_payload("applicant.state", "ca"), "state", id="state-lower"),
        pytest.param(with_payload("applicant.state", "CAL"), "state", id="state-long"),
        pytest.param(with_payload("applicant.date_of_birth", "10/12/1990"), "date_of_birth"),
        pytest.param(with_payload("applicant.date_of_birth", "1990-02-30"), "date_of_birth"),
        pytest.param(with_payload("applicant.date_of_birth", 660787200), "date_of_birth"),
        pytest.param(with_payload("plan.product", "PET"), "product", id="product"),
        pytest.param(with_payload("plan.coverage_start", _DROP), "coverage_start", id="missing"),
        pytest.param(with_payload("applicant.nickname", "Ada"), "nickname", id="extra-nested"),
        pytest.param(with_payload("broker.broker_id", 7), "broker_id", id="broker-id-int"),
        pytest.param(record(occurred_at="2026-11-26T10:00:00"), "occurred_at", id="naive"),
        pytest.param(record(occurred_at="2026-11-26"), "occurred_at", id="date-only"),
        pytest.param(record(occurred_at=1764151200), "occurred_at", id="epoch"),
        pytest.param(record(event_id=""), "event_id", id="empty-id"),
        pytest.param(record(application_id=None), "application_id", id="null-app"),
        pytest.param(record(payload=_DROP), "payload", id="no-payload"),
        pytest.param(
            record(event_type="ApplicationDeclined", payload={}), "reason", id="declined-empty"
        ),
        pytest.param(
            record(event_type="ApplicationApproved", payload={"reason": "x"}),
            "reason",
            id="approved-extra",
        ),
        pytest.param(
            record(event_type="ApplicationUpdated", payload={"changes": {}}),
            "changes",
            id="empty-changes",
        ),
        pytest.param(
            record(event_type="ApplicationUpdated", payload={"changes": {"plan": {}}}),
            "plan",
            id="empty-nested-changes",
        ),
        pytest.param(
            record(event_type="ApplicationUpdated", payload={"changes": {"colour": "red"}}),
            "colour",
            id="unknown-change",
        ),
        pytest.param(
            record(
                event_type="ApplicationUpdated",
                payload={"changes": {"applicant": {"email": None}}},
            ),
            "applicant",
            id="null-required-change",
        ),
        pytest.param(
            record(
                event_type="BrokerSignatureReceived",
                payload={"broker_id": "B", "signed_at": "2026-11-26T10:00:00"},
            ),
            "signed_at",
            id="naive-signed-at",
        ),
    ],
)
def test_schema_violations_name_the_field(doc: dict[str, Any], expected_path: str) -> None:
    if doc.get("payload") is _DROP:
        del doc["payload"]
    result = parse_record(b"APP-1", encode(doc))
    assert isinstance(result, Rejection)
    assert result.reason is RejectReason.SCHEMA_VIOLATION
    assert expected_path in result.detail


def test_violation_detail_never_echoes_values() -> None:
    doc = with_payload("applicant.email", "ada.secret.lovelace")
    doc["payload"]["applicant"]["first_name"] = 12345678
    doc["payload"]["applicant"]["date_of_birth"] = "1990/12/10"
    result = parse_record(b"APP-1", encode(doc))
    assert isinstance(result, Rejection)
    for secret in ("ada.secret.lovelace", "12345678", "1990/12/10"):
        assert secret not in result.detail


def test_violation_detail_is_bounded() -> None:
    doc = record(**{f"extra_{i:03d}_{'x' * 40}": i for i in range(50)})
    result = parse_record(b"APP-1", encode(doc))
    assert isinstance(result, Rejection)
    assert len(result.detail) <= 500


def test_archive_lines_have_no_key_checks() -> None:
    assert isinstance(parse_archive_line(encode(SUBMITTED) + b"\n"), EnrollmentEvent)
    rejected = parse_archive_line(b"not json")
    assert isinstance(rejected, Rejection) and rejected.reason is RejectReason.INVALID_JSON


def test_updated_changes_keep_only_given_fields() -> None:
    doc = record(event_type="ApplicationUpdated", payload=PAYLOADS["ApplicationUpdated"])
    event = parse_record(b"APP-1", encode(doc))
    assert isinstance(event, EnrollmentEvent)
    changes = event.payload.changes
    assert changes.applicant.given() == {"phone": None}
    assert event.to_document()["payload"] == PAYLOADS["ApplicationUpdated"]


def test_offsets_normalize_to_utc_z_and_hash_the_same() -> None:
    plus_two = parse_record(b"APP-1", encode(record(occurred_at="2026-11-26T12:00:00+02:00")))
    zulu = parse_record(b"APP-1", encode(SUBMITTED))
    assert isinstance(plus_two, EnrollmentEvent) and isinstance(zulu, EnrollmentEvent)
    assert plus_two.to_document()["occurred_at"] == "2026-11-26T10:00:00Z"
    assert plus_two.sort_key() == zulu.sort_key()
    assert plus_two.content_hash() == zulu.content_hash()


def test_content_hash_detects_different_content() -> None:
    a = parse_record(b"APP-1", encode(SUBMITTED))
    b = parse_record(b"APP-1", encode(with_payload("marketing_consent", False)))
    assert isinstance(a, EnrollmentEvent) and isinstance(b, EnrollmentEvent)
    assert a.event_id == b.event_id
    assert a.content_hash() != b.content_hash()
    assert len(a.content_hash()) == 64


def test_sort_key_keeps_microseconds_then_rank_then_id() -> None:
    event = parse_record(b"APP-1", encode(record(occurred_at="2026-11-26T10:00:00.123456Z")))
    assert isinstance(event, EnrollmentEvent)
    assert event.sort_key() == (datetime(2026, 11, 26, 10, 0, 0, 123456, tzinfo=UTC), 0, "evt-1")


def test_type_ranks_follow_the_lifecycle() -> None:
    ranks = {}
    for event_type, payload in PAYLOADS.items():
        event = parse_archive_line(encode(record(event_type=event_type, payload=payload)))
        assert isinstance(event, EnrollmentEvent)
        ranks[event_type] = event.type_rank
    assert sorted(ranks, key=ranks.__getitem__) == [
        "ApplicationSubmitted",
        "ApplicationUpdated",
        "BrokerAssigned",
        "BrokerSignatureReceived",
        "ApplicationApproved",
        "ApplicationDeclined",
        "ApplicationWithdrawn",
        "EnrollmentCompleted",
    ]
    assert sorted(ranks.values()) == list(range(8))


def test_reject_reason_codes_are_fixed() -> None:
    assert [r.value for r in RejectReason] == [
        "invalid_utf8",
        "invalid_json",
        "oversized",
        "null_key",
        "key_mismatch",
        "unknown_event_type",
        "unsupported_schema_version",
        "schema_violation",
        "conflicting_duplicate",
        "archive_unreadable",
        "crm_rejected",
        "unprocessable",
    ]


def test_events_are_immutable() -> None:
    event = parse_record(b"APP-1", encode(SUBMITTED))
    assert isinstance(event, EnrollmentEvent)
    with pytest.raises(ValueError):
        event.event_id = "other"  # type: ignore[misc]
