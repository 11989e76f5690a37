"""`erase_applicant` (an applicant's personal data erased everywhere, as `enrollment-pipeline
erase` does) and `dead_letter_retention` (dead letters' raw bytes dropped after
DEAD_LETTER_RAW_RETENTION_DAYS)."""

import dagster as dg
from pydantic import Field

from enrollment_pipeline.defs.datasets import APPLICATIONS, DEAD_LETTERS
from enrollment_pipeline.defs.mongo.resources import MongoResource
from enrollment_pipeline.defs.pools import READ_MODEL_POOL
from enrollment_pipeline.defs.settings.resources import PipelineSettingsResource
from enrollment_pipeline.lib.erasure import NothingToEraseError, erase_application
from enrollment_pipeline.lib.mongo.store import EnrollmentStore
from enrollment_pipeline.lib.retention import expire_raw_bytes


class ErasureConfig(dg.Config):
    application_id: str = Field(description="The application whose applicant is erased.")
    reason: str = Field(
        description="Why (the request it answers, e.g. a ticket number); recorded with the "
        "erasure. Put no personal data here."
    )


@dg.op(pool=READ_MODEL_POOL)
def erase_applicant_data(
    context: dg.OpExecutionContext,
    config: ErasureConfig,
    mongo: MongoResource,
    settings: PipelineSettingsResource,
) -> None:
    """Erase the applicant's names, email, phone and date of birth from the event store, the
    read model, dead letters and waiting leads; keep a tombstone so nothing brings them back."""
    app_id = config.application_id
    db = mongo.get_client()
    launched_by = context.run.tags.get("dagster/user") or context.run.tags.get("user")
    who = f"run {context.run.run_id}" + (f" launched by {launched_by}" if launched_by else "")
    try:
        with db.explained_errors():
            report = erase_application(
                EnrollmentStore.of(db),
                app_id,
                reason=config.reason,
                requested_by=f"erase_applicant ({who})",
                lease=settings.writer_lease(
                    db.db(), run_id=context.run.run_id, job=f"erase_applicant {app_id}"
                ),
            )
    except (NothingToEraseError, ValueError) as exc:
        raise dg.Failure(description=str(exc)) from None
    context.log_event(
        dg.AssetMaterialization(
            APPLICATIONS,
            description=f"applicant of {app_id} erased (erasure {report.erasure_id})",
            metadata={"erasure_id": report.erasure_id, **report.touched},
        )
    )
    touched = ", ".join(f"{name} {count}" for name, count in report.touched.items())
    context.log.info(
        f"erased {app_id} (erasure {report.erasure_id}): {touched}. Ask the CRM to delete the "
        "lead of this application id; Kafka keeps the original records until its retention."
    )


@dg.job(
    name="erase_applicant",
    executor_def=dg.in_process_executor,
    tags={"dagster/max_runtime": 3600},
    description="Erase one applicant's personal data everywhere the pipeline keeps it (run "
    "config: application_id, reason); the same as `enrollment-pipeline erase`.",
)
def erase_applicant() -> None:
    erase_applicant_data()


@dg.op
def drop_expired_dead_letter_bytes(
    context: dg.OpExecutionContext, mongo: MongoResource, settings: PipelineSettingsResource
) -> None:
    """Drop the raw bytes of dead letters first seen more than DEAD_LETTER_RAW_RETENTION_DAYS
    ago (their reason, detail, key, size and hash stay)."""
    db = mongo.get_client()
    with db.explained_errors():
        report = expire_raw_bytes(
            EnrollmentStore.of(db), days=settings.dead_letter_raw_retention_days
        )
    context.log_event(
        dg.AssetMaterialization(
            DEAD_LETTERS,
            metadata={
                "raw_bytes_removed": report.removed,
                "first_seen_before": report.cutoff.isoformat(),
                "retention_days": settings.dead_letter_raw_retention_days,
                "more_left": report.more_left,
            },
        )
    )
    context.log.info(
        f"dropped the raw bytes of {report.removed} dead letters first seen before "
        f"{report.cutoff:%Y-%m-%d %H:%M} UTC"
        + ("; more left for the next run" if report.more_left else "")
    )


@dg.job(
    name="dead_letter_retention",
    executor_def=dg.in_process_executor,
    tags={"dagster/max_runtime": 3600},
    description="Drop dead letters' raw bytes older than DEAD_LETTER_RAW_RETENTION_DAYS.",
)
def dead_letter_retention() -> None:
    drop_expired_dead_letter_bytes()


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(jobs=[erase_applicant, dead_letter_retention])
