"""The asset keys, owners and specs shared by several `defs/` folders.

The read model and its siblings are written by several jobs (ingestion, backfill, rebuild), so
they are declared once here and each job reports its materializations with its own numbers.
"""

import dagster as dg

GROUP = "enrollment"
OWNERS = ["team:enrollment-data"]

ENROLLMENT_TOPIC = dg.AssetKey("enrollment_events_topic")
ARCHIVE = dg.AssetKey("enrollment_archive")
HISTORIC_EVENTS = dg.AssetKey("historic_enrollment_events")
APPLICATIONS = dg.AssetKey("applications")
BROKER_FOLLOWUPS = dg.AssetKey("broker_followups")
DEAD_LETTERS = dg.AssetKey("dead_letters")
LEAD_EVENTS = dg.AssetKey("lead_integration_events")
CRM_LEADS = dg.AssetKey("crm_leads")
BROKER_FOLLOWUP_EMAILS = dg.AssetKey("broker_followup_emails")

KEPT_FRESH_BY_SENSOR = (
    "Kept fresh by `enrollment_events_sensor` (every 5 s), job `ingest_enrollment_events`."
)


def ingested_dataset_specs() -> list[dg.AssetSpec]:
    """What one ingestion batch writes (the outputs of the `ingest_offset_range` multi-asset)."""
    return [
        dg.AssetSpec(
            APPLICATIONS,
            deps=[ENROLLMENT_TOPIC, HISTORIC_EVENTS],
            group_name=GROUP,
            kinds={"mongodb"},
            owners=OWNERS,
            description="Read model (`applications`): one document per application, the fold "
            f"of its events from Kafka and from archive backfills. {KEPT_FRESH_BY_SENSOR} "
            "`rebuild_read_model` recomputes it from the event store.",
        ),
        dg.AssetSpec(
            BROKER_FOLLOWUPS,
            deps=[ENROLLMENT_TOPIC],
            group_name=GROUP,
            kinds={"mongodb"},
            owners=OWNERS,
            description="The follow-up queue (`broker_followups`): applications whose broker has "
            f"not signed yet. {KEPT_FRESH_BY_SENSOR}",
        ),
        dg.AssetSpec(
            DEAD_LETTERS,
            deps=[ENROLLMENT_TOPIC],
            group_name=GROUP,
            kinds={"mongodb"},
            owners=OWNERS,
            description="Rejected input (`dead_letters`), kept whole with its position and reason; "
            "`enrollment-pipeline dead-letters list|show|redrive`.",
        ),
        dg.AssetSpec(
            LEAD_EVENTS,
            deps=[ENROLLMENT_TOPIC],
            group_name=GROUP,
            kinds={"kafka"},
            owners=OWNERS,
            description="Lead-integration events for consenting applicants (Contract 4), on the "
            f"`lead-integration-events` topic. {KEPT_FRESH_BY_SENSOR}",
        ),
    ]


def check_evaluation(result: dg.AssetCheckResult) -> dg.AssetCheckEvaluation:
    """A check's verdict logged from a job's op (ops report checks as evaluations)."""
    assert result.asset_key is not None and result.check_name is not None  # set by our checks
    return dg.AssetCheckEvaluation(
        asset_key=result.asset_key,
        check_name=result.check_name,
        passed=result.passed,
        metadata=result.metadata,
        severity=result.severity,
    )
