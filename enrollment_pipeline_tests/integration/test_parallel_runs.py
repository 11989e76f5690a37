"""Parallel runs as a deployment runs them: `dagster dev` (webserver, daemon, run processes)
on the shipped instance profile, INGEST_PARALLEL_RUNS lanes over a 4-partition topic."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from enrollment_pipeline.defs.offset_ranges import LANE_TAG, PARTITIONS_TAG
from enrollment_pipeline.domain.partitioning import partition_of
from enrollment_pipeline.lib.consumer_groups import READ_MODEL_GROUP
from enrollment_pipeline.lib.dagster_runs import IN_FLIGHT
from enrollment_pipeline.lib.mongo.collections import WRITER_LEASES
from enrollment_pipeline.lib.mongo.store import EnrollmentStore
from enrollment_pipeline.lib.sample_data import synthetic_events, synthetic_records, write_archive
from enrollment_pipeline_tests.dagster_dev import DagsterDev, dagster_dev
from enrollment_pipeline_tests.pipeline import Pipeline, assert_read_model_is_the_fold

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PARTITIONS = 4
START = datetime(2024, 3, 1, tzinfo=UTC)


@dataclass
class Run:
    run_id: str
    job: str
    status: str
    started: float | None
    ended: float | None
    partitions: frozenset[int]
    lane: str | None
    tags: dict[str, str]
    shard: int | None  # a backfill run's (its run config)

    def overlaps(self, other: Run) -> bool:
        if None in (self.started, self.ended, other.started, other.ended):
            return False
        assert self.started and self.ended and other.started and other.ended
        return self.started < other.ended and other.started < self.ended


@pytest.fixture
def four_partitions(kafka) -> Iterator[tuple[str, str]]:
    topic, leads = f"par-{uuid.uuid4().hex[:8]}", f"par-leads-{uuid.uuid4().hex[:8]}"
    kafka.ensure_topics([topic, leads], partitions=PARTITIONS)
    yield topic, leads
    kafka.delete_topics([topic, leads])


@pytest.fixture
def deployment(services, mongo, four_partitions, tmp_path):
    """The environment of a deployment with two lanes, and its DAGSTER_HOME (the shipped
    local profile, dagster.yaml: queued runs, the lane tag limit)."""
    topic, leads = four_partitions
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": services.kafka_bootstrap_servers,
        "ENROLLMENT_TOPIC": topic,
        "LEAD_TOPIC": leads,
        "MONGO_URI": services.mongo_uri,
        "MONGO_DATABASE": mongo.database,
        "INGEST_PARALLEL_RUNS": "2",
        "ARCHIVE_START_DATE": START.date().isoformat(),
    }
    return env, home


def runs_of(home: Path, job: str) -> list[Run]:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        records = instance.get_run_records(dg.RunsFilter(job_name=job))
        runs = []
        for record in records:
            tags = dict(record.dagster_run.tags)
            partitions = frozenset(int(p) for p in tags.get(PARTITIONS_TAG, "").split(",") if p)
            ops = record.dagster_run.run_config.get("ops", {})
            shard = ops.get("historic_enrollment_events", {}).get("config", {}).get("shard")
            runs.append(
                Run(
                    record.dagster_run.run_id,
                    job,
                    record.dagster_run.status.value,
                    record.start_time,
                    record.end_time,
                    partitions,
                    tags.get(LANE_TAG),
                    tags,
                    shard,
                )
            )
        return runs


def wait_until(predicate, timeout_s: float, dev: DagsterDev, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        dev.assert_alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout_s:.0f} s\n{dev.log_tail()}")
        time.sleep(2)


def caught_up(kafka, mongo, topic: str) -> bool:
    committed = EnrollmentStore.of(mongo).committed_offsets(READ_MODEL_GROUP, topic)
    return all(committed.get(p, 0) >= end for p, end in kafka.end_offsets(topic).items())


def assert_no_two_overlapping_runs_share_a_partition(runs: list[Run]) -> None:
    for i, a in enumerate(runs):
        for b in runs[i + 1 :]:
            if a.overlaps(b):
                assert not a.partitions & b.partitions, (a, b)


def test_two_lanes_run_at_once_through_the_daemon(kafka, mongo, four_partitions, deployment):
    topic, leads = four_partitions
    env, home = deployment
    # Runs long enough (thousands of events) that two lanes' runs overlap in their records.
    env["INGEST_MAX_EVENTS_PER_RUN"] = "2500"
    records = list(synthetic_events(2_000, seed=41, start=START))
    for i in range(0, len(records), 1_000):
        kafka.produce_batch(topic, records[i : i + 1_000])
    with dagster_dev(env, home) as dev:
        wait_until(lambda: caught_up(kafka, mongo, topic), 400, dev, "the stream applied")
        wait_until(
            lambda: all(r.ended for r in runs_of(home, "ingest_enrollment_events")),
            60,
            dev,
            "every run ended",
        )
    runs = runs_of(home, "ingest_enrollment_events")
    assert runs and all(r.status == "SUCCESS" for r in runs), runs
    assert all(r.lane == str(min(r.partitions) % 2) for r in runs), runs
    assert all({p % 2 for p in r.partitions} == {int(r.lane or -1)} for r in runs), runs
    overlapping = [(a, b) for i, a in enumerate(runs) for b in runs[i + 1 :] if a.overlaps(b)]
    spans = [(r.lane, r.started, r.ended) for r in runs]
    assert overlapping, f"no two ingestion runs were in flight at once: {spans}"
    assert_no_two_overlapping_runs_share_a_partition(runs)
    assert_read_model_is_the_fold(Pipeline(kafka, mongo, topic, leads), records)


def test_a_sharded_backfill_beside_live_ingestion_equals_the_fold_of_both(
    kafka, mongo, four_partitions, deployment, tmp_path
):
    topic, leads = four_partitions
    env, home = deployment
    archive = tmp_path / "archive"
    history = list(synthetic_records(400, seed=43, start=START, mean_gap=timedelta(hours=3)))
    written = write_archive(
        archive, 400, seed=43, start=START, bad_fraction=0.0, mean_gap=timedelta(hours=3)
    )
    days = sorted(written)
    span = (datetime.fromisoformat(days[-1]) - datetime.fromisoformat(days[0])).days + 1
    live = [(r.key, r.value) for r in history[len(history) // 3 :]]  # also in the archive
    extra = list(synthetic_events(200, seed=44, start=START, first_application_number=5_000))
    env |= {"ARCHIVE_ROOT": str(archive), "INGEST_MAX_EVENTS_PER_RUN": "300"}
    stop = threading.Event()

    def produce_live() -> None:  # the live stream keeps arriving while the backfill runs
        stream = live + extra
        for i in range(0, len(stream), 100):
            if stop.is_set():
                return
            kafka.produce_batch(topic, stream[i : i + 100])
            time.sleep(1.0)

    with dagster_dev(env, home) as dev:
        producer = threading.Thread(target=produce_live, daemon=True)
        producer.start()
        queued = subprocess.run(
            [
                str(Path(sys.executable).parent / "enrollment-pipeline"),
                "backfill",
                "--from",
                days[0],
                "--to",
                days[-1],
                "--days-per-run",
                str(span // 2 + 1),  # two runs per shard
                "--url",
                dev.api.url,
            ],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert queued.returncode == 0, queued.stderr
        assert queued.stdout.count("queued") == 2 * PARTITIONS, queued.stdout
        producer.join(timeout=300)
        stop.set()
        wait_until(
            lambda: (
                len(runs_of(home, "backfill_enrollment_history")) == 2 * PARTITIONS
                and all(r.ended for r in runs_of(home, "backfill_enrollment_history"))
            ),
            600,
            dev,
            "the backfill's runs ended",
        )
        wait_until(lambda: caught_up(kafka, mongo, topic), 300, dev, "the live stream applied")
    shards = runs_of(home, "backfill_enrollment_history")
    live_runs = runs_of(home, "ingest_enrollment_events")
    assert all(r.status == "SUCCESS" for r in shards + live_runs), shards + live_runs
    assert sorted(r.shard for r in shards) == sorted(list(range(PARTITIONS)) * 2)
    assert all(r.lane == str(r.shard % 2) for r in shards if r.shard is not None), shards
    # Live ingestion went on during the backfill (runs of a lane take turns with its shards,
    # so a live run ends between the backfill's first start and its last end), and a shard and
    # a live run in flight at the same time never shared a partition.
    first_start = min(s.started for s in shards if s.started)
    last_end = max(s.ended for s in shards if s.ended)
    during = [r for r in live_runs if r.ended and first_start < r.ended < last_end]
    assert during, ("live ingestion waited for the whole backfill", shards, live_runs)
    for shard, run in [(s, r) for s in shards for r in live_runs if s.overlaps(r)]:
        assert shard.shard not in run.partitions, (shard, run)  # each partition one writer
    every = [(r.key, r.value) for r in history] + extra
    assert_read_model_is_the_fold(Pipeline(kafka, mongo, topic, leads), every, in_order=False)


def test_a_killed_run_is_failed_in_bounded_time_and_its_range_runs_again(
    kafka, mongo, four_partitions, deployment
):
    topic, leads = four_partitions
    env, home = deployment
    env |= {
        "INGEST_MAX_EVENTS_PER_RUN": "50000",
        "WRITER_LEASE_TTL_SECONDS": "6",
        "WRITER_LEASE_GRACE_SECONDS": "5",
        "MONGO_TIMEOUT_MS": "5000",
    }
    # Lane 0 (partitions 0 and 2) gets a long range, lane 1 a short one.
    big = [r for r in synthetic_events(3_000, seed=45, start=START) if _lane(r[0]) == 0]
    small = [
        r
        for r in synthetic_events(200, seed=46, start=START, first_application_number=9_000)
        if _lane(r[0]) == 1
    ]
    for batch in (big, small):
        for i in range(0, len(batch), 1_000):
            kafka.produce_batch(topic, batch[i : i + 1_000])
    with dagster_dev(env, home) as dev:
        holder: dict = {}

        def lane_0_run_writing() -> bool:
            doc = mongo.db()[WRITER_LEASES].find_one(
                {"scope": "read_model:p0", "released_at": None, "run_id": {"$ne": None}}
            )
            if doc:
                holder.update(doc)
            return bool(doc)

        wait_until(lane_0_run_writing, 240, dev, "lane 0's run holding its lease")
        pid = int(holder["owner"].split("(")[1].split(":")[1])
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()

        def killed_run_failed() -> bool:
            (run,) = [
                r for r in runs_of(home, "ingest_enrollment_events") if r.run_id == holder["run_id"]
            ]
            return run.status == "FAILURE"

        wait_until(killed_run_failed, 90, dev, "the killed run marked failed")
        failed_after = time.monotonic() - killed_at
        wait_until(lambda: caught_up(kafka, mongo, topic), 400, dev, "every range applied")
        # A run commits its offsets before it ends: let the last ones end before the checks.
        in_flight = {status.value for status in IN_FLIGHT}
        wait_until(
            lambda: (
                not any(r.status in in_flight for r in runs_of(home, "ingest_enrollment_events"))
            ),
            60,
            dev,
            "every ingestion run ended",
        )
    assert failed_after < 60, f"the killed run was failed after {failed_after:.0f} s"
    runs = runs_of(home, "ingest_enrollment_events")
    (killed,) = [r for r in runs if r.run_id == holder["run_id"]]
    again = [r for r in runs if r.status == "SUCCESS" and r.partitions & killed.partitions]
    assert again, "the killed run's range was not run again"
    others = [r for r in runs if r.lane == "1"]
    assert others and all(r.status == "SUCCESS" for r in others), others
    assert_read_model_is_the_fold(Pipeline(kafka, mongo, topic, leads), big + small)


def _lane(key: bytes | None) -> int:
    assert key is not None
    return partition_of(key.decode(), PARTITIONS) % 2
