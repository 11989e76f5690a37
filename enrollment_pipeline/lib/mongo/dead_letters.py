"""`dead_letters`: every rejected input once, by its position (Contract 2).

Upserted by `_id`, so a rerun only moves `last_seen_at`; the raw bytes are kept (base64) so a
letter can be re-driven after a fix, up to `max_raw_bytes` (DEAD_LETTER_MAX_RAW_BYTES): a
bigger input keeps its first bytes, its full size and its SHA-256, so no letter can approach
MongoDB's 16 MB limit and the input can still be recognized at its source. Every query and the
decoding of the raw bytes are here, for the runs, the checks and the CLI alike.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo import DESCENDING, UpdateOne
from pymongo.database import Database

from enrollment_pipeline.domain.events import printable
from enrollment_pipeline.lib.mongo.collections import DEAD_LETTERS, Document
from enrollment_pipeline.lib.mongo.writes import BoundedWriter, in_chunks

OPEN, REDRIVEN = "OPEN", "REDRIVEN"
# Why a letter keeps no raw bytes (`raw_removed`): its applicant was erased, or its bytes were
# older than DEAD_LETTER_RAW_RETENTION_DAYS. Its reason, detail, key, size and hash stay, and a
# later sighting of the same input (a replay) does not bring the bytes back.
ERASURE, RETENTION = "erasure", "retention"
DEFAULT_MAX_RAW_BYTES = 256 * 1024
# A Kafka key is an application id (at most 256 characters); more than this is kept cut.
MAX_KEY_BYTES = 1024


@dataclass(frozen=True)
class DeadLetter:
    """A rejected input, kept whole (`raw`) with where it came from and why."""

    id: str  # kafka:{topic}:{partition}:{offset} | archive:{file}:{line} | crm:{lead_event_id}
    reason: str
    detail: str
    raw: bytes | None
    key: bytes | None
    source: Mapping[str, Any]
    # Of an input longer than `raw` (a line read only in part): its full size and SHA-256.
    raw_size: int | None = None
    raw_sha256: str | None = None
    # Set (ERASURE) when the input must not be kept: only its size and SHA-256 are.
    raw_withheld: str | None = None


def raw_bytes(letter: Mapping[str, Any]) -> bytes | None:
    """The input as it was received (or its first bytes, see `truncated`), from a letter."""
    encoded = letter.get("raw_base64")
    return base64.b64decode(encoded) if encoded else None


def key_bytes(letter: Mapping[str, Any]) -> bytes | None:
    """The Kafka key as received (kept as base64 when it was no clean UTF-8 text)."""
    if letter.get("key_base64"):
        return base64.b64decode(letter["key_base64"])
    key = letter.get("key")
    return key.encode("utf-8") if key is not None else None


def truncated(letter: Mapping[str, Any]) -> str | None:
    """Why a letter cannot be re-driven as it is (its input was kept cut), or None."""
    if letter.get("raw_truncated"):
        return (
            f"only the first {letter.get('raw_kept_bytes')} of its {letter.get('raw_size')} "
            f"bytes are kept (sha256 {letter.get('raw_sha256')}); re-publish the record from "
            "its source instead"
        )
    if letter.get("key_truncated"):
        return "its Kafka key was kept cut; re-publish the record from its source instead"
    removed = letter.get("raw_removed")
    if removed:
        why = (
            "when its applicant was erased"
            if removed == ERASURE
            else "after DEAD_LETTER_RAW_RETENTION_DAYS"
        )
        return f"its raw bytes were removed {why}; re-publish the record from its source instead"
    return None


def _raw_fields(letter: DeadLetter, limit: int) -> dict[str, Any]:
    raw = letter.raw
    if raw is None:
        return {"raw_base64": None, "raw_size": None, "raw_sha256": None, "raw_truncated": False}
    size = letter.raw_size if letter.raw_size is not None else len(raw)
    digest = letter.raw_sha256 or hashlib.sha256(raw).hexdigest()
    if letter.raw_withheld:
        return {
            **_NO_RAW,
            "raw_size": size,
            "raw_sha256": digest,
            "raw_removed": letter.raw_withheld,
        }
    kept = raw[:limit]
    return {
        "raw_base64": base64.b64encode(kept).decode(),
        "raw_size": size,
        "raw_sha256": digest,
        "raw_truncated": len(kept) < size,
        "raw_kept_bytes": len(kept),
    }


# What a letter keeps of its raw bytes once they are removed: nothing but size and hash.
_NO_RAW = {"raw_base64": None, "raw_truncated": False, "raw_kept_bytes": 0}


def _key_fields(key: bytes | None) -> dict[str, Any]:
    """The key as text to read (escaped where it is not printable), and as base64 when the
    text alone would not give it back (invalid UTF-8, a NUL the store refuses)."""
    if key is None:
        return {"key": None, "key_base64": None, "key_truncated": False}
    kept = key[:MAX_KEY_BYTES]
    text = kept.decode("utf-8", "replace")
    clean = printable(text)
    exact = clean == text and text.encode("utf-8") == kept
    return {
        "key": clean,
        "key_base64": None if exact else base64.b64encode(kept).decode(),
        "key_truncated": len(key) > MAX_KEY_BYTES,
    }


class DeadLetterStore:
    def __init__(
        self,
        db: Database[Document],
        writer: BoundedWriter | None = None,
        *,
        max_raw_bytes: int = DEFAULT_MAX_RAW_BYTES,
    ) -> None:
        self.collection = db[DEAD_LETTERS]
        self.writer = writer or BoundedWriter()
        self.max_raw_bytes = max_raw_bytes

    def upsert(self, letters: Sequence[DeadLetter], *, now: datetime) -> None:
        """Upsert each rejected input once by its position; a rerun only moves `last_seen_at`.

        A letter whose raw bytes were removed (its applicant erased, or past the retention
        period) gets none back when its input is seen again (one `$in` reads which)."""
        if not letters:
            return
        removed = self.removed_of([letter.id for letter in letters])
        ops = []
        for letter in letters:
            fields = {
                "reason": letter.reason,
                "detail": letter.detail,
                **_raw_fields(
                    dataclasses.replace(letter, raw_withheld=removed.get(letter.id))
                    if removed.get(letter.id) and not letter.raw_withheld
                    else letter,
                    self.max_raw_bytes,
                ),
                **_key_fields(letter.key),
                "source": dict(letter.source),
                "last_seen_at": now,
            }
            if fields.get("raw_removed") and not removed.get(letter.id):
                fields["raw_removed_at"] = now
            ops.append(
                UpdateOne(
                    {"_id": letter.id},
                    {"$set": fields, "$setOnInsert": {"first_seen_at": now, "status": OPEN}},
                    upsert=True,
                )
            )
        self.writer.bulk_write(self.collection, ops)

    def removed_of(self, letter_ids: Sequence[str]) -> dict[str, str]:
        """Of these letters, those whose raw bytes were removed, and why."""
        return {
            d["_id"]: d["raw_removed"]
            for chunk in in_chunks(letter_ids)
            for d in self.collection.find(
                {"_id": {"$in": chunk}, "raw_removed": {"$ne": None}}, {"raw_removed": 1}
            )
        }

    def remove_raw(self, letter_ids: Sequence[str], *, why: str, now: datetime) -> int:
        """Drop the raw bytes of these letters (their reason, detail, key, size and hash stay),
        one bounded update each; returns how many."""
        self.writer.bulk_write(
            self.collection,
            [
                UpdateOne(
                    {"_id": i},
                    {"$set": {**_NO_RAW, "raw_removed": why, "raw_removed_at": now}},
                )
                for i in letter_ids
            ],
        )
        return len(letter_ids)

    def raw_first_seen_before(self, cutoff: datetime, *, limit: int) -> list[str]:
        """Up to `limit` letters first seen before `cutoff` that still keep raw bytes."""
        cursor = self.collection.find(
            {"first_seen_at": {"$lt": cutoff}, "raw_base64": {"$ne": None}}, {"_id": 1}
        ).limit(limit)
        return [d["_id"] for d in cursor]

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
        return [
            d
            for chunk in in_chunks(letter_ids)
            for d in self.collection.find({"_id": {"$in": chunk}})
        ]

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
