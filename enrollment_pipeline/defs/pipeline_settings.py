"""The topics and limits ops, sensors and checks act on, as one resource.

Built from the environment (`PipelineSettings`) when the definitions load, so the values a run
used show in the UI's resource page and a test can pass its own without touching the
environment. Secrets are not here: they reach their resources through `dg.EnvVar`.
"""

from __future__ import annotations

from datetime import timedelta

import dagster as dg
from pydantic import Field

from enrollment_pipeline.domain.followup_rules import FollowupPolicy, parse_quiet_hours
from enrollment_pipeline.settings import PipelineSettings


class PipelineSettingsResource(dg.ConfigurableResource):
    """Contract-6 topics and the limits of micro-batches, lead delivery and follow-ups."""

    enrollment_topic: str = "enrollment-events"
    lead_topic: str = "lead-integration-events"

    ingest_max_events_per_run: int = Field(default=50_000, ge=1)
    ingest_max_record_bytes: int = Field(default=1_000_000, ge=1)
    ingest_max_range_attempts: int = Field(default=3, ge=1)
    ingest_max_dead_letter_rate: float = Field(default=0.05, ge=0, le=1)
    ingest_max_consumer_lag: int = Field(default=100_000, ge=0)

    lead_max_per_run: int = Field(default=10_000, ge=1)
    lead_max_range_attempts: int = Field(default=3, ge=1)
    lead_run_budget_seconds: float = Field(default=600.0, gt=0)
    lead_concurrency: int = Field(default=8, ge=1)
    lead_park_minutes: float = Field(default=15.0, ge=0)
    lead_max_parked: int = Field(default=0, ge=0)

    followup_max_emails: int = Field(default=5, ge=1)
    followup_interval_minutes: int = Field(default=60, ge=1)
    followup_max_age_days: int = Field(default=30, ge=1)
    followup_quiet_hours: str | None = None
    email_max_per_second: float = Field(default=10.0, gt=0)
    ops_email: str | None = None

    @classmethod
    def from_settings(cls, settings: PipelineSettings) -> PipelineSettingsResource:
        return cls(**{name: getattr(settings, name) for name in cls.model_fields})

    def followup_policy(self) -> FollowupPolicy:
        return FollowupPolicy(
            max_emails=self.followup_max_emails,
            interval=timedelta(minutes=self.followup_interval_minutes),
            max_age=timedelta(days=self.followup_max_age_days),
            quiet_hours=parse_quiet_hours(self.followup_quiet_hours),
        )
