"""The datasets ingestion writes, and the health checks a user sees next to them.

They are written by several jobs (ingestion, backfill, rebuild), so they are declared once
as asset specs and each job reports its materializations with the batch's numbers.
"""

from datetime import UTC, datetime, timedelta

import dagster as dg

from enrollment_pipeline.defs.kafka.resources import KafkaResource
from enrollment_pipeline.defs.mongo.resources import DEAD_LETTERS, ENROLLMENT_EVENTS, MongoResource
from enrollment_pipeline.defs.pipeline_settings import PipelineSettingsResource
from enrollment_pipeline.domain.offset_ranges import lag
from enrollment_pipeline.lib.mongo.store import EnrollmentStore
from enrollment_pipeline.settings import READ_MODEL_GROUP

GROUP = "enrollment"
APPLICATIONS = dg.AssetKey("applications")
BROKER_FOLLOWUPS = dg.AssetKey("broker_followups")
DEAD_LETTERS_ASSET = dg.AssetKey("dead_letters")
LEAD_EVENTS = dg.AssetKey("lead_integration_events")

DEAD_LETTER_RATE_CHECK = dg.AssetCheckKey(DEAD_LETTERS_ASSET, "dead_letter_rate")
CONSUMER_LAG_CHECK = dg.AssetCheckKey(APPLICATIONS, "consumer_lag")

OWNERS = ["team:enrollment-data"]
ENROLLMENT_TOPIC_ASSET = dg.AssetKey("enrollment_events_topic")
HISTORIC_EVENTS = dg.AssetKey("historic_enrollment_events")
KEPT_FRESH_BY_SENSOR = (
    "Kept fresh by `enrollment_events_sensor` (every 15 s), job `ingest_enrollment_events`."
)

enrollment_events_topic = dg.AssetSpec(
    ENROLLMENT_TOPIC_ASSET,
    group_name=GROUP,
    kinds={"kafka"},
    owners=OWNERS,
    description="The `enrollment-events` topic (ENROLLMENT_TOPIC): Contract-1 events that the "
    "upstream enrollment systems publish, keyed by application id. Not written here.",
)


def dataset_specs() -> list[dg.AssetSpec]:
    """What one ingestion batch writes (the outputs of the `ingest_offset_range` multi-asset)."""
    return [
        dg.AssetSpec(
            APPLICATIONS,
            deps=[ENROLLMENT_TOPIC_ASSET, HISTORIC_EVENTS],
            group_name=GROUP,
            kinds={"mongodb"},
            owners=OWNERS,
            description="Read model (`applications`): one document per application, the fold "
            f"of its events from Kafka and from archive backfills. {KEPT_FRESH_BY_SENSOR} "
            "`rebuild_read_model` recomputes it from the event store.",
        ),
        dg.AssetSpec(
            BROKER_FOLLOWUPS,
            deps=[ENROLLMENT_TOPIC_ASSET],
            group_name=GROUP,
            kinds={"mongodb"},
            owners=OWNERS,
            description="The follow-up queue (`broker_followups`): applications whose broker has "
            f"not signed yet. {KEPT_FRESH_BY_SENSOR}",
        ),
        dg.AssetSpec(
            DEAD_LETTERS_ASSET,
            deps=[ENROLLMENT_TOPIC_ASSET],
            group_name=GROUP,
            kinds={"mongodb"},
            owners=OWNERS,
            description="Rejected input (`dead_letters`), kept whole with its position and reason; "
            "`enrollment-pipeline dead-letters list|show|redrive`.",
        ),
        dg.AssetSpec(
            LEAD_EVENTS,
            deps=[ENROLLMENT_TOPIC_ASSET],
            group_name=GROUP,
            kinds={"kafka"},
            owners=OWNERS,
            description="Lead-integration events for consenting applicants (Contract 4), on the "
            f"`lead-integration-events` topic. {KEPT_FRESH_BY_SENSOR}",
        ),
    ]


@dg.asset_check(asset=DEAD_LETTERS_ASSET, name="dead_letter_rate")
def dead_letter_rate(
    mongo: MongoResource, settings: PipelineSettingsResource
) -> dg.AssetCheckResult:
    """Share of the last hour's input that was dead-lettered (INGEST_MAX_DEAD_LETTER_RATE)."""
    since = datetime.now(UTC) - timedelta(hours=1)
    db = mongo.db()
    rejected = db[DEAD_LETTERS].count_documents({"first_seen_at": {"$gte": since}})
    stored = db[ENROLLMENT_EVENTS].count_documents({"stored_at": {"$gte": since}})
    return rate_result(rejected, rejected + stored, settings.ingest_max_dead_letter_rate)


@dg.asset_check(asset=APPLICATIONS, name="consumer_lag")
def consumer_lag(
    kafka: KafkaResource, mongo: MongoResource, settings: PipelineSettingsResource
) -> dg.AssetCheckResult:
    """Events on the topic not yet applied (INGEST_MAX_CONSUMER_LAG)."""
    committed = EnrollmentStore.of(mongo).committed_offsets(
        READ_MODEL_GROUP, settings.enrollment_topic
    )
    left = lag(committed, kafka.end_offsets(settings.enrollment_topic))
    return lag_result(left, settings.ingest_max_consumer_lag)


def rate_result(rejected: int, total: int, threshold: float) -> dg.AssetCheckResult:
    rate = rejected / total if total else 0.0
    return dg.AssetCheckResult(
        check_name=DEAD_LETTER_RATE_CHECK.name,
        asset_key=DEAD_LETTERS_ASSET,
        passed=rate <= threshold,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "rate": rate,
            "dead_lettered": rejected,
            "records": total,
            "threshold": threshold,
        },
    )


def lag_result(left: int, threshold: int) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=CONSUMER_LAG_CHECK.name,
        asset_key=APPLICATIONS,
        passed=left <= threshold,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"lag": left, "threshold": threshold},
    )


def as_evaluation(result: dg.AssetCheckResult) -> dg.AssetCheckEvaluation:
    """The same verdict logged from a job's op (ops report checks as evaluations)."""
    return dg.AssetCheckEvaluation(
        asset_key=result.asset_key,
        check_name=result.check_name,
        passed=result.passed,
        metadata=result.metadata,
        severity=result.severity,
    )
