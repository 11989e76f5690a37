"""The code location's names, as operators, runbooks and acceptance tests see them.

A rename of an asset, check, job, sensor, schedule or resource shows in review as a change to
`definitions_snapshot.json`. After an intended change: `UPDATE_SNAPSHOT=1 .venv/bin/pytest -k
snapshot` rewrites the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg

from enrollment_pipeline.definitions import defs

SNAPSHOT = Path(__file__).with_name("definitions_snapshot.json")


def snapshot() -> dict:
    loaded = defs()
    repository = loaded.get_repository_def()
    graph = repository.asset_graph
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "deps": sorted(k.to_user_string() for k in node.parent_keys),
            "group": node.group_name,
            "kinds": sorted(node.kinds),
            "partitioned": node.partitions_def is not None,
            "executable": node.is_executable,
        }
    jobs = {}
    for job in sorted(repository.get_all_jobs(), key=lambda j: j.name):
        if job.name.startswith("__"):
            continue
        jobs[job.name] = {
            "ops": sorted(node.name for node in job.graph.nodes),
            "executor": job.executor_def.name,
            "tags": {k: str(v) for k, v in sorted(job.tags.items())},
        }
    return {
        "assets": assets,
        "asset_checks": sorted(
            f"{k.asset_key.to_user_string()}:{k.name}" for k in graph.asset_check_keys
        ),
        "jobs": jobs,
        "sensors": {
            s.name: {
                "job": s.job_name,
                "default_status": s.default_status.value,
                "minimum_interval_seconds": s.minimum_interval_seconds,
            }
            for s in sorted(repository.sensor_defs, key=lambda s: s.name)
        },
        "schedules": {
            s.name: {
                "job": s.job_name,
                "cron": s.cron_schedule,
                "default_status": s.default_status.value,
            }
            for s in sorted(repository.schedule_defs, key=lambda s: s.name)
        },
        "resources": {
            key: type(value).__name__ for key, value in sorted((loaded.resources or {}).items())
        },
    }


def test_the_definitions_match_their_snapshot(monkeypatch):
    for variable in ("EMAIL_BACKEND", "FOLLOWUP_SCHEDULE_CRON", "ARCHIVE_START_DATE"):
        monkeypatch.delenv(variable, raising=False)  # the defaults are what is snapshotted
    current = snapshot()
    if os.environ.get("UPDATE_SNAPSHOT"):
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    assert current == json.loads(SNAPSHOT.read_text()), (
        "the definitions changed: review the difference, then UPDATE_SNAPSHOT=1"
    )
    assert isinstance(defs(), dg.Definitions)
