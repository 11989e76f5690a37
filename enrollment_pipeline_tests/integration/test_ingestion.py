"""Ingestion against the real Kafka and MongoDB-wire server: the core delivery promise."""

from __future__ import annotations

import base64
import json
import uuid
from collections import Counter
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka import KafkaAdminClient

from enrollment_pipeline.domain.followup_queue import mongo_precision
from enrollment_pipeline.lib.clients.kafka import KafkaClient
from enrollment_pipeline.lib.clients.mongo import MongoConfig, MongoConnection
from enrollment_pipeline.lib.consumer_groups import ENROLLMENT_GROUPS
from enrollment_pipeline.lib.ingestion.batch import CHECKPOINTS
from enrollment_pipeline.lib.ingestion.limits import InputLimits
from enrollment_pipeline.lib.mongo.collections import CONSUMER_OFFSETS
from enrollment_pipeline.lib.offset_commits import StaleRangeError
from enrollment_pipeline.lib.sample_data import synthetic_records
from enrollment_pipeline_tests import factories as f
from enrollment_pipeline_tests.pipeline import (
    Pipeline,
    assert_read_model_is_the_fold,
)

pytestmark = pytest.mark.integration

START = datetime(2026, 11, 1, tzinfo=UTC)


def test_happy_path_over_three_partitions_and_a_thousand_applications(pipeline: Pipeline):
    samples = list(synthetic_records(1000, seed=11, start=START, bad_fraction=0.01))
    records = [(s.key, s.value) for s in samples]
    pipeline.produce(records)

    result = pipeline.ingest()

    assert_read_model_is_the_fold(pipeline, records)
    bad = sum(s.is_bad for s in samples)
    assert result.report.events_read == len(records)
    assert result.report.dead_lettered == bad == len(pipeline.dead_letters())
    assert result.report.applied == len(records) - bad
    assert result.lag_left == 0
    assert len({r.partition for r in pipeline.plan().ranges}) == 0
    followups = pipeline.followups()
    awaiting = [d for d in followups.values() if d["status"] == "AWAITING_SIGNATURE"]
    assert awaiting and all(d["retry_count"] == 0 and d["next_due_at"] for d in awaiting)
    ends = pipeline.kafka.end_offsets(pipeline.topic)
    assert sorted(ends) == [0, 1, 2]
    for group in ENROLLMENT_GROUPS:
        assert pipeline.store.committed_offsets(group, pipeline.topic) == ends
        in_kafka = pipeline.kafka.group_offsets(group)
        assert {p: o for (t, p), o in in_kafka.items() if t == pipeline.topic} == ends


def test_replay_and_duplicates_change_nothing(pipeline: Pipeline):
    log = [f.submitted("APP-1", 0), f.approved("APP-1", 5), f.submitted("APP-2", 1)]
    records = [f.record(e) for e in log]
    pipeline.produce([*records, records[1]])  # the approval delivered twice
    first = pipeline.ingest()
    assert (first.report.applied, first.report.duplicates) == (3, 1)
    before = (pipeline.applications(), pipeline.followups(), pipeline.leads())

    pipeline.store.commit_offsets(
        ENROLLMENT_GROUPS,
        pipeline.topic,
        dict.fromkeys(range(3), 0),
        now=datetime.now(UTC),
        run_id=None,
    )
    replay = pipeline.ingest()

    assert (replay.report.applied, replay.report.duplicates) == (0, 4)
    assert (replay.report.applications_written, replay.report.leads_published) == (0, 0)
    assert (pipeline.applications(), pipeline.followups(), pipeline.leads()) == before
    assert_read_model_is_the_fold(pipeline, records)


@pytest.mark.parametrize("crash_at", CHECKPOINTS)
def test_a_crash_at_any_step_is_healed_by_the_rerun(pipeline: Pipeline, crash_at: str):
    records = [
        (s.key, s.value) for s in synthetic_records(60, seed=5, start=START, bad_fraction=0.05)
    ]
    pipeline.produce(records)
    plan = pipeline.plan()

    def crash(step: str) -> None:
        if step == crash_at:
            raise RuntimeError(f"crash {step}")

    with pytest.raises(RuntimeError, match=f"crash {crash_at}"):
        pipeline.ingest(plan, checkpoint=crash)
    assert pipeline.store.committed_offsets("read-model-service", pipeline.topic) == {}

    rerun = pipeline.ingest(plan)

    assert rerun.lag_left == 0
    assert_read_model_is_the_fold(pipeline, records)
    assert len(pipeline.dead_letters()) == rerun.report.dead_lettered


def test_late_and_orphan_events_are_anomalies_until_healed(pipeline: Pipeline):
    approval = f.approved("APP-9", 30)
    pipeline.produce([f.record(approval)])
    pipeline.ingest()
    orphan = pipeline.applications()["APP-9"]
    assert orphan["status"] is None
    assert [a["event_id"] for a in orphan["anomalies"]] == [approval["event_id"]]
    assert "APP-9" not in pipeline.followups() and pipeline.leads() == []

    late_submission = f.submitted("APP-9", 0)  # occurred before the approval, arrives after
    pipeline.produce([f.record(late_submission)])
    pipeline.ingest()

    healed = pipeline.applications()["APP-9"]
    assert (healed["status"], healed["anomalies"], healed["event_count"]) == ("APPROVED", [], 2)
    assert pipeline.followups()["APP-9"]["status"] == "AWAITING_SIGNATURE"
    assert_read_model_is_the_fold(pipeline, [f.record(approval), f.record(late_submission)])


def test_same_event_id_with_other_content_is_a_conflicting_duplicate(pipeline: Pipeline):
    original = f.submitted("APP-3", 0)
    impostor = dict(original, occurred_at=f.at(99))
    pipeline.produce([f.record(original)])
    pipeline.ingest()
    pipeline.produce([f.record(impostor)])
    pipeline.ingest()
    letters = pipeline.dead_letters()
    assert [d["reason"] for d in letters.values()] == ["conflicting_duplicate"]
    assert pipeline.applications()["APP-3"]["submitted_at"] == mongo_precision(
        datetime.fromisoformat(original["occurred_at"])
    )


BAD_INPUTS = {
    "not json": (b"APP-5", b"{not json", "invalid_json"),
    "invalid utf-8": (b"APP-5", b'{"event_id": "\xe9"}', "invalid_utf8"),
    "wrong type": (
        b"APP-5",
        json.dumps(dict(f.approved("APP-5", 1), schema_version="1")).encode(),
        "unsupported_schema_version",
    ),
    "missing field": (
        b"APP-5",
        json.dumps(
            {k: v for k, v in f.approved("APP-5", 1).items() if k != "occurred_at"}
        ).encode(),
        "schema_violation",
    ),
    "unknown type": (
        b"APP-5",
        json.dumps(dict(f.approved("APP-5", 1), event_type="ApplicationReopened")).encode(),
        "unknown_event_type",
    ),
    "oversized": (
        b"APP-5",
        json.dumps(dict(f.submitted("APP-5", 1), pad="x" * 5000)).encode(),
        "oversized",
    ),
    "null key": (None, json.dumps(f.approved("APP-5", 1)).encode(), "null_key"),
    "key mismatch": (b"APP-6", json.dumps(f.approved("APP-5", 1)).encode(), "key_mismatch"),
    "nan": (b"APP-5", b'{"event_id": NaN}', "invalid_json"),
}


def test_bad_input_is_dead_lettered_and_the_batch_goes_on(pipeline: Pipeline):
    good = [f.record(f.submitted("APP-5", 0)), f.record(f.approved("APP-5", 2))]
    bad = [(key, value) for key, value, _ in BAD_INPUTS.values()]
    pipeline.produce(good[:1] + bad + good[1:])

    result = pipeline.ingest(limits=InputLimits(max_record_bytes=4000))

    assert pipeline.applications()["APP-5"]["status"] == "APPROVED"
    letters = pipeline.dead_letters()
    assert Counter(d["reason"] for d in letters.values()) == Counter(
        reason for _, _, reason in BAD_INPUTS.values()
    )
    assert result.report.dead_lettered == len(BAD_INPUTS)
    kept = {d["raw_base64"] for d in letters.values()}
    assert kept == {base64.b64encode(value).decode() for _, value, _ in BAD_INPUTS.values()}
    for letter_id, letter in letters.items():
        topic, partition, offset = letter_id.split(":")[1:]
        assert letter["source"] == {
            "topic": topic,
            "partition": int(partition),
            "offset": int(offset),
        }
        assert letter["detail"]


def test_a_range_whose_start_moved_is_refused(pipeline: Pipeline):
    pipeline.produce([f.record(f.submitted("APP-7", 0))])
    plan = pipeline.plan()
    pipeline.ingest(plan)
    with pytest.raises(StaleRangeError):
        pipeline.ingest(plan)


@settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_random_logs_and_batch_boundaries_give_the_fold_of_the_whole_log(
    kafka: KafkaClient, services, data
):
    seed = data.draw(st.integers(0, 10_000), label="seed")
    samples = list(synthetic_records(12, seed=seed, start=START, bad_fraction=0.1))
    records = [(s.key, s.value) for s in samples]
    # duplicates, and late events: some records sent again, out of place
    resent = data.draw(st.lists(st.sampled_from(records), max_size=10), label="resent")
    order = data.draw(st.permutations(range(len(records) + len(resent))), label="order")
    log = [(records + resent)[i] for i in order]
    # per application order on the wire is shuffled too: occurred_at decides the fold
    topic = f"prop-{uuid.uuid4().hex[:10]}"
    lead_topic = f"prop-leads-{uuid.uuid4().hex[:10]}"
    kafka.ensure_topics([topic, lead_topic], partitions=3)
    mongo = MongoConnection(
        MongoConfig(uri=services.mongo_uri, database=f"prop_{uuid.uuid4().hex[:10]}")
    )
    mongo.ensure_indexes()
    try:
        pipeline = Pipeline(kafka, mongo, topic, lead_topic)
        pipeline.produce(log)
        while pipeline.plan().ranges:
            step = data.draw(st.integers(2, 20), label="batch size per partition")
            pipeline.ingest(pipeline.plan(max_events=step))
        assert_read_model_is_the_fold(pipeline, log, in_order=False)
    finally:
        mongo.client().drop_database(mongo.database)
        mongo.client().close()
        kafka.delete_topics([topic, lead_topic])


def test_offsets_are_visible_to_kafka_tooling_under_the_seed_group_names(
    pipeline: Pipeline, services
):
    pipeline.produce([f.record(f.submitted(f"APP-{i}", i)) for i in range(30)])
    pipeline.ingest()
    ends = pipeline.kafka.end_offsets(pipeline.topic)
    admin = KafkaAdminClient(bootstrap_servers=services.kafka_bootstrap_servers)
    try:
        for group in ENROLLMENT_GROUPS:
            offsets = admin.list_group_offsets({group: None})[group]
            mine = {
                tp.partition: m.offset for tp, m in offsets.items() if tp.topic == pipeline.topic
            }
            assert mine == ends
    finally:
        admin.close()
    stored = list(pipeline.mongo.db()[CONSUMER_OFFSETS].find({"topic": pipeline.topic}))
    assert len(stored) == 3 * len(ends)


def test_a_batch_rereads_stored_events_only_for_applications_with_late_events(
    pipeline: Pipeline,
):
    first = [f.submitted(f"APP-{i}", i) for i in range(20)]
    pipeline.produce([f.record(e) for e in first])
    assert pipeline.ingest().report.applications_reread == 0

    # Updates to existing applications, in order, and one event that sorts before the
    # last one already applied to APP-3 (its approval at minute 60 came first).
    approval = f.approved("APP-3", 60)
    pipeline.produce([f.record(approval)])
    assert pipeline.ingest().report.applications_reread == 0
    later = [f.approved(f"APP-{i}", 100 + i) for i in range(20) if i != 3]
    late = f.event(
        "ApplicationUpdated", "APP-3", 30, {"changes": {"applicant": {"phone": "+1-555-0199"}}}
    )
    pipeline.produce([f.record(e) for e in [*later, late]])
    report = pipeline.ingest().report

    assert (report.applications_touched, report.applications_reread) == (20, 1)
    assert report.events_reread == 3  # APP-3's submission, approval and the late update
    records = [f.record(e) for e in [*first, approval, *later, late]]
    assert_read_model_is_the_fold(pipeline, records, in_order=False)
    assert pipeline.applications()["APP-3"]["applicant"]["phone"] == "+1-555-0199"
