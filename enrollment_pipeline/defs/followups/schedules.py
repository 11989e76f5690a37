"""`hourly_broker_followups`: the follow-up job at each tick, with `as_of` = the tick's time."""

import dagster as dg

from enrollment_pipeline.defs.followups.assets import FollowupRunConfig
from enrollment_pipeline.defs.followups.jobs import send_broker_followups
from enrollment_pipeline.domain.events import to_utc
from enrollment_pipeline.lib.settings_errors import load
from enrollment_pipeline.settings import FollowupSettings


def followup_schedule(settings: FollowupSettings) -> dg.ScheduleDefinition:
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
    return dg.Definitions(schedules=[followup_schedule(load(FollowupSettings))])
