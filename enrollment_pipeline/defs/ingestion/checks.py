"""The health checks a user sees beside the ingested datasets; one name, one measure each.

- `dead_letter_rate` (on `dead_letters`): the share of the last hour's input that was rejected;
  run it from the UI or a schedule.
- `batch_dead_letter_rate` (on `dead_letters`): the share of one ingestion batch that was
  rejected; a check of the ingestion multi-asset itself, so only a batch evaluates it.
- `consumer_lag` (on `applications`): events on the topic not yet applied, now; each ingestion
  run evaluates it after committing, and it can run on its own.
- `read_model_drift` (on `applications`): a random sample of documents refolded from the event
  store; ERROR when one differs (`lib/drift.py`). From the UI or `read_model_drift_schedule`.
"""

import json
from datetime import UTC, datetime, timedelta

import dagster as dg

from enrollment_pipeline.defs.datasets import APPLICATIONS, DEAD_LETTERS
from enrollment_pipeline.defs.kafka.resources import KafkaResource
from enrollment_pipeline.defs.mongo.resources import MongoResource
from enrollment_pipeline.defs.settings.resources import PipelineSettingsResource
from enrollment_pipeline.domain.offset_ranges import lag
from enrollment_pipeline.lib.consumer_groups import READ_MODEL_GROUP
from enrollment_pipeline.lib.drift import DriftReport, check_drift
from enrollment_pipeline.lib.mongo.collections import ENROLLMENT_EVENTS
from enrollment_pipeline.lib.mongo.store import EnrollmentStore

DEAD_LETTER_RATE_CHECK = dg.AssetCheckKey(DEAD_LETTERS, "dead_letter_rate")
BATCH_DEAD_LETTER_RATE_CHECK = dg.AssetCheckKey(DEAD_LETTERS, "batch_dead_letter_rate")
CONSUMER_LAG_CHECK = dg.AssetCheckKey(APPLICATIONS, "consumer_lag")
READ_MODEL_DRIFT_CHECK = dg.AssetCheckKey(APPLICATIONS, "read_model_drift")
# Of the drifted documents, how many the metadata shows with their fields, and ids at most.
DRIFT_EXAMPLES = 10
DRIFT_IDS_SHOWN = 1_000


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


@dg.asset_check(
    asset=APPLICATIONS,
    name=READ_MODEL_DRIFT_CHECK.name,
    description="Refold a random sample of READ_MODEL_DRIFT_SAMPLE applications from the event "
    "store and compare them with their documents and follow-ups (Contract 3's effective "
    "status); a suspect is checked again under the writers' lease, so a batch in flight is no "
    "alarm. ERROR when one differs: launch `rebuild_read_model` with the `drifted_ids`.",
)
def read_model_drift(
    context: dg.AssetCheckExecutionContext,
    mongo: MongoResource,
    settings: PipelineSettingsResource,
) -> dg.AssetCheckResult:
    client = mongo.get_client()
    with client.explained_errors():
        report = check_drift(
            EnrollmentStore.of(client),
            sample_size=settings.read_model_drift_sample,
            engine=client.engine(),
            lease=lambda: settings.writer_lease(
                client.db(), run_id=context.run.run_id, job="read_model_drift (re-check)"
            ),
        )
    if report.drifted:
        context.log.error(
            f"{len(report.drifted)} of {report.sampled} sampled documents differ from the fold "
            "of their events; rebuild_read_model with the drifted_ids repairs them"
        )
    return drift_result(report)


def drift_result(report: DriftReport) -> dg.AssetCheckResult:
    """The verdict and what a user needs to act: ids and fields, no values."""
    drifted = report.drifted or report.unconfirmed
    ids = [d.application_id for d in drifted][:DRIFT_IDS_SHOWN]
    metadata: dict = {
        "sampled": report.sampled,
        "drifted": len(report.drifted),
        "sampling": report.sampling,
        "suspected": report.suspected,
        "in_flight": report.in_flight,
        "unconfirmed": len(report.unconfirmed),
        "examples": dg.MetadataValue.json([d.to_json() for d in drifted[:DRIFT_EXAMPLES]]),
        "drifted_ids": dg.MetadataValue.json(ids),
    }
    if report.drifted:
        metadata["repair"] = dg.MetadataValue.md(
            "Launch `rebuild_read_model` with this run config:\n\n```yaml\nops:\n"
            "  refold_every_application:\n    config:\n      application_ids:\n"
            + "".join(f"        - {json.dumps(app_id)}\n" for app_id in ids)
            + "```"
        )
    if report.unconfirmed:
        return dg.AssetCheckResult(
            check_name=READ_MODEL_DRIFT_CHECK.name,
            asset_key=APPLICATIONS,
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            metadata=metadata,
            description=f"{len(report.unconfirmed)} documents differed and could not be "
            f"checked again ({report.lease_holder}); run the check again when the writer ends.",
        )
    return dg.AssetCheckResult(
        check_name=READ_MODEL_DRIFT_CHECK.name,
        asset_key=APPLICATIONS,
        passed=not report.drifted,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata=metadata,
    )


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
    return dg.Definitions(asset_checks=[dead_letter_rate, consumer_lag, read_model_drift])
