"""Operator actions behind `enrollment-pipeline offsets …` and `dead-letters …` (Contract 6)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from enrollment_pipeline.domain.events import Rejection
from enrollment_pipeline.lib.clients.kafka import KafkaClient
from enrollment_pipeline.lib.consumer_groups import ENROLLMENT_GROUPS, LEAD_INTEGRATION_GROUP
from enrollment_pipeline.lib.ingestion.batch import BatchReport, PublishLeads, apply_parsed
from enrollment_pipeline.lib.ingestion.limits import DEFAULT_LIMITS, InputLimits
from enrollment_pipeline.lib.mongo.collections import Document
from enrollment_pipeline.lib.mongo.dead_letters import key_bytes, raw_bytes, truncated
from enrollment_pipeline.lib.mongo.lease import WriterLease, holding
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


class ResetRefusedError(ValueError):
    """An offsets reset that would lose records, or names what does not exist (one line)."""


@dataclass(frozen=True)
class OffsetMove:
    """One partition of a reset: where its groups are (Mongo, authoritative) and where they
    will be."""

    partition: int
    before: int | None
    after: int
    log_start: int
    end: int

    @property
    def skipped(self) -> int:
        """Records the move would jump over without reading them (forward past committed)."""
        return max(0, self.after - (self.before or 0))

    @property
    def replayed(self) -> int:
        return max(0, (self.before or 0) - self.after)


def plan_reset(
    kafka: KafkaClient,
    store: EnrollmentStore,
    topic: str,
    *,
    group: str,
    to_offset: int | None = None,
    per_partition: Mapping[int, int] | None = None,
    to_time: datetime | None = None,
    partitions: Sequence[int] | None = None,
    allow_skip: bool = False,
) -> list[OffsetMove]:
    """Where each chosen partition restarts: one offset for all (`to_offset`), one per
    partition (`per_partition`), or the first record at or after `to_time`; clamped to the
    retained log. A move forward past the committed offset skips records unread: refused
    unless `allow_skip`."""
    known = set(kafka.partitions(topic))
    chosen = set(partitions or ()) | set(per_partition or {})
    unknown = sorted(chosen - known)
    if unknown:
        raise ResetRefusedError(
            f"{topic} has no partition {', '.join(map(str, unknown))} "
            f"(it has {', '.join(map(str, sorted(known)))})"
        )
    if not chosen:
        chosen = known
    committed = store.committed_offsets(group, topic)
    ends = kafka.end_offsets(topic)
    starts = kafka.beginning_offsets(topic)
    if to_time is not None:
        wanted = kafka.offsets_at(topic, int(to_time.timestamp() * 1000), sorted(chosen))
    else:
        wanted = {}
        for p in chosen:
            target = (per_partition or {}).get(p, to_offset)
            if target is None:
                raise ResetRefusedError(f"no offset given for partition {p}")
            wanted[p] = target
    moves = [
        OffsetMove(
            partition=p,
            before=committed.get(p),
            after=max(starts[p], min(wanted[p], ends[p])),
            log_start=starts[p],
            end=ends[p],
        )
        for p in sorted(chosen)
    ]
    skips = [m for m in moves if m.skipped]
    if skips and not allow_skip:
        shown = ", ".join(f"{m.partition}: {m.before or 0} -> {m.after}" for m in skips)
        raise ResetRefusedError(
            f"this would skip unread records ({shown}); pass --allow-skip to move forward "
            "past the committed offsets on purpose"
        )
    return moves


def reset_offsets(
    kafka: KafkaClient,
    store: EnrollmentStore,
    topic: str,
    moves: Sequence[OffsetMove],
    *,
    groups: Sequence[str] = ENROLLMENT_GROUPS,
    lease: WriterLease | None,
) -> None:
    """Move `groups` in Mongo (under the writers' `lease`) and in Kafka; the next run replays
    from there."""
    targets = {m.partition: m.after for m in moves}
    with holding(lease):
        store.guarded(lease).commit_offsets(
            groups, topic, targets, now=datetime.now(UTC), run_id=None
        )
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
    lease: WriterLease | None,
    limits: InputLimits = DEFAULT_LIMITS,
) -> RedriveResult:
    """Parse the kept raw input again (after a fix) and apply what is now valid.

    Applied letters become `REDRIVEN`; the rest stay open with today's reason. Redriving the
    same letter twice is harmless: the event store ignores an event it already has. A letter
    whose input was kept cut (bigger than DEAD_LETTER_MAX_RAW_BYTES) is refused, with why.
    It writes the read model, so it holds the writers' `lease`.
    """
    with holding(lease):
        return _redrive(
            store.guarded(lease), letter_ids, publish_leads=publish_leads, limits=limits
        )


def _redrive(
    store: EnrollmentStore,
    letter_ids: list[str],
    *,
    publish_leads: PublishLeads | None,
    limits: InputLimits,
) -> RedriveResult:
    letters = store.dead_letters.of_ids(letter_ids)
    parsed, rejected = [], {}
    for letter in letters:
        cut = truncated(letter)
        if cut is not None:
            rejected[letter["_id"]] = f"not re-driven: {cut}"
            continue
        raw, key = raw_bytes(letter), key_bytes(letter)
        if letter["_id"].startswith("kafka:"):
            outcome = limits.record(key, raw)
        else:
            outcome = limits.archive_line(raw or b"")
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
