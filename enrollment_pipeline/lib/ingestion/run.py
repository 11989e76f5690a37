"""The ingestion of one offset range, outside Dagster so tests and benchmarks drive it too."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from kafka.errors import KafkaError

from enrollment_pipeline.defs.kafka.resources import KafkaResource, KafkaUnavailableError
from enrollment_pipeline.domain.offset_ranges import RangePlan, lag
from enrollment_pipeline.lib.ingestion.batch import (
    BatchReport,
    apply_parsed,
    no_checkpoint,
    parse_kafka_records,
)
from enrollment_pipeline.lib.mongo.store import EnrollmentStore
from enrollment_pipeline.settings import ENROLLMENT_GROUPS, READ_MODEL_GROUP


class StaleRangeError(RuntimeError):
    """The committed offsets moved since the range was planned (reset or another run)."""


@dataclass
class IngestResult:
    report: BatchReport
    committed: dict[int, int]
    lag_left: int
    kafka_commit_errors: list[str] = field(default_factory=list)


def ingest_range(
    kafka: KafkaResource,
    store: EnrollmentStore,
    plan: RangePlan,
    *,
    lead_topic: str,
    max_record_bytes: int = 1_000_000,
    run_id: str | None = None,
    checkpoint: Callable[[str], None] = no_checkpoint,
) -> IngestResult:
    """Read `[start, end)` per partition, apply it, then commit `end` (Mongo, then Kafka)."""
    committed = store.committed_offsets(READ_MODEL_GROUP, plan.topic)
    stale = {r.partition: committed.get(r.partition, 0) for r in plan.ranges}
    if any(stale[r.partition] != r.start for r in plan.ranges):
        raise StaleRangeError(
            f"range {plan.key} no longer starts at the committed offsets {stale}; "
            "the sensor will plan a new one"
        )
    records = kafka.read_range(plan.topic, {r.partition: (r.start, r.end) for r in plan.ranges})
    parsed = parse_kafka_records(records, max_bytes=max_record_bytes)
    report = apply_parsed(
        store,
        parsed,
        publish_leads=lambda messages: kafka.produce_batch(lead_topic, messages),
        checkpoint=checkpoint,
    )
    checkpoint("before_offset_commit")
    offsets = {r.partition: r.end for r in plan.ranges}
    store.commit_offsets(
        ENROLLMENT_GROUPS, plan.topic, offsets, now=datetime.now(UTC), run_id=run_id
    )
    errors = []
    for group in ENROLLMENT_GROUPS:  # best effort: Mongo holds the authoritative offsets
        try:
            kafka.commit_group_offsets(group, plan.topic, offsets)
        except (KafkaError, KafkaUnavailableError) as exc:
            errors.append(f"{group}: {exc}")
    committed.update(offsets)
    return IngestResult(
        report=report,
        committed=committed,
        lag_left=lag(committed, kafka.end_offsets(plan.topic)),
        kafka_commit_errors=errors,
    )
