"""The ingestion of one offset range, outside Dagster so tests and benchmarks drive it too."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from enrollment_pipeline.domain.offset_ranges import RangePlan, lag
from enrollment_pipeline.lib.clients.kafka import KafkaClient
from enrollment_pipeline.lib.consumer_groups import ENROLLMENT_GROUPS, READ_MODEL_GROUP
from enrollment_pipeline.lib.ingestion.batch import (
    BatchReport,
    apply_parsed,
    no_checkpoint,
    parse_kafka_records,
)
from enrollment_pipeline.lib.ingestion.limits import DEFAULT_LIMITS, InputLimits
from enrollment_pipeline.lib.mongo.lease import WriterLease, holding
from enrollment_pipeline.lib.mongo.store import EnrollmentStore
from enrollment_pipeline.lib.offset_commits import check_range_start, commit_range


@dataclass
class IngestResult:
    report: BatchReport
    committed: dict[int, int]
    lag_left: int
    kafka_commit_errors: list[str] = field(default_factory=list)


def ingest_range(
    kafka: KafkaClient,
    store: EnrollmentStore,
    plan: RangePlan,
    *,
    lead_topic: str,
    lease: WriterLease | None,
    limits: InputLimits = DEFAULT_LIMITS,
    run_id: str | None = None,
    checkpoint: Callable[[str], None] = no_checkpoint,
) -> IngestResult:
    """Read `[start, end)` per partition, apply it, then commit `end` (Mongo, then Kafka),
    all under the writers' `lease` (taken here, and let go at the end)."""
    with holding(lease):
        return _ingest_range(
            kafka,
            store.guarded(lease),
            plan,
            lead_topic=lead_topic,
            limits=limits,
            run_id=run_id,
            checkpoint=checkpoint,
        )


def _ingest_range(
    kafka: KafkaClient,
    store: EnrollmentStore,
    plan: RangePlan,
    *,
    lead_topic: str,
    limits: InputLimits,
    run_id: str | None,
    checkpoint: Callable[[str], None],
) -> IngestResult:
    committed = check_range_start(store, READ_MODEL_GROUP, plan)
    records = kafka.read_range(plan.topic, {r.partition: (r.start, r.end) for r in plan.ranges})
    parsed = parse_kafka_records(records, limits=limits)
    report = apply_parsed(
        store,
        parsed,
        publish_leads=lambda messages: kafka.produce_batch(lead_topic, messages),
        checkpoint=checkpoint,
    )
    checkpoint("before_offset_commit")
    offsets = {r.partition: r.end for r in plan.ranges}
    errors = commit_range(kafka, store, ENROLLMENT_GROUPS, plan.topic, offsets, run_id=run_id)
    committed.update(offsets)
    return IngestResult(
        report=report,
        committed=committed,
        lag_left=lag(committed, kafka.end_offsets(plan.topic)),
        kafka_commit_errors=errors,
    )
