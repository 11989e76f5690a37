"""`lead_deliveries`: what the CRM was asked to take, so a rerun never posts a delivered lead.

One document per lead (`_id` = `lead_event_id`): its application and Kafka position, the
attempts so far, the last HTTP status, and its state: DELIVERED, PARKED (retries exhausted,
or waiting behind an earlier lead of its application) or FAILED (the CRM refused it; a
`crm:{lead_event_id}` dead letter says why). A lead not yet delivered keeps its payload here,
since the topic's retention may drop it before a redrive; it is removed on delivery.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from pymongo import UpdateOne
from pymongo.database import Database

from enrollment_pipeline.defs.mongo.resources import LEAD_DELIVERIES
from enrollment_pipeline.lib.mongo.writes import BoundedWriter

DELIVERED, PARKED, FAILED = "DELIVERED", "PARKED", "FAILED"
OPEN = [PARKED, FAILED]
RETRIES_EXHAUSTED, BEHIND = "retries_exhausted", "behind"


class LeadDeliveryStore:
    def __init__(self, db: Database, writer: BoundedWriter | None = None) -> None:
        self.collection = db[LEAD_DELIVERIES]
        self.writer = writer or BoundedWriter()

    def of_ids(self, lead_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        ids = list(set(lead_ids))
        if not ids:
            return {}
        return {d["_id"]: d for d in self.collection.find({"_id": {"$in": ids}})}

    def open_of(self, application_ids: Iterable[str]) -> list[dict[str, Any]]:
        """Parked or failed leads of these applications."""
        apps = list(set(application_ids))
        if not apps:
            return []
        return list(
            self.collection.find({"application_id": {"$in": apps}, "status": {"$in": OPEN}})
        )

    def applications_to_retry(self, now: datetime, *, redrive: bool) -> set[str]:
        """Applications with a parked lead whose retry time has come (any open lead on redrive)."""
        query: dict[str, Any] = (
            {"status": {"$in": OPEN}}
            if redrive
            else {
                "status": PARKED,
                "parked_reason": RETRIES_EXHAUSTED,
                "next_attempt_at": {"$lte": now},
            }
        )
        return {d["application_id"] for d in self.collection.find(query, {"application_id": 1})}

    def next_retry_at(self) -> datetime | None:
        """When the earliest parked lead may be retried (the sensor asks for a run then)."""
        doc = self.collection.find_one(
            {"status": PARKED, "parked_reason": RETRIES_EXHAUSTED},
            {"next_attempt_at": 1},
            sort=[("next_attempt_at", 1)],
        )
        return doc["next_attempt_at"] if doc else None

    def count_waiting(self) -> dict[str, int]:
        """Parked and failed leads. Two indexed counts: the delivered ones, which grow
        forever, are never counted on this path (every run and every check calls it)."""
        return {status: self.collection.count_documents({"status": status}) for status in OPEN}

    def write(self, updates: Sequence[UpdateOne]) -> None:
        self.writer.bulk_write(self.collection, updates)
