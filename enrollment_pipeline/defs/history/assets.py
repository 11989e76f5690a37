"""The archive backfill (`historic_enrollment_events`, job `backfill_enrollment_history`) and
`rebuild_read_model`: both write the read model, so they share ingestion's pool."""

from datetime import timedelta

import dagster as dg
from pydantic import Field

from enrollment_pipeline.defs.archive.resources import ArchiveResource
from enrollment_pipeline.defs.ingestion.assets import APPLICATIONS, GROUP, HISTORIC_EVENTS, OWNERS
from enrollment_pipeline.defs.ingestion.jobs import READ_MODEL_POOL
from enrollment_pipeline.defs.kafka.resources import KafkaResource
from enrollment_pipeline.defs.mongo.resources import MongoResource
from enrollment_pipeline.defs.pipeline_settings import PipelineSettingsResource
from enrollment_pipeline.lib.backfill import backfill_days, rebuild_read_model
from enrollment_pipeline.lib.mongo.store import EnrollmentStore
from enrollment_pipeline.settings import PipelineSettings

ARCHIVE = dg.AssetKey("enrollment_archive")


def archive_spec() -> dg.AssetSpec:
    return dg.AssetSpec(
        ARCHIVE,
        group_name=GROUP,
        kinds={"s3"},
        owners=OWNERS,
        description="The historic archive (ARCHIVE_ROOT, a folder or s3://bucket/prefix): one "
        "`{day}.jsonl[.gz]` of Contract-1 events per day (Contract 5). Not written here.",
    )


MAX_RUNTIME_SECONDS = 6 * 3600


def archive_partitions() -> dg.DailyPartitionsDefinition:
    """One partition per archive day (UTC), from ARCHIVE_START_DATE."""
    start = PipelineSettings().archive_start_date
    return dg.DailyPartitionsDefinition(start_date=start.isoformat(), timezone="UTC")


class BackfillConfig(dg.Config):
    publish_leads: bool = Field(
        default=False,
        description="Publish the leads of archived events (Contract 4). Off by default: "
        "the CRM usually had them long ago.",
    )


def historic_enrollment_events_asset(partitions: dg.DailyPartitionsDefinition):
    @dg.asset(
        key=HISTORIC_EVENTS,
        deps=[ARCHIVE],
        owners=OWNERS,
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        pool=READ_MODEL_POOL,
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
            (lambda messages: kafka.produce_batch(settings.lead_topic, messages))
            if config.publish_leads
            else None
        )
        with mongo.explained_errors():
            report = backfill_days(
                archive,
                EnrollmentStore.of(mongo),
                days,
                publish_leads=publish,
                max_record_bytes=settings.ingest_max_record_bytes,
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
            }
        )

    return historic_enrollment_events


@dg.op(pool=READ_MODEL_POOL)
def refold_every_application(context: dg.OpExecutionContext, mongo: MongoResource) -> None:
    """Recompute `applications` and the fold-owned follow-up fields from the event store."""
    with mongo.explained_errors():
        report = rebuild_read_model(EnrollmentStore.of(mongo))
    context.log_event(
        dg.AssetMaterialization(
            APPLICATIONS,
            metadata={
                "applications": report.applications,
                "events": report.events,
                "documents_changed": report.documents_changed,
                "documents_created": report.documents_created,
                "followups_written": report.followups_written,
                "passes_over_the_event_store": report.passes,
                "seconds": round(report.seconds, 1),
            },
        )
    )
    context.log.info(
        f"rebuilt {report.applications} applications from {report.events} events: "
        f"{report.documents_created} created, {report.documents_changed} changed"
    )


@dg.job(
    name="rebuild_read_model",
    executor_def=dg.in_process_executor,
    tags={"dagster/max_runtime": MAX_RUNTIME_SECONDS},
    description="Recompute the read model from the event store (disaster recovery, or after "
    "a projection change); the email job's follow-up fields and attempts are kept.",
)
def rebuild_read_model_job() -> None:
    refold_every_application()


@dg.definitions
def defs() -> dg.Definitions:
    partitions = archive_partitions()
    asset = historic_enrollment_events_asset(partitions)
    backfill = dg.define_asset_job(
        "backfill_enrollment_history",
        selection=[HISTORIC_EVENTS],
        executor_def=dg.in_process_executor,
        tags={"dagster/max_runtime": MAX_RUNTIME_SECONDS},
        description="Backfill days of the historic archive into the event store and read model.",
    )
    return dg.Definitions(assets=[archive_spec(), asset], jobs=[backfill, rebuild_read_model_job])
