"""How fast a backfill runs, and how much memory it needs: N archived events, one run.

Writes a Contract-5 archive of realistic history (gzip, ~1% bad lines) to a temporary folder,
then runs the job `backfill_enrollment_history` in this process over every day of it, as one
single-run backfill, into a fresh database. A thread samples this process's resident memory
every 0.2 s; the peak during the run is what a backfill costs, whatever the archive's size.
With `--rebuild`, `rebuild_read_model` then runs twice: into an empty `applications`, and after
a projection change that makes every document stale.

    enrollment-pipeline stack up && export $(enrollment-pipeline stack env)
    .venv/bin/python benchmarks/backfill_archive.py --events 100000 --rebuild
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
from pymongo import MongoClient

from enrollment_pipeline.defs.archive.resources import ArchiveResource
from enrollment_pipeline.defs.datasets import HISTORIC_EVENTS
from enrollment_pipeline.defs.history.assets import historic_enrollment_events_asset
from enrollment_pipeline.defs.kafka.resources import KafkaResource
from enrollment_pipeline.defs.mongo.resources import MongoResource
from enrollment_pipeline.defs.settings.resources import PipelineSettingsResource
from enrollment_pipeline.lib.backfill import RebuildReport, rebuild_read_model
from enrollment_pipeline.lib.clients.kafka import KafkaConfig
from enrollment_pipeline.lib.clients.mongo import MongoConfig, MongoConnection
from enrollment_pipeline.lib.mongo.collections import APPLICATIONS
from enrollment_pipeline.lib.mongo.store import EnrollmentStore
from enrollment_pipeline.lib.sample_data import write_archive
from enrollment_pipeline.settings import PipelineSettings

EVENTS_PER_APPLICATION = 3.4  # what the generator averages


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakMemory(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.before = self.peak = rss_mb()
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.2):
            self.peak = max(self.peak, rss_mb())

    def __enter__(self) -> PeakMemory:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopped.set()
        self.peak = max(self.peak, rss_mb())


@dataclass
class BackfillFigures:
    lines: int
    events_new: int
    dead_lettered: int
    seconds: float
    peak_mb: float
    before_mb: float

    @property
    def events_per_second(self) -> float:
        return self.lines / self.seconds


def fresh_mongo(settings: PipelineSettings, prefix: str) -> MongoConnection:
    mongo = MongoConnection(
        replace(MongoConfig.from_settings(settings), database=f"{prefix}_{uuid.uuid4().hex[:8]}")
    )
    mongo.ensure_indexes()
    return mongo


def drop(settings: PipelineSettings, mongo: MongoConnection) -> None:
    # Dropping half a million documents takes FerretDB longer than MONGO_TIMEOUT_MS.
    with MongoClient(settings.mongo_uri, socketTimeoutMS=600_000) as client:
        client.drop_database(mongo.database)


def write_history(folder: Path, events: int, *, seed: int, days: int) -> dict[str, int]:
    applications = int(events / EVENTS_PER_APPLICATION)
    return write_archive(
        folder,
        applications,
        seed=seed,
        start=datetime(2024, 1, 1, tzinfo=UTC),
        gzipped=True,
        mean_gap=timedelta(days=days) / applications,
    )


def backfill(
    settings: PipelineSettings, mongo: MongoConnection, folder: Path, written: dict[str, int]
) -> BackfillFigures:
    """The job over every day of the archive, one run, in this process."""
    partitions = dg.DailyPartitionsDefinition(start_date="2024-01-01", timezone="UTC")
    job = dg.Definitions(
        assets=[historic_enrollment_events_asset(partitions)],
        jobs=[dg.define_asset_job("backfill", selection=[HISTORIC_EVENTS])],
        resources={
            "archive": ArchiveResource(root=str(folder)),
            "mongo": MongoResource.from_config(mongo.config),
            "kafka": KafkaResource.from_config(
                KafkaConfig(bootstrap_servers=settings.kafka_bootstrap_servers)
            ),
            "settings": PipelineSettingsResource(),
        },
    ).resolve_job_def("backfill")
    with PeakMemory() as memory:
        started = time.perf_counter()
        result = job.execute_in_process(
            tags={
                "dagster/asset_partition_range_start": min(written),
                "dagster/asset_partition_range_end": max(written),
            }
        )
        seconds = time.perf_counter() - started
    assert result.success
    (materialization, *_) = result.asset_materializations_for_node("historic_enrollment_events")
    meta = {k: v.value for k, v in materialization.metadata.items()}
    return BackfillFigures(
        meta["lines_read"],
        meta["events_new"],
        meta["dead_lettered"],
        seconds,
        memory.peak,
        memory.before,
    )


def make_stale(mongo: MongoConnection) -> int:
    """A projection change, as the rebuild meets it: every document differs from the fold.
    One `update_many` over every document is a single command that FerretDB may take longer
    than MONGO_TIMEOUT_MS to answer, so this client waits as long as it takes."""
    with MongoClient(mongo.config.uri, socketTimeoutMS=3_600_000) as client:
        stale = client[mongo.database][APPLICATIONS].update_many({}, {"$set": {"status": "STALE"}})
        return stale.modified_count


def rebuild(mongo: MongoConnection) -> tuple[RebuildReport, float, float]:
    with PeakMemory() as memory:
        started = time.perf_counter()
        report = rebuild_read_model(EnrollmentStore.of(mongo), lease=None)
        seconds = time.perf_counter() - started
    return report, seconds, memory.peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=31)
    parser.add_argument("--days", type=int, default=120, help="Days the submissions span.")
    parser.add_argument("--rebuild", action="store_true", help="Then time rebuild_read_model.")
    args = parser.parse_args()
    print(f"$ {' '.join([sys.executable.rsplit('/', 1)[-1], *sys.argv])}")

    settings = PipelineSettings()
    folder = Path(tempfile.mkdtemp(prefix="archive-bench-"))
    mongo = fresh_mongo(settings, "bench_backfill")
    try:
        written = write_history(folder, args.events, seed=args.seed, days=args.days)
        print(f"archive: {sum(written.values()):,} lines in {len(written)} daily gzip files")
        print(f"Mongo {settings.mongo_uri} ({mongo.engine()})")
        figures = backfill(settings, mongo, folder, written)
        print(f"events new / dead-lettered {figures.events_new:>9,} / {figures.dead_lettered:,}")
        print(f"wall time (one run)       {figures.seconds:>10.1f} s")
        print(f"throughput                {figures.events_per_second:>10,.0f} events/s")
        print(
            f"peak memory of the run    {figures.peak_mb:>10,.0f} MB resident "
            f"({figures.before_mb:,.0f} MB before)"
        )
        if args.rebuild:
            mongo.db()[APPLICATIONS].drop()
            report, seconds, peak = rebuild(mongo)
            print(
                f"rebuild into empty        {seconds:>10.1f} s: {report.applications:,} "
                f"documents from {report.events:,} events "
                f"({report.applications / seconds:,.0f} documents/s, peak {peak:,.0f} MB)"
            )
            stale = make_stale(mongo)
            report, seconds, peak = rebuild(mongo)
            assert report.documents_changed == stale, report
            print(
                f"rebuild, all stale        {seconds:>10.1f} s: {report.documents_changed:,} "
                f"documents rewritten ({report.applications / seconds:,.0f} documents/s, "
                f"peak {peak:,.0f} MB)"
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        drop(settings, mongo)


if __name__ == "__main__":
    main()
