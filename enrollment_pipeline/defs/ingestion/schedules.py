"""`read_model_drift_schedule`: the check `read_model_drift` once a day.

On by default: the check only reads (it takes the writers' lease for a moment, only when a
document looks drifted), its cost is bounded by READ_MODEL_DRIFT_SAMPLE, and a drift nobody
looks for is found by a customer. Off-peak, and not on the hour (the follow-up schedule's).
"""

import dagster as dg

from enrollment_pipeline.defs.ingestion.checks import READ_MODEL_DRIFT_CHECK

DRIFT_CHECK_CRON = "17 3 * * *"

read_model_drift_check = dg.define_asset_job(
    "read_model_drift_check",
    selection=dg.AssetSelection.checks(READ_MODEL_DRIFT_CHECK),
    executor_def=dg.in_process_executor,
    tags={"dagster/max_runtime": 3600},
    description="Refold a random sample of the read model and report the documents that "
    "differ from the fold of their events (the check `read_model_drift`).",
)

read_model_drift_schedule = dg.ScheduleDefinition(
    name="read_model_drift_schedule",
    job=read_model_drift_check,
    cron_schedule=DRIFT_CHECK_CRON,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Check a random sample of the read model against the fold of its events, "
    "daily at 03:17 UTC.",
)


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(jobs=[read_model_drift_check], schedules=[read_model_drift_schedule])
