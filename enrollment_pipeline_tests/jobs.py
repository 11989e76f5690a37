"""Run the code location's jobs in process with a test's resources."""

from __future__ import annotations

from typing import Any

import dagster as dg

from enrollment_pipeline.definitions import defs


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
        resources={**(location.resources or {}), **resources},
    ).resolve_job_def(job.name)


def run_job(
    job: dg.UnresolvedAssetJobDefinition, *, resources: dict[str, Any], **kwargs: Any
) -> dg.ExecuteInProcessResult:
    """`job.execute_in_process(...)` for an asset job (those need resolving first)."""
    return resolve(job, resources).execute_in_process(**kwargs)
