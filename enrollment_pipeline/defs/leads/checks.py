"""`parked_leads`: the leads not delivered yet, which a user watches next to `crm_leads`."""

import dagster as dg

from enrollment_pipeline.defs.datasets import CRM_LEADS
from enrollment_pipeline.defs.mongo.resources import MongoResource
from enrollment_pipeline.defs.settings.resources import PipelineSettingsResource
from enrollment_pipeline.lib.mongo.lead_store import FAILED, PARKED, LeadDeliveryStore

PARKED_CHECK = dg.AssetCheckKey(CRM_LEADS, "parked_leads")


def parked_result(waiting_by_status: dict[str, int], threshold: int) -> dg.AssetCheckResult:
    waiting = waiting_by_status.get(PARKED, 0) + waiting_by_status.get(FAILED, 0)
    return dg.AssetCheckResult(
        check_name=PARKED_CHECK.name,
        asset_key=CRM_LEADS,
        passed=waiting <= threshold,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "parked": waiting_by_status.get(PARKED, 0),
            "failed": waiting_by_status.get(FAILED, 0),
            "threshold": threshold,
        },
        description="Leads not delivered: re-drive with a `redrive: true` run or "
        "`enrollment-pipeline dead-letters redrive --leads` once the cause is fixed.",
    )


@dg.asset_check(asset=CRM_LEADS, name=PARKED_CHECK.name)
def parked_leads(mongo: MongoResource, settings: PipelineSettingsResource) -> dg.AssetCheckResult:
    """Leads parked or refused by the CRM, waiting for a retry or a fix (LEAD_MAX_PARKED)."""
    client = mongo.get_client()
    with client.explained_errors():
        counts = LeadDeliveryStore(client.db()).count_waiting()
    return parked_result(counts, settings.lead_max_parked)


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(asset_checks=[parked_leads])
