"""Contract 4: which lead each event emits, deterministic ids, and nothing extra leaves."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from enrollment_pipeline.domain.events import EnrollmentEvent
from enrollment_pipeline.domain.leads import LEAD_NAMESPACE, LeadEvent, lead_event_id, lead_events

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
APP = "APP-1"


def event(event_type: str, minute: int, payload: dict[str, Any]) -> EnrollmentEvent:
    return EnrollmentEvent.model_validate(
        {
            "event_id": f"evt-{minute:03d}",
            "event_type": event_type,
            "schema_version": 1,
            "occurred_at": (T0 + timedelta(minutes=minute)).isoformat(),
            "application_id": APP,
            "payload": payload,
        }
    )


def submitted(minute: int = 0, *, consent: bool = True) -> EnrollmentEvent:
    return event(
        "ApplicationSubmitted",
        minute,
        {
            "applicant": {
                "first_name": "Ada",
                "last_name": "Lovelace",
                "email": "ada@example.com",
                "state": "CA",
                "date_of_birth": "1990-12-10",
            },
            "plan": {"plan_id": "PLN-1", "product": "DENTAL", "coverage_start": "2027-01-01"},
            "channel": "BROKER",
            "broker": {"broker_id": "B1", "name": "Bob", "email": "bob@b.test"},
            "marketing_consent": consent,
        },
    )


def updated(minute: int, **changes: Any) -> EnrollmentEvent:
    return event("ApplicationUpdated", minute, {"changes": changes})


def simple(event_type: str, minute: int) -> EnrollmentEvent:
    payload = {
        "ApplicationApproved": {},
        "ApplicationDeclined": {"reason": "r"},
        "ApplicationWithdrawn": {"reason": "r"},
        "EnrollmentCompleted": {"policy_number": "POL-1", "effective_date": "2027-01-01"},
        "BrokerAssigned": {"broker": {"broker_id": "B2", "name": "Bea", "email": "bea@b.test"}},
        "BrokerSignatureReceived": {"broker_id": "B1", "signed_at": T0.isoformat()},
    }[event_type]
    return event(event_type, minute, payload)


def statuses(*events: EnrollmentEvent) -> list[tuple[str, str]]:
    return [(lead.source_event_id, lead.lead_status) for lead in lead_events(APP, events)]


def test_submission_with_consent_is_a_new_lead() -> None:
    [lead] = lead_events(APP, [submitted(0)])
    assert lead.lead_status == "NEW"
    assert lead.source_event_id == "evt-000"
    assert lead.application_id == APP
    assert lead.product == "DENTAL"
    assert lead.contact.model_dump() == {
        "first_name": "Ada",
        "last_name": "Lovelace",
        "email": "ada@example.com",
        "phone": None,
        "state": "CA",
    }


def test_wire_form_has_exactly_the_contract_fields() -> None:
    [lead] = lead_events(APP, [submitted(0)])
    raw = lead.to_json_bytes()
    assert b" " not in raw.replace(b"Ada Lovelace", b"")  # compact
    doc = json.loads(raw)
    assert set(doc) == {
        "lead_event_id",
        "source_event_id",
        "application_id",
        "lead_status",
        "occurred_at",
        "contact",
        "product",
    }
    assert set(doc["contact"]) == {"first_name", "last_name", "email", "phone", "state"}
    assert doc["occurred_at"] == "2026-11-26T10:00:00Z"
    for forbidden in (b"1990-12-10", b"date_of_birth", b"PLN-1", b"B1", b"bob@b.test"):
        assert forbidden not in raw
    assert LeadEvent.from_json_bytes(raw) == lead


def test_lead_ids_are_deterministic_per_source_event() -> None:
    history = [
        submitted(0),
        updated(1, applicant={"phone": "555"}),
        simple("ApplicationDeclined", 2),
    ]
    first, again = lead_events(APP, history), lead_events(APP, list(reversed(history)))
    assert [lead.lead_event_id for lead in first] == [lead.lead_event_id for lead in again]
    assert first[0].lead_event_id == str(uuid.uuid5(LEAD_NAMESPACE, "lead:evt-000"))
    assert first[0].lead_event_id == lead_event_id("evt-000")
    assert len({lead.lead_event_id for lead in first}) == 3


def test_lead_event_is_closed_and_frozen() -> None:
    [lead] = lead_events(APP, [submitted(0)])
    with pytest.raises(ValueError):
        LeadEvent.model_validate({**lead.model_dump(), "date_of_birth": "1990-12-10"})
    with pytest.raises(ValueError):
        lead.lead_status = "LOST"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        pytest.param([submitted(0)], ["NEW"], id="submitted"),
        pytest.param([submitted(0, consent=False)], [], id="no-consent"),
        pytest.param(
            [submitted(0, consent=False), updated(1, applicant={"phone": "5"})],
            [],
            id="no-consent-update",
        ),
        pytest.param(
            [submitted(0, consent=False), simple("ApplicationDeclined", 1)],
            [],
            id="no-consent-declined",
        ),
        pytest.param(
            [submitted(0, consent=False), updated(1, marketing_consent=True)],
            ["NEW"],
            id="consent-granted-by-update",
        ),
        pytest.param(
            [submitted(0), updated(1, applicant={"email": "ada@new.example"})],
            ["NEW", "UPDATED"],
            id="contact-change",
        ),
        pytest.param(
            [submitted(0), updated(1, plan={"coverage_start": "2027-02-01"})],
            ["NEW", "UPDATED"],
            id="plan-change",
        ),
        pytest.param(
            [submitted(0), updated(1, applicant={"date_of_birth": "1991-01-01"})],
            ["NEW"],
            id="dob-only-change",
        ),
        pytest.param(
            [submitted(0), updated(1, applicant={"state": "CA"})],
            ["NEW"],
            id="same-value",
        ),
        pytest.param(
            [submitted(0), updated(1, marketing_consent=True)], ["NEW"], id="consent-again"
        ),
        pytest.param([submitted(0), simple("ApplicationDeclined", 1)], ["NEW", "LOST"]),
        pytest.param([submitted(0), simple("ApplicationWithdrawn", 1)], ["NEW", "LOST"]),
        pytest.param(
            [submitted(0), simple("ApplicationApproved", 1), simple("EnrollmentCompleted", 2)],
            ["NEW", "CONVERTED"],
            id="enrolled",
        ),
        pytest.param(
            [
                submitted(0),
                simple("BrokerAssigned", 1),
                simple("BrokerSignatureReceived", 2),
                simple("ApplicationApproved", 3),
            ],
            ["NEW"],
            id="silent-events",
        ),
    ],
)
def test_lead_status_per_event(events: list[EnrollmentEvent], expected: list[str]) -> None:
    assert [status for _, status in statuses(*events)] == expected


def test_revoking_consent_emits_one_lost_with_the_old_contact() -> None:
    history = [
        submitted(0),
        updated(1, marketing_consent=False, applicant={"email": "gone@example.com"}),
        updated(2, applicant={"phone": "555"}),
        simple("ApplicationDeclined", 3),
    ]
    leads = lead_events(APP, history)
    assert [(lead.source_event_id, lead.lead_status) for lead in leads] == [
        ("evt-000", "NEW"),
        ("evt-001", "LOST"),
    ]
    assert leads[1].contact.email == "ada@example.com"


def test_consent_granted_again_after_revoke_opens_a_new_lead() -> None:
    history = [
        submitted(0),
        updated(1, marketing_consent=False),
        updated(2, marketing_consent=True),
    ]
    assert statuses(*history) == [("evt-000", "NEW"), ("evt-001", "LOST"), ("evt-002", "NEW")]


def test_anomalous_events_emit_nothing() -> None:
    history = [
        submitted(0),
        simple("ApplicationDeclined", 1),
        updated(2, applicant={"phone": "555"}),  # change after terminal
        simple("EnrollmentCompleted", 3),  # illegal transition
    ]
    assert statuses(*history) == [("evt-000", "NEW"), ("evt-001", "LOST")]


def test_nothing_before_submission() -> None:
    assert lead_events(APP, [simple("ApplicationApproved", 0)]) == []


def test_late_submission_emits_leads_in_fold_order() -> None:
    # The update arrived first, but occurred after the submission.
    history = [updated(5, applicant={"last_name": "King"}), submitted(0)]
    leads = lead_events(APP, history)
    assert [lead.lead_status for lead in leads] == ["NEW", "UPDATED"]
    assert leads[1].contact.last_name == "King"
    assert leads[1].occurred_at == T0 + timedelta(minutes=5)
