"""`ingest_offset_range`: one micro-batch over exact offset ranges, the four datasets it writes.

The topic is an external asset (written by the upstream systems). The datasets a batch writes
are the outputs of one multi-asset, so the asset graph shows where they come from and which
sensor keeps them fresh.
"""

from typing import Any

import dagster as dg

from enrollment_pipeline.defs.datasets import (
    APPLICATIONS,
    BROKER_FOLLOWUPS,
    DEAD_LETTERS,
    ENROLLMENT_TOPIC,
    GROUP,
    LEAD_EVENTS,
    OWNERS,
    check_evaluation,
    ingested_dataset_specs,
)
from enrollment_pipeline.defs.ingestion.checks import (
    BATCH_DEAD_LETTER_RATE_CHECK,
    batch_dead_letter_rate_spec,
    lag_result,
    rate_result,
)
from enrollment_pipeline.defs.kafka.resources import KafkaResource
from enrollment_pipeline.defs.mongo.resources import MongoResource
from enrollment_pipeline.defs.offset_ranges import OffsetRangeConfig, range_metadata
from enrollment_pipeline.defs.settings.resources import PipelineSettingsResource
from enrollment_pipeline.lib.ingestion.batch import BatchReport
from enrollment_pipeline.lib.ingestion.run import ingest_range
from enrollment_pipeline.lib.mongo.layout import PartitionCountChangedError, check_layout
from enrollment_pipeline.lib.mongo.store import EnrollmentStore

enrollment_events_topic = dg.AssetSpec(
    ENROLLMENT_TOPIC,
    group_name=GROUP,
    kinds={"kafka"},
    owners=OWNERS,
    description="The `enrollment-events` topic (ENROLLMENT_TOPIC): Contract-1 events that the "
    "upstream enrollment systems publish, keyed by application id. Not written here.",
)


@dg.multi_asset(
    name="ingest_offset_range",
    specs=ingested_dataset_specs(),
    check_specs=[batch_dead_letter_rate_spec],
    # No pool: runs over disjoint lanes go in parallel (the lane tag limits each lane to one
    # run; the per-partition lease keeps any other writer out).
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
        for key in (APPLICATIONS, BROKER_FOLLOWUPS, DEAD_LETTERS, LEAD_EVENTS):
            yield dg.MaterializeResult(asset_key=key, metadata={"events_read": 0})
        yield rate_result(BATCH_DEAD_LETTER_RATE_CHECK, 0, 0, settings.ingest_max_dead_letter_rate)
        return
    db = mongo.get_client()
    limits = settings.input_limits()
    client = kafka.get_client()
    with db.explained_errors():  # a stalled server fails the run; the sensor retries
        # Leases are per partition: only while every writer counts partitions alike.
        try:
            check_layout(db.db(), plan.topic, len(client.partitions(plan.topic)))
        except PartitionCountChangedError as exc:
            raise dg.Failure(description=str(exc)) from None
        result = ingest_range(
            client,
            EnrollmentStore.of(db, max_raw_bytes=limits.max_raw_bytes),
            plan,
            lead_topic=settings.lead_topic,
            lease=settings.writer_lease(
                db.db(),
                run_id=context.run.run_id,
                job="ingest_enrollment_events",
                partitions=plan.partitions,
            ),
            limits=limits,
            run_id=context.run.run_id,
        )
    report: BatchReport = result.report
    common: dict[str, Any] = {
        "offset_ranges": range_metadata(plan),
        "events_read": report.events_read,
    }
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
        asset_key=DEAD_LETTERS,
        metadata={
            **common,
            "dead_lettered": report.dead_lettered,
            "reasons": dict(report.dead_letter_reasons),
        },
    )
    yield dg.MaterializeResult(
        asset_key=LEAD_EVENTS, metadata={**common, "leads_published": report.leads_published}
    )
    yield rate_result(
        BATCH_DEAD_LETTER_RATE_CHECK,
        report.dead_lettered,
        report.events_read,
        settings.ingest_max_dead_letter_rate,
    )
    context.log_event(
        check_evaluation(lag_result(result.lag_left, settings.ingest_max_consumer_lag))
    )
    for error in result.kafka_commit_errors:
        context.log.warning(f"Kafka group offset commit failed (Mongo holds them): {error}")
    context.log.info(
        f"range {plan.key}: read {report.events_read}, applied {report.applied}, "
        f"duplicates {report.duplicates}, dead-lettered {report.dead_lettered}, "
        f"written {report.applications_written}, leads {report.leads_published}, "
        f"lag left {result.lag_left}"
    )


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(assets=[enrollment_events_topic, ingest_offset_range])
