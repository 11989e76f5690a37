"""Deliver one offset range of lead-integration events to the CRM (Contract 4).

Per application, leads go in offset order (the key is the application id, so they share a
partition; `domain/lead_queue.py` orders them). A lead the CRM refuses (a 4xx other than 409)
fails for good and is dead-lettered as `crm:{lead_event_id}`; one whose retries ran out is
parked and retried after `park_for`. Either holds back the later leads of its application,
which are parked behind it, while other applications flow. Applications are served by a few
threads at once.

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
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from enrollment_pipeline.domain.events import RejectReason
from enrollment_pipeline.domain.lead_queue import LeadQueue, QueuedLead, commit_points, lead_queues
from enrollment_pipeline.domain.leads import LeadEvent
from enrollment_pipeline.domain.offset_ranges import RangePlan
from enrollment_pipeline.lib.clients.crm import CrmClient, DeliveryOutcome
from enrollment_pipeline.lib.clients.kafka import KafkaClient
from enrollment_pipeline.lib.consumer_groups import LEAD_INTEGRATION_GROUP
from enrollment_pipeline.lib.ingestion.batch import no_checkpoint
from enrollment_pipeline.lib.ingestion.limits import DEFAULT_LIMITS, InputLimits
from enrollment_pipeline.lib.mongo import lead_store
from enrollment_pipeline.lib.mongo.dead_letters import DeadLetter
from enrollment_pipeline.lib.mongo.lead_store import (
    BEHIND,
    DELIVERED,
    FAILED,
    PARKED,
    LeadDeliveryStore,
    queued_of,
)
from enrollment_pipeline.lib.mongo.store import EnrollmentStore
from enrollment_pipeline.lib.offset_commits import check_range_start, commit_range
from enrollment_pipeline.lib.sources import kafka_source

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


class _Limits(Protocol):
    """The LEAD_* limits: `LeadDeliverySettings`, or the settings resource."""

    @property
    def lead_run_budget_seconds(self) -> float: ...
    @property
    def lead_concurrency(self) -> int: ...
    @property
    def lead_park_minutes(self) -> float: ...


@dataclass(frozen=True)
class LeadDeliveryPolicy:
    """How one delivery run behaves: its time budget, applications served at once, how long a
    lead whose retries ran out waits, and the largest record read from the topic."""

    budget_s: float = 600.0
    concurrency: int = 8
    park_for: timedelta = timedelta(minutes=15)
    limits: InputLimits = DEFAULT_LIMITS

    @classmethod
    def from_settings(cls, settings: _Limits, *, limits: InputLimits) -> LeadDeliveryPolicy:
        """The one mapping from the LEAD_* limits to a policy, for runs and the CLI alike."""
        return cls(
            budget_s=settings.lead_run_budget_seconds,
            concurrency=settings.lead_concurrency,
            park_for=timedelta(minutes=settings.lead_park_minutes),
            limits=limits,
        )


@dataclass(frozen=True)
class ServedLead:
    """A lead as this run served it: posted (`outcome`), held back behind `blocked_by`, or
    not reached (neither)."""

    lead: QueuedLead
    outcome: DeliveryOutcome | None
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
    erased_skipped: int = 0  # leads of erased applicants: closed, never posted
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
    kafka: KafkaClient,
    store: EnrollmentStore,
    deliveries: LeadDeliveryStore,
    crm: CrmClient,
    plan: RangePlan | None,
    *,
    policy: LeadDeliveryPolicy = LeadDeliveryPolicy(),
    redrive: bool = False,
    only_applications: set[str] | None = None,
    run_id: str | None = None,
    checkpoint: Callable[[str], None] = no_checkpoint,
) -> DeliveryReport:
    """Deliver `plan`'s leads, and the parked leads due now (every parked or failed one on
    `redrive`, or only those of `only_applications` when given)."""
    deadline = time.monotonic() + policy.budget_s
    now = datetime.now(UTC)
    report = DeliveryReport()
    if plan is not None and plan.ranges:
        check_range_start(store, LEAD_INTEGRATION_GROUP, plan)
        fresh, letters = _read(kafka, plan, policy.limits)
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
    fresh, open_docs = _skip_erased(store, deliveries, fresh, open_docs, known, now, report)
    known.update({d["_id"]: d for d in open_docs})
    queues = lead_queues(fresh, [queued_of(d) for d in open_docs], set(known), retry_apps)

    results, crm_down = _deliver(crm, queues, deadline=deadline, concurrency=policy.concurrency)
    for chunk_start in range(0, len(results), RECORD_CHUNK):
        chunk = results[chunk_start : chunk_start + RECORD_CHUNK]
        checkpoint("after_posts_before_records")
        _record(store, deliveries, chunk, known, now=now, park_for=policy.park_for, report=report)
    for result in results:
        if result.outcome is not None:
            report.latencies_s.extend(result.outcome.latencies_s)
            report.retried += result.outcome.attempts > 1

    if plan is not None and plan.ranges:
        checkpoint("before_offset_commit")
        offsets = commit_points(plan, fresh, {r.lead.position for r in results if not r.finished})
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


def _skip_erased(
    store: EnrollmentStore,
    deliveries: LeadDeliveryStore,
    fresh: list[QueuedLead],
    open_docs: list[dict[str, Any]],
    known: Mapping[str, Mapping[str, Any]],
    now: datetime,
    report: DeliveryReport,
) -> tuple[list[QueuedLead], list[dict[str, Any]]]:
    """No lead of an erased applicant is posted (one `$in` on the tombstones a run): the
    fresh ones are recorded ERASED without their payload, the waiting ones closed the same way."""
    erased = store.erased(
        {q.application_id for q in fresh} | {d["application_id"] for d in open_docs}
    )
    if not erased:
        return fresh, open_docs
    skipped = {
        q.lead_event_id: q
        for q in fresh
        if q.application_id in erased and q.lead_event_id not in known
    }
    closing = [d["_id"] for d in open_docs if d["application_id"] in erased]
    deliveries.write(
        [lead_store.erased(q, now) for q in skipped.values()]
        + [lead_store.closed_for_erasure(lead_id, now) for lead_id in closing]
    )
    report.erased_skipped = len(skipped) + len(closing)
    return (
        [q for q in fresh if q.application_id not in erased],
        [d for d in open_docs if d["application_id"] not in erased],
    )


def _read(
    kafka: KafkaClient, plan: RangePlan, limits: InputLimits
) -> tuple[list[QueuedLead], list[DeadLetter]]:
    records = kafka.read_range(plan.topic, {r.partition: (r.start, r.end) for r in plan.ranges})
    leads, letters = [], []
    for record in records:
        parsed = limits.lead_record(record.key, record.value)
        if isinstance(parsed, LeadEvent):
            leads.append(
                QueuedLead.of_record(parsed, record.topic, record.partition, record.offset)
            )
        else:
            letters.append(kafka_source(record).letter(parsed.reason, parsed.detail))
    return leads, letters


def _deliver(
    crm: CrmClient, queues: list[LeadQueue], *, deadline: float, concurrency: int
) -> tuple[list[ServedLead], str | None]:
    """Serve the applications `concurrency` at a time; one application's leads in order.

    When enough leads in a row exhausted their retries with none delivered, the CRM is down:
    no new lead is started, and the last error is returned, so the caller records the
    results, commits what is decided and then fails the run.
    """
    local = threading.local()
    breaker = _Breaker(threshold=max(5, 2 * concurrency))

    def serve(queue: LeadQueue) -> list[ServedLead]:
        if not hasattr(local, "session"):
            local.session = crm.session()
        results: list[ServedLead] = []
        blocked_by = queue.blocked_by
        stopped = False
        for lead in queue.leads:
            if blocked_by is not None:
                results.append(ServedLead(lead, None, blocked_by=blocked_by))
                continue
            if stopped or breaker.open or time.monotonic() >= deadline:
                results.append(ServedLead(lead, None))
                continue
            outcome = crm.post_lead(lead.payload, session=local.session, deadline=deadline)
            breaker.saw(outcome)
            results.append(ServedLead(lead, outcome))
            if outcome.outcome in ("rejected", "exhausted"):
                blocked_by = lead.lead_event_id
            elif outcome.outcome == "out_of_time":
                stopped = True  # later leads must not overtake this one
        return results

    results: list[ServedLead] = []
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="crm") as pool:
        pending: set[Future[list[ServedLead]]] = {pool.submit(serve, q) for q in queues}
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
    results: list[ServedLead],
    known: Mapping[str, Mapping[str, Any]],
    *,
    now: datetime,
    park_for: timedelta,
    report: DeliveryReport,
) -> None:
    """Write what became of each served lead, count it, and dead-letter the refused ones."""
    updates, letters, redriven_letters = [], [], []
    for result in results:
        lead, outcome = result.lead, result.outcome
        before = known.get(lead.lead_event_id, {})
        if result.blocked_by is not None:
            if before.get("status") in (PARKED, FAILED):
                if before.get("parked_reason") == BEHIND and before.get("blocked_by") != (
                    result.blocked_by
                ):  # still waiting, now behind another lead (the earlier one went through)
                    updates.append(
                        lead_store.now_behind(lead.lead_event_id, result.blocked_by, now)
                    )
                continue
            report.parked_behind += 1
            updates.append(lead_store.parked_behind(lead, result.blocked_by, now))
            continue
        if outcome is None or outcome.outcome == "out_of_time":
            if lead.lead_event_id not in known:
                report.unfinished += 1
            continue
        attempts = before.get("attempts", 0) + outcome.attempts
        if outcome.delivered:
            report.delivered += 1
            if before.get("status") in (PARKED, FAILED):
                report.redriven += 1
                if before.get("status") == FAILED:
                    redriven_letters.append(f"crm:{lead.lead_event_id}")
            updates.append(
                lead_store.delivered(lead, attempts=attempts, http_status=outcome.status, now=now)
            )
        elif outcome.outcome == "rejected":
            report.permanently_failed += 1
            updates.append(
                lead_store.refused(
                    lead,
                    attempts=attempts,
                    http_status=outcome.status,
                    detail=outcome.detail,
                    now=now,
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
                        "topic": lead.topic,
                        "partition": lead.partition,
                        "offset": lead.offset,
                        "lead_event_id": lead.lead_event_id,
                        "application_id": lead.application_id,
                        "http_status": outcome.status,
                    },
                )
            )
        else:  # exhausted
            report.parked += 1
            updates.append(
                lead_store.parked(
                    lead,
                    attempts=attempts,
                    http_status=outcome.status,
                    detail=outcome.detail,
                    retry_at=now + park_for,
                    now=now,
                )
            )
    deliveries.write(updates)
    store.dead_letter(letters, now=now)
    store.mark_redriven(redriven_letters, now=now)
