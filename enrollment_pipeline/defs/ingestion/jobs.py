"""`ingest_enrollment_events`: one micro-batch over exact offset ranges, in process."""

import dagster as dg

from enrollment_pipeline.defs.datasets import (
    APPLICATIONS,
    BROKER_FOLLOWUPS,
    DEAD_LETTERS,
    LEAD_EVENTS,
)
from enrollment_pipeline.defs.ingestion.checks import BATCH_DEAD_LETTER_RATE_CHECK

# Run monitoring stops a hung batch at this age, so its range is requested again.
MAX_RUNTIME_SECONDS = 1800

ingest_enrollment_events = dg.define_asset_job(
    "ingest_enrollment_events",
    # The standalone checks (last hour's rate, current lag) are not run by a batch.
    selection=dg.AssetSelection.assets(
        APPLICATIONS, BROKER_FOLLOWUPS, DEAD_LETTERS, LEAD_EVENTS
    ).without_checks()
    | dg.AssetSelection.checks(BATCH_DEAD_LETTER_RATE_CHECK),
    executor_def=dg.in_process_executor,
    tags={"dagster/max_runtime": MAX_RUNTIME_SECONDS},
    description="Apply one micro-batch of enrollment events over exact Kafka offset ranges.",
)


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(jobs=[ingest_enrollment_events])
