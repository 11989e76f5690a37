"""The published JSON Schemas (schemas/) agree with the pydantic models on the same samples."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from enrollment_pipeline.domain.events import EnrollmentEvent, parse_archive_line
from enrollment_pipeline.domain.leads import LeadEvent, lead_events
from enrollment_pipeline_tests.factories import SUBMITTED_WIRE as SUBMITTED

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"

VALID_PAYLOADS: list[tuple[str, dict[str, Any]]] = [
    ("ApplicationSubmitted", SUBMITTED["payload"]),
    (
        "ApplicationSubmitted",
        {
            **{k: v for k, v in SUBMITTED["payload"].items() if k != "broker"},
            "applicant": {
                "first_name": "A",
                "last_name": "B",
                "email": "a@b.co",
                "state": "NY",
            },
            "channel": "ONLINE",
        },
    ),
    ("ApplicationSubmitted", {**SUBMITTED["payload"], "broker": None}),
    ("ApplicationUpdated", {"changes": {"marketing_consent": False}}),
    (
        "ApplicationUpdated",
        {"changes": {"applicant": {"phone": None}, "plan": {"product": "LIFE"}}},
    ),
    ("BrokerAssigned", {"broker": {"broker_id": "B2", "name": "Bea", "email": "bea@b.test"}}),
    ("BrokerSignatureReceived", {"broker_id": "B2", "signed_at": "2026-11-27T08:30:00.5+01:00"}),
    ("ApplicationApproved", {}),
    ("ApplicationDeclined", {"reason": "underwriting"}),
    ("ApplicationWithdrawn", {"reason": ""}),
    ("EnrollmentCompleted", {"policy_number": "POL-9", "effective_date": "2027-01-01"}),
]


def event(event_type: str, payload: dict[str, Any], **envelope: Any) -> dict[str, Any]:
    return {**copy.deepcopy(SUBMITTED), "event_type": event_type, "payload": payload, **envelope}


def changed(path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(SUBMITTED)
    *parents, leaf = path.split(".")
    node = doc
    for part in parents:
        node = node[part]
    node[leaf] = value
    return doc


INVALID_EVENTS: dict[str, dict[str, Any]] = {
    "unknown-type": event("ApplicationReopened", {}),
    "version-2": event("ApplicationApproved", {}, schema_version=2),
    "version-string": event("ApplicationApproved", {}, schema_version="1"),
    "version-bool": event("ApplicationApproved", {}, schema_version=True),
    "extra-envelope": event("ApplicationApproved", {}, source="x"),
    "naive-time": event("ApplicationApproved", {}, occurred_at="2026-11-26T10:00:00"),
    "date-only-time": event("ApplicationApproved", {}, occurred_at="2026-11-26"),
    "empty-id": event("ApplicationApproved", {}, event_id=""),
    "approved-with-reason": event("ApplicationApproved", {"reason": "x"}),
    "declined-without-reason": event("ApplicationDeclined", {}),
    "declined-submitted-shape": event("ApplicationDeclined", SUBMITTED["payload"]),
    "empty-changes": event("ApplicationUpdated", {"changes": {}}),
    "empty-nested-changes": event("ApplicationUpdated", {"changes": {"applicant": {}}}),
    "null-plan-change": event("ApplicationUpdated", {"changes": {"plan": None}}),
    "null-required-change": event(
        "ApplicationUpdated", {"changes": {"applicant": {"first_name": None}}}
    ),
    "unknown-change": event("ApplicationUpdated", {"changes": {"colour": "red"}}),
    "str-bool": changed("payload.marketing_consent", "true"),
    "int-str": changed("payload.applicant.first_name", 7),
    "bad-email": changed("payload.applicant.email", "nobody"),
    "lower-state": changed("payload.applicant.state", "ca"),
    "bad-date": changed("payload.applicant.date_of_birth", "10/12/1990"),
    "impossible-date": changed("payload.plan.coverage_start", "2027-02-30"),
    "bad-product": changed("payload.plan.product", "PET"),
    "bad-channel": changed("payload.channel", "FAX"),
    "extra-applicant-field": changed("payload.applicant.ssn", "x"),
    "long-id": event("ApplicationApproved", {}, event_id="E" * 257),
    "year-9999": event("ApplicationApproved", {}, occurred_at="9999-12-31T23:59:59-01:00"),
    "year-1899": event("ApplicationApproved", {}, occurred_at="1899-12-31T00:00:00Z"),
    "long-name": changed("payload.applicant.first_name", "J" * 201),
    "long-email": changed("payload.applicant.email", "a" * 250 + "@b.co"),
    "long-reason": event("ApplicationDeclined", {"reason": "r" * 2001}),
    "missing-plan": {
        **SUBMITTED,
        "payload": {k: v for k, v in SUBMITTED["payload"].items() if k != "plan"},
    },
}


def validator(name: str) -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


EVENT_SCHEMA = validator("enrollment-event")
LEAD_SCHEMA = validator("lead-integration-event")


def model_accepts(doc: dict[str, Any]) -> bool:
    return isinstance(parse_archive_line(json.dumps(doc).encode()), EnrollmentEvent)


@pytest.mark.parametrize(
    ("event_type", "payload"), VALID_PAYLOADS, ids=[t for t, _ in VALID_PAYLOADS]
)
def test_valid_events_pass_schema_and_model(event_type: str, payload: dict[str, Any]) -> None:
    doc = event(event_type, payload)
    assert EVENT_SCHEMA.is_valid(doc), list(EVENT_SCHEMA.iter_errors(doc))
    assert model_accepts(doc)
    # The canonical form the pipeline stores is itself a valid event.
    canonical = EnrollmentEvent.model_validate(doc).to_document()
    assert EVENT_SCHEMA.is_valid(canonical), list(EVENT_SCHEMA.iter_errors(canonical))


@pytest.mark.parametrize("doc", list(INVALID_EVENTS.values()), ids=list(INVALID_EVENTS))
def test_invalid_events_fail_schema_and_model(doc: dict[str, Any]) -> None:
    assert not EVENT_SCHEMA.is_valid(doc)
    assert not model_accepts(doc)


def test_every_event_type_has_one_schema_branch() -> None:
    schema = EVENT_SCHEMA.schema
    consts = [b["properties"]["event_type"]["const"] for b in schema["oneOf"]]
    assert sorted(consts) == sorted({t for t, _ in VALID_PAYLOADS})


def produced_leads() -> list[LeadEvent]:
    history = [
        EnrollmentEvent.model_validate(event("ApplicationSubmitted", SUBMITTED["payload"])),
        EnrollmentEvent.model_validate(
            event(
                "ApplicationWithdrawn",
                {"reason": "x"},
                event_id="evt-2",
                occurred_at="2026-11-27T10:00:00.250+02:00",
            )
        ),
    ]
    return lead_events("APP-1", history)


def test_produced_leads_pass_the_lead_schema() -> None:
    leads = produced_leads()
    assert [lead.lead_status for lead in leads] == ["NEW", "LOST"]
    for lead in leads:
        doc = json.loads(lead.to_json_bytes())
        assert LEAD_SCHEMA.is_valid(doc), list(LEAD_SCHEMA.iter_errors(doc))


def lead_doc(**changes: Any) -> dict[str, Any]:
    doc = json.loads(produced_leads()[0].to_json_bytes())
    doc.update(changes)
    return doc


@pytest.mark.parametrize(
    "doc",
    [
        lead_doc(date_of_birth="1990-12-10"),
        lead_doc(lead_status="OPEN"),
        lead_doc(product="PET"),
        lead_doc(contact={"first_name": "A", "last_name": "B", "email": "e", "state": "CA"}),
        lead_doc(contact={**lead_doc()["contact"], "date_of_birth": "1990-12-10"}),
        lead_doc(occurred_at="2026-11-26T10:00:00"),
        {k: v for k, v in lead_doc().items() if k != "lead_event_id"},
    ],
    ids=["dob", "status", "product", "no-phone-key", "contact-dob", "naive", "no-id"],
)
def test_invalid_leads_fail_schema_and_model(doc: dict[str, Any]) -> None:
    assert not LEAD_SCHEMA.is_valid(doc)
    with pytest.raises(ValueError):
        LeadEvent.from_json_bytes(json.dumps(doc).encode())
