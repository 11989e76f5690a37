"""How fast one ingestion micro-batch runs, and how many Mongo commands it takes.

Produces N synthetic events (default 50,000, the default run cap) to a fresh topic, then
times one `ingest_range` over all of them (read → parsed → stored → read model, queue and
leads written → offsets committed), with a phase breakdown from pymongo command monitoring.
Also times the ingestion sensor's tick on a 12-partition topic.

Run against the local stack:
    enrollment-pipeline stack up && export $(enrollment-pipeline stack env)
    .venv/bin/python benchmarks/ingest_throughput.py --events 50000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime

import dagster as dg
from pymongo import MongoClient, monitoring

from enrollment_pipeline.defs.ingestion.sensors import enrollment_events_sensor
from enrollment_pipeline.defs.settings.resources import PipelineSettingsResource
from enrollment_pipeline.domain.offset_ranges import PartitionRange, RangePlan
from enrollment_pipeline.lib.clients.kafka import KafkaClient, KafkaConfig
from enrollment_pipeline.lib.clients.mongo import MongoConfig, MongoConnection
from enrollment_pipeline.lib.ingestion.run import ingest_range
from enrollment_pipeline.lib.mongo.store import EnrollmentStore
from enrollment_pipeline.lib.sample_data import synthetic_events
from enrollment_pipeline.settings import PipelineSettings
from enrollment_pipeline_tests.jobs import as_resources


class CommandCounter(monitoring.CommandListener):
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()

    def started(self, event):
        pass

    def succeeded(self, event):
        self.counts[event.command_name] += 1
        self.seconds[event.command_name] += event.duration_micros / 1e6

    def failed(self, event):
        self.counts[f"{event.command_name} (failed)"] += 1


def produce(kafka: KafkaClient, topic: str, events: int) -> int:
    # ~3.4 events per application in the synthetic mix
    records = []
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for record in synthetic_events(events // 3 + 1, seed=42, start=start):
        records.append(record)
        if len(records) == events:
            break
    for i in range(0, len(records), 10_000):
        kafka.produce_batch(topic, records[i : i + 10_000])
    return len(records)


def bench_ingest(settings: PipelineSettings, events: int, partitions: int) -> None:
    kafka = KafkaClient(KafkaConfig(bootstrap_servers=settings.kafka_bootstrap_servers))
    topic, lead_topic = f"bench-{uuid.uuid4().hex[:8]}", f"bench-leads-{uuid.uuid4().hex[:8]}"
    database = f"bench_{uuid.uuid4().hex[:8]}"
    kafka.ensure_topics([topic, lead_topic], partitions=partitions)
    counter = CommandCounter()
    client = MongoClient(
        settings.mongo_uri, event_listeners=[counter], tz_aware=True, socketTimeoutMS=600_000
    )
    MongoConnection(MongoConfig(uri=settings.mongo_uri, database=database)).ensure_indexes()
    try:
        produced = produce(kafka, topic, events)
        ends = kafka.end_offsets(topic)
        plan = RangePlan(topic, tuple(PartitionRange(p, 0, e) for p, e in sorted(ends.items())))
        store = EnrollmentStore(client[database])
        phases: dict[str, float] = {}
        last = [time.perf_counter()]

        def mark(step: str) -> None:
            now = time.perf_counter()
            phases[step] = now - last[0]
            last[0] = now

        counter.counts.clear()
        started = time.perf_counter()
        result = ingest_range(
            kafka, store, plan, lead_topic=lead_topic, lease=None, checkpoint=mark
        )
        elapsed = time.perf_counter() - started
        report = result.report
        print(f"events in the range       {produced:>10,}")
        print(f"applications touched      {report.applications_touched:>10,}")
        print(f"applied / dead-lettered   {report.applied:>10,} / {report.dead_lettered:,}")
        print(f"leads published           {report.leads_published:>10,}")
        print(f"wall time                 {elapsed:>10.1f} s")
        print(f"throughput (read→written) {produced / elapsed:>10,.0f} events/s")
        print("phases (s): " + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()))
        total = sum(counter.counts.values())
        print(
            f"Mongo commands in the run {total:>10,}: "
            + ", ".join(
                f"{name} {count} ({counter.seconds[name]:.1f} s)"
                for name, count in counter.counts.most_common()
            )
        )
    finally:
        client.drop_database(database)
        client.close()
        kafka.delete_topics([topic, lead_topic])
        kafka.close()


def bench_sensor_tick(settings: PipelineSettings, ticks: int) -> None:
    kafka = KafkaClient(KafkaConfig(bootstrap_servers=settings.kafka_bootstrap_servers))
    topic = f"bench-tick-{uuid.uuid4().hex[:8]}"
    kafka.ensure_topics([topic], partitions=12)
    mongo = MongoConnection(
        MongoConfig(uri=settings.mongo_uri, database=f"bench_{uuid.uuid4().hex[:8]}")
    )
    resources = as_resources(
        {
            "kafka": kafka,
            "mongo": mongo,
            "settings": PipelineSettingsResource(enrollment_topic=topic),
        }
    )
    try:
        produce(kafka, topic, 1200)
        timings = []
        with dg.instance_for_test() as instance:
            for _ in range(ticks + 1):
                with dg.build_sensor_context(instance=instance, resources=resources) as context:
                    started = time.perf_counter()
                    result = enrollment_events_sensor(context)
                    timings.append(time.perf_counter() - started)
                assert len(result.run_requests[0].tags["enrollment/partitions"].split(",")) == 12
        timings = timings[1:]  # the first tick opens the connections
        print(
            f"sensor tick, 12 partitions: median {statistics.median(timings) * 1000:.0f} ms, "
            f"max {max(timings) * 1000:.0f} ms over {ticks} ticks"
        )
    finally:
        mongo.client().drop_database(mongo.database)
        kafka.delete_topics([topic])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--ticks", type=int, default=20)
    args = parser.parse_args()
    settings = PipelineSettings()
    print(f"$ {' '.join([sys.executable.rsplit('/', 1)[-1], *sys.argv])}")
    print(f"Kafka {settings.kafka_bootstrap_servers}, Mongo {settings.mongo_uri}")
    bench_sensor_tick(settings, args.ticks)
    bench_ingest(settings, args.events, args.partitions)


if __name__ == "__main__":
    main()
