"""`enrollment_events_sensor`: keep the enrollment groups caught up, one run per lane."""

import dagster as dg

from enrollment_pipeline.defs.ingestion.jobs import ingest_enrollment_events
from enrollment_pipeline.defs.offset_ranges import offset_range_sensor
from enrollment_pipeline.lib.consumer_groups import READ_MODEL_GROUP

enrollment_events_sensor = offset_range_sensor(
    name="enrollment_events_sensor",
    job=ingest_enrollment_events,
    group=READ_MODEL_GROUP,
    topic=lambda settings: settings.enrollment_topic,
    max_events=lambda settings: settings.ingest_max_events_per_run,
    max_attempts=lambda settings: settings.ingest_max_range_attempts,
    op_name="ingest_offset_range",
    writes_read_model=True,
    lanes=lambda settings: settings.ingest_parallel_runs,
    description="Launch micro-batches over the enrollment-events offsets not yet applied: up "
    "to INGEST_PARALLEL_RUNS at once, each over its own lane of partitions.",
)


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(sensors=[enrollment_events_sensor])
