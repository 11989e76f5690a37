"""`lead_deliveries`: what the CRM was asked to take, so a rerun never posts a delivered lead.

One document per lead (`_id` = `lead_event_id`): its application and Kafka position, the
attempts so far, the last HTTP status, and its state: DELIVERED, PARKED (retries exhausted,
or waiting behind an earlier lead of its application), FAILED (the CRM refused it; a
`crm:{lead_event_id}` dead letter says why) or ERASED (its applicant was erased: never posted).
A lead not yet delivered keeps its payload here, since the topic's retention may drop it before
a redrive; it is removed on delivery and on erasure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from pymongo import UpdateOne
from pymongo.database import Database

from enrollment_pipeline.domain.lead_queue import QueuedLead
from enrollment_pipeline.lib.mongo.collections import LEAD_DELIVERIES, Document
from enrollment_pipeline.lib.mongo.writes import BoundedWriter, in_chunks

DELIVERED, PARKED, FAILED = "DELIVERED", "PARKED", "FAILED"
# Never delivered and never will be: its applicant was erased (its payload is gone).
ERASED = "ERASED"
OPEN = [PARKED, FAILED]
RETRIES_EXHAUSTED, BEHIND = "retries_exhausted", "behind"


class LeadDeliveryStore:
    def __init__(self, db: Database[Document], writer: BoundedWriter | None = None) -> None:
        self.collection = db[LEAD_DELIVERIES]
        self.writer = writer or BoundedWriter()

    def of_ids(self, lead_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        return {
            d["_id"]: d
            for chunk in in_chunks(lead_ids)
            for d in self.collection.find({"_id": {"$in": chunk}})
        }

    def open_of(self, application_ids: Iterable[str]) -> list[dict[str, Any]]:
        """Parked or failed leads of these applications."""
        return [
            d
            for chunk in in_chunks(application_ids)
            for d in self.collection.find(
                {"application_id": {"$in": chunk}, "status": {"$in": OPEN}}
            )
        ]

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

    def with_payload_of(self, application_id: str) -> list[str]:
        """The leads of an application that still keep their payload (contact data)."""
        cursor = self.collection.find(
            {"application_id": application_id, "lead": {"$exists": True}}, {"_id": 1}
        )
        return [d["_id"] for d in cursor]

    def write(self, updates: Sequence[UpdateOne]) -> None:
        self.writer.bulk_write(self.collection, updates)


# -- the documents, one shape per state ---------------------------------------------------------


def queued_of(doc: Mapping[str, Any]) -> QueuedLead:
    """A waiting lead as the delivery loop queues it (its payload is kept until delivered)."""
    source = doc["source"]
    return QueuedLead(
        doc["_id"],
        doc["application_id"],
        doc["lead"],
        source["topic"],
        source["partition"],
        source["offset"],
    )


def _where(lead: QueuedLead, now: datetime) -> dict[str, Any]:
    return {
        "application_id": lead.application_id,
        "source": {"topic": lead.topic, "partition": lead.partition, "offset": lead.offset},
        "updated_at": now,
    }


def _upsert(lead: QueuedLead, fields: dict[str, Any], now: datetime) -> UpdateOne:
    return UpdateOne(
        {"_id": lead.lead_event_id},
        {"$set": {**_where(lead, now), **fields}, "$setOnInsert": {"first_seen_at": now}},
        upsert=True,
    )


def now_behind(lead_event_id: str, blocked_by: str, now: datetime) -> UpdateOne:
    """A lead still waiting, now behind another lead (the earlier one went through)."""
    return UpdateOne(
        {"_id": lead_event_id}, {"$set": {"blocked_by": blocked_by, "updated_at": now}}
    )


def parked_behind(lead: QueuedLead, blocked_by: str, now: datetime) -> UpdateOne:
    return _upsert(
        lead,
        {
            "status": PARKED,
            "parked_reason": BEHIND,
            "lead": lead.payload,
            "blocked_by": blocked_by,
            "attempts": 0,
            "next_attempt_at": None,
        },
        now,
    )


def delivered(
    lead: QueuedLead, *, attempts: int, http_status: int | None, now: datetime
) -> UpdateOne:
    """Delivered: the payload (contact data) is dropped, the record stays so it is never
    posted again."""
    return UpdateOne(
        {"_id": lead.lead_event_id},
        {
            "$set": {
                **_where(lead, now),
                "attempts": attempts,
                "last_status": http_status,
                "status": DELIVERED,
                "delivered_at": now,
                "last_error": None,
            },
            "$unset": {"lead": "", "blocked_by": "", "parked_reason": "", "next_attempt_at": ""},
            "$setOnInsert": {"first_seen_at": now},
        },
        upsert=True,
    )


_PAYLOAD_AND_WAIT = {"lead": "", "blocked_by": "", "parked_reason": "", "next_attempt_at": ""}


def erased(lead: QueuedLead, now: datetime) -> UpdateOne:
    """A lead of an erased applicant read from the topic: recorded, never posted, no payload
    (its record makes a replay of the topic skip it too)."""
    return UpdateOne(
        {"_id": lead.lead_event_id},
        {
            "$set": {**_where(lead, now), "status": ERASED, "erased_at": now, "attempts": 0},
            "$unset": _PAYLOAD_AND_WAIT,
            "$setOnInsert": {"first_seen_at": now},
        },
        upsert=True,
    )


def closed_for_erasure(lead_event_id: str, now: datetime) -> UpdateOne:
    """A waiting lead (parked or refused) of an erased applicant: closed, its payload gone."""
    return UpdateOne(
        {"_id": lead_event_id, "status": {"$ne": DELIVERED}},
        {
            "$set": {"status": ERASED, "erased_at": now, "last_error": None, "updated_at": now},
            "$unset": _PAYLOAD_AND_WAIT,
        },
    )


def refused(
    lead: QueuedLead, *, attempts: int, http_status: int | None, detail: str, now: datetime
) -> UpdateOne:
    """Refused by the CRM for good (a `crm:` dead letter says why); kept for a redrive."""
    return _upsert(
        lead,
        {
            "attempts": attempts,
            "last_status": http_status,
            "status": FAILED,
            "lead": lead.payload,
            "last_error": detail,
            "parked_reason": None,
            "blocked_by": None,
            "next_attempt_at": None,
        },
        now,
    )


def parked(
    lead: QueuedLead,
    *,
    attempts: int,
    http_status: int | None,
    detail: str,
    retry_at: datetime,
    now: datetime,
) -> UpdateOne:
    """Every attempt failed transiently: retried from `retry_at`."""
    return _upsert(
        lead,
        {
            "attempts": attempts,
            "last_status": http_status,
            "status": PARKED,
            "parked_reason": RETRIES_EXHAUSTED,
            "lead": lead.payload,
            "last_error": detail,
            "blocked_by": None,
            "next_attempt_at": retry_at,
        },
        now,
    )
