"""`backfill_enrollment_history` (days of the archive) and `rebuild_read_model` (the read model
recomputed from the event store). A rebuild writes every application: it takes every
partition's lease, and its pool keeps a second rebuild queued."""

import dagster as dg
from pydantic import Field

from enrollment_pipeline.defs.datasets import APPLICATIONS, HISTORIC_EVENTS
from enrollment_pipeline.defs.mongo.resources import MongoResource
from enrollment_pipeline.defs.pools import READ_MODEL_POOL
from enrollment_pipeline.defs.settings.resources import PipelineSettingsResource
from enrollment_pipeline.lib.backfill import ALL, Shard, rebuild_read_model
from enrollment_pipeline.lib.mongo.layout import writer_partitions
from enrollment_pipeline.lib.mongo.store import EnrollmentStore

MAX_RUNTIME_SECONDS = 6 * 3600

backfill_enrollment_history = dg.define_asset_job(
    "backfill_enrollment_history",
    selection=[HISTORIC_EVENTS],
    executor_def=dg.in_process_executor,
    tags={"dagster/max_runtime": MAX_RUNTIME_SECONDS},
    description="Backfill days of the historic archive into the event store and read model.",
)


class RebuildConfig(dg.Config):
    application_ids: list[str] | None = Field(
        default=None,
        description="Refold only these applications (e.g. the `drifted_ids` of the check "
        '`read_model_drift`); empty (null) or ["all"]: every application.',
    )
    shard: int | None = Field(
        default=None,
        description="Refold, in place, only the applications on this partition of the "
        "enrollment topic, under that partition's lease alone (live ingestion of the others "
        "goes on); one run per partition rebuilds everything.",
    )


@dg.op(pool=READ_MODEL_POOL)
def refold_every_application(
    context: dg.OpExecutionContext,
    config: RebuildConfig,
    mongo: MongoResource,
    settings: PipelineSettingsResource,
) -> None:
    """Recompute `applications` and the fold-owned follow-up fields from the event store (all
    of them, or the applications of the run config)."""
    ids = config.application_ids
    every = (ids is None or ids == [ALL]) and config.shard is None
    db = mongo.get_client()
    with db.explained_errors():
        shard = _shard(config.shard, writer_partitions(db.db(), settings.kafka_topic_partitions))
        if shard is not None and not (ids is None or ids == [ALL]):
            raise dg.Failure(description="give application_ids or shard, not both")
        job = "rebuild" if every else f"rebuild of {len(set(ids or []))} applications"
        if shard is not None:
            job = f"rebuild of shard {shard.partition}"
        report = rebuild_read_model(
            EnrollmentStore.of(db),
            lease=settings.writer_lease(
                db.db(),
                run_id=context.run.run_id,
                job=job,
                partitions=None if shard is None else [shard.partition],
            ),
            application_ids=ids,
            shard=shard,
        )
    metadata: dict = {
        "applications": report.applications,
        "events": report.events,
        "documents_changed": report.documents_changed,
        "documents_created": report.documents_created,
        "documents_removed": report.documents_removed,
        "followups_written": report.followups_written,
        "seconds": round(report.seconds, 1),
    }
    if every:
        metadata["passes_over_the_event_store"] = report.passes
        metadata["fold_groups"] = report.groups
        metadata["swapped_in_a_fresh_collection"] = report.swapped
    else:
        metadata["requested"] = report.requested
        metadata["unknown"] = len(report.unknown)
    if shard is not None:
        metadata["shard"] = shard.partition
    context.log_event(dg.AssetMaterialization(APPLICATIONS, metadata=metadata))
    if report.unknown:
        shown = ", ".join(report.unknown[:20]) + (" …" if len(report.unknown) > 20 else "")
        context.log.warning(
            f"{len(report.unknown)} of the ids name no stored event and no document: {shown}"
        )
    context.log.info(
        f"rebuilt {report.applications} applications from {report.events} events: "
        f"{report.documents_created} created, {report.documents_changed} changed"
    )


def _shard(partition: int | None, partitions: int) -> Shard | None:
    try:
        return None if partition is None else Shard(partition, partitions)
    except ValueError as exc:
        raise dg.Failure(description=str(exc)) from None


@dg.job(
    name="rebuild_read_model",
    executor_def=dg.in_process_executor,
    tags={"dagster/max_runtime": MAX_RUNTIME_SECONDS},
    description="Recompute the read model from the event store (disaster recovery, after a "
    "projection change, or for the ids `read_model_drift` reported: `application_ids` in the "
    "run config); the email job's follow-up fields and attempts are kept.",
)
def rebuild_read_model_job() -> None:
    refold_every_application()


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(jobs=[backfill_enrollment_history, rebuild_read_model_job])
