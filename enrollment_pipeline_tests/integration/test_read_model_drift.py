"""The check `read_model_drift` finds documents edited behind the writers' back, a rebuild of
the ids it reports repairs them, a batch in flight is no alarm, and its cost is the sample's."""

from __future__ import annotations

import json
import random
import threading
from collections import Counter
from datetime import UTC, datetime

import dagster as dg
import pytest
from pymongo import MongoClient, monitoring

from enrollment_pipeline.defs.history.jobs import rebuild_read_model_job
from enrollment_pipeline.defs.ingestion.schedules import read_model_drift_check
from enrollment_pipeline.lib.drift import check_drift, compare
from enrollment_pipeline.lib.mongo.collections import (
    APPLICATIONS,
    BROKER_FOLLOWUPS,
    ENROLLMENT_EVENTS,
)
from enrollment_pipeline.lib.mongo.store import EnrollmentStore
from enrollment_pipeline.lib.sample_data import synthetic_records
from enrollment_pipeline_tests import factories as f
from enrollment_pipeline_tests.jobs import run_job
from enrollment_pipeline_tests.pipeline import Pipeline, assert_read_model_is_the_fold, short_lease

pytestmark = pytest.mark.integration

START = datetime(2026, 10, 1, tzinfo=UTC)


def ingested(pipeline: Pipeline, applications: int, seed: int) -> list[tuple[bytes, bytes]]:
    records = [(r.key, r.value) for r in synthetic_records(applications, seed=seed, start=START)]
    pipeline.produce(records)
    pipeline.ingest()
    return records


def run_check(pipeline: Pipeline, sample: int) -> dg.AssetCheckEvaluation:
    """The check as the schedule (or the UI) runs it: its job, in process."""
    outcome = run_job(
        read_model_drift_check,
        resources=pipeline.resources(read_model_drift_sample=sample),
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert outcome.success
    (evaluation,) = outcome.get_asset_check_evaluations()
    assert evaluation.check_name == "read_model_drift"
    return evaluation


def values(evaluation: dg.AssetCheckEvaluation) -> dict:
    return {k: v.value for k, v in evaluation.metadata.items()}


def test_the_check_finds_each_edited_document_and_a_rebuild_of_its_ids_repairs_them(
    pipeline: Pipeline,
):
    records = ingested(pipeline, 2_000, seed=31)
    db = pipeline.mongo.db()
    untouched = run_check(pipeline, sample=2_000)
    assert untouched.passed, values(untouched)
    assert values(untouched)["sampled"] == 2_000

    followups = {d["_id"]: d for d in db[BROKER_FOLLOWUPS].find()}
    awaiting = sorted(a for a, d in followups.items() if d["status"] == "AWAITING_SIGNATURE")
    submitted = sorted(
        d["_id"]
        for d in db[APPLICATIONS].find({"status": "SUBMITTED", "broker": {"$ne": None}})
        if d["_id"] not in awaiting
    )
    assert len(awaiting) >= 3 and len(submitted) >= 2
    edits = {
        submitted[0]: ("status", {"$set": {"status": "APPROVED"}}),
        submitted[1]: ("broker.broker_id", {"$set": {"broker.broker_id": "BRK-EDITED"}}),
        awaiting[0]: ("broker_followup_status", {"$set": {"broker_followup_status": "SIGNED"}}),
        awaiting[1]: ("event_count", {"$inc": {"event_count": 1}}),
    }
    for app_id, (_, update) in edits.items():
        db[APPLICATIONS].update_one({"_id": app_id}, update)
    # The queue too: its status edited, the application's document left as it was.
    db[BROKER_FOLLOWUPS].update_one({"_id": awaiting[2]}, {"$set": {"status": "CLOSED"}})
    edited_fields = {a: field for a, (field, _) in edits.items()}
    edited_fields[awaiting[2]] = "broker_followups.status"

    found = run_check(pipeline, sample=2_000)
    metadata = values(found)
    assert not found.passed
    assert found.severity == dg.AssetCheckSeverity.ERROR
    assert (metadata["sampled"], metadata["drifted"]) == (2_000, 5)
    assert sorted(metadata["drifted_ids"]) == sorted(edited_fields)
    reported = {e["application_id"]: e["fields"] for e in metadata["examples"]}
    for app_id, field in edited_fields.items():
        assert field in reported[app_id], (app_id, reported[app_id])
    assert "BRK-EDITED" not in json.dumps(metadata)  # fields, never their values
    assert "rebuild_read_model" in metadata["repair"]

    rebuilt = run_job(
        rebuild_read_model_job,
        resources=pipeline.resources(),
        run_config={
            "ops": {
                "refold_every_application": {"config": {"application_ids": metadata["drifted_ids"]}}
            }
        },
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert rebuilt.success
    (materialization,) = rebuilt.asset_materializations_for_node("refold_every_application")
    report = {k: v.value for k, v in materialization.metadata.items()}
    # Only those five were read and written, not the whole store.
    assert report["requested"] == report["applications"] == 5
    assert report["events"] == db[ENROLLMENT_EVENTS].count_documents(
        {"application_id": {"$in": list(edited_fields)}}
    )
    assert report["documents_changed"] == 4 and report["followups_written"] == 1
    assert run_check(pipeline, sample=2_000).passed
    assert_read_model_is_the_fold(pipeline, records)


def test_a_batch_in_flight_is_not_drift(pipeline: Pipeline):
    records = ingested(pipeline, 40, seed=32)
    apps = sorted(pipeline.applications())
    # A second batch: every application withdrawn, held between its read and its write.
    withdrawals = [f.record(f.withdrawn(app_id, 60 * 24 * 90)) for app_id in apps]
    pipeline.produce(withdrawals)
    paused, go_on = threading.Event(), threading.Event()

    def hold(step: str) -> None:
        if step == "after_read_before_write":
            paused.set()
            assert go_on.wait(60)

    ingestion = threading.Thread(
        target=pipeline.ingest, kwargs={"lease": short_lease(pipeline.mongo), "checkpoint": hold}
    )
    ingestion.start()
    assert paused.wait(60)
    # The new events are stored, the documents not yet written: without the lease it differs.
    assert {d.application_id for d in compare(pipeline.store, apps)} == set(apps)

    waiting = threading.Event()

    def check_lease():
        waiting.set()  # the check found suspects and now waits for the lease
        return short_lease(pipeline.mongo, "read_model_drift")

    result = {}
    check = threading.Thread(
        target=lambda: result.update(
            report=check_drift(
                pipeline.store,
                sample_size=len(apps),
                engine=pipeline.mongo.engine(),
                lease=check_lease,
            )
        )
    )
    check.start()
    assert waiting.wait(60)
    go_on.set()
    ingestion.join(60)
    check.join(60)
    report = result["report"]
    assert report.suspected == len(apps)  # it did see the batch half done...
    assert report.passed and report.drifted == []  # ...and did not call it drift
    assert report.in_flight == len(apps)
    assert_read_model_is_the_fold(pipeline, records + withdrawals, in_order=False)


class Reads(monitoring.CommandListener):
    """Commands sent, and documents each collection returned (first batches and getMores)."""

    def __init__(self) -> None:
        self.commands: Counter[str] = Counter()
        self.documents: Counter[str] = Counter()
        self.id_only: Counter[str] = Counter()
        self._collection: dict[int, str] = {}

    def started(self, event):
        command = event.command
        self.commands[event.command_name] += 1
        collection = command.get("find") or command.get("aggregate") or command.get("collection")
        self._collection[event.request_id] = collection

    def succeeded(self, event):
        cursor = event.reply.get("cursor") if isinstance(event.reply, dict) else None
        if not cursor:
            return
        collection = self._collection.get(event.request_id, "?")
        batch = cursor.get("firstBatch", cursor.get("nextBatch", []))
        self.documents[collection] += len(batch)
        self.id_only[collection] += sum(1 for doc in batch if set(doc) == {"_id"})

    def failed(self, event):
        pass


def test_the_checks_reads_are_bounded_by_the_sample(pipeline: Pipeline, services):
    ingested(pipeline, 1_500, seed=33)
    engine = pipeline.mongo.engine()
    reads = Reads()
    client = MongoClient(services.mongo_uri, event_listeners=[reads], tz_aware=True)
    try:
        store = EnrollmentStore(client[pipeline.mongo.database])
        report = check_drift(store, sample_size=50, engine=engine, lease=None, rng=random.Random(5))
    finally:
        client.close()
    assert (report.sampled, report.drifted) == (50, [])
    total_events = pipeline.mongo.db()[ENROLLMENT_EVENTS].count_documents({})
    # Whole documents: the 50 sampled, their events and their follow-ups, nothing more.
    full = {c: reads.documents[c] - reads.id_only[c] for c in reads.documents}
    assert full[APPLICATIONS] == 50
    assert full.get(BROKER_FOLLOWUPS, 0) <= 50
    assert 50 <= full[ENROLLMENT_EVENTS] < total_events / 10
    if engine == "ferretdb":
        # No $sample: one streamed scan of ids (each document `_id` only), in one command here.
        assert reads.commands["aggregate"] == 0
        assert reads.id_only[APPLICATIONS] == 1_500
    else:
        assert reads.commands["aggregate"] == 1 and reads.id_only[APPLICATIONS] == 50
    # One command to sample, then one `$in` (and its getMores) per collection for the page.
    assert reads.commands["find"] + reads.commands["aggregate"] <= 4
    assert reads.commands["getMore"] <= 3
