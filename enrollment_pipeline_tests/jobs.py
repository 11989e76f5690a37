"""Run the code location's jobs in process with a test's clients or resources."""

from __future__ import annotations

import dataclasses
from typing import Any

import dagster as dg

from enrollment_pipeline.definitions import defs
from enrollment_pipeline.defs.archive.resources import ArchiveResource
from enrollment_pipeline.defs.crm.resources import CrmResource
from enrollment_pipeline.defs.email.resources import SesEmailResource, SmtpEmailResource
from enrollment_pipeline.defs.kafka.resources import KafkaResource
from enrollment_pipeline.defs.mongo.resources import MongoResource
from enrollment_pipeline.lib.clients.archive import Archive
from enrollment_pipeline.lib.clients.crm import CrmClient
from enrollment_pipeline.lib.clients.email import SesEmailSender, SmtpEmailSender
from enrollment_pipeline.lib.clients.kafka import KafkaClient
from enrollment_pipeline.lib.clients.mongo import MongoConnection


def as_resource(value: Any) -> Any:
    """The Dagster resource of a plain client (the same configuration); others unchanged."""
    if isinstance(value, KafkaClient):
        return KafkaResource.from_config(value.config)
    if isinstance(value, MongoConnection):
        return MongoResource.from_config(value.config)
    if isinstance(value, CrmClient):
        return CrmResource.from_client(value)
    if isinstance(value, SmtpEmailSender):
        return SmtpEmailResource(
            **{f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        )
    if isinstance(value, SesEmailSender):
        return SesEmailResource(
            sender=value.sender,
            region_name=value.aws.region_name,
            endpoint_url=value.aws.endpoint_url,
        )
    if isinstance(value, Archive):
        return ArchiveResource(
            root=value.root, region_name=value.aws.region_name, endpoint_url=value.aws.endpoint_url
        )
    return value


def as_resources(resources: dict[str, Any]) -> dict[str, Any]:
    return {key: as_resource(value) for key, value in resources.items()}


def resolve(job: dg.UnresolvedAssetJobDefinition | dg.JobDefinition, resources: dict[str, Any]):
    """`job` as the code location defines it (its assets and checks), with `resources`."""
    if isinstance(job, dg.JobDefinition):
        return job
    location = defs()
    return dg.Definitions(
        assets=location.assets,
        asset_checks=location.asset_checks,
        jobs=[job],
        # The location's own resources (from the environment, unused by this job's run)
        # satisfy the other assets; the test's replace those the job uses.
        resources={**(location.resources or {}), **as_resources(resources)},
    ).resolve_job_def(job.name)


def run_job(
    job: dg.UnresolvedAssetJobDefinition | dg.JobDefinition,
    *,
    resources: dict[str, Any],
    **kwargs: Any,
) -> dg.ExecuteInProcessResult:
    """`job.execute_in_process(...)` with a test's clients (asset jobs are resolved first)."""
    if isinstance(job, dg.JobDefinition):
        return job.execute_in_process(resources=as_resources(resources), **kwargs)
    return resolve(job, resources).execute_in_process(**kwargs)
