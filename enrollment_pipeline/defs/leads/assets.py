"""`crm_leads`, written by the `deliver_lead_range` multi-asset: one offset range of
lead-integration events delivered to the CRM."""

import dagster as dg
from pydantic import Field

from enrollment_pipeline.defs.crm.resources import CrmResource
from enrollment_pipeline.defs.datasets import (
    CRM_LEADS,
    GROUP,
    LEAD_EVENTS,
    OWNERS,
    check_evaluation,
)
from enrollment_pipeline.defs.kafka.resources import KafkaResource
from enrollment_pipeline.defs.leads.checks import parked_result
from enrollment_pipeline.defs.mongo.resources import MongoResource
from enrollment_pipeline.defs.offset_ranges import OffsetRangeConfig, range_metadata
from enrollment_pipeline.defs.pools import LEAD_DELIVERY_POOL
from enrollment_pipeline.defs.settings.resources import PipelineSettingsResource
from enrollment_pipeline.lib.leads.delivery import (
    CrmUnavailableError,
    DeliveryReport,
    deliver_range,
)
from enrollment_pipeline.lib.mongo.lead_store import LeadDeliveryStore
from enrollment_pipeline.lib.mongo.store import EnrollmentStore


class DeliverLeadsConfig(OffsetRangeConfig):
    """The range the sensor asks for; `redrive: true` also retries every parked or failed
    lead (after the CRM or the data was fixed), each application in order."""

    topic: str = "lead-integration-events"
    redrive: bool = Field(
        default=False, description="Retry every parked and failed lead now, in order."
    )


crm_leads_spec = dg.AssetSpec(
    CRM_LEADS,
    deps=[LEAD_EVENTS],
    group_name=GROUP,
    kinds={"api"},
    owners=OWNERS,
    description="Leads delivered to the CRM's REST API (LEAD_API_URL, Contract 4), in order "
    "per application, once per lead_event_id; parked and refused leads wait in "
    "`lead_deliveries`. Kept fresh by `lead_events_sensor`, job `deliver_leads`.",
)


@dg.multi_asset(
    name="deliver_lead_range",
    specs=[crm_leads_spec],
    pool=LEAD_DELIVERY_POOL,
    description="Deliver one offset range of lead-integration-events to the CRM.",
)
def deliver_lead_range(
    context: dg.AssetExecutionContext,
    config: DeliverLeadsConfig,
    kafka: KafkaResource,
    mongo: MongoResource,
    crm: CrmResource,
    settings: PipelineSettingsResource,
):
    """Deliver the range's leads, and the parked ones due for a retry."""
    plan = config.plan()
    failure = None
    db = mongo.get_client()
    with db.explained_errors():
        try:
            report = deliver_range(
                kafka.get_client(),
                EnrollmentStore.of(db, max_raw_bytes=settings.dead_letter_max_raw_bytes),
                LeadDeliveryStore(db.db(), db.writer()),
                crm.get_client(),
                plan,
                policy=settings.lead_delivery_policy(),
                redrive=config.redrive,
                run_id=context.run.run_id,
            )
        except CrmUnavailableError as exc:
            report, failure = exc.report, str(exc)
    yield dg.MaterializeResult(
        asset_key=CRM_LEADS, metadata=run_metadata(report, range_metadata(plan))
    )
    context.log_event(check_evaluation(parked_result(report.waiting, settings.lead_max_parked)))
    for error in report.kafka_commit_errors:
        context.log.warning(f"Kafka group offset commit failed (Mongo holds them): {error}")
    context.log.info(
        f"range {plan.key if plan else '(none)'}: read {report.leads_read}, delivered "
        f"{report.delivered}, already delivered {report.already_delivered}, failed "
        f"{report.permanently_failed}, parked {report.parked} (+{report.parked_behind} behind), "
        f"redriven {report.redriven}, left for the next run {report.unfinished}"
    )
    if failure:
        raise dg.Failure(description=failure)


def run_metadata(report: DeliveryReport, ranges: dict[str, str]) -> dict:
    return {
        "offset_ranges": ranges,
        "leads_read": report.leads_read,
        "delivered": report.delivered,
        "already_delivered": report.already_delivered,
        "retried": report.retried,
        "permanently_failed": report.permanently_failed,
        "parked": report.parked,
        "parked_behind": report.parked_behind,
        "redriven": report.redriven,
        "left_for_next_run": report.unfinished,
        "dead_lettered": report.dead_lettered,
        "erased_skipped": report.erased_skipped,
        "p50_latency_ms": round(report.latency_ms(0.50), 1),
        "p95_latency_ms": round(report.latency_ms(0.95), 1),
        "waiting_parked": report.waiting.get("PARKED", 0),
        "waiting_failed": report.waiting.get("FAILED", 0),
    }


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(assets=[deliver_lead_range])
