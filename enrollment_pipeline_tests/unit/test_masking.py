"""What the CLI prints of records: contact values masked, ids, times and types kept."""

from __future__ import annotations

import json

from enrollment_pipeline.lib.masking import MASK, mask_raw, mask_record, mask_text
from enrollment_pipeline_tests import factories as f

CONTACT = ("Ada", "Lovelace", "ada@example.com", "+1-555-0100", "1990-12-10", "Bob Broker")


def test_an_event_keeps_its_ids_types_and_times_and_loses_its_contact_values():
    event = {**f.SUBMITTED_WIRE, "event_id": "3f2b9d10-1234-4567-8901-123456789012"}
    masked = json.loads(mask_raw(json.dumps(event)))
    assert {k: masked[k] for k in ("event_id", "event_type", "occurred_at", "application_id")} == {
        k: event[k] for k in ("event_id", "event_type", "occurred_at", "application_id")
    }
    applicant = masked["payload"]["applicant"]
    assert applicant == {**dict.fromkeys(applicant, MASK), "state": "CA"}
    assert masked["payload"]["broker"] == {"broker_id": "BRK-1", "name": MASK, "email": MASK}
    assert masked["payload"]["plan"] == event["payload"]["plan"]


def test_input_that_is_not_json_is_masked_as_text():
    cut = json.dumps(f.SUBMITTED_WIRE)[:-40]  # the tail is missing: not JSON
    duplicated = '{"email": "ada@example.com", "email": "x@y.example", "phone": 5550100}'
    for raw in (cut, duplicated):
        masked = mask_raw(raw)
        assert not [value for value in CONTACT if value in masked], masked
    assert '"occurred_at": "2026-11-26T10:00:00Z"' in mask_raw(cut)
    assert '"application_id": "APP-1"' in mask_raw(cut)
    assert "x@y.example" not in mask_raw(duplicated)  # every copy of a duplicated key


def test_free_text_loses_emails_and_phone_numbers_but_not_dates_or_ids():
    text = (
        "call +1 (555) 010-0199 or 555.010.0100, mail jo@brokers.example; occurred "
        "2026-11-26T10:00:00Z, app APP-000123, event 3f2b9d10-1234-4567-8901-123456789012"
    )
    assert mask_text(text) == (
        f"call {MASK} or {MASK}, mail {MASK}; occurred 2026-11-26T10:00:00Z, app APP-000123, "
        "event 3f2b9d10-1234-4567-8901-123456789012"
    )


def test_absent_values_stay_absent_and_other_strings_lose_emails():
    doc = {"applicant": {"phone": None, "email": "a@b.example"}, "note": "from a@b.example"}
    assert mask_record(doc) == {"applicant": {"phone": None, "email": MASK}, "note": f"from {MASK}"}
