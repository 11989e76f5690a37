"""`crm_leads`: the leads the CRM holds, and the check a user watches next to them."""

import dagster as dg

from enrollment_pipeline.defs.ingestion.assets import GROUP, LEAD_EVENTS, OWNERS
from enrollment_pipeline.defs.mongo.resources import MongoResource
from enrollment_pipeline.defs.pipeline_settings import PipelineSettingsResource
from enrollment_pipeline.lib.mongo.lead_store import FAILED, PARKED, LeadDeliveryStore

CRM_LEADS = dg.AssetKey("crm_leads")
PARKED_CHECK = dg.AssetCheckKey(CRM_LEADS, "parked_leads")


def crm_leads_spec() -> dg.AssetSpec:
    """What a delivery run writes (the output of the `deliver_lead_range` multi-asset)."""
    return dg.AssetSpec(
        CRM_LEADS,
        deps=[LEAD_EVENTS],
        group_name=GROUP,
        kinds={"api"},
        owners=OWNERS,
        description="Leads delivered to the CRM's REST API (LEAD_API_URL, Contract 4), in order "
        "per application, once per lead_event_id; parked and refused leads wait in "
        "`lead_deliveries`. Kept fresh by `lead_events_sensor`, job `deliver_leads`.",
    )


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


@dg.asset_check(asset=CRM_LEADS, name="parked_leads")
def parked_leads(mongo: MongoResource, settings: PipelineSettingsResource) -> dg.AssetCheckResult:
    """Leads parked or refused by the CRM, waiting for a retry or a fix (LEAD_MAX_PARKED)."""
    with mongo.explained_errors():
        counts = LeadDeliveryStore(mongo.db()).count_waiting()
    return parked_result(counts, settings.lead_max_parked)
