"""The two ends of every offset-range run, whatever the topic: check the start, commit the end.

Mongo holds the authoritative offsets (written after the run's effects are durable); Kafka
gets the same offsets under the group's name, best effort, so standard tooling shows lag.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from kafka.errors import KafkaError

from enrollment_pipeline.domain.offset_ranges import RangePlan
from enrollment_pipeline.lib.clients.kafka import KafkaClient, KafkaUnavailableError
from enrollment_pipeline.lib.mongo.store import EnrollmentStore


class StaleRangeError(RuntimeError):
    """The committed offsets moved since the range was planned (reset or another run)."""


def check_range_start(store: EnrollmentStore, group: str, plan: RangePlan) -> dict[int, int]:
    """The group's committed offsets, refusing a range that no longer starts at them."""
    committed = store.committed_offsets(group, plan.topic)
    stale = {r.partition: committed.get(r.partition, 0) for r in plan.ranges}
    if any(stale[r.partition] != r.start for r in plan.ranges):
        raise StaleRangeError(
            f"range {plan.key} no longer starts at the committed offsets {stale}; "
            "the sensor will plan a new one"
        )
    return committed


def commit_range(
    kafka: KafkaClient,
    store: EnrollmentStore,
    groups: Sequence[str],
    topic: str,
    offsets: Mapping[int, int],
    *,
    run_id: str | None,
) -> list[str]:
    """Commit `offsets` for `groups` in Mongo, then in Kafka; the Kafka errors, if any."""
    store.commit_offsets(groups, topic, offsets, now=datetime.now(UTC), run_id=run_id)
    errors = []
    for group in groups:
        try:
            kafka.commit_group_offsets(group, topic, offsets)
        except (KafkaError, KafkaUnavailableError) as exc:
            errors.append(f"{group}: {exc}")
    return errors
