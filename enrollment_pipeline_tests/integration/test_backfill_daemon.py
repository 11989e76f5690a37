"""A backfill as users launch it: the UI's partition range, through `dagster dev`'s GraphQL API
(`launchPartitionBackfill`, what the Materialize… dialog sends), run by its daemon."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import pytest

from enrollment_pipeline.lib.mongo.collections import APPLICATIONS
from enrollment_pipeline.lib.sample_data import write_archive
from enrollment_pipeline_tests.dagster_dev import dagster_dev

pytestmark = pytest.mark.integration

LAUNCH = """
mutation($p: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $p) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}"""

STATUS = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    ... on PartitionBackfill { status numPartitions runs { status } }
  }
}"""


def test_a_partition_range_launched_like_the_ui_completes_in_one_run(services, mongo, tmp_path):
    archive = tmp_path / "archive"
    written = write_archive(archive, 40, seed=4, start=datetime(2024, 3, 1, tzinfo=UTC))
    days = sorted(written)[:10]
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": services.kafka_bootstrap_servers,
        "ENROLLMENT_TOPIC": f"daemon-{uuid.uuid4().hex[:8]}",
        "LEAD_TOPIC": f"daemon-leads-{uuid.uuid4().hex[:8]}",
        "MONGO_URI": services.mongo_uri,
        "MONGO_DATABASE": mongo.database,
        "ARCHIVE_ROOT": str(archive),
        "ARCHIVE_START_DATE": "2024-03-01",
    }
    with dagster_dev(env, tmp_path) as dev:
        launched = dev.graphql(
            LAUNCH,
            {
                "p": {
                    "assetSelection": [{"path": ["historic_enrollment_events"]}],
                    "partitionNames": days,
                    "title": "history test",
                }
            },
        )["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched

        deadline = time.monotonic() + 240
        backfill: dict = {}
        while time.monotonic() < deadline:
            dev.assert_alive()
            backfill = dev.graphql(STATUS, {"id": launched["backfillId"]})[
                "partitionBackfillOrError"
            ]
            if backfill["status"] not in ("REQUESTED", "CANCELING", "FAILING"):
                break
            time.sleep(3)
        assert backfill.get("status") in ("COMPLETED", "COMPLETED_SUCCESS"), (
            f"{backfill}\n{dev.log_tail()}"
        )
        assert [run["status"] for run in backfill["runs"]] == ["SUCCESS"]  # one run for the range
    assert mongo.db()[APPLICATIONS].count_documents({}) > 0
