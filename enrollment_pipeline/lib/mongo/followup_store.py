"""The email job's reads and writes: due follow-ups in pages, attempt claims, outcomes.

A page's attempts are claimed by one unordered `insert_many` of their keys into
`followup_attempts`: a unique `_id` is atomic per document on MongoDB and FerretDB alike, so a
duplicate is an earlier claim, read back with one `$in`. The attempts' own records
(`send_started_at`, then the result) go in bulk through the `BoundedWriter`. Outcomes are
written to the follow-up with a guard on `attempt_count`, so applying one twice (a rerun after
a crash) changes nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, UpdateMany, UpdateOne
from pymongo.database import Database
from pymongo.errors import BulkWriteError

from enrollment_pipeline.domain.followup_queue import AWAITING, OPEN_STATUSES, PENDING
from enrollment_pipeline.lib.clients.mongo import MongoConnection
from enrollment_pipeline.lib.mongo.collections import (
    APPLICATIONS,
    BROKER_FOLLOWUPS,
    FOLLOWUP_ATTEMPTS,
    Document,
)
from enrollment_pipeline.lib.mongo.lease import WriterLease
from enrollment_pipeline.lib.mongo.writes import (
    DUPLICATE_KEY,
    BoundedWriter,
    WriteOp,
    chunks,
    in_chunks,
)

PAGE_SIZE = 500


class FollowupStore:
    def __init__(self, db: Database[Document], writer: BoundedWriter | None = None) -> None:
        self.db = db
        self.writer = writer or BoundedWriter()

    @classmethod
    def of(cls, mongo: MongoConnection) -> FollowupStore:
        return cls(mongo.db(), mongo.writer())

    # -- reads -------------------------------------------------------------------------------

    def due_pages(self, as_of: datetime, page_size: int = PAGE_SIZE) -> Iterator[list[Document]]:
        """Follow-ups awaiting a signature with `next_due_at` <= `as_of`, a page at a time
        (keyset by `_id`, so what a page changes never shifts the next one)."""
        after: str | None = None
        while True:
            query: dict[str, Any] = {"status": AWAITING, "next_due_at": {"$lte": as_of}}
            if after is not None:
                query["_id"] = {"$gt": after}
            page = list(
                self.db[BROKER_FOLLOWUPS].find(query).sort("_id", ASCENDING).limit(page_size)
            )
            if not page:
                return
            yield page
            after = page[-1]["_id"]

    def applications(self, ids: Sequence[str]) -> dict[str, Document]:
        """What the email shows of each application (no contact data is read)."""
        projection = {"broker": 1, "applicant.first_name": 1, "plan.product": 1}
        cursor = self.db[APPLICATIONS].find({"_id": {"$in": list(ids)}}, projection)
        return {d["_id"]: d for d in cursor}

    def open_by_retry_count(self) -> list[Document]:
        """Open follow-ups counted by retry count and status: one aggregation, however many
        are open (FerretDB v1 has `$sum` in `$group`, not `$min`)."""
        cursor = self.db[BROKER_FOLLOWUPS].aggregate(
            [
                {"$match": {"status": {"$in": list(OPEN_STATUSES)}}},
                {
                    "$group": {
                        "_id": {"retry_count": "$retry_count", "status": "$status"},
                        "followups": {"$sum": 1},
                    }
                },
            ]
        )
        return [{**row["_id"], "followups": row["followups"]} for row in cursor]

    def oldest_awaiting_cycle_start(self) -> datetime | None:
        oldest = self.db[BROKER_FOLLOWUPS].find_one(
            {"status": AWAITING}, {"cycle_started_at": 1}, sort=[("cycle_started_at", ASCENDING)]
        )
        return oldest["cycle_started_at"] if oldest else None

    # -- attempts ----------------------------------------------------------------------------

    def claim_many(self, claims: Sequence[Mapping[str, Any]], *, token: str) -> dict[str, Document]:
        """Claim attempts (each mapping has its key as `_id`) with unordered inserts; returns
        the attempts claimed before, as recorded, by key. `token` is this run's own: a key
        that exists with another token was claimed earlier (a duplicate, code 11000)."""
        docs = [{**claim, "status": "claimed", "claimed_by": token} for claim in claims]
        collection = self.db[FOLLOWUP_ATTEMPTS]
        duplicates = False
        for chunk in chunks(docs, self.writer.inserts_per_command):
            self.writer.guard()
            try:
                collection.insert_many(list(chunk), ordered=False)
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                if any(error.get("code") != DUPLICATE_KEY for error in errors):
                    raise
                duplicates = duplicates or bool(errors)
        if not duplicates:
            return {}
        earlier: dict[str, Document] = {}
        for ids in in_chunks(str(doc["_id"]) for doc in docs):
            for doc in collection.find({"_id": {"$in": ids}}):
                if doc.get("claimed_by") != token:
                    earlier[doc["_id"]] = doc
        return earlier

    def write_attempts(self, ops: Sequence[WriteOp]) -> None:
        """Attempt records in bounded commands, in the order given (a command's statements
        go together: a result before the next `send_started_at` of the same sender)."""
        self.writer.bulk_write(self.db[FOLLOWUP_ATTEMPTS], ops)

    # -- outcomes ----------------------------------------------------------------------------

    def guarded(self, lease: WriterLease | None) -> FollowupStore:
        """This store with every write command checked against `lease` (None: unchanged)."""
        if lease is None:
            return self
        return FollowupStore(self.db, dataclasses.replace(self.writer, guard=lease.guard))

    def apply(self, outcomes: Sequence[UpdateOne], pending_apps: Sequence[str]) -> None:
        """Write the page's follow-up outcomes, then mark PENDING the applications whose
        follow-up is PENDING now: an outcome whose follow-up changed since the page was read
        (signed, closed, a new broker) matched nothing, and its application stays as the
        fold wrote it."""
        self.writer.bulk_write(self.db[BROKER_FOLLOWUPS], outcomes)
        if not pending_apps:
            return
        now_pending = [
            d["_id"]
            for d in self.db[BROKER_FOLLOWUPS].find(
                {"_id": {"$in": list(pending_apps)}, "status": PENDING}, {"_id": 1}
            )
        ]
        self.writer.bulk_write(
            self.db[APPLICATIONS],
            [
                UpdateOne({"_id": app_id}, {"$set": {"broker_followup_status": PENDING}})
                for app_id in now_pending
            ],
        )


def attempt_update(fields: Mapping[str, Any], unset: Sequence[str] = ()) -> dict[str, Any]:
    update: dict[str, Any] = {"$set": dict(fields)}
    if unset:
        update["$unset"] = dict.fromkeys(unset, "")
    return update


def set_attempt_op(key: str, fields: Mapping[str, Any], unset: Sequence[str] = ()) -> UpdateOne:
    """One attempt's record, as a statement of a bulk write."""
    return UpdateOne({"_id": key}, attempt_update(fields, unset))


def send_started_op(keys: Sequence[str], *, as_of: datetime, run_id: str | None) -> UpdateMany:
    """`send_started_at` of the attempts about to go out, as one statement."""
    return UpdateMany(
        {"_id": {"$in": list(keys)}}, {"$set": {"send_started_at": as_of, "run_id": run_id}}
    )


def _same_cycle(followup: Mapping[str, Any]) -> dict[str, Any]:
    """The filter of an outcome: this follow-up, still in the broker cycle the page read (the
    fold may have started a new one since, which the outcome must not touch)."""
    return {
        "_id": followup["_id"],
        "broker_id": followup.get("broker_id"),
        "cycle_started_at": followup.get("cycle_started_at"),
    }


def sent_outcome(
    followup: Mapping[str, Any],
    *,
    attempt: int,
    key: str,
    as_of: datetime,
    next_due_at: datetime,
    status: str,
) -> UpdateOne:
    """Count an email as sent (also an UNKNOWN one): once, guarded by `attempt_count`."""
    return UpdateOne(
        {**_same_cycle(followup), "attempt_count": attempt - 1},
        {
            "$set": {
                "retry_count": followup.get("retry_count", 0) + 1,
                "attempt_count": attempt,
                "last_email_sent_at": as_of,
                "next_due_at": next_due_at,
            },
            "$push": {"attempts": {"key": key, "attempt": attempt, "at": as_of, "status": status}},
        },
    )


def pending_outcome(followup: Mapping[str, Any], *, reason: str, as_of: datetime) -> UpdateOne:
    """Escalate to PENDING (a person must act); a later signature still makes it SIGNED."""
    return UpdateOne(
        {**_same_cycle(followup), "status": AWAITING},
        {"$set": {"status": PENDING, "pending_reason": reason, "pending_since": as_of}},
    )


def failed_outcome(
    followup: Mapping[str, Any], *, attempt: int, key: str, reason: str, as_of: datetime
) -> UpdateOne:
    """A permanent failure: the attempt is used up and the follow-up goes PENDING."""
    return UpdateOne(
        {**_same_cycle(followup), "status": AWAITING},
        {
            "$set": {
                "status": PENDING,
                "pending_reason": reason,
                "pending_since": as_of,
                "attempt_count": max(attempt, followup.get("attempt_count", 0)),
            },
            "$push": {
                "attempts": {"key": key, "attempt": attempt, "at": as_of, "status": "failed"}
            },
        },
    )
