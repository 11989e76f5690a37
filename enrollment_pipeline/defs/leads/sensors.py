"""`lead_events_sensor`: keep `lead-integration-service` caught up with the lead topic.

Same mechanism as ingestion's sensor (exact ranges, one run per partition at a time, failed
ranges retried under new keys, then reported). When nothing is lagging, it asks for a run
once a parked lead's retry time has come, so a CRM outage heals without an operator.
"""

from datetime import UTC, datetime

import dagster as dg

from enrollment_pipeline.defs.leads.assets import DeliverLeadsConfig
from enrollment_pipeline.defs.leads.jobs import deliver_leads
from enrollment_pipeline.defs.offset_ranges import offset_range_sensor
from enrollment_pipeline.defs.settings.resources import PipelineSettingsResource
from enrollment_pipeline.domain.events import to_utc
from enrollment_pipeline.lib.clients.mongo import MongoConnection
from enrollment_pipeline.lib.consumer_groups import LEAD_INTEGRATION_GROUP
from enrollment_pipeline.lib.dagster_runs import FAILED, IN_FLIGHT
from enrollment_pipeline.lib.mongo.lead_store import LeadDeliveryStore

RETRY_TAG = "leads/retry_parked_at"


def _retry_parked(
    context: dg.SensorEvaluationContext,
    mongo: MongoConnection,
    settings: PipelineSettingsResource,
) -> dg.RunRequest | None:
    """A run for the parked leads whose retry time has come (none while a run is in flight)."""
    with mongo.explained_errors():
        due = LeadDeliveryStore(mongo.db()).next_retry_at()
    if due is None or to_utc(due) > datetime.now(UTC):
        return None
    job = deliver_leads.name
    if context.instance.get_runs_count(dg.RunsFilter(job_name=job, statuses=IN_FLIGHT)):
        return None
    key = to_utc(due).isoformat()
    failures = context.instance.get_runs_count(
        dg.RunsFilter(job_name=job, statuses=FAILED, tags={RETRY_TAG: key})
    )
    return dg.RunRequest(
        run_key=f"retry-parked@{key}#{failures + 1}",
        run_config=dg.RunConfig(
            ops={"deliver_lead_range": DeliverLeadsConfig(topic=settings.lead_topic)}
        ),
        tags={RETRY_TAG: key},
    )


lead_events_sensor = offset_range_sensor(
    name="lead_events_sensor",
    job=deliver_leads,
    group=LEAD_INTEGRATION_GROUP,
    topic=lambda settings: settings.lead_topic,
    max_events=lambda settings: settings.lead_max_per_run,
    max_attempts=lambda settings: settings.lead_max_range_attempts,
    op_name="deliver_lead_range",
    config_class=DeliverLeadsConfig,
    when_idle=_retry_parked,
    description="Launch a delivery run over the lead-integration-events offsets not yet "
    "delivered, or for parked leads whose retry time has come.",
)


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(sensors=[lead_events_sensor])
