"""The Contract-2 collections and the indexes behind every query the pipeline makes.

Indexes are what MongoDB uses in production; FerretDB v1 creates and enforces them (unique
ones) but scans, so callers keep the number of commands per batch small.
"""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING, IndexModel

# A document as pymongo reads and writes it.
Document = dict[str, Any]

ENROLLMENT_EVENTS = "enrollment_events"
APPLICATIONS = "applications"
BROKER_FOLLOWUPS = "broker_followups"
FOLLOWUP_ATTEMPTS = "followup_attempts"
DEAD_LETTERS = "dead_letters"
CONSUMER_OFFSETS = "consumer_offsets"
# Source events whose leads are out (an insert is cheap; an update is a scan on FerretDB).
LEAD_PUBLICATIONS = "lead_publications"
# One per lead the CRM was asked to take: delivered, parked or failed (Contract 4).
LEAD_DELIVERIES = "lead_deliveries"
# The writers' lease of the read model: one document per epoch (lib/mongo/lease.py).
WRITER_LEASES = "writer_leases"
# One tombstone per erased applicant (`_id` = application_id): what comes in for it later is
# redacted before it is stored or dead-lettered (lib/erasure.py).
ERASED_APPLICATIONS = "erased_applications"
# One record per erasure: when, why, who, and how many documents of each collection (no
# personal data).
ERASURES = "erasures"
# The enrollment topic's partition count the writers lease by (lib/mongo/layout.py).
PIPELINE_LAYOUT = "pipeline_layout"

# The queries the pipeline makes, each backed by an index (unique where the contract says so).
INDEXES: dict[str, list[IndexModel]] = {
    ENROLLMENT_EVENTS: [
        IndexModel([("event_id", ASCENDING)], unique=True, name="event_id_unique"),
        IndexModel([("application_id", ASCENDING)], name="application_id"),
    ],
    APPLICATIONS: [
        IndexModel([("status", ASCENDING)], name="status"),
        IndexModel([("broker_followup_status", ASCENDING)], name="broker_followup_status"),
    ],
    BROKER_FOLLOWUPS: [
        IndexModel([("status", ASCENDING), ("next_due_at", ASCENDING)], name="due"),
    ],
    FOLLOWUP_ATTEMPTS: [
        IndexModel([("app_id", ASCENDING)], name="app_id"),
    ],
    DEAD_LETTERS: [
        IndexModel([("reason", ASCENDING), ("last_seen_at", ASCENDING)], name="reason_time"),
        # `status`: open letters by reason; `explain`: the letters that name an application.
        IndexModel([("status", ASCENDING), ("reason", ASCENDING)], name="status_reason"),
        IndexModel([("key", ASCENDING)], name="key"),
        IndexModel([("source.application_id", ASCENDING)], name="source_application_id"),
        # Retention of the raw bytes (DEAD_LETTER_RAW_RETENTION_DAYS).
        IndexModel([("first_seen_at", ASCENDING)], name="first_seen_at"),
    ],
    LEAD_DELIVERIES: [
        IndexModel([("application_id", ASCENDING), ("status", ASCENDING)], name="application"),
        IndexModel([("status", ASCENDING), ("next_attempt_at", ASCENDING)], name="retry_due"),
    ],
    ERASURES: [
        IndexModel([("application_id", ASCENDING)], name="application_id"),
    ],
    WRITER_LEASES: [
        IndexModel([("scope", ASCENDING), ("epoch", ASCENDING)], name="scope_epoch"),
    ],
    CONSUMER_OFFSETS: [
        IndexModel(
            [("group", ASCENDING), ("topic", ASCENDING), ("partition", ASCENDING)],
            unique=True,
            name="group_topic_partition",
        ),
    ],
}
