"""`broker_followup_emails`: the hourly broker emails of Contract 3, and what each run did."""

from datetime import UTC, datetime

import dagster as dg
from pydantic import Field

from enrollment_pipeline.defs.datasets import (
    BROKER_FOLLOWUP_EMAILS,
    BROKER_FOLLOWUPS,
    GROUP,
    OWNERS,
)
from enrollment_pipeline.defs.email.resources import EmailResource
from enrollment_pipeline.defs.mongo.resources import MongoResource
from enrollment_pipeline.defs.pools import FOLLOWUP_POOL
from enrollment_pipeline.defs.settings.resources import PipelineSettingsResource
from enrollment_pipeline.domain.events import to_utc
from enrollment_pipeline.lib.followups.run import FollowupReport, send_followups
from enrollment_pipeline.lib.mongo.followup_store import FollowupStore


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
    email: EmailResource,
    settings: PipelineSettingsResource,
) -> dg.MaterializeResult:
    as_of = config.instant()
    db = mongo.get_client()
    store = FollowupStore.of(db)
    with db.explained_errors():
        report = send_followups(
            store,
            email.get_client(),
            as_of=as_of,
            policy=settings.followup_policy(),
            max_per_second=settings.email_max_per_second,
            concurrency=settings.email_concurrency,
            lease=settings.writer_lease(
                db.db(), run_id=context.run.run_id, job="send_broker_followups"
            ),
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
    import pandas as pd  # here, not at load: every run process loads this module; 1 s saved

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


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(assets=[broker_followup_emails])
