"""An erased applicant's events: no personal value left, still Contract-1 events, the same
redaction every time (so a replayed original is a plain duplicate of the stored one)."""

from __future__ import annotations

import json
import re

from hypothesis import given
from hypothesis import strategies as st

from enrollment_pipeline.domain.erasure import (
    ERASED,
    personal_values,
    placeholder_email,
    redact_event,
)
from enrollment_pipeline.domain.events import EMAIL_PATTERN, EnrollmentEvent, parse_record
from enrollment_pipeline.domain.projection import fold_application
from enrollment_pipeline_tests import factories as f

PERSONAL = ("Jane", "Doe", "jane.doe@example.com", "+1-555-0100", "1990-04-01")


def parsed(event: dict) -> EnrollmentEvent:
    outcome = parse_record(*f.record(event))
    assert isinstance(outcome, EnrollmentEvent), outcome
    return outcome


def update(app_id: str, applicant: dict) -> dict:
    return f.event("ApplicationUpdated", app_id, 5, {"changes": {"applicant": applicant}})


def test_a_submission_keeps_everything_but_the_applicant_s_personal_fields():
    original = parsed(f.submitted("APP-1"))
    redacted = redact_event(original)
    text = json.dumps(redacted.to_document())
    assert not any(value in text for value in PERSONAL)
    applicant = redacted.to_document()["payload"]["applicant"]
    assert applicant == {
        "first_name": ERASED,
        "last_name": ERASED,
        "email": placeholder_email("APP-1"),
        "phone": None,
        "state": "CA",
        "date_of_birth": None,
    }
    before, after = original.to_document(), redacted.to_document()
    assert {k: v for k, v in before.items() if k != "payload"} == {
        k: v for k, v in after.items() if k != "payload"
    }
    assert before["payload"]["broker"] == after["payload"]["broker"]  # the broker's, kept
    assert redacted.content_hash() != original.content_hash()
    # Still an event as a producer would send it, and the same redaction again.
    again = parse_record(b"APP-1", json.dumps(after).encode())
    assert again == redacted
    assert redact_event(redacted) is redacted


def test_an_update_keeps_its_shape_and_events_without_personal_data_stay_as_they_are():
    original = parsed(update("APP-1", {"email": "new@example.com", "phone": "+1-555-0199"}))
    redacted = redact_event(original)
    assert redacted.to_document()["payload"]["changes"] == {
        "applicant": {"email": placeholder_email("APP-1"), "phone": None}
    }
    only_state = parsed(update("APP-1", {"state": "NY"}))
    assert redact_event(only_state) is only_state
    approval = parsed(f.approved("APP-1", 10))
    assert redact_event(approval) is approval


def test_a_redacted_history_folds_to_the_same_status_without_the_values():
    events = [
        parsed(f.submitted("APP-1", 0)),
        parsed(update("APP-1", {"last_name": "Doe-Smith"})),
        parsed(f.approved("APP-1", 10)),
    ]
    values = set().union(*(personal_values(e) for e in events))
    assert values == {"Jane", "Doe", "jane.doe@example.com", "+1-555-0100", "1990-04-01"} | {
        "Doe-Smith"
    }
    folded = fold_application("APP-1", [redact_event(e) for e in events])
    original = fold_application("APP-1", events)
    assert (folded.status, folded.event_count, folded.broker) == (
        original.status,
        original.event_count,
        original.broker,
    )
    assert not any(v in json.dumps(folded.to_document(), default=str) for v in values)


@given(st.text(min_size=1, max_size=256))
def test_the_placeholder_email_passes_contract_1_for_any_application_id(app_id):
    email = placeholder_email(app_id)
    assert re.fullmatch(EMAIL_PATTERN, email) and len(email) <= 254
    assert email == placeholder_email(app_id)
