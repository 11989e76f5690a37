"""Deliver one offset range of lead-integration events to the CRM (Contract 4).

Per application, leads go in offset order (the key is the application id, so they share a
partition). A lead the CRM refuses (a 4xx other than 409) fails for good and is dead-lettered
as `crm:{lead_event_id}`; one whose retries ran out is parked and retried after
`park_for`. Either holds back the later leads of its application, which are parked behind it,
while other applications flow. Applications are served by a few threads at once.

Order of effects: POST, then the delivery record (flushed every few hundred leads), then the
offsets. A crash between a POST and its record makes the rerun POST again with the same
idempotency key, which the CRM answers 2xx or 409: the lead is delivered once. A lead the
run's time budget did not reach is left for the next run: the partition's committed offset
stops before it.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import UpdateOne

from enrollment_pipeline.defs.crm.resources import CrmClient, DeliveryOutcome
from enrollment_pipeline.defs.kafka.resources import KafkaResource
from enrollment_pipeline.domain.events import RejectReason
from enrollment_pipeline.domain.leads import LeadEvent, parse_lead_record
from enrollment_pipeline.domain.offset_ranges import RangePlan
from enrollment_pipeline.lib.ingestion.batch import no_checkpoint
from enrollment_pipeline.lib.mongo.lead_store import (
    BEHIND,
    DELIVERED,
    FAILED,
    PARKED,
    RETRIES_EXHAUSTED,
    LeadDeliveryStore,
)
from enrollment_pipeline.lib.mongo.store import DeadLetter, EnrollmentStore
from enrollment_pipeline.lib.offset_commits import check_range_start, commit_range
from enrollment_pipeline.settings import LEAD_INTEGRATION_GROUP

# Steps a test may stop a run at, to prove the rerun converges.
CHECKPOINTS = ("after_posts_before_records", "before_offset_commit")
# Delivery records are written in chunks of this many leads, so a crash re-posts few.
RECORD_CHUNK = 500


class CrmUnavailableError(RuntimeError):
    """Every recent lead exhausted its retries: the CRM is down, not one lead bad. Raised
    after the run's progress was recorded; `report` says what it was."""

    def __init__(self, message: str, report: DeliveryReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class QueuedLead:
    """One lead to deliver, with where it was read (its place in the application's order)."""

    lead_event_id: str
    application_id: str
    payload: dict[str, Any]
    topic: str
    partition: int
    offset: int

    @classmethod
    def of_record(cls, lead: LeadEvent, topic: str, partition: int, offset: int) -> QueuedLead:
        payload = lead.model_dump(mode="json")
        return cls(lead.lead_event_id, lead.application_id, payload, topic, partition, offset)

    @classmethod
    def of_document(cls, doc: Mapping[str, Any]) -> QueuedLead:
        source = doc["source"]
        return cls(
            doc["_id"],
            doc["application_id"],
            doc["lead"],
            source["topic"],
            source["partition"],
            source["offset"],
        )

    @property
    def position(self) -> tuple[int, int]:
        return (self.partition, self.offset)


@dataclass(frozen=True)
class Result:
    lead: QueuedLead
    outcome: DeliveryOutcome | None  # None: parked behind `blocked_by`, or not reached
    blocked_by: str | None = None

    @property
    def finished(self) -> bool:
        """Decided for now (delivered, failed or parked); otherwise the next run tries it."""
        return self.blocked_by is not None or (
            self.outcome is not None and self.outcome.outcome != "out_of_time"
        )


@dataclass
class DeliveryReport:
    """What a user reads in the run's metadata (no contact data)."""

    leads_read: int = 0
    delivered: int = 0
    already_delivered: int = 0
    retried: int = 0  # leads that needed more than one attempt
    permanently_failed: int = 0
    parked: int = 0  # retries exhausted in this run
    parked_behind: int = 0  # held back behind an earlier lead of their application
    redriven: int = 0  # parked or failed leads delivered in this run
    unfinished: int = 0  # not reached within the run's time budget
    dead_lettered: int = 0  # records of the topic that are not Contract-4 leads
    latencies_s: list[float] = field(default_factory=list)
    committed: dict[int, int] = field(default_factory=dict)
    kafka_commit_errors: list[str] = field(default_factory=list)
    waiting: dict[str, int] = field(default_factory=dict)

    def latency_ms(self, quantile: float) -> float:
        if not self.latencies_s:
            return 0.0
        if len(self.latencies_s) == 1:
            return self.latencies_s[0] * 1000
        cuts = statistics.quantiles(self.latencies_s, n=100, method="inclusive")
        return cuts[round(quantile * 100) - 1] * 1000


def deliver_range(
    kafka: KafkaResource,
    store: EnrollmentStore,
    deliveries: LeadDeliveryStore,
    crm: CrmClient,
    plan: RangePlan | None,
    *,
    redrive: bool = False,
    only_applications: set[str] | None = None,
    budget_s: float = 600.0,
    concurrency: int = 8,
    park_for: timedelta = timedelta(minutes=15),
    max_record_bytes: int = 1_000_000,
    run_id: str | None = None,
    checkpoint: Callable[[str], None] = no_checkpoint,
) -> DeliveryReport:
    """Deliver `plan`'s leads, and the parked leads due now (every parked or failed one on
    `redrive`, or only those of `only_applications` when given)."""
    deadline = time.monotonic() + budget_s
    now = datetime.now(UTC)
    report = DeliveryReport()
    if plan is not None and plan.ranges:
        check_range_start(store, LEAD_INTEGRATION_GROUP, plan)
        fresh, letters = _read(kafka, plan, max_record_bytes)
    else:
        fresh, letters = [], []
    report.leads_read = len(fresh)
    report.dead_lettered = len(letters)
    store.dead_letter(letters, now=now)

    known = deliveries.of_ids(q.lead_event_id for q in fresh)
    report.already_delivered = sum(
        1
        for q in {q.lead_event_id: q for q in fresh}.values()
        if known.get(q.lead_event_id, {}).get("status") == DELIVERED
    )
    retry_apps = deliveries.applications_to_retry(now, redrive=redrive)
    if only_applications is not None:
        retry_apps &= only_applications
    open_docs = deliveries.open_of({q.application_id for q in fresh} | retry_apps)
    known.update({d["_id"]: d for d in open_docs})
    queues = _queues(fresh, open_docs, known, retry_apps)

    results, crm_down = _deliver(crm, queues, deadline=deadline, concurrency=concurrency)
    for chunk_start in range(0, len(results), RECORD_CHUNK):
        chunk = results[chunk_start : chunk_start + RECORD_CHUNK]
        checkpoint("after_posts_before_records")
        _record(store, deliveries, chunk, known, now=now, park_for=park_for, report=report)
    for result in results:
        if result.outcome is not None:
            report.latencies_s.extend(result.outcome.latencies_s)
            report.retried += result.outcome.attempts > 1

    if plan is not None and plan.ranges:
        checkpoint("before_offset_commit")
        offsets = _commit_points(plan, fresh, results)
        report.kafka_commit_errors = commit_range(
            kafka, store, [LEAD_INTEGRATION_GROUP], plan.topic, offsets, run_id=run_id
        )
        report.committed = offsets
    report.waiting = deliveries.count_waiting()
    if crm_down:
        raise CrmUnavailableError(
            f"the CRM at {crm.base_url} took none of the last leads ({crm_down}); "
            f"{report.delivered} delivered, {report.unfinished} left for the next run",
            report,
        )
    return report


def _read(
    kafka: KafkaResource, plan: RangePlan, max_record_bytes: int
) -> tuple[list[QueuedLead], list[DeadLetter]]:
    records = kafka.read_range(plan.topic, {r.partition: (r.start, r.end) for r in plan.ranges})
    leads, letters = [], []
    for record in records:
        parsed = parse_lead_record(record.key, record.value, max_bytes=max_record_bytes)
        if isinstance(parsed, LeadEvent):
            leads.append(
                QueuedLead.of_record(parsed, record.topic, record.partition, record.offset)
            )
            continue
        letters.append(
            DeadLetter(
                id=f"kafka:{record.topic}:{record.partition}:{record.offset}",
                reason=str(parsed.reason),
                detail=parsed.detail,
                raw=record.value,
                key=record.key,
                source={
                    "topic": record.topic,
                    "partition": record.partition,
                    "offset": record.offset,
                    "timestamp_ms": record.timestamp_ms,
                },
            )
        )
    return leads, letters


@dataclass(frozen=True)
class _Queue:
    """One application's leads to try in order; `blocked_by` holds all of them back."""

    application_id: str
    leads: tuple[QueuedLead, ...]
    blocked_by: str | None


def _queues(
    fresh: Iterable[QueuedLead],
    open_docs: Iterable[Mapping[str, Any]],
    known: Mapping[str, Mapping[str, Any]],
    retry_apps: set[str],
) -> list[_Queue]:
    open_by_app: dict[str, list[QueuedLead]] = defaultdict(list)
    for doc in open_docs:
        open_by_app[doc["application_id"]].append(QueuedLead.of_document(doc))
    new_by_app: dict[str, dict[str, QueuedLead]] = defaultdict(dict)
    for lead in fresh:
        if lead.lead_event_id not in known:  # delivered, parked or failed already: recorded
            new_by_app[lead.application_id].setdefault(lead.lead_event_id, lead)
    queues = []
    for app in sorted(set(open_by_app) | set(new_by_app)):
        waiting = sorted(open_by_app.get(app, []), key=lambda q: q.position)
        new = sorted(new_by_app.get(app, {}).values(), key=lambda q: q.position)
        if waiting and app not in retry_apps:
            # The head of the application's line is parked or failed: the rest waits.
            queues.append(_Queue(app, tuple(new), blocked_by=waiting[0].lead_event_id))
        else:
            queues.append(_Queue(app, tuple(waiting + new), blocked_by=None))
    return [q for q in queues if q.leads]


def _deliver(
    crm: CrmClient, queues: list[_Queue], *, deadline: float, concurrency: int
) -> tuple[list[Result], str | None]:
    """Serve the applications `concurrency` at a time; one application's leads in order.

    When enough leads in a row exhausted their retries with none delivered, the CRM is down:
    no new lead is started, and the last error is returned, so the caller records the
    results, commits what is decided and then fails the run.
    """
    local = threading.local()
    breaker = _Breaker(threshold=max(5, 2 * concurrency))

    def serve(queue: _Queue) -> list[Result]:
        if not hasattr(local, "session"):
            local.session = crm.session()
        results: list[Result] = []
        blocked_by = queue.blocked_by
        stopped = False
        for lead in queue.leads:
            if blocked_by is not None:
                results.append(Result(lead, None, blocked_by=blocked_by))
                continue
            if stopped or breaker.open or time.monotonic() >= deadline:
                results.append(Result(lead, None))
                continue
            outcome = crm.post_lead(lead.payload, session=local.session, deadline=deadline)
            breaker.saw(outcome)
            results.append(Result(lead, outcome))
            if outcome.outcome in ("rejected", "exhausted"):
                blocked_by = lead.lead_event_id
            elif outcome.outcome == "out_of_time":
                stopped = True  # later leads must not overtake this one
        return results

    results: list[Result] = []
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="crm") as pool:
        pending: set[Future] = {pool.submit(serve, q) for q in queues}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                results.extend(future.result())
    return results, (breaker.last_detail if breaker.open else None)


class _Breaker:
    """Counts leads in a row that exhausted their retries (any answer of the CRM resets it)."""

    def __init__(self, threshold: int) -> None:
        self.threshold, self.in_a_row, self.open = threshold, 0, False
        self.last_detail = ""
        self._lock = threading.Lock()

    def saw(self, outcome: DeliveryOutcome) -> None:
        with self._lock:
            if outcome.outcome == "exhausted":
                self.in_a_row += 1
                self.last_detail = outcome.detail
                self.open = self.open or self.in_a_row >= self.threshold
            elif outcome.outcome in ("delivered", "rejected"):
                self.in_a_row = 0


def _record(
    store: EnrollmentStore,
    deliveries: LeadDeliveryStore,
    results: list[Result],
    known: Mapping[str, Mapping[str, Any]],
    *,
    now: datetime,
    park_for: timedelta,
    report: DeliveryReport,
) -> None:
    updates, letters, redriven_letters = [], [], []
    for result in results:
        lead, outcome = result.lead, result.outcome
        before = known.get(lead.lead_event_id, {})
        base = {
            "application_id": lead.application_id,
            "source": {"topic": lead.topic, "partition": lead.partition, "offset": lead.offset},
            "updated_at": now,
        }
        if result.blocked_by is not None:
            if before.get("status") in (PARKED, FAILED):
                if before.get("parked_reason") == BEHIND and before.get("blocked_by") != (
                    result.blocked_by
                ):  # still waiting, now behind another lead (the earlier one went through)
                    updates.append(
                        UpdateOne(
                            {"_id": lead.lead_event_id},
                            {"$set": {"blocked_by": result.blocked_by, "updated_at": now}},
                        )
                    )
                continue
            report.parked_behind += 1
            updates.append(
                _upsert(
                    lead,
                    {
                        **base,
                        "status": PARKED,
                        "parked_reason": BEHIND,
                        "lead": lead.payload,
                        "blocked_by": result.blocked_by,
                        "attempts": 0,
                        "next_attempt_at": None,
                    },
                    now,
                )
            )
            continue
        if outcome is None or outcome.outcome == "out_of_time":
            if lead.lead_event_id not in known:
                report.unfinished += 1
            continue
        attempts = before.get("attempts", 0) + outcome.attempts
        fields = {**base, "attempts": attempts, "last_status": outcome.status}
        if outcome.delivered:
            report.delivered += 1
            if before.get("status") in (PARKED, FAILED):
                report.redriven += 1
                if before.get("status") == FAILED:
                    redriven_letters.append(f"crm:{lead.lead_event_id}")
            updates.append(
                UpdateOne(
                    {"_id": lead.lead_event_id},
                    {
                        "$set": {
                            **fields,
                            "status": DELIVERED,
                            "delivered_at": now,
                            "last_error": None,
                        },
                        "$unset": {
                            "lead": "",
                            "blocked_by": "",
                            "parked_reason": "",
                            "next_attempt_at": "",
                        },
                        "$setOnInsert": {"first_seen_at": now},
                    },
                    upsert=True,
                )
            )
        elif outcome.outcome == "rejected":
            report.permanently_failed += 1
            updates.append(
                _upsert(
                    lead,
                    {
                        **fields,
                        "status": FAILED,
                        "lead": lead.payload,
                        "last_error": outcome.detail,
                        "parked_reason": None,
                        "blocked_by": None,
                        "next_attempt_at": None,
                    },
                    now,
                )
            )
            letters.append(
                DeadLetter(
                    id=f"crm:{lead.lead_event_id}",
                    reason=str(RejectReason.CRM_REJECTED),
                    detail=outcome.detail,
                    raw=None,  # the lead stays in lead_deliveries until it is delivered
                    key=lead.application_id.encode(),
                    source={
                        **base["source"],
                        "lead_event_id": lead.lead_event_id,
                        "application_id": lead.application_id,
                        "http_status": outcome.status,
                    },
                )
            )
        else:  # exhausted
            report.parked += 1
            updates.append(
                _upsert(
                    lead,
                    {
                        **fields,
                        "status": PARKED,
                        "parked_reason": RETRIES_EXHAUSTED,
                        "lead": lead.payload,
                        "last_error": outcome.detail,
                        "blocked_by": None,
                        "next_attempt_at": now + park_for,
                    },
                    now,
                )
            )
    deliveries.write(updates)
    store.dead_letter(letters, now=now)
    store.mark_redriven(redriven_letters, now=now)


def _upsert(lead: QueuedLead, fields: dict[str, Any], now: datetime) -> UpdateOne:
    return UpdateOne(
        {"_id": lead.lead_event_id},
        {"$set": fields, "$setOnInsert": {"first_seen_at": now}},
        upsert=True,
    )


def _commit_points(
    plan: RangePlan, fresh: list[QueuedLead], results: list[Result]
) -> dict[int, int]:
    """Per partition: the range's end, or the first lead of the range not yet decided."""
    unfinished = {r.lead.position for r in results if not r.finished}
    offsets = {}
    for r in plan.ranges:
        held = [q.offset for q in fresh if q.partition == r.partition and q.position in unfinished]
        offsets[r.partition] = min(held) if held else r.end
    return offsets
