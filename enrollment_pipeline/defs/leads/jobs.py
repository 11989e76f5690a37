"""`deliver_leads`: one offset range of lead-integration events delivered to the CRM."""

import dagster as dg

from enrollment_pipeline.defs.datasets import CRM_LEADS

MAX_RUNTIME_SECONDS = 1800

deliver_leads = dg.define_asset_job(
    "deliver_leads",
    selection=dg.AssetSelection.assets(CRM_LEADS).without_checks(),  # the run reports it
    executor_def=dg.in_process_executor,
    tags={"dagster/max_runtime": MAX_RUNTIME_SECONDS},
    description="Deliver one range of lead-integration events to the CRM, in order per "
    "application, idempotently; `redrive: true` retries parked and failed leads.",
)


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(jobs=[deliver_leads])
