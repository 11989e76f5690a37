"""The follow-up schedule as users run it: `dagster dev`'s daemon ticks it, the run sends.

The schedule is turned on through the GraphQL API (as the UI's toggle does), with a cron of
every minute so a tick comes within the test; the asset's metadata is read back through
GraphQL. Real processes, real SMTP server, real MongoDB-wire server.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from enrollment_pipeline.domain.events import EnrollmentEvent
from enrollment_pipeline.lib.ingestion.batch import Source, apply_parsed
from enrollment_pipeline.lib.mongo.store import EnrollmentStore
from enrollment_pipeline_tests import factories as f
from enrollment_pipeline_tests.dagster_dev import dagster_dev

pytestmark = pytest.mark.integration


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
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": services.kafka_bootstrap_servers,
        "ENROLLMENT_TOPIC": f"daemon-{uuid.uuid4().hex[:8]}",  # no events: the sensor skips
        "LEAD_TOPIC": f"daemon-leads-{uuid.uuid4().hex[:8]}",
        "MONGO_URI": services.mongo_uri,
        "MONGO_DATABASE": mongo.database,
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp_port),
        "FOLLOWUP_SCHEDULE_CRON": "* * * * *",
    }
    with dagster_dev(env, tmp_path) as dev:
        assert dev.api.start_schedule("hourly_broker_followups") == "RUNNING"

        deadline = time.monotonic() + 180
        metadata: dict = {}
        while time.monotonic() < deadline and not metadata:
            dev.assert_alive()
            materializations = dev.graphql(ASSET_METADATA)["assetOrError"].get(
                "assetMaterializations", []
            )
            if materializations:
                metadata = {
                    e["label"]: e.get("intValue") for e in materializations[0]["metadataEntries"]
                }
            time.sleep(3)
        assert metadata, "no follow-up run materialized: " + dev.log_tail()
        assert (metadata["due"], metadata["sent"], metadata["failed"]) == (2, 2, 0)
        assert (
            sorted(r for _, rcpts, _ in inbox.messages for r in rcpts) == [f.BROKER_A["email"]] * 2
        )
