"""Backfills from a folder and from S3 (moto's server), and the read-model rebuild, on the real
services; the oracle is the pure fold of the events, as for ingestion."""

from __future__ import annotations

import gzip
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import boto3
import dagster as dg
import pytest

from enrollment_pipeline.defs.datasets import HISTORIC_EVENTS
from enrollment_pipeline.defs.followups.assets import FollowupRunConfig, broker_followup_emails
from enrollment_pipeline.defs.history.assets import historic_enrollment_events_asset
from enrollment_pipeline.defs.settings.resources import PipelineSettingsResource
from enrollment_pipeline.domain.events import EnrollmentEvent, parse_archive_line
from enrollment_pipeline.lib.backfill import Shard, backfill_days, rebuild_read_model
from enrollment_pipeline.lib.clients.archive import Archive
from enrollment_pipeline.lib.clients.aws import AwsConfig
from enrollment_pipeline.lib.clients.email import SmtpEmailSender
from enrollment_pipeline.lib.mongo.collections import APPLICATIONS, BROKER_FOLLOWUPS
from enrollment_pipeline.lib.mongo.lease import LeasePolicy, WriterLease, holding, partition_scopes
from enrollment_pipeline.lib.sample_data import synthetic_events, synthetic_records, write_archive
from enrollment_pipeline_tests.jobs import as_resources
from enrollment_pipeline_tests.pipeline import (
    TEST_PARTITIONS,
    Pipeline,
    assert_read_model_is_the_fold,
)

pytestmark = pytest.mark.integration

START = datetime(2024, 3, 1, tzinfo=UTC)
FIRST_DAY = START.date()


def days(first: date, count: int) -> list[date]:
    return [first + timedelta(days=n) for n in range(count)]


def archived_records(root: Path, covered: list[date]) -> list[tuple[bytes, bytes]]:
    """The valid events of the archive's files for `covered`, as (key, value) records."""
    records = []
    for day in covered:
        for path in sorted(root.glob(f"{day.isoformat()}.jsonl*")):
            data = path.read_bytes()
            data = gzip.decompress(data) if path.suffix == ".gz" else data
            for line in data.splitlines():
                event = parse_archive_line(line)
                if isinstance(event, EnrollmentEvent):
                    records.append((event.application_id.encode(), line))
    return records


def read_model(pipeline: Pipeline) -> tuple[dict, dict]:
    return pipeline.applications(), pipeline.followups()


def test_backfilling_30_days_twice_leaves_the_read_model_as_one_pass(
    pipeline: Pipeline, tmp_path: Path
):
    written = write_archive(tmp_path, 80, seed=3, start=START, bad_fraction=0.02)
    covered = days(FIRST_DAY - timedelta(days=2), 30)  # two days before any file: empty
    archive = Archive(root=str(tmp_path))

    first = backfill_days(archive, pipeline.store, covered, lease=pipeline.lease(), chunk_lines=100)
    assert first.days == 30 and first.files == len(
        [d for d in written if d <= covered[-1].isoformat()]
    )
    assert first.events_new > 0 and first.dead_lettered > 0
    once = read_model(pipeline)
    assert_read_model_is_the_fold(pipeline, archived_records(tmp_path, covered), in_order=False)
    assert pipeline.leads() == []  # a backfill publishes no lead unless asked

    second = backfill_days(archive, pipeline.store, covered, lease=pipeline.lease(), chunk_lines=70)
    assert (second.events_new, second.duplicates) == (0, first.events_new + first.duplicates)
    assert read_model(pipeline) == once


@pytest.mark.parametrize("archive_first", [True, False], ids=["archive-first", "kafka-first"])
def test_days_that_also_came_through_kafka_fold_as_one_union(
    pipeline: Pipeline, tmp_path: Path, archive_first: bool
):
    records = list(synthetic_records(60, seed=11, start=START, mean_gap=timedelta(hours=6)))
    write_archive(tmp_path, 60, seed=11, start=START, bad_fraction=0.0, mean_gap=timedelta(hours=6))
    covered = sorted(
        {datetime.fromisoformat(str(r.event["occurred_at"])[:10]).date() for r in records}
    )
    live = [(r.key, r.value) for r in records[len(records) // 3 :]]  # Kafka has the later 2/3
    archive = Archive(root=str(tmp_path))

    if archive_first:
        backfill_days(archive, pipeline.store, covered[: len(covered) // 2], lease=pipeline.lease())
    pipeline.produce(live)
    pipeline.ingest()
    backfill_days(archive, pipeline.store, covered, lease=pipeline.lease())

    union = [(r.key, r.value) for r in records]
    assert_read_model_is_the_fold(pipeline, union, in_order=False)


def test_a_corrupt_gzip_tail_and_bad_lines_are_dead_lettered_and_the_day_succeeds(
    pipeline: Pipeline, tmp_path: Path
):
    good = [r.value for r in synthetic_records(40, seed=5, start=START)]
    day = "2024-03-01"
    body = b"\n".join(good[:30]) + b"\n"
    (tmp_path / f"{day}.jsonl.gz").write_bytes(gzip.compress(body)[:-40])  # tail cut
    (tmp_path / f"{day}.jsonl").write_bytes(b'{"not": "an event"}\n' + good[30] + b"\nnope\n")

    report = backfill_days(
        Archive(root=str(tmp_path)), pipeline.store, [FIRST_DAY], lease=pipeline.lease()
    )

    letters = pipeline.dead_letters()
    assert f"archive:{day}.jsonl:1" in letters and f"archive:{day}.jsonl:3" in letters
    tail = [letter for i, letter in letters.items() if i.startswith(f"archive:{day}.jsonl.gz:")]
    assert len(tail) == 1 and tail[0]["reason"] == "archive_unreadable"
    assert report.dead_lettered == 3
    assert report.events_new == report.lines_read - 2 >= 25  # the lines before the tail


def test_a_range_of_days_is_one_run_of_the_asset_from_s3(
    pipeline: Pipeline, tmp_path: Path, moto_endpoint, aws_credentials
):
    written = write_archive(tmp_path, 30, seed=9, start=START, gzipped=True)
    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=moto_endpoint)
    bucket = f"history-{uuid.uuid4().hex[:8]}"  # the moto server is shared by the module's tests
    s3.create_bucket(Bucket=bucket)
    for path in tmp_path.iterdir():
        s3.upload_file(str(path), bucket, f"enrollment/{path.name}")
    archive = Archive(
        root=f"s3://{bucket}/enrollment",
        aws=AwsConfig(region_name="us-east-1", endpoint_url=moto_endpoint),
    )
    first, last = min(written), sorted(written)[6]
    partitions = dg.DailyPartitionsDefinition(start_date="2024-01-01", timezone="UTC")
    asset = historic_enrollment_events_asset(partitions)
    job = dg.Definitions(
        assets=[asset],
        jobs=[dg.define_asset_job("backfill", selection=[HISTORIC_EVENTS])],
        resources=as_resources({**pipeline.resources(), "archive": archive}),
    ).resolve_job_def("backfill")
    result = job.execute_in_process(
        tags={
            "dagster/asset_partition_range_start": first,
            "dagster/asset_partition_range_end": last,
        }
    )
    assert result.success
    (materialization, *_) = result.asset_materializations_for_node("historic_enrollment_events")
    metadata = {k: v.value for k, v in materialization.metadata.items()}
    span = (date.fromisoformat(last) - date.fromisoformat(first)).days + 1
    covered = days(date.fromisoformat(first), span)
    with_files = [d for d in covered if d.isoformat() in written]
    assert (metadata["days"], metadata["files"]) == (span, len(with_files))
    assert span > len(with_files)  # a day without a file is an empty partition, not a failure
    assert metadata["lines_read"] == sum(written[d.isoformat()] for d in with_files)
    assert_read_model_is_the_fold(pipeline, archived_records(tmp_path, covered), in_order=False)


def test_rebuild_after_losing_applications_keeps_the_email_history(
    pipeline: Pipeline, tmp_path: Path, smtp_server
):
    inbox, port = smtp_server
    records = list(synthetic_records(50, seed=2, start=START))
    pipeline.produce([(r.key, r.value) for r in records])
    pipeline.ingest()
    sender = SmtpEmailSender(host="127.0.0.1", port=port, sender="f@example.com", timeout_s=5)
    as_of = START + timedelta(days=3)
    sent = dg.materialize(
        [broker_followup_emails],
        run_config=dg.RunConfig(
            ops={"broker_followup_emails": FollowupRunConfig(as_of=as_of.isoformat())}
        ),
        resources=as_resources(
            {
                "mongo": pipeline.mongo,
                "email": sender,
                "settings": PipelineSettingsResource(followup_max_age_days=10_000),
            }
        ),
    )
    assert sent.success and inbox.messages
    before_apps, before_followups = read_model(pipeline)
    assert any(f.get("retry_count") for f in before_followups.values())

    pipeline.mongo.db()[APPLICATIONS].delete_many({})
    # Small groups: the store is folded a few applications at a time, as a big one is.
    report = rebuild_read_model(pipeline.store, lease=pipeline.lease(), fold_group=40)

    assert (report.passes, report.swapped) == (1, True) and report.groups > 3
    assert report.events == pipeline.mongo.db()["enrollment_events"].count_documents({})
    assert report.documents_created == len(before_apps)
    assert read_model(pipeline) == (before_apps, before_followups)
    again = rebuild_read_model(pipeline.store, lease=pipeline.lease())
    assert (again.documents_created, again.documents_changed, again.followups_written) == (0, 0, 0)
    assert not again.swapped  # an unchanged read model is not written
    assert pipeline.mongo.db()[BROKER_FOLLOWUPS].count_documents({}) == len(before_followups)


def test_a_full_rebuild_counts_and_repairs_a_stale_document_and_drops_an_orphan(
    pipeline: Pipeline,
):
    records = list(synthetic_records(40, seed=3, start=START))
    pipeline.produce([(r.key, r.value) for r in records])
    pipeline.ingest()
    before_apps, _ = read_model(pipeline)
    applications = pipeline.mongo.db()[APPLICATIONS]
    stale = sorted(before_apps)[0]
    applications.update_one({"_id": stale}, {"$set": {"status": "EDITED BY HAND"}})
    applications.insert_one({"_id": "APP-ORPHAN", "status": "SUBMITTED"})  # no stored event

    report = rebuild_read_model(pipeline.store, lease=pipeline.lease(), fold_group=25)

    assert (report.documents_created, report.documents_changed, report.documents_removed) == (
        0,
        1,
        1,
    )
    assert report.swapped and report.applications == len(before_apps)
    assert applications.find_one({"_id": "APP-ORPHAN"}) is None
    assert read_model(pipeline)[0] == before_apps


def test_publish_leads_true_publishes_the_leads_of_the_archived_events(
    pipeline: Pipeline, tmp_path: Path
):
    written = write_archive(tmp_path, 30, seed=6, start=START, bad_fraction=0.0)
    covered = [date.fromisoformat(day) for day in written]
    publish = lambda messages: pipeline.kafka.produce_batch(pipeline.lead_topic, messages)  # noqa: E731

    report = backfill_days(
        Archive(root=str(tmp_path)),
        pipeline.store,
        covered,
        lease=pipeline.lease(),
        publish_leads=publish,
    )

    assert report.leads_published > 0
    assert_read_model_is_the_fold(pipeline, archived_records(tmp_path, covered), in_order=True)
    again = backfill_days(
        Archive(root=str(tmp_path)),
        pipeline.store,
        covered,
        lease=pipeline.lease(),
        publish_leads=publish,
    )
    assert again.leads_published == 0  # a replay publishes no lead twice


def test_a_backfill_from_a_missing_folder_fails_naming_archive_root(
    pipeline: Pipeline, tmp_path: Path
):
    """Without the check it succeeded with zero files: every day looked empty."""
    missing = tmp_path / "not-mounted"
    partitions = dg.DailyPartitionsDefinition(start_date="2024-01-01", timezone="UTC")
    job = dg.Definitions(
        assets=[historic_enrollment_events_asset(partitions)],
        jobs=[dg.define_asset_job("backfill", selection=[HISTORIC_EVENTS])],
        resources=as_resources({**pipeline.resources(), "archive": Archive(root=str(missing))}),
    ).resolve_job_def("backfill")
    result = job.execute_in_process(
        tags={
            "dagster/asset_partition_range_start": "2024-03-01",
            "dagster/asset_partition_range_end": "2024-03-03",
        },
        raise_on_error=False,
    )
    assert not result.success
    failure = result.failure_data_for_node("historic_enrollment_events").error
    assert f"ARCHIVE_ROOT {missing} does not exist" in failure.message
    assert pipeline.applications() == {}


def test_a_sharded_rebuild_refolds_its_partition_under_its_lease_alone(pipeline: Pipeline):
    records = list(synthetic_events(120, seed=9, start=START))
    pipeline.produce(records)
    pipeline.ingest()
    before = pipeline.applications()
    apps = pipeline.mongo.db()[APPLICATIONS]
    apps.update_many({}, {"$set": {"status": "STALE"}})
    shard = Shard(0, TEST_PARTITIONS)
    # Another writer holds partition 1's lease: shard 0 does not wait for it.
    other = WriterLease(
        pipeline.mongo.db(),
        scopes=partition_scopes([1]),
        owner="live ingestion of partition 1",
        policy=LeasePolicy(
            ttl=timedelta(seconds=60), wait=timedelta(seconds=1), grace=timedelta(0)
        ),
    )
    with holding(other):
        report = rebuild_read_model(
            pipeline.store,
            lease=WriterLease(
                pipeline.mongo.db(),
                scopes=partition_scopes([0]),
                owner="rebuild of shard 0",
                policy=LeasePolicy(
                    ttl=timedelta(seconds=60), wait=timedelta(seconds=5), grace=timedelta(0)
                ),
            ),
            shard=shard,
        )
    after = pipeline.applications()
    mine = {app for app in before if shard.owns_application(app)}
    assert mine and report.applications == len(mine) and not report.swapped
    assert {app: after[app] for app in mine} == {app: before[app] for app in mine}
    assert all(after[app]["status"] == "STALE" for app in before if app not in mine)
    for partition in range(1, TEST_PARTITIONS):
        rebuild_read_model(
            pipeline.store, lease=pipeline.lease(), shard=Shard(partition, TEST_PARTITIONS)
        )
    assert pipeline.applications() == before
    assert_read_model_is_the_fold(pipeline, records)
