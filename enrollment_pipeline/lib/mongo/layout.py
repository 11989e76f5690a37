"""The enrollment topic's partition count, as the deployment's writers agree on it.

Writers of the read model lease the partitions they write (`lib/mongo/lease.py`): an ingestion
run its range's partitions, a backfill or rebuild shard its partition, any other writer every
partition (`domain/partitioning.py`). That only excludes overlaps while everyone
computes partitions with the same count, so the count is recorded once, by the first writer
that reads it from Kafka, and checked by every later one. When the topic gains partitions
(Kafka never removes any), keys move and the writers would stop agreeing: ingestion refuses,
naming the change, until an operator accepts the new count (`enrollment-pipeline offsets
accept-partitions`) with every writer held off. Until the records already on the old
partitions are applied (`drain_until`, their end offsets at the acceptance), an application
may have events on two partitions, so ingestion runs as one lane over every partition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from enrollment_pipeline.lib.mongo.collections import PIPELINE_LAYOUT, Document

_ID = "enrollment_topic"


class PartitionCountChangedError(RuntimeError):
    """The topic's partition count differs from the one the deployment's writers use."""


@dataclass(frozen=True)
class TopicLayout:
    topic: str
    partitions: int
    # After a change of count: each old partition's end offset when it was accepted.
    drain_until: dict[int, int] = field(default_factory=dict)

    def draining(self, committed: dict[int, int]) -> bool:
        """Whether records from before the change are still unapplied (lanes must wait)."""
        return any(committed.get(p, 0) < end for p, end in self.drain_until.items())


def recorded_layout(db: Database[Document]) -> TopicLayout | None:
    found = db[PIPELINE_LAYOUT].find_one({"_id": _ID})
    if found is None:
        return None
    drain = {int(p): int(end) for p, end in dict(found.get("drain_until") or {}).items()}
    return TopicLayout(str(found["topic"]), int(found["partitions"]), drain)


def check_layout(db: Database[Document], topic: str, partitions: int) -> TopicLayout:
    """Record `partitions` on first use; afterwards raise unless the count is the recorded one."""
    if partitions < 1:
        raise ValueError(f"topic {topic} has no partitions")
    recorded = recorded_layout(db)
    if recorded is None:
        try:
            db[PIPELINE_LAYOUT].insert_one(
                {
                    "_id": _ID,
                    "topic": topic,
                    "partitions": partitions,
                    "recorded_at": datetime.now(UTC),
                }
            )
            return TopicLayout(topic, partitions)
        except DuplicateKeyError:  # another writer recorded it first: check against it
            recorded = recorded_layout(db)
            assert recorded is not None
    if recorded.partitions != partitions:
        raise PartitionCountChangedError(
            f"topic {topic} has {partitions} partitions, but this deployment's writers use "
            f"{recorded.partitions} (recorded from {recorded.topic}): applications' keys now "
            "map to other partitions, so per-partition leases would no longer keep writers "
            "apart. Ingestion stops here. When the change is intended, run `enrollment-pipeline "
            f"offsets accept-partitions` (it waits for every writer) and ingestion resumes"
        )
    return recorded


def accept_layout(
    db: Database[Document], topic: str, partitions: int, drain_until: dict[int, int]
) -> TopicLayout | None:
    """Record `partitions` as the count (the caller holds every old and new partition's lease),
    with the offsets up to which the old partitions hold records of before the change; the
    layout it replaced."""
    before = recorded_layout(db)
    db[PIPELINE_LAYOUT].replace_one(
        {"_id": _ID},
        {
            "_id": _ID,
            "topic": topic,
            "partitions": partitions,
            "recorded_at": datetime.now(UTC),
            "drain_until": {str(p): end for p, end in drain_until.items()},
        },
        upsert=True,
    )
    return before


def writer_partitions(db: Database[Document], default: int) -> int:
    """The partition count writers without a Kafka client (follow-ups, rebuild, redrive) lease
    by: the recorded one, else `default` (KAFKA_TOPIC_PARTITIONS: nothing ingested yet)."""
    recorded = recorded_layout(db)
    return recorded.partitions if recorded else default
