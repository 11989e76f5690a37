"""How fast a backfill runs, and how much memory it needs: N archived events, one run.

Writes a Contract-5 archive of realistic history (gzip, ~1% bad lines) to a temporary folder,
then runs the job `backfill_enrollment_history` in this process over every day of it, as one
single-run backfill, into a fresh database. A thread samples this process's resident memory
every 0.2 s; the peak during the run is what a backfill costs, whatever the archive's size
(files are streamed, 5,000 lines are applied at a time).

    enrollment-pipeline stack up && export $(enrollment-pipeline stack env)
    .venv/bin/python benchmarks/backfill_archive.py --events 500000
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
from pymongo import MongoClient, UpdateOne

from enrollment_pipeline.defs.datasets import HISTORIC_EVENTS
from enrollment_pipeline.defs.history.assets import historic_enrollment_events_asset
from enrollment_pipeline.defs.settings.resources import PipelineSettingsResource
from enrollment_pipeline.lib.backfill import rebuild_read_model
from enrollment_pipeline.lib.clients.archive import Archive
from enrollment_pipeline.lib.clients.kafka import KafkaClient, KafkaConfig
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
        self.peak, self.stopped = rss_mb(), threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.2):
            self.peak = max(self.peak, rss_mb())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--seed", type=int, default=31)
    parser.add_argument("--days", type=int, default=365, help="Days the submissions span.")
    parser.add_argument(
        "--rebuild", action="store_true", help="Then time rebuild_read_model over the result."
    )
    args = parser.parse_args()
    print(f"$ {' '.join([sys.executable.rsplit('/', 1)[-1], *sys.argv])}")

    settings = PipelineSettings()
    folder = Path(tempfile.mkdtemp(prefix="archive-bench-"))
    applications = int(args.events / EVENTS_PER_APPLICATION)
    started = time.perf_counter()
    written = write_archive(
        folder,
        applications,
        seed=args.seed,
        start=datetime(2024, 1, 1, tzinfo=UTC),
        gzipped=True,
        mean_gap=timedelta(days=args.days) / applications,
    )
    lines = sum(written.values())
    size = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
    print(
        f"archive: {lines:,} lines, {len(written)} daily files ({min(written)}..{max(written)}), "
        f"{size:.0f} MB gzipped, written in {time.perf_counter() - started:.0f} s"
    )

    mongo = MongoConnection(
        replace(
            MongoConfig.from_settings(settings), database=f"bench_backfill_{uuid.uuid4().hex[:8]}"
        )
    )
    mongo.ensure_indexes()
    partitions = dg.DailyPartitionsDefinition(start_date="2024-01-01", timezone="UTC")
    job = dg.Definitions(
        assets=[historic_enrollment_events_asset(partitions)],
        jobs=[dg.define_asset_job("backfill", selection=[HISTORIC_EVENTS])],
        resources={
            "archive": Archive(root=str(folder)),
            "mongo": mongo,
            "kafka": KafkaClient(KafkaConfig(bootstrap_servers=settings.kafka_bootstrap_servers)),
            "settings": PipelineSettingsResource(),
        },
    ).resolve_job_def("backfill")
    print(f"Mongo {settings.mongo_uri} ({mongo.engine()}); memory before the run {rss_mb():.0f} MB")
    sampler = PeakMemory()
    sampler.start()
    try:
        started = time.perf_counter()
        result = job.execute_in_process(
            tags={
                "dagster/asset_partition_range_start": min(written),
                "dagster/asset_partition_range_end": max(written),
            }
        )
        elapsed = time.perf_counter() - started
        sampler.stopped.set()
        assert result.success
        (materialization, *_) = result.asset_materializations_for_node("historic_enrollment_events")
        meta = {k: v.value for k, v in materialization.metadata.items()}
        print(f"days / files              {meta['days']:>10,} / {meta['files']:,}")
        print(f"lines read                {meta['lines_read']:>10,}")
        print(f"events new / dead-lettered {meta['events_new']:>9,} / {meta['dead_lettered']:,}")
        print(
            f"applications refolded     {meta['applications_refolded']:>10,} (summed over chunks)"
        )
        print(f"wall time (one run)       {elapsed:>10.1f} s")
        print(f"throughput                {meta['lines_read'] / elapsed:>10,.0f} events/s")
        print(
            f"peak memory of the run    {sampler.peak:>10,.0f} MB resident "
            f"(process peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB)"
        )
        if args.rebuild:
            # A projection change, as the rebuild meets it: every document differs from the fold.
            app_ids = [d["_id"] for d in mongo.db()[APPLICATIONS].find({}, {"_id": 1})]
            started = time.perf_counter()
            mongo.writer().bulk_write(
                mongo.db()[APPLICATIONS],
                [UpdateOne({"_id": i}, {"$set": {"status": "STALE"}}) for i in app_ids],
            )
            print(
                f"documents made stale      {len(app_ids):>10,} in "
                f"{time.perf_counter() - started:.1f} s (bounded update commands)"
            )
            rebuild_sampler = PeakMemory()
            rebuild_sampler.start()
            started = time.perf_counter()
            rebuilt = rebuild_read_model(EnrollmentStore.of(mongo), lease=None)
            seconds = time.perf_counter() - started
            rebuild_sampler.stopped.set()
            assert rebuilt.documents_changed == len(app_ids), rebuilt
            print(
                f"rebuild_read_model        {seconds:>10.1f} s for {rebuilt.applications:,} "
                f"applications / {rebuilt.events:,} events ({rebuilt.events / seconds:,.0f} "
                f"events/s); created {rebuilt.documents_created}, changed "
                f"{rebuilt.documents_changed} in {rebuilt.passes} passes; "
                f"peak {rebuild_sampler.peak:,.0f} MB"
            )
    finally:
        sampler.stopped.set()
        shutil.rmtree(folder, ignore_errors=True)
        # Dropping half a million documents takes FerretDB longer than MONGO_TIMEOUT_MS.
        with MongoClient(settings.mongo_uri, socketTimeoutMS=600_000) as client:
            client.drop_database(mongo.database)


if __name__ == "__main__":
    main()
