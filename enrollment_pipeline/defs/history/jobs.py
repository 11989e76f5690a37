"""`backfill_enrollment_history` (days of the archive) and `rebuild_read_model` (the read model
recomputed from the event store). A rebuild writes every application: it takes every
partition's lease, and its pool keeps a second rebuild queued."""

import dagster as dg

from enrollment_pipeline.defs.datasets import APPLICATIONS, HISTORIC_EVENTS
from enrollment_pipeline.defs.mongo.resources import MongoResource
from enrollment_pipeline.defs.pools import READ_MODEL_POOL
from enrollment_pipeline.defs.settings.resources import PipelineSettingsResource
from enrollment_pipeline.lib.backfill import rebuild_read_model
from enrollment_pipeline.lib.mongo.store import EnrollmentStore

MAX_RUNTIME_SECONDS = 6 * 3600

backfill_enrollment_history = dg.define_asset_job(
    "backfill_enrollment_history",
    selection=[HISTORIC_EVENTS],
    executor_def=dg.in_process_executor,
    tags={"dagster/max_runtime": MAX_RUNTIME_SECONDS},
    description="Backfill days of the historic archive into the event store and read model.",
)


@dg.op(pool=READ_MODEL_POOL)
def refold_every_application(
    context: dg.OpExecutionContext, mongo: MongoResource, settings: PipelineSettingsResource
) -> None:
    """Recompute `applications` and the fold-owned follow-up fields from the event store."""
    db = mongo.get_client()
    with db.explained_errors():
        report = rebuild_read_model(
            EnrollmentStore.of(db),
            lease=settings.writer_lease(db.db(), run_id=context.run.run_id, job="rebuild"),
        )
    context.log_event(
        dg.AssetMaterialization(
            APPLICATIONS,
            metadata={
                "applications": report.applications,
                "events": report.events,
                "documents_changed": report.documents_changed,
                "documents_created": report.documents_created,
                "documents_removed": report.documents_removed,
                "followups_written": report.followups_written,
                "passes_over_the_event_store": report.passes,
                "fold_groups": report.groups,
                "swapped_in_a_fresh_collection": report.swapped,
                "seconds": round(report.seconds, 1),
            },
        )
    )
    context.log.info(
        f"rebuilt {report.applications} applications from {report.events} events: "
        f"{report.documents_created} created, {report.documents_changed} changed"
    )


@dg.job(
    name="rebuild_read_model",
    executor_def=dg.in_process_executor,
    tags={"dagster/max_runtime": MAX_RUNTIME_SECONDS},
    description="Recompute the read model from the event store (disaster recovery, or after "
    "a projection change); the email job's follow-up fields and attempts are kept.",
)
def rebuild_read_model_job() -> None:
    refold_every_application()


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(jobs=[backfill_enrollment_history, rebuild_read_model_job])
