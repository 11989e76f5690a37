"""The read model checks itself: a random sample of `applications` refolded from the event store.

A document has drifted when the writers would write it differently today: its fields differ
from the fold of its stored events (`fold_application` over `EnrollmentStore.events_of`, the
fold every writer uses), its `broker_followup_status` from Contract 3's effective status (the
fold's state with the email job's escalation in `broker_followups`), or its follow-up queue
document from the fold's fields of it. That is `plan_writes`' own test, so a rebuild of the
reported ids (`rebuild_read_model(application_ids=...)`) repairs exactly what was reported.

A batch in flight is no drift: between a writer's read and its write the documents may lag
their events. So every suspect is compared again under the writers' lease (taken briefly, when
no writer is between its read and its write), and only what still differs is reported; a
suspect that could not be re-checked (the lease stayed held) is reported as unconfirmed.

The cost is bounded by the sample, not by the collection (see `sample_application_ids`); the
sample is read in pages of `PAGE` ids, each one `$in` on the read model, the event store and
the queue. Reports name ids and fields, never values (a field may hold personal data).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from enrollment_pipeline.domain.followup_queue import mongo_precision
from enrollment_pipeline.domain.projection import fold_application
from enrollment_pipeline.lib.ingestion.batch import planned_document
from enrollment_pipeline.lib.mongo.collections import APPLICATIONS, Document
from enrollment_pipeline.lib.mongo.lease import LeaseHeldError, WriterLease
from enrollment_pipeline.lib.mongo.store import EnrollmentStore

# Ids compared at a time: one `$in` per collection per page; memory holds one page.
PAGE = 500
# `_id`s per getMore of FerretDB's streamed scan (about 40 bytes each on the wire).
ID_SCAN_BATCH = 10_000
NO_STORED_EVENT = "(no stored event)"
MISSING_DOCUMENT = "(no document)"
MISSING_FOLLOWUP = "broker_followups (no document)"
QUEUE_PREFIX = "broker_followups."

SAMPLE_STAGE = "$sample"
ID_SCAN = "_id scan (reservoir)"


@dataclass(frozen=True)
class Drift:
    """One application whose document is not what the writers would write: which fields
    (dotted paths; `broker_followups.*` for its queue document), never their values."""

    application_id: str
    fields: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"application_id": self.application_id, "fields": list(self.fields)}


@dataclass
class DriftReport:
    sampled: int = 0
    sampling: str = ""
    suspected: int = 0  # differed at the first look
    drifted: list[Drift] = field(default_factory=list)  # still differed under the lease
    in_flight: int = 0  # differed at first, equal under the lease: a write was in flight
    unconfirmed: list[Drift] = field(default_factory=list)  # the lease stayed held
    lease_holder: str | None = None

    @property
    def passed(self) -> bool:
        return not self.drifted and not self.unconfirmed


def sample_application_ids(
    store: EnrollmentStore, size: int, *, engine: str, rng: random.Random | None = None
) -> tuple[list[str], str]:
    """Up to `size` distinct application ids drawn at random, and how they were drawn.

    - MongoDB: `$sample` (with `size` under 5 % of the collection, a random cursor on the
      storage engine: about `size` documents read, whatever the collection holds; otherwise
      a scan with a top-`size` random sort, allowed to spill to disk). One command.
    - FerretDB v1 has no `$sample` (`aggregate` answers NotImplemented) and uses an index for
      nothing but `_id` equality and, with our patched build, `_id` `$in`: a range on `_id`
      (`{_id: {$gte: random}}`) and any sort are done in Go over the whole table, a sort in
      memory, so random `_id` boundaries would cost more than they save. Instead the ids are
      streamed (`_id` only, `ID_SCAN_BATCH` a getMore) and reservoir-sampled here: memory holds
      `size` ids, the server reads the table once as a cursor (what any FerretDB query but an
      `_id` lookup costs), about 40 bytes an application cross the wire, and only the `size`
      sampled documents are read whole (by `_id` `$in`, which the patched build looks up).
    """
    collection = store.db[APPLICATIONS]
    if engine != "ferretdb":
        cursor = collection.aggregate(
            [{"$sample": {"size": size}}, {"$project": {"_id": 1}}],
            allowDiskUse=True,  # a sample over 5 % is a random sort: let it spill, not fail
        )
        # The random cursor may return a document twice; keep the first.
        return list(dict.fromkeys(d["_id"] for d in cursor)), SAMPLE_STAGE
    rng = rng or random.Random()
    scanned = collection.find({}, {"_id": 1}).batch_size(ID_SCAN_BATCH)
    return reservoir((d["_id"] for d in scanned), size, rng), ID_SCAN


def reservoir(items: Iterable[str], size: int, rng: random.Random) -> list[str]:
    """`size` items of a stream of unknown length, each kept with the same probability, in
    memory for `size` items only (a random key per item, the `size` smallest kept)."""
    kept: list[tuple[float, str]] = []
    for item in items:
        key = -rng.random()  # heapq keeps the smallest first: keep the largest keys
        if len(kept) < size:
            heapq.heappush(kept, (key, item))
        elif key > kept[0][0]:
            heapq.heapreplace(kept, (key, item))
    return [item for _, item in kept]


def compare(store: EnrollmentStore, application_ids: Sequence[str]) -> list[Drift]:
    """The applications among `application_ids` whose documents differ from their fold."""
    drifts: list[Drift] = []
    for start in range(0, len(application_ids), PAGE):
        page = list(application_ids[start : start + PAGE])
        documents = store.applications(page)
        histories = store.events_of(page)
        followups = store.followups(page)
        for app_id in page:
            fields = differences(
                app_id, documents.get(app_id), histories[app_id], followups.get(app_id)
            )
            if fields:
                drifts.append(Drift(app_id, tuple(fields)))
    return drifts


def differences(
    application_id: str,
    document: Document | None,
    events: Sequence[Any],
    followup: Document | None,
) -> list[str]:
    """The fields where `document` (and the follow-up queue's `followup`) differ from what
    the writers would make of `events`."""
    if not events:
        return [] if document is None else [NO_STORED_EVENT]
    application = fold_application(application_id, events)
    planned, change = planned_document(application, followup)
    fields = [MISSING_DOCUMENT] if document is None else paths_differing(document, planned)
    if change is None:
        return fields
    if followup is None:
        fields.append(MISSING_FOLLOWUP)
    else:
        fields += [
            QUEUE_PREFIX + name
            for name in sorted(change.set_fields)
            if _value(followup.get(name)) != _value(change.set_fields[name])
        ] or [QUEUE_PREFIX + "(cycle)"]
    return fields


def paths_differing(
    stored: Mapping[str, Any], planned: Mapping[str, Any], prefix: str = ""
) -> list[str]:
    """Dotted paths (into sub-documents; a list is one value) whose values differ."""
    paths: list[str] = []
    for key in sorted(set(stored) | set(planned)):
        a, b = stored.get(key, _MISSING), planned.get(key, _MISSING)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            paths += paths_differing(a, b, f"{prefix}{key}.")
        elif _value(a) != _value(b):
            paths.append(f"{prefix}{key}")
    return paths


_MISSING = object()


def _value(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_value(v) for v in value]
    return mongo_precision(value)


def check_drift(
    store: EnrollmentStore,
    *,
    sample_size: int,
    engine: str,
    lease: Callable[[], WriterLease] | None,
    rng: random.Random | None = None,
) -> DriftReport:
    """Sample, compare, and re-check every suspect under a freshly taken writers' lease
    (`lease` makes one; None re-checks without it, for tools and tests)."""
    ids, how = sample_application_ids(store, sample_size, engine=engine, rng=rng)
    report = DriftReport(sampled=len(ids), sampling=how)
    suspects = compare(store, ids)
    report.suspected = len(suspects)
    if not suspects:
        return report
    suspect_ids = [d.application_id for d in suspects]
    if lease is None:
        confirmed = compare(store, suspect_ids)
    else:
        holder = lease()
        try:
            with holder:  # no writer is between its read and its write while we hold it
                confirmed = compare(store, suspect_ids)
        except LeaseHeldError as exc:
            report.unconfirmed = suspects
            report.lease_holder = str(exc)
            return report
    report.drifted = confirmed
    report.in_flight = len(suspects) - len(confirmed)
    return report
