"""`historic_enrollment_events`: days of the archive backfilled into the event store and the
read model (Contract 5). A run writes every application under every partition's lease, or, as
one shard of a sharded backfill (`shard`), the applications of one partition under that
partition's lease only: live ingestion of the other partitions goes on beside it."""

from datetime import timedelta

import dagster as dg
from pydantic import Field

from enrollment_pipeline.defs.archive.resources import ArchiveResource
from enrollment_pipeline.defs.datasets import ARCHIVE, GROUP, HISTORIC_EVENTS, OWNERS
from enrollment_pipeline.defs.kafka.resources import KafkaResource
from enrollment_pipeline.defs.mongo.resources import MongoResource
from enrollment_pipeline.defs.settings.resources import PipelineSettingsResource
from enrollment_pipeline.lib.backfill import Shard, backfill_days
from enrollment_pipeline.lib.clients.archive import ArchiveMissingError
from enrollment_pipeline.lib.clients.kafka import KafkaUnavailableError
from enrollment_pipeline.lib.clients.mongo import MongoConnection
from enrollment_pipeline.lib.consumer_groups import READ_MODEL_GROUP
from enrollment_pipeline.lib.mongo.layout import (
    PartitionCountChangedError,
    check_layout,
    writer_partitions,
)
from enrollment_pipeline.lib.mongo.store import EnrollmentStore
from enrollment_pipeline.lib.settings_errors import load
from enrollment_pipeline.settings import ArchiveSettings


def archive_spec() -> dg.AssetSpec:
    return dg.AssetSpec(
        ARCHIVE,
        group_name=GROUP,
        kinds={"s3"},
        owners=OWNERS,
        description="The historic archive (ARCHIVE_ROOT, a folder or s3://bucket/prefix): one "
        "`{day}.jsonl[.gz]` of Contract-1 events per day (Contract 5). Not written here.",
    )


def archive_partitions() -> dg.DailyPartitionsDefinition:
    """One partition per archive day (UTC), from ARCHIVE_START_DATE."""
    start = load(ArchiveSettings).archive_start_date
    return dg.DailyPartitionsDefinition(start_date=start.isoformat(), timezone="UTC")


class BackfillConfig(dg.Config):
    publish_leads: bool = Field(
        default=False,
        description="Publish the leads of archived events (Contract 4). Off by default: "
        "the CRM usually had them long ago.",
    )
    shard: int | None = Field(
        default=None,
        ge=0,
        description="Only the applications whose key is on this partition of the enrollment "
        "topic, under that partition's lease (one run of a sharded backfill: "
        "`enrollment-pipeline backfill --shards`). Unset: every application, under every "
        "partition's lease.",
    )


def historic_enrollment_events_asset(partitions: dg.DailyPartitionsDefinition):
    @dg.asset(
        key=HISTORIC_EVENTS,
        deps=[ARCHIVE],
        owners=OWNERS,
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name=GROUP,
        kinds={"s3", "mongodb"},
        description="Historic enrollment events from the archive (Contract 5), one partition "
        "per day, stored in the event store and folded into the read model by the same code "
        "as ingestion. Launched by hand: the backfill dialog (a range of days is one run) or "
        "`dagster asset materialize --partition-range`.",
    )
    def historic_enrollment_events(
        context: dg.AssetExecutionContext,
        config: BackfillConfig,
        archive: ArchiveResource,
        mongo: MongoResource,
        kafka: KafkaResource,
        settings: PipelineSettingsResource,
    ) -> dg.MaterializeResult:
        window = context.partition_time_window
        first, end = window.start.date(), window.end.date()
        days = [first + timedelta(days=n) for n in range((end - first).days)]
        publish = (
            (lambda messages: kafka.get_client().produce_batch(settings.lead_topic, messages))
            if config.publish_leads
            else None
        )
        db = mongo.get_client()
        source = archive.get_client()
        try:  # a missing ARCHIVE_ROOT fails here, not as days without files
            source.check_exists()
        except ArchiveMissingError as exc:
            raise dg.Failure(description=str(exc)) from None
        limits = settings.input_limits()
        partitions = _partition_count(
            context, kafka, db, settings, sharded=config.shard is not None
        )
        try:
            shard = None if config.shard is None else Shard(config.shard, partitions)
        except ValueError as exc:
            raise dg.Failure(description=str(exc)) from None
        what = f"backfill {days[0]}..{days[-1]}" + (f" shard {shard.partition}" if shard else "")
        with db.explained_errors():
            report = backfill_days(
                source,
                EnrollmentStore.of(db, max_raw_bytes=limits.max_raw_bytes),
                days,
                lease=settings.writer_lease(
                    db.db(),
                    run_id=context.run.run_id,
                    job=what,
                    partitions=None if shard is None else [shard.partition],
                ),
                publish_leads=publish,
                limits=limits,
                shard=shard,
            )
        context.log.info(
            f"{days[0]}..{days[-1]}: {report.files} files, {report.lines_read} lines, "
            f"{report.events_new} new events, {report.duplicates} duplicates, "
            f"{report.dead_lettered} dead-lettered, {report.events_per_second:.0f} events/s"
        )
        return dg.MaterializeResult(
            metadata={
                "days": report.days,
                "first_day": days[0].isoformat(),
                "last_day": days[-1].isoformat(),
                "files": report.files,
                "lines_read": report.lines_read,
                "events_new": report.events_new,
                "duplicates": report.duplicates,
                "dead_lettered": report.dead_lettered,
                "dead_letter_reasons": dict(report.dead_letter_reasons),
                "applications_refolded": report.applications_refolded,
                "followups_opened": report.followups_opened,
                "leads_published": report.leads_published,
                "events_per_second": round(report.events_per_second, 1),
                "shard": "all" if shard is None else f"{shard.partition} of {partitions}",
                "lines_of_other_shards": report.lines_of_other_shards,
            }
        )

    return historic_enrollment_events


def _partition_count(
    context: dg.AssetExecutionContext,
    kafka: KafkaResource,
    db: MongoConnection,
    settings: PipelineSettingsResource,
    *,
    sharded: bool,
) -> int:
    """The enrollment topic's partition count, checked against the one the writers use. A
    backfill needs no Kafka otherwise: without it (no topic yet), the writers' count. A shard
    refuses while a change of count drains (an application may be on two partitions)."""
    try:
        count = len(kafka.get_client().partitions(settings.enrollment_topic))
    except KafkaUnavailableError as exc:
        with db.explained_errors():
            count = writer_partitions(db.db(), settings.kafka_topic_partitions)
        context.log.warning(f"{exc}; leasing and sharding by {count} partitions")
        return count
    with db.explained_errors():
        try:
            layout = check_layout(db.db(), settings.enrollment_topic, count)
        except PartitionCountChangedError as exc:
            raise dg.Failure(description=str(exc)) from None
        committed = EnrollmentStore.of(db).committed_offsets(
            READ_MODEL_GROUP, settings.enrollment_topic
        )
    if sharded and layout.draining(committed):
        raise dg.Failure(
            description="the enrollment topic's partition count changed and ingestion is still "
            "applying the records of before the change: run the sharded backfill once it "
            "caught up (`enrollment-pipeline offsets show`), or backfill as one run"
        )
    return count


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(
        assets=[archive_spec(), historic_enrollment_events_asset(archive_partitions())]
    )
