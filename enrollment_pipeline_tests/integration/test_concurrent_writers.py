"""A second writer of the read model loses nothing: it waits for the lease, or refuses naming
the holder; the read model is the fold of everything either wrote."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from enrollment_pipeline.defs.ingestion.jobs import ingest_enrollment_events
from enrollment_pipeline.defs.ingestion.sensors import enrollment_events_sensor
from enrollment_pipeline.lib.backfill import backfill_days
from enrollment_pipeline.lib.clients.archive import Archive
from enrollment_pipeline.lib.mongo.lease import (
    LeaseHeldError,
    LeasePolicy,
    WriterLease,
    all_partition_scopes,
)
from enrollment_pipeline.lib.sample_data import synthetic_records, write_archive
from enrollment_pipeline_tests.jobs import run_job
from enrollment_pipeline_tests.pipeline import (
    TEST_PARTITIONS,
    Pipeline,
    assert_read_model_is_the_fold,
)

pytestmark = pytest.mark.integration

START = datetime(2024, 3, 1, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[2]


def split_history(tmp_path: Path, applications: int, seed: int):
    """Every application's history in two: its earlier events in the archive (one file per
    day), its later ones live on Kafka; the fold must merge them as one."""
    records = list(
        synthetic_records(applications, seed=seed, start=START, mean_gap=timedelta(hours=2))
    )
    write_archive(
        tmp_path,
        applications,
        seed=seed,
        start=START,
        bad_fraction=0.0,
        mean_gap=timedelta(hours=2),
    )
    days = sorted(
        {datetime.fromisoformat(str(r.event["occurred_at"])[:10]).date() for r in records}
    )
    live = [(r.key, r.value) for r in records[len(records) // 2 :]]
    return records, days, live


def lease(pipeline: Pipeline, owner: str, wait_s: float) -> WriterLease:
    return WriterLease(
        pipeline.mongo.db(),
        scopes=all_partition_scopes(TEST_PARTITIONS),
        owner=owner,
        policy=LeasePolicy(
            ttl=timedelta(seconds=30), wait=timedelta(seconds=wait_s), grace=timedelta(0)
        ),
    )


def test_a_backfill_between_an_ingestions_read_and_its_write_waits_or_refuses(
    pipeline: Pipeline, tmp_path: Path
):
    records, days, live = split_history(tmp_path, 150, seed=21)
    pipeline.produce(live)
    paused, go_on = threading.Event(), threading.Event()

    def hold_between_read_and_write(step: str) -> None:
        if step == "after_read_before_write":
            paused.set()
            assert go_on.wait(60)

    ingestion = threading.Thread(
        target=pipeline.ingest,
        kwargs={
            "lease": lease(pipeline, "ingestion run", 30),
            "checkpoint": hold_between_read_and_write,
        },
    )
    ingestion.start()
    assert paused.wait(60), "the ingestion never reached its write"
    archive = Archive(root=str(tmp_path))

    # The backfill would write the same applications: it may not start while ingestion holds
    # the lease between its read and its write.
    with pytest.raises(LeaseHeldError, match="held by ingestion run"):
        backfill_days(archive, pipeline.store, days, lease=lease(pipeline, "CLI backfill", 2))

    waited: list[float] = []

    def backfill_when_free() -> None:
        started = time.monotonic()
        backfill_days(archive, pipeline.store, days, lease=lease(pipeline, "CLI backfill", 60))
        waited.append(time.monotonic() - started)

    backfill = threading.Thread(target=backfill_when_free)
    backfill.start()
    time.sleep(2)
    assert backfill.is_alive()  # it waits for the lease...
    go_on.set()  # ...until the ingestion has written and let go
    ingestion.join(60)
    backfill.join(120)
    assert not ingestion.is_alive() and not backfill.is_alive() and waited

    assert_read_model_is_the_fold(pipeline, [(r.key, r.value) for r in records], in_order=False)


def test_the_readme_cli_backfill_beside_live_ingestion_equals_the_fold(
    pipeline: Pipeline, tmp_path: Path, services
):
    """`dagster asset materialize --partition-range` (a process of its own, outside the run
    queue) while the sensor's runs ingest the same applications live."""
    records, days, live = split_history(tmp_path / "archive", 1_500, seed=23)
    pipeline.produce(live)
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "KAFKA_BOOTSTRAP_SERVERS": services.kafka_bootstrap_servers,
        "MONGO_URI": services.mongo_uri,
        "MONGO_DATABASE": pipeline.mongo.database,
        "ENROLLMENT_TOPIC": pipeline.topic,
        "LEAD_TOPIC": pipeline.lead_topic,
        "ARCHIVE_ROOT": str(tmp_path / "archive"),
        "WRITER_LEASE_WAIT_SECONDS": "300",
    }
    backfill = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dagster",
            "asset",
            "materialize",
            "--select",
            "historic_enrollment_events",
            "--partition-range",
            f"{days[0].isoformat()}...{days[-1].isoformat()}",
            "-m",
            "enrollment_pipeline.definitions",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    resources = pipeline.resources(ingest_max_events_per_run=400)
    overlapped = False
    deadline = time.monotonic() + 600
    with dg.instance_for_test() as instance:
        while time.monotonic() < deadline:
            with dg.build_sensor_context(instance=instance, resources=resources) as context:
                result = enrollment_events_sensor(context)
            if isinstance(result, dg.SkipReason):
                if backfill.poll() is not None and "no new records" in (result.skip_message or ""):
                    break
                time.sleep(0.5)
                continue
            for request in result.run_requests:
                overlapped |= backfill.poll() is None
                outcome = run_job(
                    ingest_enrollment_events,
                    run_config=request.run_config,
                    resources=resources,
                    instance=instance,
                    tags=request.tags,
                )
                assert outcome.success
    output = backfill.communicate(timeout=300)[0]
    assert backfill.returncode == 0, output[-3000:]
    assert overlapped, "no ingestion run started while the backfill ran"
    assert_read_model_is_the_fold(pipeline, [(r.key, r.value) for r in records], in_order=False)
