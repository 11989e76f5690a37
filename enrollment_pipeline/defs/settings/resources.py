"""The topics and limits ops, sensors and checks act on, as one resource.

Built from the environment (`PipelineSettings`) when the definitions load, so the values a run
used show in the UI's resource page and a test can pass its own without touching the
environment. The defaults and the bounds are PipelineSettings' (the environment is where a
value is checked). Secrets are not here: they reach their resources through `dg.EnvVar`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import dagster as dg
from pymongo.database import Database

from enrollment_pipeline.domain.followup_rules import FollowupPolicy, parse_quiet_hours
from enrollment_pipeline.lib.ingestion.limits import InputLimits
from enrollment_pipeline.lib.leads.delivery import LeadDeliveryPolicy
from enrollment_pipeline.lib.mongo.collections import Document
from enrollment_pipeline.lib.mongo.layout import writer_partitions
from enrollment_pipeline.lib.mongo.lease import (
    LeasePolicy,
    WriterLease,
    default_owner,
    partition_scopes,
)
from enrollment_pipeline.lib.settings_errors import load
from enrollment_pipeline.settings import PipelineSettings


def _default(name: str) -> Any:
    """The environment's default for a setting: one place (PipelineSettings) defines each."""
    return PipelineSettings.model_fields[name].default


class PipelineSettingsResource(dg.ConfigurableResource):
    """Contract-6 topics and the limits of micro-batches, lead delivery and follow-ups."""

    enrollment_topic: str = _default("enrollment_topic")
    lead_topic: str = _default("lead_topic")
    # The partition count writers without Kafka lease by until ingestion records the topic's.
    kafka_topic_partitions: int = _default("kafka_topic_partitions")

    ingest_max_events_per_run: int = _default("ingest_max_events_per_run")
    ingest_parallel_runs: int = _default("ingest_parallel_runs")
    ingest_max_record_bytes: int = _default("ingest_max_record_bytes")
    # ISO-8601 instants (Dagster config has no datetime type).
    event_time_min: str = _default("event_time_min").isoformat()
    event_time_max: str = _default("event_time_max").isoformat()
    dead_letter_max_raw_bytes: int = _default("dead_letter_max_raw_bytes")
    dead_letter_raw_retention_days: int = _default("dead_letter_raw_retention_days")
    ingest_max_range_attempts: int = _default("ingest_max_range_attempts")
    ingest_max_dead_letter_rate: float = _default("ingest_max_dead_letter_rate")
    ingest_max_consumer_lag: int = _default("ingest_max_consumer_lag")
    sensor_wait_seconds: float = _default("sensor_wait_seconds")

    read_model_drift_sample: int = _default("read_model_drift_sample")

    lead_max_per_run: int = _default("lead_max_per_run")
    lead_max_range_attempts: int = _default("lead_max_range_attempts")
    lead_run_budget_seconds: float = _default("lead_run_budget_seconds")
    lead_concurrency: int = _default("lead_concurrency")
    lead_park_minutes: float = _default("lead_park_minutes")
    lead_max_parked: int = _default("lead_max_parked")

    writer_lease_ttl_seconds: float = _default("writer_lease_ttl_seconds")
    writer_lease_wait_seconds: float = _default("writer_lease_wait_seconds")
    writer_lease_grace_seconds: float = _default("writer_lease_grace_seconds")

    followup_max_emails: int = _default("followup_max_emails")
    followup_interval_minutes: int = _default("followup_interval_minutes")
    followup_max_age_days: int = _default("followup_max_age_days")
    followup_quiet_hours: str | None = _default("followup_quiet_hours")
    email_max_per_second: float = _default("email_max_per_second")
    email_concurrency: int = _default("email_concurrency")
    ops_email: str | None = _default("ops_email")

    @classmethod
    def from_settings(cls, settings: PipelineSettings) -> PipelineSettingsResource:
        values = {name: getattr(settings, name) for name in cls.model_fields}
        values.update(
            event_time_min=settings.event_time_min.isoformat(),
            event_time_max=settings.event_time_max.isoformat(),
        )
        return cls(**values)

    def input_limits(self) -> InputLimits:
        return InputLimits.from_settings(self)

    def writer_lease(
        self,
        db: Database[Document],
        *,
        run_id: str,
        job: str,
        partitions: Iterable[int] | None = None,
    ) -> WriterLease:
        """The writers' lease a run of `job` takes (owner: the run, on this host): of
        `partitions` of the enrollment topic, or of every partition (None)."""
        if partitions is None:
            partitions = range(writer_partitions(db, self.kafka_topic_partitions))
        return WriterLease(
            db,
            scopes=partition_scopes(partitions),
            run_id=run_id,
            owner=f"run {run_id} ({default_owner()})",
            description=job,
            policy=LeasePolicy.from_settings(self),
        )

    def lead_delivery_policy(self) -> LeadDeliveryPolicy:
        return LeadDeliveryPolicy.from_settings(self, limits=self.input_limits())

    def followup_policy(self) -> FollowupPolicy:
        return FollowupPolicy(
            max_emails=self.followup_max_emails,
            interval=timedelta(minutes=self.followup_interval_minutes),
            max_age=timedelta(days=self.followup_max_age_days),
            quiet_hours=parse_quiet_hours(self.followup_quiet_hours),
        )


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(
        resources={"settings": PipelineSettingsResource.from_settings(load(PipelineSettings))}
    )
