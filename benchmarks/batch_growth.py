"""Does a steady-state batch get slower as history grows? One batch, N events stored before.

Loads the first N events of the generator's stream into a fresh database (through the same
`apply_parsed` as ingestion, in chunks, no Kafka), then times one batch of the next B events,
which mostly update applications already in the read model, as steady-state traffic does.
Prints the batch's time, its Mongo commands by name (pymongo command monitoring) and how
many applications had their stored history re-read. Run it at several N to get the curve.

    enrollment-pipeline stack up && export $(enrollment-pipeline stack env)
    .venv/bin/python benchmarks/batch_growth.py --stored 100000 --batch 5000
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from itertools import islice

from pymongo import MongoClient, monitoring

from enrollment_pipeline.defs.ingestion.batch import Source, apply_parsed
from enrollment_pipeline.defs.mongo.resources import mongo_from_settings
from enrollment_pipeline.defs.mongo.store import EnrollmentStore
from enrollment_pipeline.domain.events import parse_record
from enrollment_pipeline.sample_data import synthetic_events
from enrollment_pipeline.settings import PipelineSettings

LOAD_CHUNK = 50_000
EVENTS_PER_APPLICATION = 3.4  # the generator's average


class Commands(monitoring.CommandListener):
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()

    def started(self, event) -> None:
        pass

    def succeeded(self, event) -> None:
        self.counts[event.command_name] += 1
        self.seconds[event.command_name] += event.duration_micros / 1e6

    def failed(self, event) -> None:
        self.counts[f"{event.command_name} (failed)"] += 1


def parsed(records, offset: int):
    return [
        (
            Source(f"bench:{offset + i}", {"offset": offset + i}, value, key),
            parse_record(key, value),
        )
        for i, (key, value) in enumerate(records)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stored", type=int, default=100_000, help="events stored before")
    parser.add_argument("--batch", type=int, default=5_000, help="events in the timed batch")
    parser.add_argument("--seed", type=int, default=31)
    args = parser.parse_args()
    print(f"$ {' '.join([sys.executable.rsplit('/', 1)[-1], *sys.argv])}")

    settings = PipelineSettings()
    mongo = mongo_from_settings(settings, database=f"growth_{uuid.uuid4().hex[:8]}")
    mongo.ensure_indexes()
    commands = Commands()
    client = MongoClient(
        settings.mongo_uri, event_listeners=[commands], tz_aware=True, socketTimeoutMS=3_600_000
    )
    store = EnrollmentStore(client[mongo.database], mongo.writer())
    applications = int((args.stored + args.batch) / EVENTS_PER_APPLICATION) + 1
    stream = synthetic_events(applications, seed=args.seed, start=datetime(2025, 1, 1, tzinfo=UTC))
    try:
        started = time.perf_counter()
        loaded = 0
        while loaded < args.stored:
            chunk = list(islice(stream, min(LOAD_CHUNK, args.stored - loaded)))
            apply_parsed(store, parsed(chunk, loaded), publish_leads=None)
            loaded += len(chunk)
            print(f"  loaded {loaded:,} events ({time.perf_counter() - started:.0f} s)", flush=True)

        batch = parsed(list(islice(stream, args.batch)), loaded)
        commands.counts.clear()
        commands.seconds.clear()
        started = time.perf_counter()
        report = apply_parsed(store, batch, publish_leads=lambda messages: None)
        seconds = time.perf_counter() - started

        print(
            f"engine {mongo.engine()}, {loaded:,} events stored before; batch of {len(batch):,}: "
            f"{seconds:.2f} s ({len(batch) / seconds:,.0f} events/s)"
        )
        print(
            f"  applications touched {report.applications_touched:,}, "
            f"re-read {getattr(report, 'applications_reread', 'all with a document')}, "
            f"events re-read {getattr(report, 'events_reread', '?')}, "
            f"written {report.applications_written:,}"
        )
        print(
            "  Mongo commands: "
            + ", ".join(
                f"{name} {count} ({commands.seconds[name]:.2f} s)"
                for name, count in commands.counts.most_common()
            )
        )
    finally:
        client.drop_database(mongo.database)
        client.close()


if __name__ == "__main__":
    main()
