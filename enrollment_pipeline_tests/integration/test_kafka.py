"""The Kafka resource against the real broker: topics, offsets, exact ranges, group commits."""

from __future__ import annotations

import time

import pytest
from kafka import KafkaAdminClient, TopicPartition
from kafka.errors import KafkaError

from enrollment_pipeline.lib.clients.kafka import (
    KafkaClient,
    KafkaConfig,
    KafkaUnavailableError,
    OffsetOutOfRangeError,
)
from enrollment_pipeline.lib.consumer_groups import ENROLLMENT_GROUPS

pytestmark = pytest.mark.integration


def _produce(kafka: KafkaClient, topic: str, count: int) -> list[tuple[bytes, bytes]]:
    messages = [(f"APP-{i % 20:06d}".encode(), f'{{"n": {i}}}'.encode()) for i in range(count)]
    assert kafka.produce_batch(topic, messages) == count
    return messages


def test_topic_is_created_with_the_requested_partitions(kafka: KafkaClient, topic: str):
    assert kafka.partitions(topic) == [0, 1, 2]
    kafka.ensure_topics([topic], partitions=3)  # a second call is harmless
    assert kafka.partitions(topic) == [0, 1, 2]


def test_produced_batch_is_visible_in_end_offsets_and_keyed_by_partition(
    kafka: KafkaClient, topic: str
):
    messages = _produce(kafka, topic, 300)
    ends = kafka.end_offsets(topic)
    assert sum(ends.values()) == 300
    records = kafka.read_range(topic, {p: (0, end) for p, end in ends.items()})
    assert sorted((r.key, r.value) for r in records) == sorted(messages)
    # One application's records all land on one partition, in the order they were sent.
    by_key: dict[bytes, set[int]] = {}
    for r in records:
        by_key.setdefault(r.key, set()).add(r.partition)
    assert all(len(partitions) == 1 for partitions in by_key.values())
    for key in by_key:
        values = [r.value for r in sorted(records, key=lambda r: r.offset) if r.key == key]
        assert values == [v for k, v in messages if k == key]


def test_read_range_returns_exactly_the_requested_offsets(kafka: KafkaClient, topic: str):
    _produce(kafka, topic, 200)
    ends = kafka.end_offsets(topic)
    partition = max(ends, key=ends.get)
    start, end = 3, ends[partition] - 2
    records = kafka.read_range(topic, {partition: (start, end)})
    assert [r.offset for r in records] == list(range(start, end))
    assert {r.partition for r in records} == {partition}
    assert kafka.read_range(topic, {partition: (5, 5)}) == []


def test_read_below_log_start_fails_loudly(kafka: KafkaClient, topic: str, services):
    _produce(kafka, topic, 60)
    ends = kafka.end_offsets(topic)
    partition = max(ends, key=ends.get)
    admin = KafkaAdminClient(bootstrap_servers=services.kafka_bootstrap_servers)
    try:
        admin.delete_records({TopicPartition(topic, partition): 5})
    finally:
        admin.close()
    with pytest.raises(OffsetOutOfRangeError, match="deleted before they were read"):
        kafka.read_range(topic, {partition: (0, ends[partition])})


def test_group_offsets_are_committed_and_visible_to_a_kafka_admin_client(
    kafka: KafkaClient, topic: str, services
):
    _produce(kafka, topic, 90)
    ends = kafka.end_offsets(topic)
    for group in ENROLLMENT_GROUPS:
        kafka.commit_group_offsets(f"{group}-{topic}", topic, ends)
    admin = KafkaAdminClient(bootstrap_servers=services.kafka_bootstrap_servers)
    try:
        for group in ENROLLMENT_GROUPS:
            committed = admin.list_group_offsets({f"{group}-{topic}": None})[f"{group}-{topic}"]
            assert {tp.partition: meta.offset for tp, meta in committed.items()} == ends
    finally:
        admin.close()
    assert kafka.group_offsets(f"{ENROLLMENT_GROUPS[0]}-{topic}") == {
        (topic, p): o for p, o in ends.items()
    }


def test_producing_to_a_missing_topic_fails_in_seconds(services):
    kafka = KafkaClient(
        KafkaConfig(bootstrap_servers=services.kafka_bootstrap_servers, max_block_ms=2000)
    )
    started = time.monotonic()
    with pytest.raises(KafkaError):
        kafka.produce_batch("no-such-topic-auto-creation-is-off", [(b"k", b"v")])
    assert time.monotonic() - started < 15
    with kafka.admin() as admin:
        assert "no-such-topic-auto-creation-is-off" not in admin.list_topics()


def test_unreachable_cluster_fails_fast_naming_the_setting():
    kafka = KafkaClient(KafkaConfig(bootstrap_servers="127.0.0.1:1", bootstrap_timeout_ms=2000))
    started = time.monotonic()
    with pytest.raises(KafkaUnavailableError, match="KAFKA_BOOTSTRAP_SERVERS"):
        kafka.end_offsets("enrollment-events")
    assert time.monotonic() - started < 10
