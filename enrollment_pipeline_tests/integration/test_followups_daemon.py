"""The follow-up schedule as users run it: `dagster dev`'s daemon ticks it, the run sends.

The schedule is turned on through the GraphQL API (as the UI's toggle does), with a cron of
every minute so a tick comes within the test; the asset's metadata is read back through
GraphQL. Real processes, real SMTP server, real MongoDB-wire server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests

from enrollment_pipeline.domain.events import EnrollmentEvent
from enrollment_pipeline.lib.ingestion.batch import Source, apply_parsed
from enrollment_pipeline.lib.mongo.store import EnrollmentStore
from enrollment_pipeline_tests import factories as f
from enrollment_pipeline_tests.conftest import free_ports

pytestmark = pytest.mark.integration

DAGSTER = Path(sys.executable).parent / "dagster"

ASSET_METADATA = """
query {
  assetOrError(assetKey: {path: ["broker_followup_emails"]}) {
    ... on Asset {
      assetMaterializations(limit: 1) {
        metadataEntries { label ... on IntMetadataEntry { intValue } }
      }
    }
  }
}"""


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    response = requests.post(
        f"http://127.0.0.1:{port}/graphql",
        json={"query": query, "variables": variables or {}},
        timeout=30,
    )
    response.raise_for_status()
    body = response.json()
    assert "errors" not in body, body
    return body["data"]


def test_the_daemon_ticks_the_schedule_and_the_metadata_reads_back(
    services, mongo, smtp_server, tmp_path
):
    inbox, smtp_port = smtp_server
    recent = datetime.now(UTC) - timedelta(minutes=10)
    events = [
        {**f.submitted(app, 0), "occurred_at": recent.isoformat().replace("+00:00", "Z")}
        for app in ("APP-1", "APP-2")
    ]
    apply_parsed(
        EnrollmentStore.of(mongo),
        [
            (Source(e["event_id"], {}, None, None), EnrollmentEvent.model_validate(e))
            for e in events
        ],
        publish_leads=None,
    )
    (port,) = free_ports(1)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path),
        "KAFKA_BOOTSTRAP_SERVERS": services.kafka_bootstrap_servers,
        "ENROLLMENT_TOPIC": f"daemon-{uuid.uuid4().hex[:8]}",  # no events: the sensor skips
        "MONGO_URI": services.mongo_uri,
        "MONGO_DATABASE": mongo.database,
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp_port),
        "FOLLOWUP_SCHEDULE_CRON": "* * * * *",
    }
    log = tmp_path / "dagster.log"
    dagster = subprocess.Popen(
        [str(DAGSTER), "dev", "-m", "enrollment_pipeline.definitions", "-p", str(port)],
        env=env,
        cwd=tmp_path,
        start_new_session=True,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert dagster.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no UI: " + log.read_text()[-3000:]
            try:
                if requests.get(f"http://127.0.0.1:{port}/server_info", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(1)
        (location,) = graphql(
            port, "query { workspaceOrError { ... on Workspace { locationEntries { name } } } }"
        )["workspaceOrError"]["locationEntries"]
        started = graphql(
            port,
            """mutation($s: ScheduleSelector!) { startSchedule(scheduleSelector: $s) {
                 __typename ... on ScheduleStateResult { scheduleState { status } } } }""",
            {
                "s": {
                    "repositoryLocationName": location["name"],
                    "repositoryName": "__repository__",
                    "scheduleName": "hourly_broker_followups",
                }
            },
        )["startSchedule"]
        assert started["scheduleState"]["status"] == "RUNNING", started

        deadline = time.monotonic() + 180
        metadata: dict = {}
        while time.monotonic() < deadline and not metadata:
            assert dagster.poll() is None, log.read_text()[-3000:]
            materializations = graphql(port, ASSET_METADATA)["assetOrError"].get(
                "assetMaterializations", []
            )
            if materializations:
                metadata = {
                    e["label"]: e.get("intValue") for e in materializations[0]["metadataEntries"]
                }
            time.sleep(3)
        assert metadata, "no follow-up run materialized: " + log.read_text()[-3000:]
        assert (metadata["due"], metadata["sent"], metadata["failed"]) == (2, 2, 0)
        assert (
            sorted(r for _, rcpts, _ in inbox.messages for r in rcpts) == [f.BROKER_A["email"]] * 2
        )
    finally:
        os.killpg(dagster.pid, signal.SIGTERM)
        try:
            dagster.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(dagster.pid, signal.SIGKILL)
            dagster.wait(timeout=10)
