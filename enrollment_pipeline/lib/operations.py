"""Operator actions behind `enrollment-pipeline offsets …` and `dead-letters …` (Contract 6)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from enrollment_pipeline.domain.events import Rejection, parse_archive_line, parse_record
from enrollment_pipeline.lib.clients.kafka import KafkaClient
from enrollment_pipeline.lib.consumer_groups import ENROLLMENT_GROUPS, LEAD_INTEGRATION_GROUP
from enrollment_pipeline.lib.ingestion.batch import BatchReport, PublishLeads, apply_parsed
from enrollment_pipeline.lib.mongo.collections import Document
from enrollment_pipeline.lib.mongo.dead_letters import key_bytes, raw_bytes
from enrollment_pipeline.lib.mongo.store import EnrollmentStore
from enrollment_pipeline.lib.sources import Source


@dataclass(frozen=True)
class OffsetRow:
    group: str
    topic: str
    partition: int
    committed: int | None  # authoritative, in Mongo
    kafka_committed: int | None  # the copy standard Kafka tooling shows
    end: int

    @property
    def lag(self) -> int:
        return max(0, self.end - (self.committed or 0))


def offset_rows(
    kafka: KafkaClient, store: EnrollmentStore, *, enrollment_topic: str, lead_topic: str
) -> list[OffsetRow]:
    rows = []
    groups = [(g, enrollment_topic) for g in ENROLLMENT_GROUPS] + [
        (LEAD_INTEGRATION_GROUP, lead_topic)
    ]
    ends_by_topic = {t: kafka.end_offsets(t) for t in {enrollment_topic, lead_topic}}
    for group, topic in groups:
        committed = store.committed_offsets(group, topic)
        in_kafka = kafka.group_offsets(group)
        for partition, end in sorted(ends_by_topic[topic].items()):
            rows.append(
                OffsetRow(
                    group,
                    topic,
                    partition,
                    committed.get(partition),
                    in_kafka.get((topic, partition)),
                    end,
                )
            )
    return rows


def reset_targets(
    kafka: KafkaClient,
    topic: str,
    *,
    to_offset: int | None = None,
    to_time: datetime | None = None,
    partitions: list[int] | None = None,
) -> dict[int, int]:
    """Where each partition restarts: an offset (clamped to the log) or the first at a time."""
    chosen = partitions or kafka.partitions(topic)
    ends = kafka.end_offsets(topic)
    if to_time is not None:
        return kafka.offsets_at(topic, int(to_time.timestamp() * 1000), chosen)
    if to_offset is None:
        raise ValueError("give an offset or a time")
    return {p: max(0, min(to_offset, ends[p])) for p in chosen}


def reset_offsets(
    kafka: KafkaClient,
    store: EnrollmentStore,
    topic: str,
    targets: dict[int, int],
    *,
    groups: Sequence[str] = ENROLLMENT_GROUPS,
) -> None:
    """Move `groups` to `targets` in Mongo and in Kafka (the next run replays from there)."""
    store.commit_offsets(groups, topic, targets, now=datetime.now(UTC), run_id=None)
    for group in groups:
        kafka.commit_group_offsets(group, topic, targets)


def list_dead_letters(
    store: EnrollmentStore,
    *,
    reason: str | None = None,
    since: datetime | None = None,
    status: str | None = "OPEN",
    limit: int = 50,
) -> list[Document]:
    return store.dead_letters.listing(reason=reason, since=since, status=status, limit=limit)


@dataclass(frozen=True)
class RedriveResult:
    redriven: list[str]
    still_rejected: dict[str, str]
    report: BatchReport | None


def redrive(
    store: EnrollmentStore,
    letter_ids: list[str],
    *,
    publish_leads: PublishLeads | None,
    max_record_bytes: int = 1_000_000,
) -> RedriveResult:
    """Parse the kept raw input again (after a fix) and apply what is now valid.

    Applied letters become `REDRIVEN`; the rest stay open with today's reason. Redriving the
    same letter twice is harmless: the event store ignores an event it already has.
    """
    letters = store.dead_letters.of_ids(letter_ids)
    parsed, rejected = [], {}
    for letter in letters:
        raw, key = raw_bytes(letter), key_bytes(letter)
        if letter["_id"].startswith("kafka:"):
            outcome = parse_record(key, raw, max_bytes=max_record_bytes)
        else:
            outcome = parse_archive_line(raw or b"")
        if isinstance(outcome, Rejection):
            rejected[letter["_id"]] = f"{outcome.reason}: {outcome.detail}"
            continue
        parsed.append((Source(letter["_id"], letter.get("source", {}), raw, key), outcome))
    report = apply_parsed(store, parsed, publish_leads=publish_leads) if parsed else None
    conflicts = set()
    if report is not None and report.dead_lettered:
        conflicts = {
            d["_id"]
            for d in store.dead_letters.of_ids([s.id for s, _ in parsed])
            if d["reason"] == "conflicting_duplicate"
        }
    redriven = [s.id for s, _ in parsed if s.id not in conflicts]
    store.mark_redriven(redriven, now=datetime.now(UTC))
    return RedriveResult(redriven, rejected, report)


def produce_records(
    kafka: KafkaClient,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes]],
    *,
    batch: int = 5_000,
    progress: Callable[[int], None] = lambda sent: None,
) -> int:
    """Produce `records` in batches of `batch` (each acknowledged); `progress` gets the count."""
    sent = 0
    chunk: list[tuple[bytes | None, bytes]] = []
    for record in records:
        chunk.append(record)
        if len(chunk) >= batch:
            sent += kafka.produce_batch(topic, chunk)
            progress(sent)
            chunk = []
    sent += kafka.produce_batch(topic, chunk)
    progress(sent)
    return sent
