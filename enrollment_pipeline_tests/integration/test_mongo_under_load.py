"""The write path under real load, on the real server: what hung FerretDB for good before.

A batch that updates thousands of existing applications, several writers at once, and a
server that stalls (SIGSTOP): every write finishes or fails in bounded time, and the server
still answers afterwards.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
from pymongo import MongoClient, UpdateOne, monitoring

from enrollment_pipeline.defs.ingestion.jobs import ingest_enrollment_events
from enrollment_pipeline.domain.events import EnrollmentEvent
from enrollment_pipeline.domain.projection import fold_application
from enrollment_pipeline.lib.clients.mongo import (
    MongoConfig,
    MongoConnection,
    MongoUnavailableError,
)
from enrollment_pipeline.lib.mongo.collections import APPLICATIONS
from enrollment_pipeline.lib.mongo.store import EnrollmentStore
from enrollment_pipeline.lib.sample_data import synthetic_events
from enrollment_pipeline.stack.mongo import MongoWire
from enrollment_pipeline_tests import factories as f
from enrollment_pipeline_tests.jobs import as_resources, run_job
from enrollment_pipeline_tests.pipeline import Pipeline, assert_read_model_is_the_fold

pytestmark = pytest.mark.integration

START = datetime(2026, 11, 1, tzinfo=UTC)


class UpdateSizes(monitoring.CommandListener):
    """The number of statements in each update command a client sends."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "update":
            self.sizes.append(len(event.command["updates"]))

    def succeeded(self, event) -> None:
        pass

    def failed(self, event) -> None:
        pass


def application_documents(count: int) -> list[dict]:
    """Read-model documents as ingestion writes them (about 1 KB each)."""
    return [
        fold_application(
            app_id, [EnrollmentEvent.model_validate(f.submitted(app_id, i))]
        ).to_document()
        for i, app_id in ((i, f"APP-{i:06d}") for i in range(count))
    ]


def test_one_batch_updates_5000_existing_applications(mongo: MongoConnection):
    sizes = UpdateSizes()
    with MongoClient(
        mongo.uri, event_listeners=[sizes], tz_aware=True, socketTimeoutMS=60_000
    ) as client:
        store = EnrollmentStore(client[mongo.database], mongo.writer())
        documents = application_documents(5_000)
        store.write_applications(documents, [])

        store.write_applications([], [{**d, "status": "APPROVED"} for d in documents])

        assert client[mongo.database][APPLICATIONS].count_documents({"status": "APPROVED"}) == 5_000
    limit = mongo.writer().updates_per_command
    assert sum(sizes.sizes) == 5_000
    assert max(sizes.sizes) <= limit
    mongo.ping()  # the server still answers


def test_four_concurrent_writers_on_different_collections(mongo: MongoConnection):
    writer = mongo.writer()
    per_writer = 5_000
    collections = [f"load_{n}" for n in range(4)]
    for name in collections:
        writer.insert_new(mongo.db()[name], [{"_id": f"A{i}", "v": 0} for i in range(per_writer)])
    errors: list[BaseException] = []

    def update_all(name: str) -> None:
        # Each writer is its own client, as concurrent jobs are.
        try:
            with MongoClient(mongo.uri, socketTimeoutMS=60_000) as client:
                writer.bulk_write(
                    client[mongo.database][name],
                    [UpdateOne({"_id": f"A{i}"}, {"$set": {"v": 1}}) for i in range(per_writer)],
                )
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=update_all, args=(name,)) for name in collections]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads), "a writer never finished"
    assert errors == []
    for name in collections:
        assert mongo.db()[name].count_documents({"v": 1}) == per_writer
    mongo.ping()


def _resource(server: MongoWire, database: str, timeout_ms: int = 2_000) -> MongoConnection:
    return MongoConnection(
        MongoConfig(
            uri=server.uri,
            database=database,
            timeout_ms=timeout_ms,
            server_selection_timeout_ms=2_000,
        )
    )


def _stall(server: MongoWire) -> int:
    pid = server.daemon.pid()
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    return pid


def test_a_stall_mid_batch_fails_in_bounded_time_and_the_rerun_converges(
    own_mongo_server: MongoWire, kafka, topic, lead_topic
):
    mongo = _resource(own_mongo_server, "stall_mid_batch")
    mongo.ensure_indexes()
    pipeline = Pipeline(kafka, mongo, topic, lead_topic)
    records = list(synthetic_events(300, seed=3, start=START))
    pipeline.produce(records)
    plan = pipeline.plan()
    stalled: list[int] = []

    def stall_after_storing(step: str) -> None:
        if step == "after_store_insert":
            stalled.append(_stall(own_mongo_server))

    started = time.monotonic()
    with pytest.raises(MongoUnavailableError) as failure, mongo.explained_errors():
        pipeline.ingest(plan, checkpoint=stall_after_storing)
    elapsed = time.monotonic() - started
    assert stalled, "the batch never reached the stall"
    assert elapsed < 30, f"the stalled batch took {elapsed:.0f} s to fail"
    message = str(failure.value)
    assert own_mongo_server.uri.removeprefix("mongodb://").rstrip("/") in message
    assert "MONGO_TIMEOUT_MS" in message
    assert own_mongo_server.state() == "hung"

    os.kill(stalled[0], signal.SIGCONT)
    assert own_mongo_server.state() == "running"
    rerun = Pipeline(kafka, _resource(own_mongo_server, "stall_mid_batch"), topic, lead_topic)
    rerun.ingest(plan)
    assert_read_model_is_the_fold(rerun, records)


def test_a_dagster_run_on_a_stalled_server_fails_in_bounded_time_then_the_rerun_succeeds(
    own_mongo_server: MongoWire, kafka, topic, lead_topic
):
    mongo = _resource(own_mongo_server, "stall_run")
    mongo.ensure_indexes()
    pipeline = Pipeline(kafka, mongo, topic, lead_topic)
    records = list(synthetic_events(50, seed=4, start=START))
    pipeline.produce(records)
    run_config = dg.RunConfig(ops={"ingest_offset_range": {"config": pipeline.plan().to_config()}})
    pid = _stall(own_mongo_server)
    try:
        started = time.monotonic()
        result = run_job(
            ingest_enrollment_events,
            run_config=run_config,
            resources=as_resources(
                {
                    **pipeline.resources(),
                    "mongo": _resource(own_mongo_server, "stall_run"),
                }
            ),
            raise_on_error=False,
        )
        elapsed = time.monotonic() - started
    finally:
        os.kill(pid, signal.SIGCONT)
    assert not result.success
    assert elapsed < timedelta(seconds=30).total_seconds()
    failure = next(e for e in result.all_events if e.is_failure)
    assert "did not answer within" in str(failure.event_specific_data)
    assert own_mongo_server.uri.removeprefix("mongodb://").rstrip("/") in str(
        failure.event_specific_data
    )

    rerun = run_job(
        ingest_enrollment_events,
        run_config=run_config,
        resources=as_resources(
            {
                **pipeline.resources(),
                "mongo": _resource(own_mongo_server, "stall_run"),
            }
        ),
    )
    assert rerun.success
    assert_read_model_is_the_fold(pipeline, records)


def test_stack_reports_a_hung_server_and_up_restarts_it(own_mongo_server: MongoWire):
    hung_pid = _stall(own_mongo_server)
    assert own_mongo_server.state() == "hung"

    own_mongo_server.up()

    assert own_mongo_server.state() == "running"
    assert own_mongo_server.daemon.pid() not in (None, hung_pid)
    assert not os.path.exists(f"/proc/{hung_pid}") or _zombie(hung_pid)
    assert "restarting it" in own_mongo_server.daemon.log_file.read_text()


def _zombie(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rpartition(")")[2].split()[0] == "Z"
