"""`enrollment-pipeline explain APP_ID`: everything the pipeline knows of one application, for
the support person a broker just called.

Its stored events in fold order (`fold_history` over the event store), each with where it
came from (Kafka topic/partition/offset or archive file/line) and what it did (applied, or
the anomaly's reason); its read-model document; its follow-up with every attempt; its leads,
each published and where it is now (delivered, parked, refused, or not yet delivered); and
the dead letters that name it (by key, or by the application of a refused lead); its erasures,
if its applicant was erased. Every read is an indexed query; contact values are masked unless
asked (`reveal`).
"""

from __future__ import annotations

from typing import Any

from enrollment_pipeline.domain.events import EnrollmentEvent, iso_z
from enrollment_pipeline.domain.leads import leads_of
from enrollment_pipeline.domain.projection import fold_history
from enrollment_pipeline.lib.masking import mask_record, mask_text
from enrollment_pipeline.lib.mongo.collections import (
    APPLICATIONS,
    BROKER_FOLLOWUPS,
    DEAD_LETTERS,
    ENROLLMENT_EVENTS,
    ERASURES,
    FOLLOWUP_ATTEMPTS,
    LEAD_DELIVERIES,
    LEAD_PUBLICATIONS,
)
from enrollment_pipeline.lib.mongo.store import EnrollmentStore

# What a lead's delivery record says, in words.
WHERE = {
    "DELIVERED": "delivered",
    "FAILED": "refused by the CRM (waits for a redrive)",
    "ERASED": "not delivered: its applicant was erased",
}


def explain(store: EnrollmentStore, application_id: str, *, reveal: bool = False) -> dict[str, Any]:
    """One application as the pipeline knows it; `found` is False when nothing names it."""
    db = store.db
    stored = list(db[ENROLLMENT_EVENTS].find({"application_id": application_id}))
    by_id = {doc["_id"]: doc for doc in stored}
    events = [EnrollmentEvent.from_document(doc["event"]) for doc in stored]
    steps = fold_history(application_id, events)
    published = {
        doc["_id"]: list(doc.get("lead_event_ids") or [])
        for doc in db[LEAD_PUBLICATIONS].find({"_id": {"$in": list(by_id)}})
    }
    history = [
        {
            "event_id": step.event.event_id,
            "event_type": str(step.event.event_type),
            "occurred_at": iso_z(step.event.occurred_at),
            "source": _source(by_id[step.event.event_id].get("source") or {}),
            "stored_at": by_id[step.event.event_id].get("stored_at"),
            "effect": "applied" if step.anomaly is None else f"anomaly: {step.anomaly.reason}",
            "leads_published": published.get(step.event.event_id),
        }
        for step in steps
    ]
    document = db[APPLICATIONS].find_one({"_id": application_id})
    followup = db[BROKER_FOLLOWUPS].find_one({"_id": application_id})
    if followup is not None:
        followup["attempt_records"] = list(
            db[FOLLOWUP_ATTEMPTS].find({"app_id": application_id}).sort("_id", 1)
        )
    leads = _leads(db, application_id, steps, published)
    letters = [
        {
            "id": doc["_id"],
            "reason": doc.get("reason"),
            "status": doc.get("status"),
            "detail": doc.get("detail"),
            "first_seen_at": doc.get("first_seen_at"),
            "last_seen_at": doc.get("last_seen_at"),
        }
        for doc in db[DEAD_LETTERS]
        .find(
            {"$or": [{"key": application_id}, {"source.application_id": application_id}]},
            {"raw_base64": 0},
        )
        .sort("last_seen_at", 1)
    ]
    erasures = [
        {k: doc.get(k) for k in ("_id", "started_at", "reason", "requested_by", "touched")}
        for doc in db[ERASURES].find({"application_id": application_id}).sort("started_at", 1)
    ]
    result = {
        "application_id": application_id,
        "found": bool(stored or document or followup or leads or letters),
        "erasures": erasures,
        "events": history,
        "document": document,
        "followup": followup,
        "leads": leads,
        "dead_letters": letters,
    }
    if reveal:
        return result
    masked: dict[str, Any] = mask_record(result)
    for letter in masked["dead_letters"]:
        letter["detail"] = mask_text(letter["detail"] or "")
    return masked


def _source(fields: dict[str, Any]) -> dict[str, Any]:
    """Where the event came from, in the dead letters' naming (`kafka:…`, `archive:…`)."""
    if {"topic", "partition", "offset"} <= set(fields):
        return {"id": f"kafka:{fields['topic']}:{fields['partition']}:{fields['offset']}", **fields}
    if {"file", "line"} <= set(fields):
        return {"id": f"archive:{fields['file']}:{fields['line']}", **fields}
    return dict(fields)


def _leads(
    db: Any, application_id: str, steps: list[Any], published: dict[str, list[str]]
) -> list[dict[str, Any]]:
    """Each lead published for the application's events, and where its delivery is."""
    statuses = {lead.lead_event_id: str(lead.lead_status) for lead in leads_of(steps)}
    deliveries = {
        doc["_id"]: doc for doc in db[LEAD_DELIVERIES].find({"application_id": application_id})
    }
    ids = [(source, lead) for source, leads in published.items() for lead in leads]
    ids += [(d.get("lead", {}).get("source_event_id"), i) for i, d in deliveries.items()]
    seen, result = set(), []
    for source, lead_id in ids:
        if lead_id in seen:
            continue
        seen.add(lead_id)
        delivery = deliveries.get(lead_id)
        payload = (delivery or {}).get("lead") or {}
        result.append(
            {
                "lead_event_id": lead_id,
                "source_event_id": source,
                "lead_status": payload.get("lead_status") or statuses.get(lead_id),
                "published": source in published,
                "where": _where(delivery),
                "delivery": None
                if delivery is None
                else {k: v for k, v in delivery.items() if k not in ("_id", "lead")},
            }
        )
    return result


def _where(delivery: dict[str, Any] | None) -> str:
    if delivery is None:
        return "published, not delivered yet (on the lead topic)"
    status = delivery.get("status")
    if status == "PARKED":
        if delivery.get("parked_reason") == "behind":
            return f"parked behind lead {delivery.get('blocked_by')}"
        when = delivery.get("next_attempt_at")
        return "parked: retries exhausted" + (
            f", retried from {iso_z(when)}" if when is not None else ""
        )
    return WHERE.get(str(status), str(status))
