"""Erasing an applicant (Contract 6: `enrollment-pipeline erase APP_ID`, the job
`erase_applicant`): their personal data goes from everywhere the project keeps it, their
application stays (ids, statuses, times), so the fold still works and a rebuild or a replay
gives the same redacted document.

Under the writers' lease, in this order (each step idempotent: an erasure that stopped halfway
is finished by running it again):

1. a tombstone in `erased_applications` (`_id` = the application): from then on ingestion,
   backfill and redrive redact whatever comes in for it before storing it (a replayed original
   is a plain duplicate of the redacted event), withhold its raw bytes from a dead letter, and
   publish no lead for it; lead delivery posts none of its leads;
2. its waiting leads (`lead_deliveries` that keep a payload: parked or refused) closed as ERASED,
   their payload removed (delivered ones keep none; `lead_publications` holds ids only);
3. its stored events (`enrollment_events`) redacted (`domain/erasure.py`), with their new
   content hashes;
4. its document (`applications`) and the fold's fields of its follow-up refolded from them;
5. the raw bytes of every dead letter that names it (by key, by the application of a refused
   lead, by the `application_id` of its body) or carries one of its contact values (its email
   or phone, in bytes that are not even JSON) dropped; reason, size and hash stay;
6. a record in `erasures`: when, why, who, and how many documents of each collection were
   touched (no personal data).

Not touched: the follow-up queue's broker data and attempts (the broker's, not the applicant's;
the attempts hold ids, times and statuses), `consumer_offsets`. Kafka's topics keep the original
records until their retention or compaction removes them (the tombstone keeps a replay from
bringing them back); the CRM is told out of band (README, "Erasing an applicant").
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pymongo import UpdateOne

from enrollment_pipeline.domain.erasure import personal_values, redact_event
from enrollment_pipeline.domain.events import EnrollmentEvent
from enrollment_pipeline.domain.projection import fold_history
from enrollment_pipeline.lib.ingestion.batch import BatchReport, plan_writes
from enrollment_pipeline.lib.mongo import lead_store
from enrollment_pipeline.lib.mongo.collections import (
    APPLICATIONS,
    BROKER_FOLLOWUPS,
    DEAD_LETTERS,
    ENROLLMENT_EVENTS,
    ERASED_APPLICATIONS,
    ERASURES,
    LEAD_DELIVERIES,
    Document,
)
from enrollment_pipeline.lib.mongo.dead_letters import ERASURE
from enrollment_pipeline.lib.mongo.lead_store import LeadDeliveryStore
from enrollment_pipeline.lib.mongo.lease import WriterLease, holding
from enrollment_pipeline.lib.mongo.store import EnrollmentStore

# Dead letters read at a time when looking for those that carry the applicant's values.
_SCAN_BATCH = 500


class NothingToEraseError(LookupError):
    """Nothing the project keeps names the application (a typo, or another case)."""


@dataclass(frozen=True)
class ErasurePlan:
    """What an erasure will touch, as far as the indexes tell (dead letters found only by
    their content are counted when it runs)."""

    application_id: str
    events: int
    document: bool
    dead_letters: int
    waiting_leads: int
    already_erased: bool

    @property
    def nothing(self) -> bool:
        return not (
            self.events
            or self.document
            or self.dead_letters
            or self.waiting_leads
            or self.already_erased
        )


@dataclass
class ErasureReport:
    erasure_id: str
    application_id: str
    started_at: datetime
    finished_at: datetime | None = None
    # Documents changed, per collection.
    touched: dict[str, int] = field(default_factory=dict)


def plan_erasure(store: EnrollmentStore, application_id: str) -> ErasurePlan:
    """What `erase_application` would touch (indexed counts), for a confirmation."""
    db = store.db
    return ErasurePlan(
        application_id=application_id,
        events=db[ENROLLMENT_EVENTS].count_documents({"application_id": application_id}),
        document=db[APPLICATIONS].count_documents({"_id": application_id}) > 0,
        dead_letters=db[DEAD_LETTERS].count_documents(_naming(application_id)),
        waiting_leads=len(LeadDeliveryStore(db).with_payload_of(application_id)),
        already_erased=bool(store.erased([application_id])),
    )


def erase_application(
    store: EnrollmentStore,
    application_id: str,
    *,
    reason: str,
    requested_by: str,
    lease: WriterLease | None,
    now: datetime | None = None,
) -> ErasureReport:
    """Erase the applicant of `application_id` everywhere (module docstring), under the
    writers' `lease`; `NothingToEraseError` when nothing names the application."""
    if not reason.strip():
        raise ValueError("an erasure needs a reason (the request it answers, e.g. a ticket)")
    with holding(lease):
        return _erase(
            store.guarded(lease),
            application_id,
            reason=reason,
            requested_by=requested_by,
            now=now or datetime.now(UTC),
        )


def _erase(
    store: EnrollmentStore, app_id: str, *, reason: str, requested_by: str, now: datetime
) -> ErasureReport:
    plan = plan_erasure(store, app_id)
    if plan.nothing:
        raise NothingToEraseError(
            f"nothing names {app_id!r}: no event, document, dead letter or lead (application "
            "ids are case-sensitive)"
        )
    db, writer = store.db, store.writer
    report = ErasureReport(erasure_id=str(uuid.uuid4()), application_id=app_id, started_at=now)
    touched = report.touched

    # 1. The tombstone first: whatever comes in for the application from now on is redacted.
    touched[ERASED_APPLICATIONS] = writer.insert_new(
        db[ERASED_APPLICATIONS],
        [{"_id": app_id, "erased_at": now, "erasure_id": report.erasure_id}],
    )

    # 2. Its waiting leads: never delivered now (delivery runs do not hold the lease: early).
    deliveries = LeadDeliveryStore(db, writer)
    waiting = deliveries.with_payload_of(app_id)
    deliveries.write([lead_store.closed_for_erasure(lead_id, now) for lead_id in waiting])
    touched[LEAD_DELIVERIES] = len(waiting)

    # 3. Its events, redacted in place (ids, types, times and sources stay).
    stored = list(db[ENROLLMENT_EVENTS].find({"application_id": app_id}))
    originals = [EnrollmentEvent.from_document(doc["event"]) for doc in stored]
    values = set().union(*(personal_values(event) for event in originals))
    redacted = [redact_event(event) for event in originals]
    updates = [
        UpdateOne(
            {"_id": doc["_id"]},
            {
                "$set": {
                    "event": event.to_document(),
                    "content_hash": event.content_hash(),
                    "redacted_at": now,
                }
            },
        )
        for doc, event in zip(stored, redacted, strict=True)
        if doc.get("content_hash") != event.content_hash()
    ]
    writer.bulk_write(db[ENROLLMENT_EVENTS], updates)
    touched[ENROLLMENT_EVENTS] = len(updates)

    # 4. The read model refolded from them, as any writer would write it.
    existing = store.applications([app_id])
    folds = {app_id: fold_history(app_id, redacted)} if redacted else {}
    writes = plan_writes(folds, existing, store.followups(folds), BatchReport())
    store.write_applications(writes.new_apps, writes.changed_apps)
    store.write_followups(writes.new_followups, writes.followup_updates)
    orphan = not redacted and app_id in existing
    if orphan:  # a document with no stored event is the fold of nothing: a rebuild drops it
        writer.guard()
        db[APPLICATIONS].delete_one({"_id": app_id})
    touched[APPLICATIONS] = len(writes.new_apps) + len(writes.changed_apps) + orphan
    touched[BROKER_FOLLOWUPS] = len(writes.new_followups) + len(writes.followup_updates)

    # 5. Dead letters: no raw bytes of it anywhere.
    letters = _letters_of(db, app_id, values)
    touched[DEAD_LETTERS] = store.dead_letters.remove_raw(sorted(letters), why=ERASURE, now=now)

    # 6. The record of it.
    report.finished_at = datetime.now(UTC)
    writer.insert_new(
        db[ERASURES],
        [
            {
                "_id": report.erasure_id,
                "application_id": app_id,
                "reason": reason,
                "requested_by": requested_by,
                "started_at": report.started_at,
                "finished_at": report.finished_at,
                "touched": dict(touched),
            }
        ],
    )
    return report


def _naming(app_id: str) -> dict[str, Any]:
    """Letters that name the application in an indexed field: its Kafka key, or the
    application of a refused lead."""
    return {"$or": [{"key": app_id}, {"source.application_id": app_id}]}


def _letters_of(db: Any, app_id: str, values: Iterable[str]) -> set[str]:
    """The dead letters that hold something of the applicant: named by key or source (the
    indexes), or whose raw bytes name the application or hold its email or phone (a streamed
    pass over the letters that keep bytes: input that is not JSON can only be read so)."""
    named = {**_naming(app_id), "raw_removed": {"$ne": ERASURE}}  # not done before
    found = {d["_id"] for d in db[DEAD_LETTERS].find(named, {"_id": 1})}
    the_id = re.compile(_token(app_id))  # ids are case-sensitive, emails are not
    contact = [re.compile(_token(v), re.IGNORECASE) for v in values if _distinctive(v)]
    cursor = db[DEAD_LETTERS].find({"raw_base64": {"$ne": None}}, {"raw_base64": 1})
    for letter in cursor.batch_size(_SCAN_BATCH):
        if letter["_id"] in found:
            continue
        text = base64.b64decode(letter["raw_base64"]).decode("utf-8", "replace")
        for candidate in {text, _unescaped(text)}:
            if the_id.search(candidate) or any(p.search(candidate) for p in contact):
                found.add(letter["_id"])
    return found


def _token(value: str) -> str:
    """`value` not inside a longer id or word (APP-1 is not in APP-10)."""
    return rf"(?<![\w-]){re.escape(value)}(?![\w-])"


def _distinctive(value: str) -> bool:
    """Values that name one person in a heap of bytes: an email, a phone (names and dates are
    too common to find by content; a letter that holds them holds the id or the email too)."""
    return "@" in value or sum(c.isdigit() for c in value) >= 7


def _unescaped(text: str) -> str:
    """JSON's escapes undone (`\\u0040` for `@`), as far as they can be, for the search."""
    try:
        return text.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except (UnicodeDecodeError, UnicodeEncodeError):
        return text


def erasures_of(store: EnrollmentStore, application_id: str) -> list[Document]:
    """The records of an application's erasures, oldest first."""
    cursor = store.db[ERASURES].find({"application_id": application_id}).sort("started_at", 1)
    return list(cursor)
