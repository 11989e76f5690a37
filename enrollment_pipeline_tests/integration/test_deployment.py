"""The production shape, end to end: `dagster-webserver` and `dagster-daemon` as two processes,
the production profile (deploy/dagster.yaml, PostgreSQL storage), the real services.

Events are produced; the daemon's sensors launch ingestion and lead delivery; the read model
converges to the fold of the log; a follow-up run is launched through the GraphQL API with an
`as_of`, as an operator re-running an hour would; its metadata is read back through GraphQL;
both processes stop cleanly on SIGTERM.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest

from enrollment_pipeline.lib.clients.dagster_api import DagsterApi, followup_run_config
from enrollment_pipeline.lib.consumer_groups import LEAD_INTEGRATION_GROUP, READ_MODEL_GROUP
from enrollment_pipeline.lib.sample_data import synthetic_events
from enrollment_pipeline_tests.conftest import free_ports
from enrollment_pipeline_tests.pipeline import Pipeline, assert_read_model_is_the_fold

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

ASSET_METADATA = """
query {
  assetOrError(assetKey: {path: ["broker_followup_emails"]}) {
    ... on Asset { assetMaterializations(limit: 1) {
      runId metadataEntries { label ... on IntMetadataEntry { intValue } } } }
  }
}"""


def fresh_database(pg_url: str) -> str:
    """A new PostgreSQL database for this test's Dagster storage (sensor state is per storage)."""
    name = f"dagster_e2e_{uuid.uuid4().hex[:8]}"
    connection = psycopg2.connect(pg_url, connect_timeout=10)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    connection.close()
    parts = urlsplit(pg_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def wait_for(what: str, check, timeout_s: float, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(2)
    tails = "\n".join(f"--- {log.name}\n{log.read_text()[-2500:]}" for log in logs)
    raise AssertionError(f"{what} within {timeout_s:.0f} s\n{tails}")


def test_webserver_and_daemon_run_the_pipeline_on_postgres_storage(
    services, pipeline: Pipeline, local_crm, smtp_server, tmp_path
):
    assert services.dagster_pg_url, "set TEST_DAGSTER_PG_URL when using external services"
    inbox, smtp_port = smtp_server
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    (port,) = free_ports(1)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_URL": fresh_database(services.dagster_pg_url),
        "KAFKA_BOOTSTRAP_SERVERS": services.kafka_bootstrap_servers,
        "ENROLLMENT_TOPIC": pipeline.topic,
        "LEAD_TOPIC": pipeline.lead_topic,
        "MONGO_URI": services.mongo_uri,
        "MONGO_DATABASE": pipeline.mongo.database,
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp_port),
        "LEAD_API_URL": local_crm.url,
        "LEAD_API_TOKEN": "s3cret-token",
        "LEAD_API_ALLOW_HTTP": "true",  # the CRM double is on loopback
    }
    records = list(synthetic_events(60, seed=12, start=datetime.now(UTC) - timedelta(days=1)))
    pipeline.produce(records)

    logs = [tmp_path / "webserver.log", tmp_path / "daemon.log"]
    commands = [
        [
            str(BIN / "dagster-webserver"),
            "-w",
            "workspace.yaml",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
    ]
    processes = [
        subprocess.Popen(
            command,
            env=env,
            cwd=REPO,
            start_new_session=True,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        for command, log in zip(commands, logs, strict=True)
    ]
    try:
        # The daemon's sensors ingest everything and deliver every lead.
        def caught_up() -> bool:
            for process in processes:
                assert process.poll() is None, "\n".join(log.read_text()[-2500:] for log in logs)
            ends = {p: e for p, e in pipeline.kafka.end_offsets(pipeline.topic).items() if e}
            if pipeline.store.committed_offsets(READ_MODEL_GROUP, pipeline.topic) != ends:
                return False
            lead_ends = {
                p: e for p, e in pipeline.kafka.end_offsets(pipeline.lead_topic).items() if e
            }
            committed = pipeline.store.committed_offsets(
                LEAD_INTEGRATION_GROUP, pipeline.lead_topic
            )
            return bool(lead_ends) and committed == lead_ends

        wait_for("the sensors did not catch up", caught_up, 240, logs)
        assert_read_model_is_the_fold(pipeline, records)
        assert sorted(x["lead_event_id"] for x in local_crm.state.leads) == sorted(
            x["lead_event_id"] for x in pipeline.leads()
        )

        # An operator launches the follow-up hour through the API, with its as_of.
        as_of = (datetime.now(UTC) + timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
        api = DagsterApi(port)
        wait_for("the webserver did not answer", api.is_up, 60, logs)
        run_id = api.launch_run("send_broker_followups", followup_run_config(as_of.isoformat()))
        assert api.wait_for_run(run_id, 180) == "SUCCESS", logs[1].read_text()[-2500:]
        (materialization,) = api.graphql(ASSET_METADATA)["assetOrError"]["assetMaterializations"]
        assert materialization["runId"] == run_id
        metadata = {e["label"]: e.get("intValue") for e in materialization["metadataEntries"]}
        assert metadata["sent"] == len(inbox.messages) > 0
        assert metadata["failed"] == 0
    finally:
        for process in processes:
            os.killpg(process.pid, signal.SIGTERM)
        codes = []
        for process in processes:
            try:
                codes.append(process.wait(timeout=60))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                codes.append("killed")
    assert "killed" not in codes, "a Dagster process did not stop on SIGTERM"


SENSOR_TICKS = """
query($s: SensorSelector!) {
  sensorOrError(sensorSelector: $s) {
    ... on Sensor { sensorState { ticks(limit: 5) {
      status error { message cause { message cause { message } } } } } }
  }
}"""


def test_plain_dagster_dev_in_the_repository_root_needs_no_variable(services, tmp_path):
    """The first thing a Dagster user types, with no Dagster variable exported and Kafka
    unreachable: the UI loads, and the sensor's tick says which setting to fix. (MongoDB is
    the session's, so the tick gets as far as Kafka; a tick without MongoDB names MONGO_URI,
    tested in test_ingestion_dagster.py.)"""
    (port, dead) = free_ports(2)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DAGSTER_", "KAFKA_", "MONGO_", "STACK_"))
    }
    env["KAFKA_BOOTSTRAP_SERVERS"] = f"127.0.0.1:{dead}"  # nothing listens there
    env["MONGO_URI"] = services.mongo_uri
    log = tmp_path / "dagster-dev.log"
    process = subprocess.Popen(
        [str(BIN / "dagster"), "dev", "-p", str(port)],
        env=env,
        cwd=REPO,
        start_new_session=True,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        api = DagsterApi(port)
        wait_for("the UI did not answer", api.is_up, 120, [log])
        assert process.poll() is None, log.read_text()[-3000:]
        selector = {
            "repositoryLocationName": "enrollment_pipeline",
            "repositoryName": "__repository__",
            "sensorName": "enrollment_events_sensor",
        }

        def failed_tick() -> str:
            """The first failed tick's error, with its causes, as the tick's page shows it."""
            state = api.graphql(SENSOR_TICKS, {"s": selector})["sensorOrError"]["sensorState"]
            for tick in state["ticks"]:
                if tick["status"] == "FAILURE":
                    chain, error = [], tick["error"]
                    while error:
                        chain.append(error["message"])
                        error = error.get("cause")
                    return "\n".join(chain)
            return ""

        wait_for("no failed sensor tick", failed_tick, 90, [log])
        assert "check KAFKA_BOOTSTRAP_SERVERS" in failed_tick()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
    validated = subprocess.run(
        [str(BIN / "dagster"), "definitions", "validate"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert validated.returncode == 0, validated.stdout + validated.stderr
