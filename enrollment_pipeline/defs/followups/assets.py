"""`send_broker_followups`: the hourly broker emails, their asset and their schedule."""

from datetime import UTC, datetime

import dagster as dg
import pandas as pd
from pydantic import Field

from enrollment_pipeline.defs.email.resources import EmailSender
from enrollment_pipeline.defs.ingestion.assets import BROKER_FOLLOWUPS, GROUP, OWNERS
from enrollment_pipeline.defs.mongo.resources import MongoResource
from enrollment_pipeline.defs.pipeline_settings import PipelineSettingsResource
from enrollment_pipeline.domain.events import to_utc
from enrollment_pipeline.lib.followups.run import FollowupReport, send_followups
from enrollment_pipeline.lib.mongo.followup_store import FollowupStore
from enrollment_pipeline.settings import PipelineSettings

BROKER_FOLLOWUP_EMAILS = dg.AssetKey("broker_followup_emails")
# One follow-up run at a time: two would race for the same due follow-ups.
FOLLOWUP_POOL = "broker_followups"


class FollowupRunConfig(dg.Config):
    as_of: str | None = Field(
        default=None,
        description="ISO-8601 instant the run acts at (the schedule passes its tick); "
        "empty: now. Re-run a missed hour by giving its time.",
    )

    def instant(self) -> datetime:
        if not self.as_of:
            return datetime.now(UTC)
        value = datetime.fromisoformat(self.as_of.replace("Z", "+00:00"))
        if value.tzinfo is None:
            raise dg.Failure(f"as_of {self.as_of!r} needs a timezone offset or Z")
        return to_utc(value)


@dg.asset(
    key=BROKER_FOLLOWUP_EMAILS,
    deps=[BROKER_FOLLOWUPS],
    group_name=GROUP,
    kinds={"email"},
    owners=OWNERS,
    pool=FOLLOWUP_POOL,
    description="Emails to brokers whose signature is overdue (Contract 3): one per due "
    "follow-up per run, retry counts, escalation to PENDING. Kept fresh by the schedule "
    "`hourly_broker_followups` (off until turned on: it emails real brokers).",
)
def broker_followup_emails(
    context: dg.AssetExecutionContext,
    config: FollowupRunConfig,
    mongo: MongoResource,
    email: dg.ResourceParam[EmailSender],
    settings: PipelineSettingsResource,
) -> dg.MaterializeResult:
    as_of = config.instant()
    store = FollowupStore.of(mongo)
    with mongo.explained_errors(), email.session() as session:
        report = send_followups(
            store,
            session,
            as_of=as_of,
            policy=settings.followup_policy(),
            max_per_second=settings.email_max_per_second,
            ops_email=settings.ops_email,
            run_id=context.run.run_id,
        )
        metadata = run_metadata(report, store, as_of=as_of)
    context.log.info(
        f"as_of {as_of.isoformat()}: due {report.due}, sent {report.sent}, failed "
        f"{report.failed}, unknown {report.unknown}, escalated {report.escalated} "
        f"(invalid address {report.invalid_address}), expired {report.expired}"
    )
    if report.sender_down:
        raise dg.Failure(
            description=f"The email backend failed: {report.sender_down}. The run stopped "
            "there; what it did is recorded, and the follow-ups it did not send are due "
            "again next run.",
            metadata=metadata,
        )
    return dg.MaterializeResult(metadata=metadata)


def run_metadata(report: FollowupReport, store: FollowupStore, *, as_of: datetime) -> dict:
    """The run's numbers (plotted over time by the UI) and the open follow-ups by retry count."""
    by_retry = (
        pd.DataFrame(store.open_by_retry_count(), columns=["retry_count", "status", "followups"])
        .fillna({"retry_count": 0})
        .astype({"retry_count": int, "followups": int})
        .groupby(["retry_count", "status"], as_index=False)["followups"]
        .sum()
        .sort_values(["retry_count", "status"])
    )
    oldest_start = store.oldest_awaiting_cycle_start()
    oldest = (as_of - to_utc(oldest_start)).total_seconds() / 3600 if oldest_start else 0.0
    return {
        "as_of": as_of.isoformat(),
        "due": report.due,
        "sent": report.sent,
        "failed": report.failed,
        "unknown": report.unknown,
        "escalated_to_pending": report.escalated,
        "invalid_address": report.invalid_address,
        "expired": report.expired,
        "waiting_quiet_hours": report.waiting,
        "newly_pending": [f"{app}: {reason}" for app, reason in report.newly_pending],
        "open_followups": int(by_retry["followups"].sum()),
        "oldest_unsigned_age_hours": round(oldest, 1),
        "open_by_retry_count": dg.MetadataValue.table(
            records=[
                dg.TableRecord({k: (int(v) if k != "status" else v) for k, v in row.items()})
                for row in by_retry.to_dict("records")
            ],
            schema=dg.TableSchema(
                columns=[
                    dg.TableColumn("retry_count", "int"),
                    dg.TableColumn("status", "string"),
                    dg.TableColumn("followups", "int"),
                ]
            ),
        ),
    }


send_broker_followups = dg.define_asset_job(
    "send_broker_followups",
    selection=[BROKER_FOLLOWUP_EMAILS],
    executor_def=dg.in_process_executor,
    tags={"dagster/max_runtime": 3000},
    description="Email brokers whose signature is overdue, at `as_of` (default now).",
)


def followup_schedule(settings: PipelineSettings) -> dg.ScheduleDefinition:
    """Hourly by default (FOLLOWUP_SCHEDULE_CRON, FOLLOWUP_SCHEDULE_TIMEZONE); off until an
    operator turns it on, since it emails real brokers."""

    @dg.schedule(
        name="hourly_broker_followups",
        job=send_broker_followups,
        cron_schedule=settings.followup_schedule_cron,
        execution_timezone=settings.followup_schedule_timezone,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Send the broker follow-ups due at each tick (as_of = the tick's time).",
    )
    def hourly_broker_followups(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        as_of = to_utc(context.scheduled_execution_time).isoformat()
        return dg.RunRequest(
            run_key=as_of,
            run_config=dg.RunConfig(ops={"broker_followup_emails": FollowupRunConfig(as_of=as_of)}),
            tags={"enrollment/as_of": as_of},
        )

    return hourly_broker_followups


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(
        assets=[broker_followup_emails],
        jobs=[send_broker_followups],
        schedules=[followup_schedule(PipelineSettings())],
    )
