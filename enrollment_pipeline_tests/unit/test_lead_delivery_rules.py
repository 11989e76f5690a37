"""The parts of lead delivery that need no server: parsing, ordering, commit points, redaction."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

from enrollment_pipeline.domain.events import Rejection, RejectReason
from enrollment_pipeline.domain.lead_queue import QueuedLead, commit_points, lead_queues
from enrollment_pipeline.domain.leads import LeadContact, LeadEvent, parse_lead_record
from enrollment_pipeline.domain.offset_ranges import PartitionRange, RangePlan
from enrollment_pipeline.lib.clients.crm import (
    DeliveryOutcome,
    redacted_excerpt,
    retry_after_seconds,
)
from enrollment_pipeline.lib.leads.delivery import ServedLead
from enrollment_pipeline.lib.mongo.lead_store import queued_of

LEAD = LeadEvent(
    lead_event_id="L-1",
    source_event_id="E-1",
    application_id="APP-1",
    lead_status="NEW",
    occurred_at=datetime(2026, 11, 2, 9, tzinfo=UTC),
    contact=LeadContact(
        first_name="Jane", last_name="Doe", email="jane@example.com", phone=None, state="CA"
    ),
    product="MEDICAL",
)


def queued(lead_id: str, app: str, offset: int, partition: int = 0) -> QueuedLead:
    return QueuedLead(lead_id, app, {"lead_event_id": lead_id}, "leads", partition, offset)


def test_a_lead_record_parses_only_with_its_application_as_key():
    raw = LEAD.to_json_bytes()
    assert parse_lead_record(b"APP-1", raw) == LEAD
    assert parse_lead_record(b"APP-2", raw).reason is RejectReason.KEY_MISMATCH
    assert parse_lead_record(None, raw).reason is RejectReason.NULL_KEY
    assert parse_lead_record(b"APP-1", b"{nope").reason is RejectReason.INVALID_JSON
    extra = raw.replace(b'"product"', b'"date_of_birth":"1990-01-01","product"')
    rejected = parse_lead_record(b"APP-1", extra)
    assert isinstance(rejected, Rejection) and rejected.reason is RejectReason.SCHEMA_VIOLATION
    assert "1990" not in rejected.detail and "jane" not in rejected.detail


def test_the_crm_answer_keeps_its_words_not_the_contact():
    text = '{"error": "Doe, Jane <jane@example.com> from CA: phone other@x.example invalid"}'
    excerpt = redacted_excerpt(text, LEAD.model_dump(mode="json"))
    assert "Jane" not in excerpt and "Doe" not in excerpt and "@" not in excerpt
    assert "phone" in excerpt and "invalid" in excerpt
    assert len(redacted_excerpt("x" * 5000, {})) == 300


def test_retry_after_as_seconds_or_http_date():
    now = datetime(2026, 11, 29, 12, tzinfo=UTC)
    assert retry_after_seconds("7") == 7.0
    later = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert retry_after_seconds(later, now=lambda: now.timestamp()) == 30.0
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


def test_an_application_with_a_waiting_lead_keeps_its_new_leads_behind_it():
    fresh = [queued("A2", "APP-A", 5), queued("B1", "APP-B", 6), queued("A3", "APP-A", 7)]
    waiting = {
        "_id": "A1",
        "application_id": "APP-A",
        "lead": {"lead_event_id": "A1"},
        "source": {"topic": "leads", "partition": 0, "offset": 2},
    }
    held = [queued_of(waiting)]
    queues = {q.application_id: q for q in lead_queues(fresh, held, {"A1"}, set())}
    assert queues["APP-A"].blocked_by == "A1"
    assert [q.lead_event_id for q in queues["APP-A"].leads] == ["A2", "A3"]
    assert queues["APP-B"].blocked_by is None

    retried = {q.application_id: q for q in lead_queues(fresh, held, {"A1"}, {"APP-A"})}
    assert retried["APP-A"].blocked_by is None
    assert [q.lead_event_id for q in retried["APP-A"].leads] == ["A1", "A2", "A3"]


def test_leads_already_recorded_are_not_queued_again():
    fresh = [queued("A1", "APP-A", 0), queued("A1", "APP-A", 0), queued("A2", "APP-A", 1)]
    (queue,) = lead_queues(fresh, [], {"A1"}, set())
    assert [q.lead_event_id for q in queue.leads] == ["A2"]


def test_offsets_stop_before_the_first_lead_not_decided():
    plan = RangePlan("leads", (PartitionRange(0, 0, 10), PartitionRange(1, 0, 4)))
    fresh = [queued(f"L{i}", f"APP-{i}", i) for i in range(10)] + [
        queued("M0", "APP-M", 0, partition=1)
    ]
    done = DeliveryOutcome("delivered", 201, "HTTP 201", 1, (0.01,))
    late = DeliveryOutcome("out_of_time", 503, "HTTP 503", 2, (0.01, 0.01))
    results = [ServedLead(q, done) for q in fresh if q.lead_event_id not in ("L4", "L7")]
    results += [ServedLead(fresh[4], late), ServedLead(fresh[7], None)]
    assert commit_points(plan, fresh, undecided(results)) == {0: 4, 1: 4}
    parked_behind = [ServedLead(q, done) for q in fresh[:4]] + [
        ServedLead(q, None, blocked_by="L3") for q in fresh[4:10]
    ]
    assert commit_points(plan, fresh, undecided(parked_behind))[0] == 10


def undecided(results: list[ServedLead]) -> set[tuple[int, int]]:
    return {r.lead.position for r in results if not r.finished}
