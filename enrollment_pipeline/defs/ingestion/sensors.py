"""`enrollment_events_sensor`: keep the enrollment groups caught up, one exact range per run."""

import dagster as dg

from enrollment_pipeline.defs.ingestion.jobs import ingest_enrollment_events
from enrollment_pipeline.defs.offset_ranges import OffsetRangeConfig, offset_range_sensor
from enrollment_pipeline.domain.offset_ranges import RangePlan
from enrollment_pipeline.settings import READ_MODEL_GROUP


def _run_config(plan: RangePlan) -> dg.RunConfig:
    config = OffsetRangeConfig(topic=plan.topic, ranges=OffsetRangeConfig.ranges_of(plan))
    return dg.RunConfig(ops={"ingest_offset_range": config})


enrollment_events_sensor = offset_range_sensor(
    name="enrollment_events_sensor",
    job=ingest_enrollment_events,
    group=READ_MODEL_GROUP,
    topic=lambda settings: settings.enrollment_topic,
    max_events=lambda settings: settings.ingest_max_events_per_run,
    max_attempts=lambda settings: settings.ingest_max_range_attempts,
    run_config=_run_config,
    description="Launch a micro-batch over the enrollment-events offsets not yet applied.",
)
