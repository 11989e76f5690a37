"""The Dagster wiring of ingestion: the sensor's ranges and the job's run, on real services."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import dagster as dg
import pytest

from enrollment_pipeline.defs.ingestion.jobs import ingest_enrollment_events
from enrollment_pipeline.defs.ingestion.sensors import enrollment_events_sensor
from enrollment_pipeline.defs.offset_ranges import ATTEMPT_TAG, LANE_TAG, PARTITIONS_TAG, RANGE_TAG
from enrollment_pipeline.defs.settings.resources import PipelineSettingsResource
from enrollment_pipeline.lib.clients.kafka import KafkaClient, KafkaConfig, KafkaUnavailableError
from enrollment_pipeline.lib.clients.mongo import (
    MongoConfig,
    MongoConnection,
    MongoUnavailableError,
)
from enrollment_pipeline.lib.consumer_groups import ENROLLMENT_GROUPS
from enrollment_pipeline.lib.mongo.collections import APPLICATIONS
from enrollment_pipeline.lib.mongo.store import EnrollmentStore
from enrollment_pipeline_tests import factories as f
from enrollment_pipeline_tests.jobs import as_resources, resolve, run_job

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(topic, lead_topic) -> PipelineSettingsResource:
    return PipelineSettingsResource(
        sensor_wait_seconds=0, enrollment_topic=topic, lead_topic=lead_topic
    )


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


def tick(instance, kafka, mongo, settings) -> dg.SensorResult | dg.SkipReason:
    with dg.build_sensor_context(
        instance=instance,
        resources=as_resources({"kafka": kafka, "mongo": mongo, "settings": settings}),
    ) as context:
        return enrollment_events_sensor(context)


def run(instance, kafka, mongo, settings, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
    return run_job(
        ingest_enrollment_events,
        run_config=request.run_config,
        resources=as_resources({"kafka": kafka, "mongo": mongo, "settings": settings}),
        instance=instance,
        tags=request.tags,
        raise_on_error=False,
    )


def produce_apps(kafka, topic, count) -> None:
    kafka.produce_batch(topic, [f.record(f.submitted(f"APP-{i:04d}", i)) for i in range(count)])


def test_sensor_requests_exact_ranges_and_the_run_applies_them(
    settings, instance, kafka, mongo, topic
):
    produce_apps(kafka, topic, 40)
    ends = kafka.end_offsets(topic)

    result = tick(instance, kafka, mongo, settings)
    (request,) = result.run_requests
    ranges = request.run_config["ops"]["ingest_offset_range"]["config"]["ranges"]
    assert {r["partition"]: (r["start"], r["end"]) for r in ranges} == {
        p: (0, e) for p, e in ends.items() if e
    }
    assert request.tags[PARTITIONS_TAG] == ",".join(str(r["partition"]) for r in ranges)

    outcome = run(instance, kafka, mongo, settings, request)
    assert outcome.success
    assert mongo.db()[APPLICATIONS].count_documents({}) == 40
    materialized = {
        m.asset_key.to_user_string(): m.metadata
        for m in outcome.asset_materializations_for_node("ingest_offset_range")
    }
    assert set(materialized) == {
        "applications",
        "broker_followups",
        "dead_letters",
        "lead_integration_events",
    }
    assert materialized["applications"]["events_applied"].value == 40
    assert materialized["applications"]["lag_left"].value == 0
    assert materialized["lead_integration_events"]["leads_published"].value == 40
    checks = [
        e.asset_check_evaluation_data
        for e in outcome.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    ]
    assert {c.check_name: c.passed for c in checks} == {
        "batch_dead_letter_rate": True,
        "consumer_lag": True,
    }
    for group in ENROLLMENT_GROUPS:
        assert EnrollmentStore.of(mongo).committed_offsets(group, topic) == ends

    assert isinstance(tick(instance, kafka, mongo, settings), dg.SkipReason)  # nothing left


def test_a_caught_up_tick_requests_the_run_of_a_record_written_while_it_waits(
    instance, kafka, mongo, topic
):
    waiting = PipelineSettingsResource(enrollment_topic=topic, sensor_wait_seconds=4)
    produce_apps(kafka, topic, 3)
    (request,) = tick(instance, kafka, mongo, waiting).run_requests
    assert run(instance, kafka, mongo, waiting, request).success  # caught up now

    later = threading.Timer(
        1.0, lambda: kafka.produce_batch(topic, [f.record(f.submitted("APP-LATE", 9))])
    )
    started = time.monotonic()
    later.start()
    result = tick(instance, kafka, mongo, waiting)
    took = time.monotonic() - started
    later.join()
    (request,) = result.run_requests  # in this tick, not the next one
    assert took < 3.5, f"the tick returned {took:.1f} s after it started: it waited it out"
    ranges = request.run_config["ops"]["ingest_offset_range"]["config"]["ranges"]
    assert sum(r["end"] - r["start"] for r in ranges) == 1
    assert run(instance, kafka, mongo, waiting, request).success
    assert mongo.db()[APPLICATIONS].find_one({"_id": "APP-LATE"}) is not None

    quiet = PipelineSettingsResource(enrollment_topic=topic, sensor_wait_seconds=1.5)
    started = time.monotonic()
    outcome = tick(instance, kafka, mongo, quiet)
    assert isinstance(outcome, dg.SkipReason) and outcome.skip_message == "no new records"
    assert time.monotonic() - started >= 1.5  # nothing came: it waited, then skipped


def test_sensor_caps_a_run(settings, instance, kafka, mongo, topic):
    settings = PipelineSettingsResource(
        sensor_wait_seconds=0, enrollment_topic=topic, ingest_max_events_per_run=7
    )
    produce_apps(kafka, topic, 40)
    (request,) = tick(instance, kafka, mongo, settings).run_requests
    ranges = request.run_config["ops"]["ingest_offset_range"]["config"]["ranges"]
    assert sum(r["end"] - r["start"] for r in ranges) == 7


def test_partitions_of_a_run_in_flight_are_not_requested(settings, instance, kafka, mongo, topic):
    produce_apps(kafka, topic, 40)

    def in_flight(range_topic: str, partitions: str) -> None:
        instance.create_run_for_job(
            resolve(
                ingest_enrollment_events, {"kafka": kafka, "mongo": mongo, "settings": settings}
            ),
            run_config={"ops": {"ingest_offset_range": {"config": {"topic": topic, "ranges": []}}}},
            status=dg.DagsterRunStatus.STARTED,
            tags={RANGE_TAG: f"{range_topic}:0@0", PARTITIONS_TAG: partitions},
        )

    in_flight("another-topic", "0,1,2")  # other topics' runs do not block this one
    (request,) = tick(instance, kafka, mongo, settings).run_requests
    assert request.tags[PARTITIONS_TAG] == "0,1,2"
    assert request.tags[LANE_TAG] == "0"

    in_flight(topic, "0")  # one lane (INGEST_PARALLEL_RUNS=1): it waits for its run
    outcome = tick(instance, kafka, mongo, settings)
    assert isinstance(outcome, dg.SkipReason)
    assert "partitions [0] have a run in flight" in outcome.skip_message

    two_lanes = PipelineSettingsResource(
        sensor_wait_seconds=0, enrollment_topic=topic, ingest_parallel_runs=2
    )
    (request,) = tick(instance, kafka, mongo, two_lanes).run_requests  # lanes {0, 2} and {1}
    assert (request.tags[PARTITIONS_TAG], request.tags[LANE_TAG]) == ("1", "1")


def test_a_tick_blocked_by_a_run_in_flight_requests_the_next_range_when_that_run_ends(
    instance, kafka, mongo, topic
):
    waiting = PipelineSettingsResource(enrollment_topic=topic, sensor_wait_seconds=4)
    produce_apps(kafka, topic, 40)
    (request,) = tick(instance, kafka, mongo, waiting).run_requests
    previous = instance.create_run_for_job(
        resolve(ingest_enrollment_events, {"kafka": kafka, "mongo": mongo, "settings": waiting}),
        run_config=request.run_config,
        status=dg.DagsterRunStatus.STARTED,
        tags=request.tags,
    )
    ends = threading.Timer(1.0, lambda: instance.report_run_failed(previous, "ended by the test"))
    started = time.monotonic()
    ends.start()
    result = tick(instance, kafka, mongo, waiting)
    took = time.monotonic() - started
    ends.join()
    # The failed range is asked for again, in this tick: not at the daemon's next loop.
    (retry,) = result.run_requests
    assert retry.tags[ATTEMPT_TAG] == "2"
    assert took < 3.5, f"the tick returned {took:.1f} s after it started: it waited it out"


def test_two_lanes_get_two_runs_over_disjoint_partitions(settings, instance, kafka, mongo, topic):
    produce_apps(kafka, topic, 40)
    two_lanes = PipelineSettingsResource(
        sensor_wait_seconds=0, enrollment_topic=topic, ingest_parallel_runs=2
    )
    requests = tick(instance, kafka, mongo, two_lanes).run_requests
    assert [(r.tags[LANE_TAG], r.tags[PARTITIONS_TAG]) for r in requests] == [
        ("0", "0,2"),
        ("1", "1"),
    ]
    assert all(r.tags["dagster/priority"] == "10" for r in requests)
    for request in requests:
        assert run(instance, kafka, mongo, two_lanes, request).success
    assert mongo.db()[APPLICATIONS].count_documents({}) == 40


def test_a_failed_range_is_requested_again_then_reported(settings, instance, kafka, mongo, topic):
    settings = PipelineSettingsResource(
        sensor_wait_seconds=0, enrollment_topic=topic, ingest_max_range_attempts=2
    )
    produce_apps(kafka, topic, 12)
    broken_mongo = MongoConnection(
        MongoConfig(
            uri="mongodb://127.0.0.1:1/", database=mongo.database, server_selection_timeout_ms=300
        )
    )
    keys, requested = [], []
    while isinstance(result := tick(instance, kafka, mongo, settings), dg.SensorResult):
        (request,) = result.run_requests
        requested.append((request.tags[PARTITIONS_TAG], request.tags[ATTEMPT_TAG]))
        keys.append(request.run_key)
        assert not run(instance, kafka, broken_mongo, settings, request).success
        assert len(requested) < 10
    # The lane's run fails; then each partition, having failed, runs alone for its last attempt.
    assert requested == [("0,1,2", "1"), ("0", "2"), ("1", "2"), ("2", "2")]
    assert len(set(keys)) == len(keys)  # a reused run key would be skipped silently by Dagster
    for partition in (0, 1, 2):
        assert f"partition {partition} of {topic} from offset 0 failed 2 times" in (
            result.skip_message
        )


def test_a_partition_that_keeps_failing_does_not_hold_the_others(
    settings, instance, kafka, mongo, topic
):
    settings = PipelineSettingsResource(
        sensor_wait_seconds=0, enrollment_topic=topic, ingest_max_range_attempts=2
    )
    produce_apps(kafka, topic, 30)
    broken_mongo = MongoConnection(
        MongoConfig(
            uri="mongodb://127.0.0.1:1/", database=mongo.database, server_selection_timeout_ms=300
        )
    )

    def drain_with_partition_0_failing() -> list[str]:
        ran = []
        while isinstance(result := tick(instance, kafka, mongo, settings), dg.SensorResult):
            (request,) = result.run_requests
            poisoned = "0" in request.tags[PARTITIONS_TAG].split(",")
            outcome = run(instance, kafka, broken_mongo if poisoned else mongo, settings, request)
            assert outcome.success is not poisoned
            ran.append(request.tags[PARTITIONS_TAG])
            assert len(ran) < 10
        return ran

    assert drain_with_partition_0_failing() == ["0,1,2", "0", "1", "2"]
    committed = EnrollmentStore.of(mongo).committed_offsets(ENROLLMENT_GROUPS[0], topic)
    ends = kafka.end_offsets(topic)
    assert {p: committed.get(p, 0) for p in ends} == {0: 0, 1: ends[1], 2: ends[2]}

    kafka.produce_batch(topic, [f.record(f.submitted(f"APP-NEW-{i}", i)) for i in range(30)])
    assert drain_with_partition_0_failing() == ["1,2"]  # new events of 1 and 2 go on


def test_twelve_partitions_in_one_request(instance, kafka, mongo):
    """(How fast such a tick is: `benchmarks/ingest_throughput.py --ticks N`.)"""
    topic = f"test-12-{uuid.uuid4().hex[:8]}"
    kafka.ensure_topics([topic], partitions=12)
    settings = PipelineSettingsResource(sensor_wait_seconds=0, enrollment_topic=topic)
    try:
        produce_apps(kafka, topic, 120)
        (request,) = tick(instance, kafka, mongo, settings).run_requests
        assert len(request.tags[PARTITIONS_TAG].split(",")) == 12
        assert request.tags[RANGE_TAG].startswith(topic)
    finally:
        kafka.delete_topics([topic])


def test_a_tick_with_kafka_or_mongo_down_names_the_setting_to_fix(instance, kafka, mongo, topic):
    settings = PipelineSettingsResource(sensor_wait_seconds=0, enrollment_topic=topic)
    no_kafka = KafkaClient(KafkaConfig(bootstrap_servers="127.0.0.1:1", bootstrap_timeout_ms=2000))
    with pytest.raises(KafkaUnavailableError, match="check KAFKA_BOOTSTRAP_SERVERS"):
        tick(instance, no_kafka, mongo, settings)
    no_mongo = MongoConnection(
        MongoConfig(
            uri="mongodb://127.0.0.1:1/", database=mongo.database, server_selection_timeout_ms=300
        )
    )
    with pytest.raises(dg.DagsterResourceFunctionError) as raised:
        tick(instance, kafka, no_mongo, settings)
    assert isinstance(raised.value.__cause__, MongoUnavailableError)
    assert "check MONGO_URI" in str(raised.value.__cause__)


def test_a_new_partition_stops_ingestion_until_accepted_then_one_lane_drains_the_old_records(
    instance, kafka, mongo, topic, services, monkeypatch
):
    from click.testing import CliRunner
    from kafka.admin import KafkaAdminClient, NewPartitions

    from enrollment_pipeline.cli import main

    two_lanes = PipelineSettingsResource(
        sensor_wait_seconds=0, enrollment_topic=topic, ingest_parallel_runs=2
    )
    produce_apps(kafka, topic, 30)
    for request in tick(instance, kafka, mongo, two_lanes).run_requests:
        assert run(instance, kafka, mongo, two_lanes, request).success
    admin = KafkaAdminClient(
        bootstrap_servers=services.kafka_bootstrap_servers, request_timeout_ms=10_000
    )
    admin.create_partitions({topic: NewPartitions(total_count=4)})
    admin.close()
    kafka.produce_batch(topic, [f.record(f.submitted(f"APP-N{i:03d}", i)) for i in range(30)])

    refused = tick(instance, kafka, mongo, two_lanes)
    assert isinstance(refused, dg.SkipReason)
    assert "has 4 partitions, but this deployment's writers use 3" in refused.skip_message
    assert "offsets accept-partitions" in refused.skip_message

    for name, value in {
        "KAFKA_BOOTSTRAP_SERVERS": services.kafka_bootstrap_servers,
        "MONGO_URI": services.mongo_uri,
        "MONGO_DATABASE": mongo.database,
        "ENROLLMENT_TOPIC": topic,
    }.items():
        monkeypatch.setenv(name, value)
    accepted = CliRunner().invoke(main, ["offsets", "accept-partitions", "--yes"])
    assert accepted.exit_code == 0, accepted.output
    assert "recorded 4 partitions" in accepted.output

    (draining,) = tick(instance, kafka, mongo, two_lanes).run_requests  # one lane for all
    assert {int(p) % 2 for p in draining.tags[PARTITIONS_TAG].split(",")} == {0, 1}
    assert run(instance, kafka, mongo, two_lanes, draining).success
    kafka.produce_batch(topic, [f.record(f.submitted(f"APP-M{i:03d}", i)) for i in range(30)])
    lanes = tick(instance, kafka, mongo, two_lanes).run_requests  # drained: two lanes again
    assert sorted(r.tags[LANE_TAG] for r in lanes) == ["0", "1"]
    for request in lanes:
        assert run(instance, kafka, mongo, two_lanes, request).success
    assert mongo.db()[APPLICATIONS].count_documents({}) == 90
