"""The production profile (deploy/dagster.yaml): run history in the stack's PostgreSQL."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@dg.op
def say_hello() -> str:
    return "hello"


@dg.job(executor_def=dg.in_process_executor)
def hello_job():
    say_hello()


def test_runs_are_stored_in_postgres(services, tmp_path, monkeypatch):
    assert services.dagster_pg_url, "set TEST_DAGSTER_PG_URL when using external services"
    shutil.copy(REPO / "deploy" / "dagster.yaml", tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.setenv("DAGSTER_PG_URL", services.dagster_pg_url)
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        result = hello_job.execute_in_process(instance=instance)
        assert result.success
    with dg.DagsterInstance.get() as reopened:
        run = reopened.get_run_by_id(result.run_id)
        assert run is not None and run.is_success
