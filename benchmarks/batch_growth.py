"""Does a steady-state batch get slower as history grows? One batch, N events stored before.

Loads the first N events of the generator's stream into a database (through the same
`apply_parsed` as ingestion, in chunks, no Kafka), then times one batch of the next B events,
which mostly update applications already in the read model, as steady-state traffic does.
Prints the batch's time, its Mongo commands by name (pymongo command monitoring) and how
many applications had their stored history re-read. Run it at several N to get the curve.

    enrollment-pipeline stack up && export $(enrollment-pipeline stack env)
    .venv/bin/python benchmarks/batch_growth.py --stored 100000 --batch 5000

To compare with another version of the code on the same data, keep the database and time the
following batch with that version on the import path (it skips the load when the database
already holds N events):

    .venv/bin/python benchmarks/batch_growth.py --stored 100000 --database g100k --keep
    PYTHONPATH=/path/to/other/checkout .venv/bin/python benchmarks/batch_growth.py \
        --stored 100000 --database g100k --batch-number 1
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

from enrollment_pipeline.domain.events import parse_record
from enrollment_pipeline.lib.clients.mongo import MongoConfig, MongoConnection
from enrollment_pipeline.lib.ingestion.batch import Source, apply_parsed
from enrollment_pipeline.lib.mongo.collections import ENROLLMENT_EVENTS
from enrollment_pipeline.lib.mongo.store import EnrollmentStore
from enrollment_pipeline.lib.sample_data import synthetic_events
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
    parser.add_argument("--database", help="reuse this database (default: a fresh one)")
    parser.add_argument(
        "--batch-number", type=int, default=0, choices=range(4), help="which batch after N"
    )
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()
    print(f"$ {' '.join([sys.executable.rsplit('/', 1)[-1], *sys.argv])}")

    settings = PipelineSettings()
    mongo = MongoConnection(
        MongoConfig(
            uri=settings.mongo_uri,
            database=args.database or f"growth_{uuid.uuid4().hex[:8]}",
            max_writes_per_command=settings.mongo_max_writes_per_command,
        )
    )
    mongo.ensure_indexes()
    commands = Commands()
    client = MongoClient(
        settings.mongo_uri, event_listeners=[commands], tz_aware=True, socketTimeoutMS=3_600_000
    )
    store = EnrollmentStore(client[mongo.database], mongo.writer())
    position = args.stored + args.batch_number * args.batch  # where the timed batch starts
    # The same stream whatever the batch number (up to 3), so runs on one database agree.
    applications = int((args.stored + 4 * args.batch) / EVENTS_PER_APPLICATION * 1.1) + 1

    def stream():
        start = datetime(2025, 1, 1, tzinfo=UTC)
        return synthetic_events(applications, seed=args.seed, start=start)

    try:
        started = time.perf_counter()
        stored = client[mongo.database][ENROLLMENT_EVENTS].estimated_document_count()
        if stored:
            print(f"  {stored:,} events already stored: no load")
        else:
            load = islice(stream(), args.stored)
            while chunk := list(islice(load, LOAD_CHUNK)):
                apply_parsed(store, parsed(chunk, stored), publish_leads=None)
                stored += len(chunk)
                print(f"  loaded {stored:,} events ({time.perf_counter() - started:.0f} s)")
        batch = parsed(list(islice(stream(), position, position + args.batch)), position)
        commands.counts.clear()
        commands.seconds.clear()
        started = time.perf_counter()
        report = apply_parsed(store, batch, publish_leads=lambda messages: None)
        seconds = time.perf_counter() - started

        print(
            f"engine {mongo.engine()}, {position:,} events stored before; batch of {len(batch):,}: "
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
        if not args.keep:
            client.drop_database(mongo.database)
        client.close()


if __name__ == "__main__":
    main()
