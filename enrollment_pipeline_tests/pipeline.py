"""A test's view of one pipeline (topics, database) and the oracle: the fold of the log."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import timedelta

import dagster as dg

from enrollment_pipeline.defs.ingestion.jobs import ingest_enrollment_events
from enrollment_pipeline.defs.ingestion.sensors import enrollment_events_sensor
from enrollment_pipeline.defs.settings.resources import PipelineSettingsResource
from enrollment_pipeline.domain.events import EnrollmentEvent, parse_record
from enrollment_pipeline.domain.followup_queue import mongo_precision
from enrollment_pipeline.domain.leads import lead_events
from enrollment_pipeline.domain.offset_ranges import PartitionRange, RangePlan
from enrollment_pipeline.domain.projection import fold_application
from enrollment_pipeline.lib.clients.kafka import KafkaClient
from enrollment_pipeline.lib.clients.mongo import MongoConnection
from enrollment_pipeline.lib.ingestion.run import IngestResult, ingest_range
from enrollment_pipeline.lib.mongo.collections import APPLICATIONS, BROKER_FOLLOWUPS, DEAD_LETTERS
from enrollment_pipeline.lib.mongo.lease import LeasePolicy, WriterLease, all_partition_scopes
from enrollment_pipeline.lib.mongo.store import EnrollmentStore
from enrollment_pipeline_tests.jobs import as_resources, run_job


class Pipeline:
    """One test's topics and database, and the calls a run makes."""

    def __init__(self, kafka: KafkaClient, mongo: MongoConnection, topic: str, lead_topic: str):
        self.kafka, self.mongo, self.topic, self.lead_topic = kafka, mongo, topic, lead_topic
        self.store = EnrollmentStore.of(mongo)

    def settings(self, **overrides) -> PipelineSettingsResource:
        """The settings resource of this pipeline's topics, with `overrides` (e.g. limits).

        A caught-up sensor tick skips at once here (no SENSOR_WAIT_SECONDS): tests tick until
        it skips, and the wait has its own tests.
        """
        overrides.setdefault("sensor_wait_seconds", 0)
        return PipelineSettingsResource(
            enrollment_topic=self.topic, lead_topic=self.lead_topic, **overrides
        )

    def resources(self, **overrides) -> dict[str, object]:
        return as_resources(
            {"kafka": self.kafka, "mongo": self.mongo, "settings": self.settings(**overrides)}
        )

    def produce(self, records: list[tuple[bytes | None, bytes]]) -> None:
        self.kafka.produce_batch(self.topic, records)

    def plan(self, max_events: int | None = None) -> RangePlan:
        """Everything after the committed offsets (optionally only the first events)."""
        committed = self.store.committed_offsets("read-model-service", self.topic)
        ends = self.kafka.end_offsets(self.topic)
        ranges = []
        for p, end in sorted(ends.items()):
            start = committed.get(p, 0)
            stop = end if max_events is None else min(end, start + max_events)
            if stop > start:
                ranges.append(PartitionRange(p, start, stop))
        return RangePlan(self.topic, tuple(ranges))

    def lease(self, owner: str = "a test") -> WriterLease:
        """The writers' lease, as a run takes it (short waits: a test holds it briefly)."""
        return short_lease(self.mongo, owner)

    def ingest(self, plan: RangePlan | None = None, **kwargs) -> IngestResult:
        kwargs.setdefault("lease", self.lease())
        return ingest_range(
            self.kafka, self.store, plan or self.plan(), lead_topic=self.lead_topic, **kwargs
        )

    def applications(self) -> dict[str, dict]:
        return {d["_id"]: d for d in self.mongo.db()[APPLICATIONS].find()}

    def followups(self) -> dict[str, dict]:
        return {d["_id"]: d for d in self.mongo.db()[BROKER_FOLLOWUPS].find()}

    def dead_letters(self) -> dict[str, dict]:
        return {d["_id"]: d for d in self.mongo.db()[DEAD_LETTERS].find()}

    def leads(self) -> list[dict]:
        ends = self.kafka.end_offsets(self.lead_topic)
        records = self.kafka.read_range(self.lead_topic, {p: (0, e) for p, e in ends.items()})
        return [json.loads(r.value) for r in records]


# The partitions of a test's topic (conftest's `topic` fixture).
TEST_PARTITIONS = 3


def short_lease(
    mongo: MongoConnection, owner: str = "a test", *, partitions: int = TEST_PARTITIONS
) -> WriterLease:
    """A writers' lease of every partition, with the waits of a test: a minute at most, no
    grace."""
    return WriterLease(
        mongo.db(),
        scopes=all_partition_scopes(partitions),
        owner=owner,
        policy=LeasePolicy(
            ttl=timedelta(seconds=20), wait=timedelta(seconds=60), grace=timedelta(0)
        ),
    )


def _normalized(value):
    if isinstance(value, dict):
        return {k: _normalized(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalized(v) for v in value]
    return mongo_precision(value)


def expected_state(records: list[tuple[bytes | None, bytes]]):
    """The fold of the log, computed here from the valid, first-seen events."""
    by_app: dict[str, dict[str, EnrollmentEvent]] = defaultdict(dict)
    for key, value in records:
        parsed = parse_record(key, value)
        if isinstance(parsed, EnrollmentEvent):
            by_app[parsed.application_id].setdefault(parsed.event_id, parsed)
    folds = {app: fold_application(app, events.values()) for app, events in by_app.items()}
    leads = [lead for app, ev in by_app.items() for lead in lead_events(app, ev.values())]
    return folds, leads


def assert_read_model_is_the_fold(pipeline: Pipeline, records, *, in_order: bool = True) -> None:
    """The read model and queue equal the fold of the log; each lead id is published once.

    Leads are decided when their source event is applied, from the history known then. When
    the log arrives in `occurred_at` order that is the whole log's lead list; when events
    arrive late (`in_order=False`) it can differ, and only the once-only promise holds.
    """
    folds, leads = expected_state(records)
    apps = pipeline.applications()
    assert set(apps) == set(folds)
    followups = pipeline.followups()
    for app_id, application in folds.items():
        expected = application.to_document()
        requirement = application.followup
        expected["broker_followup_status"] = requirement.state if requirement else None
        assert _normalized(apps[app_id]) == _normalized(expected), app_id
        if requirement is None:
            assert app_id not in followups
        else:
            doc = followups[app_id]
            assert (doc["status"], doc["broker_id"], doc["broker_email"]) == (
                requirement.state,
                requirement.broker_id,
                requirement.broker_email,
            )
            assert doc["signature_obtained"] == (requirement.state == "SIGNED")
    published = pipeline.leads()
    ids = [lead["lead_event_id"] for lead in published]
    assert len(ids) == len(set(ids)), "a lead id was published twice"
    if in_order:
        assert sorted(ids) == sorted(lead.lead_event_id for lead in leads)


def drain(instance: dg.DagsterInstance, pipeline: Pipeline, **settings) -> list[dict]:
    """Tick the sensor and run what it requests until it skips; each run's read-model metadata.

    `settings` override the pipeline's settings resource (e.g. `ingest_max_events_per_run`).
    """
    resources = pipeline.resources(**settings)
    runs = []
    for _ in range(100):
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            result = enrollment_events_sensor(context)
        if isinstance(result, dg.SkipReason):
            return runs
        for request in result.run_requests:
            outcome = run_job(
                ingest_enrollment_events,
                run_config=request.run_config,
                resources=resources,
                instance=instance,
                tags=request.tags,
            )
            (applications,) = [
                m
                for m in outcome.asset_materializations_for_node("ingest_offset_range")
                if m.asset_key.to_user_string() == "applications"
            ]
            runs.append({k: v.value for k, v in applications.metadata.items()})
    raise AssertionError("the sensor kept requesting runs")


def split_per_application(
    records: list[tuple[bytes | None, bytes]],
) -> tuple[list[tuple[bytes | None, bytes]], list[tuple[bytes | None, bytes]]]:
    """Two halves of a stream in which every application with 2+ events has some in each.

    The first half holds the first half of each application's events, the second the rest,
    both in stream order: so the second half updates nearly every application the first
    created, the steady state of a topic (and the update-heavy case for the store).
    """
    seen: Counter[bytes | None] = Counter(key for key, _ in records)
    taken: Counter[bytes | None] = Counter()
    first, second = [], []
    for key, value in records:
        taken[key] += 1
        (first if taken[key] <= (seen[key] + 1) // 2 else second).append((key, value))
    return first, second
