"""Configuration from the environment (Contract 6), with local defaults, in groups.

One place names every variable, so the CLI, the local stack and the Dagster definitions agree.
Each group reads only its own variables, so a command reads only what it needs (`stack` never
looks at EMAIL_BACKEND); `PipelineSettings` is all of them, for the code location. Field names
are the variable names in lower case. Secrets are `SecretStr`: they never show in a repr or a
log line. Dagster resources do not read secrets from here; they take them through `dg.EnvVar`.

This module sits between `domain/` and `lib/`: it imports pydantic, and the domain's rule for
quiet hours. Every value is checked when its group loads; `lib/settings_errors.py` turns a
failure into one line per bad variable.
"""

from __future__ import annotations

import os
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from pydantic import AwareDatetime, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from enrollment_pipeline.domain.followup_rules import parse_quiet_hours


class _Settings(BaseSettings):
    """An empty variable counts as unset (compose files list every variable, most empty)."""

    model_config = SettingsConfigDict(
        env_prefix="", case_sensitive=False, extra="ignore", env_ignore_empty=True
    )


# Each validator raises a ValueError whose text says what is allowed, after "must be"
# (lib/settings_errors.py turns it into one line naming the variable and its value).


def _http_url(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises on a port that is not a number in range
    except ValueError:
        parts = urlsplit("")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("an http:// or https:// URL with a host, e.g. https://host.example")
    return value


class KafkaSettings(_Settings):
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = None
    kafka_topic_partitions: int = Field(default=6, ge=1)
    enrollment_topic: str = "enrollment-events"
    lead_topic: str = "lead-integration-events"

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _host_ports(cls, value: str) -> str:
        for server in value.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError("host:port pairs separated by commas, e.g. b-1.example:9092")
        return value


class MongoSettings(_Settings):
    mongo_uri: str = "mongodb://127.0.0.1:27017/"
    mongo_database: str = "enrollment"
    # How long one MongoDB command may take: a stalled server fails the run, never hangs it.
    mongo_timeout_ms: int = Field(default=30_000, ge=100)
    # Statements per update command; unset: chosen by engine (see lib/mongo/writes.py).
    mongo_max_writes_per_command: int | None = Field(default=None, ge=1)
    # Update commands one writer keeps in flight; unset: 3 on FerretDB, 1 on MongoDB.
    mongo_write_commands_in_flight: int | None = Field(default=None, ge=1, le=16)
    # The writers' lease of the read model (lib/mongo/lease.py): a holder that stops renewing
    # lets go after the ttl; a second writer waits up to `wait`, then refuses naming the
    # holder; one taking over an expired lease waits `grace` (at least one command's time).
    writer_lease_ttl_seconds: float = Field(default=60.0, ge=1)
    writer_lease_wait_seconds: float = Field(default=600.0, ge=0)
    writer_lease_grace_seconds: float = Field(default=35.0, ge=0)

    @model_validator(mode="after")
    def _grace_covers_one_command(self) -> MongoSettings:
        if self.writer_lease_grace_seconds * 1000 < self.mongo_timeout_ms:
            raise ValueError(
                "WRITER_LEASE_GRACE_SECONDS must be at least MONGO_TIMEOUT_MS (in seconds): a "
                "writer taking over must outwait the last command of the one it replaces"
            )
        return self

    @field_validator("mongo_uri")
    @classmethod
    def _mongo_scheme(cls, value: str) -> str:
        scheme, _, rest = value.partition("://")
        if scheme not in ("mongodb", "mongodb+srv") or not rest.rpartition("@")[2].strip("/"):
            raise ValueError("a mongodb:// or mongodb+srv:// URI with a host")
        return value


class AwsSettings(_Settings):
    """Shared by SES (email) and S3 (archive)."""

    aws_region: str = "us-east-1"
    aws_endpoint_url: str | None = None

    _endpoint = field_validator("aws_endpoint_url")(_http_url)


class EmailSettings(AwsSettings):
    email_backend: Literal["smtp", "ses"] = "smtp"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=1025, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    smtp_ssl: bool = False
    email_from: str = "enrollment-followups@example.com"


class CrmSettings(_Settings):
    lead_api_url: str = "http://127.0.0.1:8090"
    lead_api_token: SecretStr | None = None
    # The token goes over https:// only, unless this is true (for a CRM on loopback).
    lead_api_allow_http: bool = False
    # One CRM request: connect and read timeouts, and the wall-clock limit of the whole
    # request (a server trickling its answer cannot hold it longer); attempts per lead per run.
    lead_api_connect_timeout_seconds: float = Field(default=3.0, gt=0)
    lead_api_read_timeout_seconds: float = Field(default=10.0, gt=0)
    lead_api_request_deadline_seconds: float = Field(default=30.0, gt=0)
    lead_api_max_attempts: int = Field(default=5, ge=1)

    _url = field_validator("lead_api_url")(_http_url)


class ArchiveSettings(AwsSettings):
    # A folder is made absolute when read (the code location may run in another folder).
    archive_root: str = "./archive"
    archive_start_date: date = date(2024, 1, 1)

    @field_validator("archive_root")
    @classmethod
    def _folder_or_s3(cls, value: str) -> str:
        if value.startswith("s3://"):
            if not value.removeprefix("s3://").split("/")[0]:
                raise ValueError("a folder or s3://bucket/prefix (the bucket is missing)")
            return value
        if "://" in value:
            raise ValueError("a folder or s3://bucket/prefix")
        return str(Path(value).expanduser().absolute())


class IngestSettings(_Settings):
    """Ingestion micro-batches (DESIGN "Delivery semantics") and what one input may be."""

    ingest_max_events_per_run: int = Field(default=50_000, ge=1)
    # Ingestion runs in flight at once, each over its own lane of partitions (p % N).
    ingest_parallel_runs: int = Field(default=1, ge=1, le=64)
    ingest_max_record_bytes: int = Field(default=1_000_000, ge=1)
    # The instants an event may carry (occurred_at, signed_at), in UTC; outside them it is a
    # schema_violation. Fixed dates, not relative to the clock: a replay decides the same.
    event_time_min: AwareDatetime = datetime(1900, 1, 1, tzinfo=UTC)
    event_time_max: AwareDatetime = datetime(2200, 1, 1, tzinfo=UTC)
    # Of a dead letter's input, the bytes kept (its full size and SHA-256 are kept too).
    dead_letter_max_raw_bytes: int = Field(default=256 * 1024, ge=1)
    # After this many days (from first seen) a dead letter keeps its reason, size and hash,
    # not its raw bytes, which may hold personal data (the job `dead_letter_retention`).
    dead_letter_raw_retention_days: int = Field(default=30, ge=1, le=36_500)
    ingest_max_range_attempts: int = Field(default=3, ge=1)
    ingest_max_dead_letter_rate: float = Field(default=0.05, ge=0, le=1)
    ingest_max_consumer_lag: int = Field(default=100_000, ge=0)
    # How long a sensor tick that has nothing to request waits for a new record or for a run
    # in flight to end, then ticks again at once: the next range starts within a second, not
    # at the daemon's next loop (every 5 s). A tick also spends about a second in Dagster's
    # own work: with more than 3 s here, it would still run when the next loop comes and that
    # loop would skip it. 0 turns the wait off.
    sensor_wait_seconds: float = Field(default=3.0, ge=0, le=4)

    @model_validator(mode="after")
    def _time_bounds_in_order(self) -> IngestSettings:
        if self.event_time_min >= self.event_time_max:
            raise ValueError("EVENT_TIME_MIN must be before EVENT_TIME_MAX")
        return self


class ReadModelSettings(_Settings):
    """The read model's own health (the asset check `read_model_drift`)."""

    # Documents refolded per check: its cost is bounded by this, not by the collection.
    read_model_drift_sample: int = Field(default=200, ge=1, le=100_000)


class LeadDeliverySettings(_Settings):
    """Lead delivery runs (DESIGN Contract 4; README "Delivering leads")."""

    lead_max_per_run: int = Field(default=10_000, ge=1)
    lead_max_range_attempts: int = Field(default=3, ge=1)
    lead_run_budget_seconds: float = Field(default=600.0, gt=0)
    lead_concurrency: int = Field(default=8, ge=1)
    lead_park_minutes: float = Field(default=15.0, ge=0)
    lead_max_parked: int = Field(default=0, ge=0)


class FollowupSettings(_Settings):
    """The broker follow-up runs (Contract 3)."""

    followup_max_emails: int = Field(default=5, ge=1)
    followup_interval_minutes: int = Field(default=60, ge=1)
    followup_max_age_days: int = Field(default=30, ge=1)
    followup_quiet_hours: str | None = None
    followup_schedule_cron: str = "0 * * * *"
    followup_schedule_timezone: str = "UTC"
    ops_email: str | None = None
    email_max_per_second: float = Field(default=10.0, gt=0)
    # Sends in flight at once: SMTP connections (or SES calls), paced together by
    # EMAIL_MAX_PER_SECOND. They hold no MongoDB connection (lib/followups/run.py).
    email_concurrency: int = Field(default=4, ge=1, le=32)

    @field_validator("followup_quiet_hours")
    @classmethod
    def _quiet_hours(cls, value: str | None) -> str | None:
        try:
            parse_quiet_hours(value)
        except ValueError:
            raise ValueError("two UTC hours START-END from 0 to 23, e.g. 20-07") from None
        return value

    @field_validator("followup_schedule_timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ValueError, KeyError):  # ZoneInfoNotFoundError is a KeyError
            raise ValueError("an IANA time zone, e.g. UTC or America/New_York") from None
        return value


class PipelineSettings(
    KafkaSettings,
    MongoSettings,
    EmailSettings,
    CrmSettings,
    ArchiveSettings,
    IngestSettings,
    ReadModelSettings,
    LeadDeliverySettings,
    FollowupSettings,
):
    """Every Contract-6 variable: what the code location reads when it loads."""


def _xdg(var: str, fallback: str) -> Path:
    return Path(os.environ.get(var) or Path.home() / fallback)


def _default_state_dir() -> Path:
    # As root, PostgreSQL runs as the `postgres` user, who cannot enter /root: keep state in
    # the system's place for service data instead.
    if os.geteuid() == 0:
        return Path("/var/lib/enrollment-pipeline")
    return _xdg("XDG_STATE_HOME", ".local/state") / "enrollment-pipeline"


class StackSettings(BaseSettings):
    """Where and how `enrollment-pipeline stack` runs the local services.

    State (data and logs) and the cache of downloads and builds live outside the repository;
    the cache is keyed by version, so a second `stack up` reuses it.
    """

    model_config = SettingsConfigDict(env_prefix="STACK_", case_sensitive=False, extra="ignore")

    state_dir: Path = Field(default_factory=_default_state_dir)
    cache_dir: Path = Field(
        default_factory=lambda: _xdg("XDG_CACHE_HOME", ".cache") / "enrollment-pipeline"
    )
    # Loopback only, unless allow_remote: the services hold personal data.
    host: str = "127.0.0.1"
    allow_remote: bool = False
    # Also start the secured pieces: a SASL_SSL listener (SCRAM-SHA-512) on the broker and a
    # MongoDB-wire server that requires a user and password (`stack env --secure`).
    secure: bool = False
    kafka_port: int = 9092
    kafka_sasl_port: int = 9094
    kafka_controller_port: int = 9093
    kafka_version: str = "4.1.1"
    kafka_heap: str = "768m"
    mongo_port: int = 27017
    mongo_secure_port: int = 27018
    # auto: mongod when it is on PATH, else FerretDB on PostgreSQL with our patches
    # (stack/mongo.py; benchmarks/README.md has the measurements).
    mongo_engine: Literal["auto", "mongod", "ferretdb", "ferretdb-stock", "ferretdb-sqlite"] = (
        "auto"
    )
    ferretdb_version: str = "v1.24.2"
    # Below the kernel's ephemeral range (32768+): a client socket there could hold the port.
    postgres_port: int = 25432
    smtp_port: int = 1025
    # The local CRM test double (stack/crm.py); LEAD_API_URL points at it.
    crm_port: int = 8090
    start_timeout_s: float = 120.0
