"""The pipeline against secured systems, for real: Kafka over SASL_SSL with a SCRAM-SHA-512 user
and the stack's private CA, and a MongoDB-wire server that requires its user (issue 16).

The secured pieces are a private stack of this module's own (`STACK_SECURE`); the rest of the
suite keeps the default, unsecured stack. The pipeline gets its settings the way a deployment
does: from the variables `stack env --secure` prints, secrets through `dg.EnvVar`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner
from pymongo import MongoClient
from pymongo.errors import OperationFailure

from enrollment_pipeline.cli import main
from enrollment_pipeline.defs.ingestion.sensors import enrollment_events_sensor
from enrollment_pipeline.defs.kafka.resources import KafkaResource
from enrollment_pipeline.defs.mongo.resources import MongoResource
from enrollment_pipeline.lib.clients.kafka import KafkaAuthenticationError, KafkaClient
from enrollment_pipeline.lib.clients.mongo import (
    MongoAuthenticationError,
    MongoConfig,
    MongoConnection,
)
from enrollment_pipeline.lib.sample_data import synthetic_events
from enrollment_pipeline.settings import KafkaSettings, MongoSettings, PipelineSettings
from enrollment_pipeline.stack.local import LocalStack
from enrollment_pipeline_tests.conftest import make_state_dir, private_stack_settings
from enrollment_pipeline_tests.pipeline import Pipeline, assert_read_model_is_the_fold, drain

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def secured() -> Iterator[LocalStack]:
    state_dir = make_state_dir("enrollment-test-secured-")
    stack = LocalStack(
        private_stack_settings(state_dir).model_copy(update={"secure": True}), PipelineSettings()
    )
    try:
        stack.up()
        yield stack
    finally:
        stack.down()
        if not os.environ.get("TEST_KEEP_STACK"):
            shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture
def secure_env(secured: LocalStack, monkeypatch) -> dict[str, str]:
    """The variables of `stack env --secure` in this process's environment, as after
    `export $(enrollment-pipeline stack env --secure)`, with a fresh database and topics."""
    monkeypatch.setenv("STACK_STATE_DIR", str(secured.settings.state_dir))
    monkeypatch.setenv("STACK_HOST", secured.settings.host)
    monkeypatch.setenv("STACK_KAFKA_SASL_PORT", str(secured.settings.kafka_sasl_port))
    monkeypatch.setenv("STACK_MONGO_SECURE_PORT", str(secured.settings.mongo_secure_port))
    printed = CliRunner().invoke(main, ["stack", "env", "--secure"])
    assert printed.exit_code == 0, printed.output
    env = dict(line.split("=", 1) for line in printed.output.splitlines())
    # As is, so `export $(enrollment-pipeline stack env --secure)` works: nothing to unquote.
    assert not any(quote in printed.output for quote in "'\"\\ ")
    suffix = uuid.uuid4().hex[:12]
    env |= {
        "MONGO_DATABASE": f"test_{suffix}",
        "ENROLLMENT_TOPIC": f"test-{suffix}",
        "LEAD_TOPIC": f"test-leads-{suffix}",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


class SecuredPipeline(Pipeline):
    """A pipeline whose Dagster resources come from the environment as the code location's
    do: the Kafka password and the Mongo URI as `dg.EnvVar`, never as values."""

    def resources(self, **overrides) -> dict[str, object]:
        return {
            "kafka": KafkaResource.from_settings(KafkaSettings()),
            "mongo": MongoResource.from_settings(MongoSettings()),
            "settings": self.settings(**overrides),
        }


@pytest.fixture
def secured_pipeline(secure_env) -> Iterator[SecuredPipeline]:
    kafka = KafkaClient.from_settings(KafkaSettings())
    mongo = MongoConnection.from_settings(MongoSettings())
    topics = [secure_env["ENROLLMENT_TOPIC"], secure_env["LEAD_TOPIC"]]
    kafka.ensure_topics(topics, partitions=3)
    yield SecuredPipeline(kafka, mongo, *topics)
    kafka.delete_topics(topics)
    mongo.client().drop_database(mongo.database)
    mongo.close()
    kafka.close()


def secrets_of(env: dict[str, str]) -> list[str]:
    mongo_password = env["MONGO_URI"].partition("://")[2].rpartition("@")[0].partition(":")[2]
    assert mongo_password and env["KAFKA_SASL_PASSWORD"]
    return [env["KAFKA_SASL_PASSWORD"], mongo_password]


def test_the_secure_env_points_at_sasl_ssl_and_a_mongo_uri_with_credentials(secured, secure_env):
    assert secure_env["KAFKA_BOOTSTRAP_SERVERS"] == secured.kafka.sasl_bootstrap_servers
    assert secure_env["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert secure_env["KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert secure_env["KAFKA_SASL_USERNAME"] == "enrollment"
    assert Path(secure_env["KAFKA_SSL_CAFILE"]).read_text().startswith("-----BEGIN CERTIFICATE")
    assert secure_env["MONGO_URI"].startswith("mongodb://enrollment:")
    assert secure_env["MONGO_URI"].endswith(
        f"@{secured.settings.host}:{secured.settings.mongo_secure_port}/admin"
    )
    # The PLAINTEXT listener stays, for everything else.
    assert secured.env()["KAFKA_BOOTSTRAP_SERVERS"] == secured.kafka.bootstrap_servers


def test_ingestion_and_leads_go_through_sasl_ssl_and_an_authenticated_mongo(
    secured_pipeline: SecuredPipeline, secure_env
):
    pipeline = secured_pipeline
    resources = pipeline.resources()
    assert resources["kafka"].sasl_password == dg.EnvVar("KAFKA_SASL_PASSWORD")
    assert resources["kafka"].security_protocol == "SASL_SSL"
    assert resources["mongo"].uri == dg.EnvVar("MONGO_URI")
    records = list(synthetic_events(60, seed=16, start=datetime.now(UTC) - timedelta(days=1)))
    pipeline.produce(records)

    with dg.instance_for_test() as instance:
        runs = drain(instance, pipeline)
        assert runs and sum(run["events_applied"] for run in runs) > 0
        assert_read_model_is_the_fold(pipeline, records)
        assert pipeline.leads(), "no lead was published through SASL_SSL"
        shown = []
        for run in instance.get_runs():
            assert run.status == dg.DagsterRunStatus.SUCCESS
            shown.append(json.dumps(run.run_config, default=str))
            shown.extend(repr(entry) for entry in instance.all_logs(run.run_id))
        shown_text = "\n".join(shown)
    assert len(shown) > 10
    for secret in secrets_of(secure_env):
        assert secret not in shown_text


def test_a_wrong_kafka_password_fails_the_sensor_at_once_in_one_line_naming_the_setting(
    secured_pipeline: SecuredPipeline, secure_env, monkeypatch
):
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "not-the-password")
    with dg.instance_for_test() as instance:
        started = time.monotonic()
        with (
            pytest.raises(Exception) as raised,
            dg.build_sensor_context(
                instance=instance, resources=secured_pipeline.resources()
            ) as context,
        ):
            enrollment_events_sensor(context)
    assert time.monotonic() - started < 8  # less than the bootstrap timeout: not a timeout
    error = raised.value
    while not isinstance(error, KafkaAuthenticationError) and error.__cause__ is not None:
        error = error.__cause__
    assert isinstance(error, KafkaAuthenticationError), repr(raised.value)
    message = str(error)
    assert "\n" not in message and "KAFKA_SASL_PASSWORD" in message
    assert "did not answer" not in message
    for secret in [*secrets_of(secure_env), "not-the-password"]:
        assert secret not in message


def test_a_wrong_mongo_password_fails_in_one_line_naming_mongo_uri(
    secured_pipeline: SecuredPipeline, secure_env, monkeypatch
):
    server = secure_env["MONGO_URI"].rpartition("@")[2]
    wrong = f"mongodb://enrollment:not-the-password@{server}"
    monkeypatch.setenv("MONGO_URI", wrong)
    with (
        dg.instance_for_test() as instance,
        pytest.raises(Exception) as raised,
        dg.build_sensor_context(
            instance=instance, resources=secured_pipeline.resources()
        ) as context,
    ):
        enrollment_events_sensor(context)
    error = raised.value
    while not isinstance(error, MongoAuthenticationError) and error.__cause__ is not None:
        error = error.__cause__
    assert isinstance(error, MongoAuthenticationError), repr(raised.value)
    message = str(error)
    assert "\n" not in message and "MONGO_URI" in message and "AuthenticationFailed" in message
    for secret in [*secrets_of(secure_env), "not-the-password"]:
        assert secret not in message

    result = CliRunner().invoke(main, ["dead-letters", "list"])  # an operator's command too
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert "MONGO_URI" in line and "not-the-password" not in line


def test_anonymous_clients_of_the_secured_mongo_are_refused(secured: LocalStack, secure_env):
    anonymous = secured.secure_mongo.anonymous_uri
    with MongoClient(anonymous, serverSelectionTimeoutMS=5000) as client:
        client.admin.command("ping")  # the handshake and ping need no user (FerretDB, mongod)
        database = client[secure_env["MONGO_DATABASE"]]
        for attempt in (
            lambda: database["applications"].find_one(),
            lambda: database["applications"].insert_one({"_id": "APP-1"}),
            lambda: client.list_database_names(),
        ):
            with pytest.raises(OperationFailure) as refused:
                attempt()
            assert refused.value.code == 13  # Unauthorized
    connection = MongoConnection(MongoConfig(uri=anonymous, database=secure_env["MONGO_DATABASE"]))
    with pytest.raises(MongoAuthenticationError, match=r"requires authentication.*MONGO_URI"):
        connection.ensure_indexes()
    connection.close()


def test_the_secrets_are_the_owners_only_and_on_no_command_line(secured: LocalStack, secure_env):
    secrets_dir = secured.settings.state_dir / "secrets"
    kept = sorted(path.name for path in secrets_dir.iterdir())
    assert kept == [
        "kafka-broker.pem",
        "kafka-ca.pem",
        "kafka-sasl-password",
        "mongo-password",
        "postgres-password",
    ]
    assert secrets_dir.stat().st_mode & 0o777 == 0o700
    for path in secrets_dir.iterdir():
        assert path.stat().st_mode & 0o777 == 0o600, path
    secrets = [*secrets_of(secure_env), secured.postgres.password]
    for service in secured.all_services:
        pid = service.daemon.pid()
        assert pid is not None, service.name
        command_line = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
        for secret in secrets:
            assert secret not in command_line, service.name
