"""Backfill days of the historic archive, and rebuild the read model from the event store.

Both go through the code ingestion uses: archive lines are parsed by the same parser as Kafka
records (minus the key) and applied with `apply_parsed` in chunks, so a day merges with the
events that came through Kafka exactly as one fold of their union; a rebuild refolds each
application from its stored events and writes only the fold-owned fields (`plan_writes`), so the
email job's follow-up fields and attempt history stay. Memory holds one chunk, whatever the
size of a day's file.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from enrollment_pipeline.domain.events import (
    EnrollmentEvent,
    Rejection,
    RejectReason,
)
from enrollment_pipeline.domain.partitioning import partition_of
from enrollment_pipeline.domain.projection import fold_history
from enrollment_pipeline.lib.clients.archive import Archive, ArchiveLine, ArchiveTailError
from enrollment_pipeline.lib.ingestion.batch import (
    BatchReport,
    PublishLeads,
    StoredBatch,
    fold_batch,
    normalized,
    plan_writes,
    store_batch,
)
from enrollment_pipeline.lib.ingestion.limits import DEFAULT_LIMITS, InputLimits
from enrollment_pipeline.lib.mongo.collections import APPLICATIONS, ENROLLMENT_EVENTS, INDEXES
from enrollment_pipeline.lib.mongo.dead_letters import DeadLetter
from enrollment_pipeline.lib.mongo.lease import WriterLease, holding
from enrollment_pipeline.lib.mongo.store import EnrollmentStore
from enrollment_pipeline.lib.sources import Source, archive_source
from enrollment_pipeline.lib.spill import Spill, by_application

# Documents a streamed read asks for at a time: each getMore stays a short command.
_STREAM_BATCH = 2_000


@dataclass
class BackfillReport:
    """The run's numbers, as the asset's metadata shows them."""

    days: int = 0
    files: int = 0
    lines_read: int = 0
    events_new: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    applications_refolded: int = 0
    followups_opened: int = 0
    leads_published: int = 0
    lines_of_other_shards: int = 0
    seconds: float = 0.0

    @property
    def events_per_second(self) -> float:
        return self.lines_read / self.seconds if self.seconds else 0.0

    def add(self, batch: BatchReport) -> None:
        self.lines_read += batch.events_read
        self.events_new += batch.applied
        self.duplicates += batch.duplicates
        self.dead_lettered += batch.dead_lettered
        for reason, count in batch.dead_letter_reasons.items():
            self.dead_letter_reasons[reason] = self.dead_letter_reasons.get(reason, 0) + count
        self.applications_refolded += batch.applications_touched
        self.followups_opened += batch.followups_opened
        self.leads_published += batch.leads_published


@dataclass(frozen=True)
class Shard:
    """The applications whose key is on `partition` of a topic of `partitions`: the part of a
    backfill one run of a sharded backfill writes, under that partition's lease only."""

    partition: int
    partitions: int

    def __post_init__(self) -> None:
        if not 0 <= self.partition < self.partitions:
            raise ValueError(
                f"shard {self.partition} does not exist: the topic has {self.partitions} "
                f"partitions (shards 0..{self.partitions - 1})"
            )

    def owns(self, raw: bytes) -> bool:
        """Whether this shard applies the line: the one its application's key is on. A line
        naming no application (its dead letter) is shard 0's, so each line is one shard's."""
        return line_partition(raw, self.partitions) == self.partition

    def owns_application(self, application_id: str) -> bool:
        return partition_of(application_id, self.partitions) == self.partition


def line_partition(raw: bytes, partitions: int) -> int:
    """The partition of the application an archive line names (its raw `application_id`, as
    the producer keys it); 0 when it names none."""
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return 0
    app_id = value.get("application_id") if isinstance(value, dict) else None
    return partition_of(app_id, partitions) if isinstance(app_id, str) else 0


def backfill_days(
    archive: Archive,
    store: EnrollmentStore,
    days: Iterable[date],
    *,
    lease: WriterLease | None,
    publish_leads: PublishLeads | None = None,
    chunk_lines: int = 5_000,
    limits: InputLimits = DEFAULT_LIMITS,
    fold_group: int = 50_000,
    spill_dir: Path | None = None,
    shard: Shard | None = None,
) -> BackfillReport:
    """Apply every line of the days' files; bad lines and corrupt tails are dead-lettered.

    The run knows every event of its range before it writes the read model: it stores them
    first (chunk by chunk, `insert_many`), then folds each touched application once and
    writes it once (new documents by `insert_many`). The events wait for the fold on disk,
    hashed by application into shards (`lib/spill.py`), and are folded a group of shards of
    about `fold_group` events at a time, so memory stays bounded whatever the range. The
    writers' `lease` is held for the whole run. With a `shard`, only the lines of that shard's
    applications are applied (the others are counted in `lines_of_other_shards`).
    """
    with holding(lease), tempfile.TemporaryDirectory(prefix="backfill-", dir=spill_dir) as tmp:
        return _Backfill(store.guarded(lease), publish_leads, limits, Spill(Path(tmp)), shard).run(
            archive, days, chunk_lines=chunk_lines, fold_group=fold_group
        )


class _Backfill:
    def __init__(
        self,
        store: EnrollmentStore,
        publish_leads: PublishLeads | None,
        limits: InputLimits,
        spill: Spill,
        shard: Shard | None,
    ) -> None:
        self.store, self.publish_leads, self.limits, self.spill = (
            store,
            publish_leads,
            limits,
            spill,
        )
        self.shard = shard
        # Whole-file events (an unreadable tail, a line read only in part) are shard 0's.
        self.owns_file_events = shard is None or shard.partition == 0
        self.report = BackfillReport()
        self.batch_report = BatchReport()
        self.now = datetime.now(UTC)

    def _count_letter(self, reason: RejectReason, *, read: bool) -> None:
        self.batch_report.events_read += read
        self.batch_report.dead_lettered += 1
        _count(self.batch_report.dead_letter_reasons, str(reason))

    def run(
        self, archive: Archive, days: Iterable[date], *, chunk_lines: int, fold_group: int
    ) -> BackfillReport:
        started = time.monotonic()
        chunk: list[tuple[Source, EnrollmentEvent | Rejection]] = []
        for day in days:
            self.report.days += 1
            for name in archive.files_for_day(day):
                self.report.files += 1
                try:
                    for line in archive.lines(name, max_line_bytes=self.limits.max_record_bytes):
                        if line.oversized:  # read only in part: its letter keeps size and hash
                            if not self.owns_file_events:
                                self.report.lines_of_other_shards += 1
                                continue
                            source = archive_source(name, line.line, line.raw)
                            _dead_letter_oversized(self.store, source, line)
                            self.batch_report.events_read += 1
                            self.batch_report.dead_lettered += 1
                            _count(
                                self.batch_report.dead_letter_reasons, str(RejectReason.OVERSIZED)
                            )
                            continue
                        if self.shard is not None and not self.shard.owns(line.raw):
                            self.report.lines_of_other_shards += 1
                            continue
                        source = archive_source(name, line.line, line.raw)
                        chunk.append((source, self.limits.archive_line(line.raw)))
                        if len(chunk) >= chunk_lines:
                            self._store(chunk)
                except ArchiveTailError as exc:
                    self._store(chunk)
                    if not self.owns_file_events:
                        continue
                    _dead_letter_tail(self.store, exc)
                    self.batch_report.dead_lettered += 1
                    _count(
                        self.batch_report.dead_letter_reasons, str(RejectReason.ARCHIVE_UNREADABLE)
                    )
                self._store(chunk)
        for group in self.spill.groups(max_records=fold_group):
            self._fold(group)
        self.report.add(self.batch_report)
        self.report.seconds = time.monotonic() - started
        return self.report

    def _store(self, chunk: list[tuple[Source, EnrollmentEvent | Rejection]]) -> None:
        """Phase one: dead letters and new events stored; what the fold needs, spilled."""
        if not chunk:
            return
        self.batch_report.events_read += len(chunk)
        batch = store_batch(
            self.store,
            chunk,
            now=datetime.now(UTC),
            report=self.batch_report,
            leads_owed=self.publish_leads is not None,
            run_started=self.now,
        )
        chunk.clear()
        for app_id, events in batch.by_app.items():
            if not events:  # only a conflicting copy: refold what the store holds
                self.spill.add(app_id, {"a": app_id})
            for event in events:
                self.spill.add(
                    app_id,
                    {
                        "a": app_id,
                        "e": event.to_document(),
                        "before": event.event_id in batch.stored_before,
                        "owed": event.event_id in batch.unpublished,
                    },
                )

    def _fold(self, records: list[dict[str, Any]]) -> None:
        """Phase two: each application of the group folded once, written once."""
        batch = StoredBatch()
        for app_id, rows in by_application(records).items():
            events = batch.by_app.setdefault(app_id, [])
            for row in rows:
                if "e" not in row:
                    continue
                event = EnrollmentEvent.from_stored(row["e"])
                events.append(event)
                if row["before"]:
                    batch.stored_before.add(event.event_id)
                if row["owed"]:
                    batch.unpublished.add(event.event_id)
        fold_batch(
            self.store,
            batch,
            publish_leads=self.publish_leads,
            now=self.now,
            report=self.batch_report,
        )


def _count(counts: dict[str, int], reason: str) -> None:
    counts[reason] = counts.get(reason, 0) + 1


def _dead_letter_oversized(store: EnrollmentStore, source: Source, line: ArchiveLine) -> None:
    letter = source.letter(
        RejectReason.OVERSIZED, f"{line.size} bytes exceeds the limit of {len(line.raw)}"
    )
    store.dead_letter(
        [dataclasses.replace(letter, raw_size=line.size, raw_sha256=line.sha256)],
        now=datetime.now(UTC),
    )


def _dead_letter_tail(store: EnrollmentStore, exc: ArchiveTailError) -> None:
    letter = DeadLetter(
        id=f"archive:{exc.file}:{exc.line}",
        reason=str(RejectReason.ARCHIVE_UNREADABLE),
        detail=f"unreadable from line {exc.line} on: {exc.detail}",
        raw=None,
        key=None,
        source={"file": exc.file, "line": exc.line},
    )
    store.dead_letter([letter], now=datetime.now(UTC))


@dataclass
class RebuildReport:
    applications: int = 0
    events: int = 0
    documents_changed: int = 0
    documents_created: int = 0
    documents_removed: int = 0  # documents of no stored event
    followups_written: int = 0
    passes: int = 0  # streamed reads of the event store
    groups: int = 0  # groups of applications folded (each held in memory alone)
    swapped: bool = False  # the rebuilt collection replaced `applications`
    seconds: float = 0.0
    # Of a rebuild of given ids: how many were asked for, and those that nothing names (no
    # stored event, no document).
    requested: int | None = None
    unknown: list[str] = field(default_factory=list)


# `application_ids` of a rebuild that means every application.
ALL = "all"


def rebuild_read_model(
    store: EnrollmentStore,
    *,
    lease: WriterLease | None,
    application_ids: Sequence[str] | None = None,
    shard: Shard | None = None,
    fold_group: int = 50_000,
    spill_dir: Path | None = None,
    page_size: int = 500,
) -> RebuildReport:
    """Refold applications from the event store, under the writers' `lease`: every one
    (`application_ids` None or `["all"]`), or only the given ones, in place (e.g. the ids the
    check `read_model_drift` reported), or those of one `shard` in place (its partition's lease
    only: the other partitions' ingestion goes on).

    Every application: one streamed pass reads the event store (never one big query: FerretDB
    answers a `$group` or a `$in` over the whole store only after scanning it in Go, past
    MONGO_TIMEOUT_MS) and spills each event to the shard of its application (`lib/spill.py`).
    Each group of shards is then folded, and every application written once by `insert_many`
    into a fresh collection, `applications_rebuild`: inserts run at the store's speed, where
    replacing every document of a stale read model runs at its (much lower) update speed. The
    existing
    documents are read in pages only to count what differs; when something does, the fresh
    collection replaces `applications` while the lease holds every other writer off (drop,
    then rename: FerretDB v1's `renameCollection` has no `dropTarget`). The fold-owned fields of
    the follow-up queue are written in place, and the email job's fields (`retry_count`,
    attempts, the PENDING escalation, so `broker_followup_status`) are carried over from it.
    """
    with holding(lease):
        guarded = store.guarded(lease)
        if application_ids is not None and list(application_ids) != [ALL]:
            return _rebuild_ids(guarded, application_ids, page_size=page_size)
        if shard is not None:
            return _rebuild_ids(guarded, _applications_of(guarded, shard), page_size=page_size)
        with tempfile.TemporaryDirectory(prefix="rebuild-", dir=spill_dir) as tmp:
            return _rebuild(guarded, Spill(Path(tmp)), fold_group=fold_group)


def _rebuild_ids(
    store: EnrollmentStore, application_ids: Sequence[str], *, page_size: int
) -> RebuildReport:
    """Refold the given applications: each page is one `$in` on the event store, one on the
    read model and one on the queue, then the writes that differ (`plan_writes`). A document
    whose application has no stored event is deleted, as a full rebuild deletes it."""
    started = time.monotonic()
    ids = sorted(set(application_ids))
    report = RebuildReport(requested=len(ids))
    for page in _pages(ids, page_size):
        histories = store.events_of(page)
        existing_apps = store.applications(page)
        folds = {app: fold_history(app, events) for app, events in histories.items() if events}
        writes = plan_writes(folds, existing_apps, store.followups(folds), BatchReport())
        store.write_applications(writes.new_apps, writes.changed_apps)
        store.write_followups(writes.new_followups, writes.followup_updates)
        orphans = [app for app in page if app not in folds and app in existing_apps]
        if orphans:
            store.writer.guard()
            store.db[APPLICATIONS].delete_many({"_id": {"$in": orphans}})
        report.unknown += [app for app in page if app not in folds and app not in existing_apps]
        report.applications += len(folds)
        report.events += sum(len(events) for events in histories.values())
        report.documents_created += len(writes.new_apps)
        report.documents_changed += len(writes.changed_apps)
        report.documents_removed += len(orphans)
        report.followups_written += len(writes.new_followups) + len(writes.followup_updates)
    report.seconds = time.monotonic() - started
    return report


def _applications_of(store: EnrollmentStore, shard: Shard) -> list[str]:
    """The shard's applications: those of a stored event or of a document (an orphan document
    is deleted by its refold), by streaming ids only."""
    ids: set[str] = set()
    for name, field_name in ((ENROLLMENT_EVENTS, "application_id"), (APPLICATIONS, "_id")):
        cursor = store.db[name].find({}, {field_name: 1}).batch_size(_STREAM_BATCH)
        ids.update(doc[field_name] for doc in cursor if shard.owns_application(doc[field_name]))
    return sorted(ids)


REBUILD_TARGET = f"{APPLICATIONS}_rebuild"


def _rebuild(store: EnrollmentStore, spill: Spill, *, fold_group: int) -> RebuildReport:
    started = time.monotonic()
    report = RebuildReport(passes=1)
    cursor = store.db[ENROLLMENT_EVENTS].find({}, {"application_id": 1, "event": 1, "_id": 0})
    for doc in cursor.batch_size(_STREAM_BATCH):
        spill.add(doc["application_id"], {"a": doc["application_id"], "e": doc["event"]})
        report.events += 1
    target = store.db[REBUILD_TARGET]
    target.drop()  # what a crashed rebuild left
    target.create_indexes(list(INDEXES[APPLICATIONS]))
    folded: set[str] = set()  # applications of a stored event
    # The group's documents and follow-ups are read while it is folded (the store works on
    # another core meanwhile).
    with ThreadPoolExecutor(2, thread_name_prefix="rebuild-read") as readers:
        for group in spill.groups(max_records=fold_group):
            report.groups += 1
            rows = by_application(group)
            reading_apps = readers.submit(store.applications, list(rows))
            reading_followups = readers.submit(store.followups, list(rows))
            folds = {
                app: fold_history(app, [EnrollmentEvent.from_stored(r["e"]) for r in events])
                for app, events in rows.items()
            }
            existing = reading_apps.result()
            folded.update(folds)
            writes = plan_writes(folds, {}, reading_followups.result(), BatchReport())
            store.writer.insert_new(target, writes.new_apps)
            store.write_followups(writes.new_followups, writes.followup_updates)
            report.applications += len(folds)
            report.followups_written += len(writes.new_followups) + len(writes.followup_updates)
            for document in writes.new_apps:
                before = existing.get(document["_id"])
                if before is None:
                    report.documents_created += 1
                elif normalized(before) != normalized(document):
                    report.documents_changed += 1
    # Documents of no stored event cannot be the fold of anything: counted, then gone. A
    # streamed pass, not one count: FerretDB answers a count over the whole collection only
    # after scanning it in Go, past MONGO_TIMEOUT_MS on a large read model.
    for doc in store.db[APPLICATIONS].find({}, {"_id": 1}).batch_size(_STREAM_BATCH):
        report.documents_removed += doc["_id"] not in folded
    if report.documents_created or report.documents_changed or report.documents_removed:
        store.writer.guard()  # still the holder: nobody else writes during the swap
        store.db[APPLICATIONS].drop()
        target.rename(APPLICATIONS)
        report.swapped = True
    else:
        target.drop()  # a rebuild of an unchanged read model writes nothing
    report.seconds = time.monotonic() - started
    return report


def _pages(items: Sequence[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
