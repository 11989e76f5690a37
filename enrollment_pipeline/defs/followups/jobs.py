"""`send_broker_followups`: the broker emails due at `as_of`."""

import dagster as dg

from enrollment_pipeline.defs.datasets import BROKER_FOLLOWUP_EMAILS

send_broker_followups = dg.define_asset_job(
    "send_broker_followups",
    selection=[BROKER_FOLLOWUP_EMAILS],
    executor_def=dg.in_process_executor,
    tags={"dagster/max_runtime": 3000},
    description="Email brokers whose signature is overdue, at `as_of` (default now).",
)


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(jobs=[send_broker_followups])
