"""A realistic stream through the sensor and the job, at the scale users run.

Produces the generator's events for N applications in two halves, each application's first
events in the first and the rest in the second (so the second half updates nearly every
application the first created), and after each half ticks `enrollment_events_sensor` and
executes every run it requests in process, until it skips. Then checks the read model
against the fold of the log, and prints records/s, the runs, Mongo commands and update
statements (pymongo command monitoring), and how many applications had their history re-read.

Run against the local stack (or any Kafka and MongoDB the Contract-6 variables name):
    enrollment-pipeline stack up && export $(enrollment-pipeline stack env)
    .venv/bin/python benchmarks/stream_scale.py --applications 20000
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime

import dagster as dg
from pymongo import monitoring

from enrollment_pipeline.lib.clients.kafka import KafkaClient, KafkaConfig
from enrollment_pipeline.lib.clients.mongo import MongoConfig, MongoConnection
from enrollment_pipeline.lib.sample_data import synthetic_events
from enrollment_pipeline.settings import PipelineSettings
from enrollment_pipeline_tests.pipeline import (
    Pipeline,
    assert_read_model_is_the_fold,
    drain,
    split_per_application,
)


class Commands(monitoring.CommandListener):
    """Commands by name, and the statements of the update commands."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.update_statements = 0
        self.update_seconds = 0.0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.counts[event.command_name] += 1
        if event.command_name == "update":
            self.update_statements += len(event.command["updates"])

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        if event.command_name == "update":
            self.update_seconds += event.duration_micros / 1e6

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self.counts[f"{event.command_name} (failed)"] += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--applications", type=int, default=20_000)
    parser.add_argument("--max-events-per-run", type=int, default=50_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--seed", type=int, default=20)
    args = parser.parse_args()
    print(f"$ {' '.join([sys.executable.rsplit('/', 1)[-1], *sys.argv])}")

    commands = Commands()
    monitoring.register(commands)  # before any client exists
    settings = PipelineSettings()
    kafka = KafkaClient(KafkaConfig(bootstrap_servers=settings.kafka_bootstrap_servers))
    topic, lead_topic = f"scale-{uuid.uuid4().hex[:8]}", f"scale-leads-{uuid.uuid4().hex[:8]}"
    kafka.ensure_topics([topic, lead_topic], partitions=args.partitions)
    mongo = MongoConnection(
        replace(MongoConfig.from_settings(settings), database=f"scale_{uuid.uuid4().hex[:8]}")
    )
    mongo.ensure_indexes()
    print(
        f"Kafka {settings.kafka_bootstrap_servers}, Mongo {settings.mongo_uri} "
        f"({mongo.engine()}, {mongo.writer().updates_per_command} statements per update command)"
    )
    pipeline = Pipeline(kafka, mongo, topic, lead_topic)
    try:
        records = list(
            synthetic_events(
                args.applications, seed=args.seed, start=datetime(2026, 1, 1, tzinfo=UTC)
            )
        )
        halves = split_per_application(records)
        runs: list[dict] = []
        seconds = 0.0
        with dg.instance_for_test() as instance:
            for part in halves:
                for i in range(0, len(part), 10_000):
                    pipeline.produce(part[i : i + 10_000])
                commands.counts.clear()
                started = time.perf_counter()
                runs += drain(instance, pipeline, ingest_max_events_per_run=args.max_events_per_run)
                seconds += time.perf_counter() - started
        mongo_commands = sum(commands.counts.values())

        print(f"records                   {len(records):>10,} ({args.applications:,} applications)")
        print(f"runs                      {len(runs):>10,}")
        print(f"wall time (sensor + runs) {seconds:>10.1f} s")
        print(f"throughput                {len(records) / seconds:>10,.0f} records/s")
        print(
            f"applications touched      {sum(r['applications_touched'] for r in runs):>10,} "
            f"(re-read from the event store: {sum(r['applications_reread'] for r in runs):,})"
        )
        print(
            f"update statements         {commands.update_statements:>10,} "
            f"({commands.update_statements / max(commands.update_seconds, 1e-9):,.0f}/s "
            "inside update commands)"
        )
        print(
            f"Mongo commands (2nd half) {mongo_commands:>10,}: "
            + ", ".join(f"{name} {count}" for name, count in commands.counts.most_common())
        )
        started = time.perf_counter()
        assert_read_model_is_the_fold(pipeline, records)
        print(
            f"read model == fold of the log: yes (checked in {time.perf_counter() - started:.0f} s)"
        )
    finally:
        mongo.client().drop_database(mongo.database)
        kafka.delete_topics([topic, lead_topic])
        kafka.close()


if __name__ == "__main__":
    main()
