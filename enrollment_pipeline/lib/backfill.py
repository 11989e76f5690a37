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
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from enrollment_pipeline.domain.events import (
    EnrollmentEvent,
    Rejection,
    RejectReason,
)
from enrollment_pipeline.domain.projection import fold_history
from enrollment_pipeline.lib.clients.archive import Archive, ArchiveLine, ArchiveTailError
from enrollment_pipeline.lib.ingestion.batch import (
    BatchReport,
    PublishLeads,
    apply_parsed,
    plan_writes,
)
from enrollment_pipeline.lib.ingestion.limits import DEFAULT_LIMITS, InputLimits
from enrollment_pipeline.lib.mongo.collections import APPLICATIONS, ENROLLMENT_EVENTS
from enrollment_pipeline.lib.mongo.dead_letters import DeadLetter
from enrollment_pipeline.lib.mongo.lease import WriterLease, holding
from enrollment_pipeline.lib.mongo.store import EnrollmentStore
from enrollment_pipeline.lib.sources import Source, archive_source

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


def backfill_days(
    archive: Archive,
    store: EnrollmentStore,
    days: Iterable[date],
    *,
    lease: WriterLease | None,
    publish_leads: PublishLeads | None = None,
    chunk_lines: int = 5_000,
    limits: InputLimits = DEFAULT_LIMITS,
) -> BackfillReport:
    """Apply every line of the days' files; bad lines and corrupt tails are dead-lettered.
    The writers' `lease` is held for the whole run."""
    with holding(lease):
        return _backfill_days(
            archive,
            store.guarded(lease),
            days,
            publish_leads=publish_leads,
            chunk_lines=chunk_lines,
            limits=limits,
        )


def _backfill_days(
    archive: Archive,
    store: EnrollmentStore,
    days: Iterable[date],
    *,
    publish_leads: PublishLeads | None,
    chunk_lines: int,
    limits: InputLimits,
) -> BackfillReport:
    started = time.monotonic()
    report = BackfillReport()
    chunk: list[tuple[Source, EnrollmentEvent | Rejection]] = []

    def flush() -> None:
        if chunk:
            report.add(apply_parsed(store, chunk, publish_leads=publish_leads))
            chunk.clear()

    for day in days:
        report.days += 1
        for name in archive.files_for_day(day):
            report.files += 1
            try:
                for line in archive.lines(name, max_line_bytes=limits.max_record_bytes):
                    source = archive_source(name, line.line, line.raw)
                    if line.oversized:  # read only in part: its letter keeps size and hash
                        _dead_letter_oversized(store, source, line)
                        report.lines_read += 1
                        report.dead_lettered += 1
                        _count(report.dead_letter_reasons, str(RejectReason.OVERSIZED))
                        continue
                    chunk.append((source, limits.archive_line(line.raw)))
                    if len(chunk) >= chunk_lines:
                        flush()
            except ArchiveTailError as exc:
                flush()
                _dead_letter_tail(store, exc)
                report.dead_lettered += 1
                _count(report.dead_letter_reasons, str(RejectReason.ARCHIVE_UNREADABLE))
            flush()
    report.seconds = time.monotonic() - started
    return report


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
    followups_written: int = 0
    passes: int = 0  # streamed reads of the event store after the counting one
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
    events_per_pass: int = 50_000,
    page_size: int = 500,
) -> RebuildReport:
    """Refold applications from the event store, under the writers' `lease`: every one
    (`application_ids` None or `["all"]`), or only the given ones (in place: their events are
    read with one `$in` a page, written like a batch writes them), e.g. the ids the check
    `read_model_drift` reported."""
    with holding(lease):
        guarded = store.guarded(lease)
        if application_ids is None or list(application_ids) == [ALL]:
            return _rebuild(guarded, events_per_pass=events_per_pass, page_size=page_size)
        return _rebuild_ids(guarded, application_ids, page_size=page_size)


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
        report.documents_changed += len(writes.changed_apps) + len(orphans)
        report.followups_written += len(writes.new_followups) + len(writes.followup_updates)
    report.seconds = time.monotonic() - started
    return report


def _rebuild(store: EnrollmentStore, *, events_per_pass: int, page_size: int) -> RebuildReport:
    """Refold every application of the event store and write what differs (the fold-owned
    follow-up fields only).

    The store is read by streaming it, never by one big query: a `$group` or a `$in` over
    hundreds of thousands of events is a single command that FerretDB answers only after
    scanning everything in Go, longer than MONGO_TIMEOUT_MS. A first pass counts each
    application's events; the applications are then split into buckets of at most
    `events_per_pass` events, and each bucket is one more streamed pass that keeps only its
    own events in memory, so memory stays bounded whatever the store's size.
    """
    started = time.monotonic()
    report = RebuildReport()
    events = store.db[ENROLLMENT_EVENTS]
    counts: Counter[str] = Counter(
        doc["application_id"]
        for doc in events.find({}, {"application_id": 1, "_id": 0}).batch_size(_STREAM_BATCH)
    )
    for bucket in _buckets(counts, events_per_pass):
        report.passes += 1
        histories: dict[str, list[EnrollmentEvent]] = defaultdict(list)
        for doc in events.find({}, {"application_id": 1, "event": 1}).batch_size(_STREAM_BATCH):
            if doc["application_id"] in bucket:
                histories[doc["application_id"]].append(EnrollmentEvent.from_document(doc["event"]))
        for page in _pages(sorted(bucket), page_size):
            folds = {app: fold_history(app, histories.pop(app)) for app in page}
            existing_apps = store.applications(folds)
            writes = plan_writes(folds, existing_apps, store.followups(folds), BatchReport())
            store.write_applications(writes.new_apps, writes.changed_apps)
            store.write_followups(writes.new_followups, writes.followup_updates)
            report.applications += len(folds)
            report.events += sum(counts[app] for app in page)
            report.documents_created += len(writes.new_apps)
            report.documents_changed += len(writes.changed_apps)
            report.followups_written += len(writes.new_followups) + len(writes.followup_updates)
    # Documents without a stored event cannot be the fold of anything.
    orphans = [
        doc["_id"]
        for doc in store.db[APPLICATIONS].find({}, {"_id": 1}).batch_size(_STREAM_BATCH)
        if doc["_id"] not in counts
    ]
    for chunk in _pages(orphans, 1_000):
        store.writer.guard()
        store.db[APPLICATIONS].delete_many({"_id": {"$in": chunk}})
    report.documents_changed += len(orphans)
    report.seconds = time.monotonic() - started
    return report


def _buckets(counts: Counter[str], events_per_pass: int) -> list[set[str]]:
    """Applications in id order, cut into sets of at most `events_per_pass` events (an
    application with more goes alone)."""
    buckets: list[set[str]] = []
    current: set[str] = set()
    size = 0
    for app in sorted(counts):
        if current and size + counts[app] > events_per_pass:
            buckets.append(current)
            current, size = set(), 0
        current.add(app)
        size += counts[app]
    if current:
        buckets.append(current)
    return buckets


def _pages(items: Sequence[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
