"""`deliver_leads`: one offset range of lead-integration events delivered to the CRM."""

from datetime import timedelta

import dagster as dg
from pydantic import Field

from enrollment_pipeline.defs.crm.resources import CrmClient
from enrollment_pipeline.defs.ingestion.assets import as_evaluation
from enrollment_pipeline.defs.kafka.resources import KafkaResource
from enrollment_pipeline.defs.leads.assets import CRM_LEADS, crm_leads_spec, parked_result
from enrollment_pipeline.defs.mongo.resources import MongoResource
from enrollment_pipeline.defs.offset_ranges import OffsetRangeConfig, range_metadata
from enrollment_pipeline.defs.pipeline_settings import PipelineSettingsResource
from enrollment_pipeline.lib.leads.delivery import (
    CrmUnavailableError,
    DeliveryReport,
    deliver_range,
)
from enrollment_pipeline.lib.mongo.lead_store import LeadDeliveryStore
from enrollment_pipeline.lib.mongo.store import EnrollmentStore

# One delivery run at a time: runs retry parked leads of any partition (dagster.yaml).
LEAD_DELIVERY_POOL = "crm_lead_delivery"
MAX_RUNTIME_SECONDS = 1800


class DeliverLeadsConfig(OffsetRangeConfig):
    """The range the sensor asks for; `redrive: true` also retries every parked or failed
    lead (after the CRM or the data was fixed), each application in order."""

    topic: str = "lead-integration-events"
    redrive: bool = Field(
        default=False, description="Retry every parked and failed lead now, in order."
    )


@dg.multi_asset(
    name="deliver_lead_range",
    specs=[crm_leads_spec()],
    pool=LEAD_DELIVERY_POOL,
    description="Deliver one offset range of lead-integration-events to the CRM.",
)
def deliver_lead_range(
    context: dg.AssetExecutionContext,
    config: DeliverLeadsConfig,
    kafka: KafkaResource,
    mongo: MongoResource,
    crm: CrmClient,
    settings: PipelineSettingsResource,
):
    """Deliver the range's leads, and the parked ones due for a retry."""
    plan = config.plan()
    failure = None
    with mongo.explained_errors():
        try:
            report = deliver_range(
                kafka,
                EnrollmentStore.of(mongo),
                LeadDeliveryStore(mongo.db(), mongo.writer()),
                crm,
                plan,
                redrive=config.redrive,
                budget_s=settings.lead_run_budget_seconds,
                concurrency=settings.lead_concurrency,
                park_for=timedelta(minutes=settings.lead_park_minutes),
                max_record_bytes=settings.ingest_max_record_bytes,
                run_id=context.run.run_id,
            )
        except CrmUnavailableError as exc:
            report, failure = exc.report, str(exc)
    yield dg.MaterializeResult(
        asset_key=CRM_LEADS, metadata=run_metadata(report, range_metadata(plan))
    )
    context.log_event(as_evaluation(parked_result(report.waiting, settings.lead_max_parked)))
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
        "p50_latency_ms": round(report.latency_ms(0.50), 1),
        "p95_latency_ms": round(report.latency_ms(0.95), 1),
        "waiting_parked": report.waiting.get("PARKED", 0),
        "waiting_failed": report.waiting.get("FAILED", 0),
    }


deliver_leads = dg.define_asset_job(
    "deliver_leads",
    selection=dg.AssetSelection.assets(CRM_LEADS).without_checks(),  # the run reports it
    executor_def=dg.in_process_executor,
    tags={"dagster/max_runtime": MAX_RUNTIME_SECONDS},
    description="Deliver one range of lead-integration events to the CRM, in order per "
    "application, idempotently; `redrive: true` retries parked and failed leads.",
)
