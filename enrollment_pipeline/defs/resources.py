"""The resources of every job, built from the Contract-6 environment when definitions load.

Secrets go through `dg.EnvVar` (resolved at launch, never shown in the UI); plain settings
come from `PipelineSettings`, so each has a local default. Nothing is read at import time.
"""

from __future__ import annotations

import os

import dagster as dg

from enrollment_pipeline.defs.archive.resources import ArchiveResource
from enrollment_pipeline.defs.crm.resources import CrmClient
from enrollment_pipeline.defs.email.resources import SesEmailSender, SmtpEmailSender
from enrollment_pipeline.defs.kafka.resources import KafkaResource
from enrollment_pipeline.defs.mongo.resources import mongo_from_settings
from enrollment_pipeline.defs.pipeline_settings import PipelineSettingsResource
from enrollment_pipeline.settings import PipelineSettings


def _secret(name: str) -> dg.EnvVar | None:
    """`dg.EnvVar(name)` when the variable is set, else None (the setting is optional)."""
    return dg.EnvVar(name) if os.environ.get(name) else None


def build_resources(settings: PipelineSettings | None = None) -> dict[str, object]:
    s = settings or PipelineSettings()
    email_sender = (
        SesEmailSender(
            sender=s.email_from,
            region_name=s.aws_region,
            endpoint_url=s.aws_endpoint_url,
        )
        if s.email_backend == "ses"
        else SmtpEmailSender(
            host=s.smtp_host,
            port=s.smtp_port,
            username=s.smtp_username,
            password=_secret("SMTP_PASSWORD"),
            starttls=s.smtp_starttls,
            use_ssl=s.smtp_ssl,
            sender=s.email_from,
        )
    )
    return {
        "kafka": KafkaResource(
            bootstrap_servers=s.kafka_bootstrap_servers,
            security_protocol=s.kafka_security_protocol,
            sasl_mechanism=s.kafka_sasl_mechanism,
            sasl_username=s.kafka_sasl_username,
            sasl_password=_secret("KAFKA_SASL_PASSWORD"),
            ssl_cafile=s.kafka_ssl_cafile,
        ),
        # MONGO_URI may carry credentials: resolve it at launch, keep it out of the UI.
        "mongo": mongo_from_settings(
            s, uri=dg.EnvVar("MONGO_URI") if os.environ.get("MONGO_URI") else None
        ),
        "email": email_sender,
        "archive": ArchiveResource(
            root=s.archive_root, region_name=s.aws_region, endpoint_url=s.aws_endpoint_url
        ),
        "crm": CrmClient(
            base_url=s.lead_api_url,
            token=_secret("LEAD_API_TOKEN"),
            allow_http=s.lead_api_allow_http,
            connect_timeout_s=s.lead_api_connect_timeout_seconds,
            read_timeout_s=s.lead_api_read_timeout_seconds,
            request_deadline_s=s.lead_api_request_deadline_seconds,
            max_attempts=s.lead_api_max_attempts,
        ),
        "settings": PipelineSettingsResource.from_settings(s),
    }


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources=build_resources())
