"""`dead_letters`: every rejected input once, by its position (Contract 2).

Upserted by `_id`, so a rerun only moves `last_seen_at`; the raw bytes are kept (base64) so a
letter can be re-driven after a fix. Every query and the decoding of the raw bytes are here,
for the runs, the checks and the CLI alike.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo import DESCENDING, UpdateOne
from pymongo.database import Database

from enrollment_pipeline.lib.mongo.collections import DEAD_LETTERS, Document
from enrollment_pipeline.lib.mongo.writes import BoundedWriter

OPEN, REDRIVEN = "OPEN", "REDRIVEN"


@dataclass(frozen=True)
class DeadLetter:
    """A rejected input, kept whole (`raw`) with where it came from and why."""

    id: str  # kafka:{topic}:{partition}:{offset} | archive:{file}:{line} | crm:{lead_event_id}
    reason: str
    detail: str
    raw: bytes | None
    key: bytes | None
    source: Mapping[str, Any]


def raw_bytes(letter: Mapping[str, Any]) -> bytes | None:
    """The input as it was received, from a stored letter."""
    encoded = letter.get("raw_base64")
    return base64.b64decode(encoded) if encoded else None


def key_bytes(letter: Mapping[str, Any]) -> bytes | None:
    key = letter.get("key")
    return key.encode("utf-8") if key is not None else None


class DeadLetterStore:
    def __init__(self, db: Database[Document], writer: BoundedWriter | None = None) -> None:
        self.collection = db[DEAD_LETTERS]
        self.writer = writer or BoundedWriter()

    def upsert(self, letters: Sequence[DeadLetter], *, now: datetime) -> None:
        """Upsert each rejected input once by its position; a rerun only moves `last_seen_at`."""
        if not letters:
            return
        ops = [
            UpdateOne(
                {"_id": letter.id},
                {
                    "$set": {
                        "reason": letter.reason,
                        "detail": letter.detail,
                        "raw_base64": base64.b64encode(letter.raw).decode()
                        if letter.raw is not None
                        else None,
                        "key": letter.key.decode("utf-8", "replace")
                        if letter.key is not None
                        else None,
                        "source": dict(letter.source),
                        "last_seen_at": now,
                    },
                    "$setOnInsert": {"first_seen_at": now, "status": OPEN},
                },
                upsert=True,
            )
            for letter in letters
        ]
        self.writer.bulk_write(self.collection, ops)

    def mark_redriven(self, letter_ids: Sequence[str], *, now: datetime) -> None:
        """Close dead letters whose input was applied after a fix."""
        self.writer.bulk_write(
            self.collection,
            [
                UpdateOne({"_id": i}, {"$set": {"status": REDRIVEN, "redriven_at": now}})
                for i in letter_ids
            ],
        )

    def get(self, letter_id: str) -> dict[str, Any] | None:
        return self.collection.find_one({"_id": letter_id})

    def of_ids(self, letter_ids: Sequence[str]) -> list[dict[str, Any]]:
        if not letter_ids:
            return []
        return list(self.collection.find({"_id": {"$in": list(letter_ids)}}))

    def listing(
        self,
        *,
        reason: str | None = None,
        since: datetime | None = None,
        status: str | None = OPEN,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """The newest letters first, filtered by reason, time last seen and status."""
        query = _query(reason=reason, since=since, status=status)
        cursor = self.collection.find(query).sort("last_seen_at", DESCENDING).limit(limit)
        return list(cursor)

    def count(
        self,
        *,
        reason: str | None = None,
        since: datetime | None = None,
        status: str | None = OPEN,
    ) -> int:
        """How many letters `listing` would give without its limit."""
        return self.collection.count_documents(_query(reason=reason, since=since, status=status))

    def count_first_seen_since(self, since: datetime) -> int:
        return self.collection.count_documents({"first_seen_at": {"$gte": since}})


def _query(*, reason: str | None, since: datetime | None, status: str | None) -> dict[str, Any]:
    query: dict[str, Any] = {}
    if reason:
        query["reason"] = reason
    if since:
        query["last_seen_at"] = {"$gte": since}
    if status:
        query["status"] = status
    return query
