"""One micro-batch: Kafka records in, read model, follow-ups, dead letters and leads out.

Order of effects, each idempotent, offsets last (DESIGN "Delivery semantics"):
dead letters and new events stored → touched applications refolded from the store and
written → follow-up queue updated → leads of not-yet-published events produced (one flush,
every future checked) and marked published → offsets committed (Mongo, then Kafka).
A crash anywhere leaves the offsets where they were; the rerun over the same range finds
its events stored, refolds to the same documents and publishes only unpublished leads.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pymongo import UpdateOne

from enrollment_pipeline.domain.erasure import redact_event
from enrollment_pipeline.domain.events import (
    DEFAULT_MAX_BYTES,
    ID_MAX,
    EnrollmentEvent,
    Rejection,
    RejectReason,
)
from enrollment_pipeline.domain.followup_queue import (
    FollowupChange,
    merge_followup,
    mongo_precision,
)
from enrollment_pipeline.domain.leads import leads_of
from enrollment_pipeline.domain.projection import Application, FoldStep, fold_history
from enrollment_pipeline.lib.clients.kafka import Record
from enrollment_pipeline.lib.ingestion.limits import InputLimits
from enrollment_pipeline.lib.mongo.collections import Document
from enrollment_pipeline.lib.mongo.dead_letters import ERASURE, DeadLetter
from enrollment_pipeline.lib.mongo.store import EnrollmentStore
from enrollment_pipeline.lib.sources import Source, kafka_source

# Sends (key, value) pairs to the lead topic, every one acknowledged, or raises.
PublishLeads = Callable[[list[tuple[bytes, bytes]]], object]

# Steps a test may stop a batch at, to prove a rerun converges.
CHECKPOINTS = (
    "after_store_insert",
    "after_read_before_write",
    "after_read_model_write",
    "after_followups_write",
    "after_leads_produced",
    "before_offset_commit",
)


@dataclass
class BatchReport:
    """What a user reads in the run's metadata."""

    events_read: int = 0
    applied: int = 0  # new events stored
    duplicates: int = 0
    dead_lettered: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    anomalies: int = 0
    applications_touched: int = 0
    # Applications refolded from the event store (late or replayed events); the rest were
    # folded from their document's saved state, or from the batch alone.
    applications_reread: int = 0
    events_reread: int = 0
    applications_written: int = 0
    followups_opened: int = 0
    followups_closed: int = 0
    followups_written: int = 0
    leads_published: int = 0

    @property
    def dead_letter_rate(self) -> float:
        return self.dead_lettered / self.events_read if self.events_read else 0.0


def parse_kafka_records(
    records: Iterable[Record], *, limits: InputLimits
) -> list[tuple[Source, EnrollmentEvent | Rejection]]:
    return [(kafka_source(r), limits.record(r.key, r.value)) for r in records]


def no_checkpoint(step: str) -> None:
    return None


def normalized(value: Any) -> Any:
    """A document as MongoDB gives it back (datetimes at milliseconds), for comparisons."""
    if isinstance(value, dict):
        return {k: normalized(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalized(v) for v in value]
    return mongo_precision(value)


@dataclass
class StoredBatch:
    """What a batch stored, for the fold that follows: each touched application's events of
    the batch (a conflicting copy leaves its application with none: it is refolded from the
    store), the ids stored before the batch (replays, which may already be in a document) and
    the ids whose leads are still owed; the erased applications it touched."""

    by_app: dict[str, list[EnrollmentEvent]] = field(default_factory=dict)
    stored_before: set[str] = field(default_factory=set)
    unpublished: set[str] = field(default_factory=set)
    erased: set[str] = field(default_factory=set)


def apply_parsed(
    store: EnrollmentStore,
    parsed: Sequence[tuple[Source, EnrollmentEvent | Rejection]],
    *,
    publish_leads: PublishLeads | None,
    now: datetime | None = None,
    checkpoint: Callable[[str], None] = no_checkpoint,
) -> BatchReport:
    """Apply parsed inputs to the store, the read model and the queue; publish leads.

    Shared by ingestion and redrive (`publish_leads=None` emits no lead). Offsets are the
    caller's: commit them only after this returns.
    """
    now = now or datetime.now(UTC)
    report = BatchReport(events_read=len(parsed))
    batch = store_batch(store, parsed, now=now, report=report, leads_owed=publish_leads is not None)
    checkpoint("after_store_insert")
    fold_batch(
        store, batch, publish_leads=publish_leads, now=now, report=report, checkpoint=checkpoint
    )
    return report


def store_batch(
    store: EnrollmentStore,
    parsed: Sequence[tuple[Source, EnrollmentEvent | Rejection]],
    *,
    now: datetime,
    report: BatchReport,
    leads_owed: bool,
    run_started: datetime | None = None,
) -> StoredBatch:
    """Dead-letter the rejected inputs and conflicting copies, store the new events.

    `leads_owed=False` (a backfill without leads) stores events as published, so no lead is
    owed for them later either. Events stored at `run_started` (this run's earlier chunks)
    are this run's, not replays. Erased applicants' inputs are stripped first.
    """
    parsed, erased = forget_erased(store, parsed)
    letters: list[DeadLetter] = []
    batch_events: dict[str, tuple[EnrollmentEvent, Source]] = {}
    for source, outcome in parsed:
        if isinstance(outcome, Rejection):
            letters.append(source.letter(outcome.reason, outcome.detail))
            continue
        seen = batch_events.get(outcome.event_id)
        if seen is None:
            batch_events[outcome.event_id] = (outcome, source)
        elif seen[0].content_hash() == outcome.content_hash():
            report.duplicates += 1
        else:
            letters.append(_conflict(source, outcome.event_id, seen[1].id))

    stored = store.stored_events(batch_events)
    ours = mongo_precision(run_started) if run_started is not None else None
    new_events: list[tuple[EnrollmentEvent, Mapping[str, Any]]] = []
    batch = StoredBatch(erased=erased)
    conflicted: set[str] = set()  # the stored copy counts, not this one
    for event_id, (event, source) in batch_events.items():
        info = stored.get(event_id)
        if info is None:
            new_events.append((event, {"id": source.id, **source.fields}))
            if leads_owed:
                batch.unpublished.add(event_id)
        elif info.content_hash != event.content_hash():
            letters.append(_conflict(source, event_id, "the event store"))
            conflicted.add(event_id)
        else:
            report.duplicates += 1
            if leads_owed and not info.leads_published:
                batch.unpublished.add(event_id)
            if ours is None or mongo_precision(info.stored_at) != ours:
                batch.stored_before.add(event_id)

    store.dead_letter(letters, now=now)
    report.dead_lettered += len(letters)
    for letter in letters:
        report.dead_letter_reasons[letter.reason] = (
            report.dead_letter_reasons.get(letter.reason, 0) + 1
        )
    store.insert_events(new_events, now=run_started or now, leads_published=not leads_owed)
    report.applied += len(new_events)

    # Replays and duplicates refold too: after a crash their effects may be missing.
    for event_id, (event, _) in batch_events.items():
        events = batch.by_app.setdefault(event.application_id, [])
        if event_id not in conflicted:
            events.append(event)
    return batch


def fold_batch(
    store: EnrollmentStore,
    batch: StoredBatch,
    *,
    publish_leads: PublishLeads | None,
    now: datetime,
    report: BatchReport,
    checkpoint: Callable[[str], None] = no_checkpoint,
) -> None:
    """Fold each touched application once and write what changed; then the owed leads."""
    report.applications_touched += len(batch.by_app)
    existing_apps = store.applications(batch.by_app)
    folds = _fold_touched(store, batch.by_app, batch.stored_before, existing_apps, report)
    existing_followups = store.followups(batch.by_app)

    writes = plan_writes(folds, existing_apps, existing_followups, report)
    checkpoint("after_read_before_write")
    store.write_applications(writes.new_apps, writes.changed_apps)
    report.applications_written += len(writes.new_apps) + len(writes.changed_apps)
    checkpoint("after_read_model_write")
    store.write_followups(writes.new_followups, writes.followup_updates)
    report.followups_written += len(writes.new_followups) + len(writes.followup_updates)
    checkpoint("after_followups_write")

    if batch.unpublished:
        leads_by_source: dict[str, list[str]] = {event_id: [] for event_id in batch.unpublished}
        leads = []
        if publish_leads is not None:  # a backfill without leads owes none later either
            for app_id in sorted(folds):
                if app_id in batch.erased:  # no lead is ever published for an erased applicant
                    continue
                for lead in leads_of(folds[app_id]):
                    if lead.source_event_id in leads_by_source:
                        leads.append(lead)
                        leads_by_source[lead.source_event_id].append(lead.lead_event_id)
            publish_leads([(lead.application_id.encode(), lead.to_json_bytes()) for lead in leads])
            report.leads_published += len(leads)
        store.mark_leads_published(leads_by_source, now=now)
    checkpoint("after_leads_produced")


def forget_erased(
    store: EnrollmentStore, parsed: Sequence[tuple[Source, EnrollmentEvent | Rejection]]
) -> tuple[list[tuple[Source, EnrollmentEvent | Rejection]], set[str]]:
    """The inputs with those of erased applicants (one `$in` on the tombstones a batch)
    stripped of personal data before anything is stored: an event redacted as the erasure
    redacted the stored ones (so a replayed original is a plain duplicate), and the raw bytes of
    any of their inputs withheld from a dead letter. Also the erased applications touched."""
    claims = [_claimed(source, outcome) for source, outcome in parsed]
    erased = store.erased(app for claimed in claims for app in claimed)
    if not erased:
        return list(parsed), erased
    forgotten: list[tuple[Source, EnrollmentEvent | Rejection]] = []
    for (source, outcome), claimed in zip(parsed, claims, strict=True):
        if claimed & erased:
            source = dataclasses.replace(source, withheld=ERASURE)
            if isinstance(outcome, EnrollmentEvent):
                outcome = redact_event(outcome)
        forgotten.append((source, outcome))
    return forgotten, erased


def _claimed(source: Source, outcome: EnrollmentEvent | Rejection) -> set[str]:
    """The applications an input names: a valid event's, or for a rejected one its Kafka key
    and the `application_id` of its body when that much can be read."""
    if isinstance(outcome, EnrollmentEvent):
        return {outcome.application_id}
    claimed = []
    if source.key is not None and len(source.key) <= 4 * ID_MAX:
        claimed.append(source.key.decode("utf-8", "replace"))
    if source.raw and len(source.raw) <= DEFAULT_MAX_BYTES:
        try:
            body = json.loads(source.raw)
        except Exception:  # whatever the bytes are, this input names no other application
            body = None
        if isinstance(body, dict) and isinstance(body.get("application_id"), str):
            claimed.append(body["application_id"])
    # Only what could be an application's id goes into the query: a hostile key (megabytes,
    # a NUL, a lone surrogate) must not fail the batch's `$in`.
    return {claim for claim in claimed if _could_be_an_id(claim)}


def _could_be_an_id(value: str) -> bool:
    if not 0 < len(value) <= ID_MAX or "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass
class Writes:
    new_apps: list[Document] = field(default_factory=list)
    changed_apps: list[Document] = field(default_factory=list)
    new_followups: list[Document] = field(default_factory=list)
    followup_updates: list[UpdateOne] = field(default_factory=list)


def _fold_touched(
    store: EnrollmentStore,
    batch_by_app: Mapping[str, list[EnrollmentEvent]],
    stored_before: set[str],
    existing_apps: Mapping[str, Document],
    report: BatchReport,
) -> dict[str, list[FoldStep]]:
    """The fold steps of each touched application's batch events, reading as little as can be.

    - No document and no event stored before: the batch holds its whole history.
    - A document whose saved fold state all batch events sort after: apply them on top.
    - Otherwise (a late event, or a replayed one that may already be in the document):
      refold the whole history from the event store, the only case that reads it.
    """
    folds: dict[str, list[FoldStep]] = {}
    reread = []
    for app_id, events in batch_by_app.items():
        document = existing_apps.get(app_id)
        if not events:  # only a conflicting copy: refold what the store holds
            reread.append(app_id)
            continue
        if document is None:
            if any(event.event_id in stored_before for event in events):
                reread.append(app_id)
            else:
                folds[app_id] = fold_history(app_id, events)
            continue
        saved = Application.from_document(document)
        if saved is not None and saved.applies_on_top(events):
            folds[app_id] = fold_history(app_id, events, start=saved)
        else:
            reread.append(app_id)
    histories = store.events_of(reread)
    for app_id in reread:
        folds[app_id] = fold_history(app_id, histories[app_id])
    report.applications_reread += len(reread)
    report.events_reread += sum(len(events) for events in histories.values())
    for app_id, events in batch_by_app.items():
        ids = {event.event_id for event in events}
        report.anomalies += sum(
            step.anomaly is not None and step.event.event_id in ids for step in folds[app_id]
        )
    return folds


def plan_writes(
    folds: Mapping[str, list[FoldStep]],
    existing_apps: Mapping[str, Document],
    existing_followups: Mapping[str, Document],
    report: BatchReport,
) -> Writes:
    """The documents that change, from each touched application's fold."""
    writes = Writes()
    for app_id in sorted(folds):
        steps = folds[app_id]
        existing_followup = existing_followups.get(app_id)
        document, change = planned_document(steps[-1].after, existing_followup)
        if change is not None:
            if existing_followup is None:
                writes.new_followups.append(
                    {"_id": app_id, **change.set_on_insert, **change.set_fields}
                )
            else:
                writes.followup_updates.append(
                    UpdateOne({"_id": app_id}, {"$set": change.set_fields})
                )
            report.followups_opened += change.opened
            report.followups_closed += change.closed
        if app_id not in existing_apps:
            writes.new_apps.append(document)
        elif not same_document(existing_apps[app_id], document):
            writes.changed_apps.append(document)
    return writes


def planned_document(
    application: Application, existing_followup: Document | None
) -> tuple[Document, FollowupChange | None]:
    """The document the writers give an application's fold, and the follow-up queue's change
    (None when the queue already says what the fold knows).

    `broker_followup_status` is Contract 3's effective status: the fold's state with the email
    job's escalation (`pending_reason`, kept while the broker cycle is the same)."""
    document = application.to_document()
    change = merge_followup(
        application.application_id,
        application.followup,
        existing_followup,
        submitted_at=document.get("submitted_at"),
    )
    if change is not None:
        document["broker_followup_status"] = change.status
    elif existing_followup is not None:
        document["broker_followup_status"] = existing_followup.get("status")
    return document, change


def same_document(stored: Mapping[str, Any], planned: Mapping[str, Any]) -> bool:
    """Equal as MongoDB keeps them (datetimes at millisecond precision)."""
    return bool(normalized(dict(stored)) == normalized(dict(planned)))


def _conflict(source: Source, event_id: str, first_seen: str) -> DeadLetter:
    return source.letter(
        RejectReason.CONFLICTING_DUPLICATE,
        f"event_id {event_id} was first seen with other content at {first_seen}",
    )
