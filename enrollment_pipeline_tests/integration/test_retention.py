"""How long personal data stays: a dead letter's raw bytes for DEAD_LETTER_RAW_RETENTION_DAYS
(the job `dead_letter_retention`), a lead's contact data until it is delivered."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from enrollment_pipeline.defs.privacy.jobs import dead_letter_retention
from enrollment_pipeline.defs.privacy.schedules import dead_letter_retention_schedule
from enrollment_pipeline.domain.offset_ranges import PartitionRange, RangePlan
from enrollment_pipeline.lib.clients.crm import CrmClient
from enrollment_pipeline.lib.consumer_groups import ENROLLMENT_GROUPS
from enrollment_pipeline.lib.leads.delivery import deliver_range
from enrollment_pipeline.lib.mongo.collections import DEAD_LETTERS, LEAD_DELIVERIES
from enrollment_pipeline.lib.mongo.lead_store import LeadDeliveryStore
from enrollment_pipeline.lib.operations import redrive
from enrollment_pipeline.lib.retention import expire_raw_bytes
from enrollment_pipeline.stack.crm import LocalCrm
from enrollment_pipeline_tests import factories as f
from enrollment_pipeline_tests.jobs import run_job
from enrollment_pipeline_tests.pipeline import Pipeline

pytestmark = pytest.mark.integration


def bad(app_id: str) -> tuple[bytes, bytes]:
    """A record that holds contact data and fails validation (no plan)."""
    event = f.submitted(app_id, 0)
    del event["payload"]["plan"]
    return app_id.encode(), json.dumps(event).encode()


def letters(pipeline: Pipeline) -> dict[str, dict]:
    return {d["key"]: d for d in pipeline.mongo.db()[DEAD_LETTERS].find()}


def test_letters_past_the_period_lose_their_raw_bytes_in_the_next_run_newer_ones_keep_them(
    pipeline: Pipeline,
):
    old, new = [f"APP-OLD-{i}" for i in range(5)], ["APP-NEW-0", "APP-NEW-1"]
    pipeline.produce([bad(app) for app in old + new])
    pipeline.ingest()
    db = pipeline.mongo.db()
    now = datetime.now(UTC)
    # Five seen 31 days ago, one 29 days ago (within 30), one today.
    db[DEAD_LETTERS].update_many(
        {"key": {"$in": old}}, {"$set": {"first_seen_at": now - timedelta(days=31)}}
    )
    db[DEAD_LETTERS].update_one(
        {"key": "APP-NEW-0"}, {"$set": {"first_seen_at": now - timedelta(days=29)}}
    )
    before = letters(pipeline)
    assert all(letter["raw_base64"] for letter in before.values())

    outcome = run_job(
        dead_letter_retention,
        resources=pipeline.resources(dead_letter_raw_retention_days=30),
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert outcome.success
    (materialization,) = outcome.asset_materializations_for_node("drop_expired_dead_letter_bytes")
    assert materialization.metadata["raw_bytes_removed"].value == 5
    after = letters(pipeline)
    for app in old:
        letter, was = after[app], before[app]
        assert letter["raw_base64"] is None and letter["raw_removed"] == "retention"
        # What identifies the input at its source stays: reason, detail, size, hash, position.
        for kept in ("_id", "reason", "detail", "raw_size", "raw_sha256", "source", "key"):
            assert letter[kept] == was[kept], kept
        assert "Jane" not in json.dumps(letter, default=str)
    for app in new:
        assert after[app]["raw_base64"] == before[app]["raw_base64"]

    # A re-read of the same input (a replay) does not bring the bytes back, and a redrive
    # says why it cannot.
    ends = pipeline.kafka.end_offsets(pipeline.topic)
    pipeline.store.commit_offsets(
        ENROLLMENT_GROUPS, pipeline.topic, dict.fromkeys(ends, 0), now=now, run_id=None
    )
    replay = pipeline.ingest()
    assert replay.report.dead_lettered == len(old + new)
    assert all(letters(pipeline)[app]["raw_base64"] is None for app in old)
    refused = redrive(
        pipeline.store, [after[old[0]]["_id"]], publish_leads=None, lease=pipeline.lease()
    )
    assert (
        "removed after DEAD_LETTER_RAW_RETENTION_DAYS"
        in refused.still_rejected[after[old[0]]["_id"]]
    )


def test_a_run_is_bounded_and_the_next_one_goes_on(pipeline: Pipeline):
    pipeline.produce([bad(f"APP-{i}") for i in range(5)])
    pipeline.ingest()
    db = pipeline.mongo.db()
    db[DEAD_LETTERS].update_many({}, {"$set": {"first_seen_at": datetime(2020, 1, 1, tzinfo=UTC)}})
    first = expire_raw_bytes(pipeline.store, days=30, batch=2, max_rounds=2)
    assert (first.removed, first.more_left) == (4, True)
    assert db[DEAD_LETTERS].count_documents({"raw_base64": {"$ne": None}}) == 1
    second = expire_raw_bytes(pipeline.store, days=30, batch=2, max_rounds=2)
    assert (second.removed, second.more_left) == (1, False)
    assert db[DEAD_LETTERS].count_documents({"raw_base64": {"$ne": None}}) == 0


def test_the_retention_runs_daily_on_its_own():
    assert dead_letter_retention_schedule.cron_schedule == "47 2 * * *"
    assert dead_letter_retention_schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert dead_letter_retention_schedule.job_name == "dead_letter_retention"


def test_a_delivered_lead_keeps_no_contact_data(pipeline: Pipeline, local_crm: LocalCrm):
    pipeline.produce([f.record(f.submitted("APP-1", 0)), f.record(f.submitted("APP-2", 0))])
    pipeline.ingest()
    deliveries = LeadDeliveryStore(pipeline.mongo.db(), pipeline.mongo.writer())
    crm = CrmClient(base_url=local_crm.url, token="s3cret-token", allow_http=True)
    ends = pipeline.kafka.end_offsets(pipeline.lead_topic)
    plan = RangePlan(
        pipeline.lead_topic, tuple(PartitionRange(p, 0, e) for p, e in ends.items() if e)
    )
    report = deliver_range(pipeline.kafka, pipeline.store, deliveries, crm, plan)
    assert report.delivered == 2 and len(local_crm.state.leads) == 2
    records = list(pipeline.mongo.db()[LEAD_DELIVERIES].find())
    assert {r["status"] for r in records} == {"DELIVERED"} and len(records) == 2
    for record in records:
        assert "lead" not in record
        text = json.dumps(record, default=str)
        assert not any(v in text for v in ("Jane", "Doe", "jane.doe@example.com", "+1-555-0100"))
