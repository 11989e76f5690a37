"""Backfill days of the historic archive, and rebuild the read model from the event store.

Both go through the code ingestion uses: archive lines are parsed by the same parser as Kafka
records (minus the key) and applied with `apply_parsed` in chunks, so a day merges with the
events that came through Kafka exactly as one fold of their union; a rebuild refolds each
application from its stored events and writes only the fold-owned fields (`plan_writes`), so the
email job's follow-up fields and attempt history stay. Memory holds one chunk, whatever the
size of a day's file.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from enrollment_pipeline.defs.archive.resources import ArchiveResource, ArchiveTailError
from enrollment_pipeline.defs.mongo.resources import APPLICATIONS, ENROLLMENT_EVENTS
from enrollment_pipeline.domain.events import (
    EnrollmentEvent,
    Rejection,
    RejectReason,
    parse_archive_line,
)
from enrollment_pipeline.domain.projection import fold_history
from enrollment_pipeline.lib.ingestion.batch import BatchReport, Source, apply_parsed, plan_writes
from enrollment_pipeline.lib.mongo.store import DeadLetter, EnrollmentStore

PublishLeads = Callable[[list[tuple[bytes, bytes]]], None]


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
    archive: ArchiveResource,
    store: EnrollmentStore,
    days: Iterable[date],
    *,
    publish_leads: PublishLeads | None = None,
    chunk_lines: int = 5_000,
    max_record_bytes: int = 1_000_000,
) -> BackfillReport:
    """Apply every line of the days' files; bad lines and corrupt tails are dead-lettered."""
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
                for line in archive.lines(name):
                    source = Source(
                        id=f"archive:{name}:{line.line}",
                        fields={"file": name, "line": line.line},
                        raw=line.raw,
                        key=None,
                    )
                    chunk.append((source, parse_archive_line(line.raw, max_bytes=max_record_bytes)))
                    if len(chunk) >= chunk_lines:
                        flush()
            except ArchiveTailError as exc:
                flush()
                _dead_letter_tail(store, exc)
                report.dead_lettered += 1
                reason = str(RejectReason.ARCHIVE_UNREADABLE)
                report.dead_letter_reasons[reason] = report.dead_letter_reasons.get(reason, 0) + 1
            flush()
    report.seconds = time.monotonic() - started
    return report


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
    seconds: float = 0.0


def rebuild_read_model(store: EnrollmentStore, *, page_size: int = 500) -> RebuildReport:
    """Refold every application of the event store, a page of applications at a time, and
    write what differs (the fold-owned follow-up fields only)."""
    started = time.monotonic()
    report = RebuildReport()
    app_ids = sorted(
        row["_id"]
        for row in store.db[ENROLLMENT_EVENTS].aggregate([{"$group": {"_id": "$application_id"}}])
    )
    for page in _pages(app_ids, page_size):
        histories = store.events_of(page)
        folds = {app: fold_history(app, histories[app]) for app in page if histories[app]}
        existing_apps = store.applications(folds)
        writes = plan_writes(folds, existing_apps, store.followups(folds), BatchReport())
        store.write_applications(writes.new_apps, writes.changed_apps)
        store.write_followups(writes.new_followups, writes.followup_updates)
        report.applications += len(folds)
        report.events += sum(len(events) for events in histories.values())
        report.documents_created += len(writes.new_apps)
        report.documents_changed += len(writes.changed_apps)
        report.followups_written += len(writes.new_followups) + len(writes.followup_updates)
    orphans = set(store.db[APPLICATIONS].distinct("_id")) - set(app_ids)
    if orphans:  # documents without a stored event cannot be the fold of anything
        store.db[APPLICATIONS].delete_many({"_id": {"$in": sorted(orphans)}})
        report.documents_changed += len(orphans)
    report.seconds = time.monotonic() - started
    return report


def _pages(items: Sequence[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
