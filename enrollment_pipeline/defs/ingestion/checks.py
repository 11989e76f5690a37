"""The health checks a user sees beside the ingested datasets; one name, one measure each.

- `dead_letter_rate` (on `dead_letters`): the share of the last hour's input that was rejected;
  run it from the UI or a schedule.
- `batch_dead_letter_rate` (on `dead_letters`): the share of one ingestion batch that was
  rejected; a check of the ingestion multi-asset itself, so only a batch evaluates it.
- `consumer_lag` (on `applications`): events on the topic not yet applied, now; each ingestion
  run evaluates it after committing, and it can run on its own.
"""

from datetime import UTC, datetime, timedelta

import dagster as dg

from enrollment_pipeline.defs.datasets import APPLICATIONS, DEAD_LETTERS
from enrollment_pipeline.defs.kafka.resources import KafkaResource
from enrollment_pipeline.defs.mongo.resources import MongoResource
from enrollment_pipeline.defs.settings.resources import PipelineSettingsResource
from enrollment_pipeline.domain.offset_ranges import lag
from enrollment_pipeline.lib.consumer_groups import READ_MODEL_GROUP
from enrollment_pipeline.lib.mongo.collections import ENROLLMENT_EVENTS
from enrollment_pipeline.lib.mongo.store import EnrollmentStore

DEAD_LETTER_RATE_CHECK = dg.AssetCheckKey(DEAD_LETTERS, "dead_letter_rate")
BATCH_DEAD_LETTER_RATE_CHECK = dg.AssetCheckKey(DEAD_LETTERS, "batch_dead_letter_rate")
CONSUMER_LAG_CHECK = dg.AssetCheckKey(APPLICATIONS, "consumer_lag")


@dg.asset_check(asset=DEAD_LETTERS, name=DEAD_LETTER_RATE_CHECK.name)
def dead_letter_rate(
    mongo: MongoResource, settings: PipelineSettingsResource
) -> dg.AssetCheckResult:
    """Share of the last hour's input that was dead-lettered (INGEST_MAX_DEAD_LETTER_RATE)."""
    since = datetime.now(UTC) - timedelta(hours=1)
    client = mongo.get_client()
    with client.explained_errors():
        store = EnrollmentStore.of(client)
        rejected = store.dead_letters.count_first_seen_since(since)
        stored = store.db[ENROLLMENT_EVENTS].count_documents({"stored_at": {"$gte": since}})
    return rate_result(
        DEAD_LETTER_RATE_CHECK, rejected, rejected + stored, settings.ingest_max_dead_letter_rate
    )


# Evaluated only by each ingestion run, on its own batch: a check spec of that multi-asset.
batch_dead_letter_rate_spec = dg.AssetCheckSpec(
    BATCH_DEAD_LETTER_RATE_CHECK.name,
    asset=DEAD_LETTERS,
    description="Share of this batch's records that were dead-lettered "
    "(INGEST_MAX_DEAD_LETTER_RATE).",
)


@dg.asset_check(asset=APPLICATIONS, name=CONSUMER_LAG_CHECK.name)
def consumer_lag(
    kafka: KafkaResource, mongo: MongoResource, settings: PipelineSettingsResource
) -> dg.AssetCheckResult:
    """Events on the topic not yet applied (INGEST_MAX_CONSUMER_LAG)."""
    client = mongo.get_client()
    with client.explained_errors():
        committed = EnrollmentStore.of(client).committed_offsets(
            READ_MODEL_GROUP, settings.enrollment_topic
        )
    left = lag(committed, kafka.get_client().end_offsets(settings.enrollment_topic))
    return lag_result(left, settings.ingest_max_consumer_lag)


def rate_result(
    check: dg.AssetCheckKey, rejected: int, total: int, threshold: float
) -> dg.AssetCheckResult:
    rate = rejected / total if total else 0.0
    return dg.AssetCheckResult(
        check_name=check.name,
        asset_key=check.asset_key,
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


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(asset_checks=[dead_letter_rate, consumer_lag])
