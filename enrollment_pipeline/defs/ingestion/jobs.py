"""`ingest_enrollment_events`: one micro-batch over exact offset ranges, in process.

The four datasets a batch writes are the outputs of one multi-asset (`ingest_offset_range`),
so the asset graph shows where they come from and which sensor keeps them fresh.
"""

import dagster as dg

from enrollment_pipeline.defs.ingestion.assets import (
    APPLICATIONS,
    BROKER_FOLLOWUPS,
    DEAD_LETTERS_ASSET,
    LEAD_EVENTS,
    as_evaluation,
    dataset_specs,
    lag_result,
    rate_result,
)
from enrollment_pipeline.defs.kafka.resources import KafkaResource
from enrollment_pipeline.defs.mongo.resources import MongoResource
from enrollment_pipeline.defs.offset_ranges import OffsetRangeConfig, range_metadata
from enrollment_pipeline.defs.pipeline_settings import PipelineSettingsResource
from enrollment_pipeline.lib.ingestion.batch import BatchReport
from enrollment_pipeline.lib.ingestion.run import ingest_range
from enrollment_pipeline.lib.mongo.store import EnrollmentStore

# Ingestion, backfill and rebuild write the read model: one pool, size 1 (dagster.yaml).
READ_MODEL_POOL = "enrollment_read_model"
# Run monitoring stops a hung batch at this age, so its range is requested again.
MAX_RUNTIME_SECONDS = 1800


@dg.multi_asset(
    name="ingest_offset_range",
    specs=dataset_specs(),
    pool=READ_MODEL_POOL,
    can_subset=False,
    description="Apply one offset range of enrollment-events (the sensor gives it) to the "
    "event store, the read model, the follow-up queue and the lead topic.",
)
def ingest_offset_range(
    context: dg.AssetExecutionContext,
    config: OffsetRangeConfig,
    kafka: KafkaResource,
    mongo: MongoResource,
    settings: PipelineSettingsResource,
):
    """Apply one offset range and report what it did on the four datasets."""
    plan = config.plan()
    if plan is None:
        context.log.info("no offset ranges in the run config: nothing to ingest")
        for key in (APPLICATIONS, BROKER_FOLLOWUPS, DEAD_LETTERS_ASSET, LEAD_EVENTS):
            yield dg.MaterializeResult(asset_key=key, metadata={"events_read": 0})
        return
    with mongo.explained_errors():  # a stalled server fails the run; the sensor retries
        result = ingest_range(
            kafka,
            EnrollmentStore.of(mongo),
            plan,
            lead_topic=settings.lead_topic,
            max_record_bytes=settings.ingest_max_record_bytes,
            run_id=context.run.run_id,
        )
    report: BatchReport = result.report
    common = {"offset_ranges": range_metadata(plan), "events_read": report.events_read}
    yield dg.MaterializeResult(
        asset_key=APPLICATIONS,
        metadata={
            **common,
            "events_applied": report.applied,
            "duplicates": report.duplicates,
            "anomalies": report.anomalies,
            "applications_touched": report.applications_touched,
            # Refolded from the event store because of late or replayed events.
            "applications_reread": report.applications_reread,
            "events_reread": report.events_reread,
            "applications_written": report.applications_written,
            "lag_left": result.lag_left,
        },
    )
    yield dg.MaterializeResult(
        asset_key=BROKER_FOLLOWUPS,
        metadata={
            **common,
            "followups_opened": report.followups_opened,
            "followups_closed": report.followups_closed,
            "followups_written": report.followups_written,
        },
    )
    yield dg.MaterializeResult(
        asset_key=DEAD_LETTERS_ASSET,
        metadata={
            **common,
            "dead_lettered": report.dead_lettered,
            "reasons": dict(report.dead_letter_reasons),
        },
    )
    yield dg.MaterializeResult(
        asset_key=LEAD_EVENTS, metadata={**common, "leads_published": report.leads_published}
    )
    context.log_event(
        as_evaluation(
            rate_result(
                report.dead_lettered, report.events_read, settings.ingest_max_dead_letter_rate
            )
        )
    )
    context.log_event(as_evaluation(lag_result(result.lag_left, settings.ingest_max_consumer_lag)))
    for error in result.kafka_commit_errors:
        context.log.warning(f"Kafka group offset commit failed (Mongo holds them): {error}")
    context.log.info(
        f"range {plan.key}: read {report.events_read}, applied {report.applied}, "
        f"duplicates {report.duplicates}, dead-lettered {report.dead_lettered}, "
        f"written {report.applications_written}, leads {report.leads_published}, "
        f"lag left {result.lag_left}"
    )


ingest_enrollment_events = dg.define_asset_job(
    "ingest_enrollment_events",
    # The checks are evaluated by the batch itself, from its own numbers.
    selection=dg.AssetSelection.assets(
        APPLICATIONS, BROKER_FOLLOWUPS, DEAD_LETTERS_ASSET, LEAD_EVENTS
    ).without_checks(),
    executor_def=dg.in_process_executor,
    tags={"dagster/max_runtime": MAX_RUNTIME_SECONDS},
    description="Apply one micro-batch of enrollment events over exact Kafka offset ranges.",
)
