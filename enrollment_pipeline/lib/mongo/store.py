"""The Contract-2 collections as the batch jobs use them: few commands a batch.

Every read takes one `$in` query per collection, because on FerretDB each query is a scan
and on MongoDB round trips dominate. Every write goes through the `BoundedWriter`, which
splits it into commands a FerretDB server can take (`lib/mongo/writes.py`). Nothing here
needs transactions: each write is idempotent, so a crash between two of them is healed by a
rerun.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo import ReplaceOne, UpdateOne
from pymongo.database import Database

from enrollment_pipeline.domain.events import EnrollmentEvent
from enrollment_pipeline.lib.clients.mongo import MongoConnection
from enrollment_pipeline.lib.mongo.collections import (
    APPLICATIONS,
    BROKER_FOLLOWUPS,
    CONSUMER_OFFSETS,
    ENROLLMENT_EVENTS,
    ERASED_APPLICATIONS,
    LEAD_PUBLICATIONS,
    Document,
)
from enrollment_pipeline.lib.mongo.dead_letters import (
    DEFAULT_MAX_RAW_BYTES,
    DeadLetter,
    DeadLetterStore,
)
from enrollment_pipeline.lib.mongo.lease import WriterLease
from enrollment_pipeline.lib.mongo.writes import BoundedWriter, in_chunks


@dataclass(frozen=True)
class StoredEventInfo:
    content_hash: str
    leads_published: bool
    stored_at: datetime | None = None


class EnrollmentStore:
    """Reads and writes of one batch, over the pipeline's database."""

    def __init__(
        self,
        db: Database[Document],
        writer: BoundedWriter | None = None,
        *,
        max_raw_bytes: int = DEFAULT_MAX_RAW_BYTES,
    ) -> None:
        self.db = db
        self.writer = writer or BoundedWriter()
        self.dead_letters = DeadLetterStore(db, self.writer, max_raw_bytes=max_raw_bytes)

    @classmethod
    def of(
        cls, mongo: MongoConnection, *, max_raw_bytes: int = DEFAULT_MAX_RAW_BYTES
    ) -> EnrollmentStore:
        """The store over a connection's database, with the write limits of its engine."""
        return cls(mongo.db(), mongo.writer(), max_raw_bytes=max_raw_bytes)

    def guarded(self, lease: WriterLease | None) -> EnrollmentStore:
        """This store with every write command checked against `lease` (None: unchanged)."""
        if lease is None:
            return self
        writer = dataclasses.replace(self.writer, guard=lease.guard)
        return EnrollmentStore(self.db, writer, max_raw_bytes=self.dead_letters.max_raw_bytes)

    # -- the event store -------------------------------------------------------------------

    def _find_in(
        self,
        collection: str,
        field: str,
        values: Iterable[str],
        projection: Mapping[str, Any] | None = None,
    ) -> Iterator[Document]:
        """Documents whose `field` is one of `values`: one `$in` per bounded piece."""
        for chunk in in_chunks(values):
            yield from self.db[collection].find({field: {"$in": chunk}}, projection)

    def stored_events(self, event_ids: Iterable[str]) -> dict[str, StoredEventInfo]:
        """What the store holds of these events: their hash, when they came, and whether
        their leads are out (a flag on the event, or a `lead_publications` record)."""
        found = {
            d["_id"]: d
            for d in self._find_in(
                ENROLLMENT_EVENTS,
                "_id",
                event_ids,
                {"content_hash": 1, "stored_at": 1, "leads_published": 1},
            )
        }
        if not found:
            return {}
        owed = [event_id for event_id, d in found.items() if not d.get("leads_published")]
        published = {d["_id"] for d in self._find_in(LEAD_PUBLICATIONS, "_id", owed, {"_id": 1})}
        return {
            event_id: StoredEventInfo(
                d["content_hash"],
                bool(d.get("leads_published")) or event_id in published,
                d.get("stored_at"),
            )
            for event_id, d in found.items()
        }

    def insert_events(
        self,
        events: Sequence[tuple[EnrollmentEvent, Mapping[str, Any]]],
        *,
        now: datetime,
        leads_published: bool = False,
    ) -> int:
        """Store new events (`_id` = `event_id`); one already stored is skipped, not an error.
        `leads_published`: no lead is owed for them (a backfill without leads), so no
        `lead_publications` record is needed."""
        if not events:
            return 0
        docs = [
            {
                "_id": event.event_id,
                "event_id": event.event_id,
                "application_id": event.application_id,
                "content_hash": event.content_hash(),
                "event": event.to_document(),
                "source": dict(source),
                "stored_at": now,
                **({"leads_published": True} if leads_published else {}),
            }
            for event, source in events
        ]
        return self._insert_new(ENROLLMENT_EVENTS, docs)

    def _insert_new(self, collection: str, docs: Sequence[Document]) -> int:
        return self.writer.insert_new(self.db[collection], docs)

    def _bulk_write(self, collection: str, ops: Sequence[Any]) -> None:
        self.writer.bulk_write(self.db[collection], ops)

    def events_of(self, application_ids: Iterable[str]) -> dict[str, list[EnrollmentEvent]]:
        """Every stored event of these applications, grouped by application."""
        result: dict[str, list[EnrollmentEvent]] = {app_id: [] for app_id in application_ids}
        for doc in self._find_in(
            ENROLLMENT_EVENTS, "application_id", result, {"event": 1, "application_id": 1}
        ):
            result[doc["application_id"]].append(EnrollmentEvent.from_stored(doc["event"]))
        return result

    def erased(self, application_ids: Iterable[str]) -> set[str]:
        """Of these applications, those whose applicant was erased (a tombstone each): one
        `$in` on `_id` a piece, which FerretDB's patched build looks up in the index."""
        return {
            d["_id"] for d in self._find_in(ERASED_APPLICATIONS, "_id", application_ids, {"_id": 1})
        }

    def mark_leads_published(
        self, lead_ids_by_source: Mapping[str, list[str]], *, now: datetime
    ) -> None:
        """Record that these source events' leads (maybe none) are out: never publish again."""
        self._insert_new(
            LEAD_PUBLICATIONS,
            [
                {"_id": source, "lead_event_ids": lead_ids, "published_at": now}
                for source, lead_ids in lead_ids_by_source.items()
            ],
        )

    # -- read model and follow-up queue ----------------------------------------------------

    def followups(self, application_ids: Iterable[str]) -> dict[str, Document]:
        return {d["_id"]: d for d in self._find_in(BROKER_FOLLOWUPS, "_id", application_ids)}

    def applications(self, application_ids: Iterable[str]) -> dict[str, Document]:
        return {d["_id"]: d for d in self._find_in(APPLICATIONS, "_id", application_ids)}

    def write_applications(self, new: Sequence[Document], changed: Sequence[Document]) -> None:
        """Insert new application documents, replace changed ones."""
        self._insert_new(APPLICATIONS, new)
        self._bulk_write(
            APPLICATIONS, [ReplaceOne({"_id": d["_id"]}, d, upsert=True) for d in changed]
        )

    def write_followups(self, new: Sequence[Document], updates: Sequence[UpdateOne]) -> None:
        """Insert new queue documents, update existing ones (fold-owned fields only)."""
        self._insert_new(BROKER_FOLLOWUPS, new)
        self._bulk_write(BROKER_FOLLOWUPS, updates)

    # -- dead letters ----------------------------------------------------------------------

    def dead_letter(self, letters: Sequence[DeadLetter], *, now: datetime) -> None:
        """Upsert each rejected input once by its position (see `DeadLetterStore`)."""
        self.dead_letters.upsert(letters, now=now)

    def mark_redriven(self, letter_ids: Sequence[str], *, now: datetime) -> None:
        """Close dead letters whose input was applied after a fix."""
        self.dead_letters.mark_redriven(letter_ids, now=now)

    # -- offsets -----------------------------------------------------------------------------

    def committed_offsets(self, group: str, topic: str) -> dict[int, int]:
        cursor = self.db[CONSUMER_OFFSETS].find({"group": group, "topic": topic})
        return {d["partition"]: d["offset"] for d in cursor}

    def commit_offsets(
        self,
        groups: Iterable[str],
        topic: str,
        offsets: Mapping[int, int],
        *,
        now: datetime,
        run_id: str | None,
    ) -> None:
        """Record the next offset to read per partition, for each group (authoritative)."""
        ops = [
            UpdateOne(
                {"_id": f"{group}:{topic}:{partition}"},
                {
                    "$set": {
                        "group": group,
                        "topic": topic,
                        "partition": partition,
                        "offset": offset,
                        "committed_at": now,
                        "run_id": run_id,
                    }
                },
                upsert=True,
            )
            for group in groups
            for partition, offset in offsets.items()
        ]
        self._bulk_write(CONSUMER_OFFSETS, ops)
