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
from dataclasses import dataclass, replace
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


@dataclass
class StreamFigures:
    records: int
    applications: int
    runs: list[dict]
    seconds: float
    update_statements: int
    update_seconds: float
    commands: Counter[str]
    engine: str
    updates_per_command: int

    @property
    def records_per_second(self) -> float:
        return self.records / self.seconds

    def lines(self) -> list[str]:
        return [
            f"records                   {self.records:>10,} ({self.applications:,} applications)",
            f"runs                      {len(self.runs):>10,}",
            f"wall time (sensor + runs) {self.seconds:>10.1f} s",
            f"throughput                {self.records_per_second:>10,.0f} records/s",
            f"applications touched      {sum(r['applications_touched'] for r in self.runs):>10,} "
            f"(re-read from the event store: {sum(r['applications_reread'] for r in self.runs):,})",
            f"update statements         {self.update_statements:>10,} "
            f"({self.update_statements / max(self.update_seconds, 1e-9):,.0f}/s "
            "inside update commands)",
            f"Mongo commands (2nd half) {sum(self.commands.values()):>10,}: "
            + ", ".join(f"{name} {count}" for name, count in self.commands.most_common()),
        ]


_COMMANDS = Commands()
monitoring.register(_COMMANDS)  # before any client exists: pymongo reads listeners at creation


def measure(
    settings: PipelineSettings,
    applications: int,
    *,
    partitions: int = 6,
    seed: int = 20,
    max_events_per_run: int = 50_000,
    check_fold: bool = True,
) -> StreamFigures:
    """The stream of `applications` through the sensor and the job; checked against the fold."""
    commands = _COMMANDS
    commands.update_statements, commands.update_seconds = 0, 0.0
    kafka = KafkaClient(KafkaConfig.from_settings(settings))
    topic, lead_topic = f"scale-{uuid.uuid4().hex[:8]}", f"scale-leads-{uuid.uuid4().hex[:8]}"
    kafka.ensure_topics([topic, lead_topic], partitions=partitions)
    mongo = MongoConnection(
        replace(MongoConfig.from_settings(settings), database=f"scale_{uuid.uuid4().hex[:8]}")
    )
    mongo.ensure_indexes()
    pipeline = Pipeline(kafka, mongo, topic, lead_topic)
    try:
        records = list(
            synthetic_events(applications, seed=seed, start=datetime(2026, 1, 1, tzinfo=UTC))
        )
        runs: list[dict] = []
        seconds = 0.0
        with dg.instance_for_test() as instance:
            for part in split_per_application(records):
                for i in range(0, len(part), 10_000):
                    pipeline.produce(part[i : i + 10_000])
                commands.counts.clear()
                started = time.perf_counter()
                runs += drain(instance, pipeline, ingest_max_events_per_run=max_events_per_run)
                seconds += time.perf_counter() - started
        figures = StreamFigures(
            len(records),
            applications,
            runs,
            seconds,
            commands.update_statements,
            commands.update_seconds,
            Counter(commands.counts),
            mongo.engine(),
            mongo.writer().updates_per_command,
        )
        if check_fold:
            assert_read_model_is_the_fold(pipeline, records)
        return figures
    finally:
        mongo.client().drop_database(mongo.database)
        mongo.close()
        kafka.delete_topics([topic, lead_topic])
        kafka.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--applications", type=int, default=20_000)
    parser.add_argument("--max-events-per-run", type=int, default=50_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--seed", type=int, default=20)
    args = parser.parse_args()
    print(f"$ {' '.join([sys.executable.rsplit('/', 1)[-1], *sys.argv])}")
    settings = PipelineSettings()
    started = time.perf_counter()
    figures = measure(
        settings,
        args.applications,
        partitions=args.partitions,
        seed=args.seed,
        max_events_per_run=args.max_events_per_run,
    )
    print(
        f"Kafka {settings.kafka_bootstrap_servers}, Mongo {settings.mongo_uri} "
        f"({figures.engine}, {figures.updates_per_command} statements per update command)"
    )
    print("\n".join(figures.lines()))
    print(
        "read model == fold of the log: yes "
        f"(whole benchmark {time.perf_counter() - started:.0f} s)"
    )


if __name__ == "__main__":
    main()
