"""`dead_letter_retention_schedule`: dead letters' raw bytes dropped daily after their period.

On by default: it removes only what DEAD_LETTER_RAW_RETENTION_DAYS says must go, and a
retention that needs a person to switch it on is not one. Its own daily job rather than a step
of ingestion, so it also holds on a topic that has gone quiet (no ingestion runs then).
"""

import dagster as dg

from enrollment_pipeline.defs.privacy.jobs import dead_letter_retention

dead_letter_retention_schedule = dg.ScheduleDefinition(
    name="dead_letter_retention_schedule",
    job=dead_letter_retention,
    cron_schedule="47 2 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Drop dead letters' raw bytes older than DEAD_LETTER_RAW_RETENTION_DAYS, daily "
    "at 02:47 UTC.",
)


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(schedules=[dead_letter_retention_schedule])
