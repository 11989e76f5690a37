"""What the Dagster instance knows of our runs: which are in flight (the run storage of
$DAGSTER_HOME, or the instance a sensor ticks in)."""

from __future__ import annotations

import dagster as dg

IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
FAILED = [dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]


def runs_in_flight(instance: dg.DagsterInstance, job_name: str) -> list[str]:
    """Run ids of `job_name` runs not finished."""
    runs = instance.get_runs(dg.RunsFilter(job_name=job_name, statuses=IN_FLIGHT))
    return [run.run_id for run in runs]
