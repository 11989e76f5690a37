"""Test harness: one real service stack per test session, isolated topics and databases per test.

By default the session starts its own stack (`LocalStack`) on free loopback ports in a fresh
state folder, sharing the download/build cache with `enrollment-pipeline stack up`. To run
against services that already run (your `stack up`, or a cluster), set both
`TEST_KAFKA_BOOTSTRAP_SERVERS` and `TEST_MONGO_URI` (and `TEST_DAGSTER_PG_URL` for the
PostgreSQL-backed Dagster test). A service that cannot start fails the tests that need it.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import port_for
import pytest
from aiosmtpd.controller import Controller
from moto.server import ThreadedMotoServer
from pytest_httpserver import HTTPServer

from enrollment_pipeline.lib.clients.kafka import KafkaClient, KafkaConfig
from enrollment_pipeline.lib.clients.mongo import MongoConfig, MongoConnection
from enrollment_pipeline.settings import PipelineSettings, StackSettings
from enrollment_pipeline.stack.crm import LocalCrm
from enrollment_pipeline.stack.local import LocalStack
from enrollment_pipeline.stack.mongo import MongoWire
from enrollment_pipeline_tests.pipeline import TEST_PARTITIONS, Pipeline


@dataclass(frozen=True)
class Services:
    kafka_bootstrap_servers: str
    mongo_uri: str
    dagster_pg_url: str | None
    # The stack's settings when the session started it (None for services given by env).
    stack: StackSettings | None = None


# Below the kernel's ephemeral range (32768+), where a client socket could hold a port
# between our check and the server's bind.
_CANDIDATE_PORTS = set(range(20000, 32000))


def free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(port_for.select_random(ports=_CANDIDATE_PORTS - ports))
    return sorted(ports)


def private_stack_settings(state_dir: Path) -> StackSettings:
    """A stack on free ports in `state_dir`, with the shared (warm) download cache."""
    kafka, controller, kafka_sasl, mongo, mongo_secure, postgres, smtp, crm = free_ports(8)
    return StackSettings(
        state_dir=state_dir,
        kafka_port=kafka,
        kafka_controller_port=controller,
        kafka_sasl_port=kafka_sasl,  # used only with secure=True
        mongo_port=mongo,
        mongo_secure_port=mongo_secure,
        postgres_port=postgres,
        smtp_port=smtp,
        crm_port=crm,
        kafka_heap="512m",
    )


def make_state_dir(prefix: str) -> Path:
    # Under /tmp and world-traversable: as root, PostgreSQL runs as `postgres` and must enter it.
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    given_kafka = os.environ.get("TEST_KAFKA_BOOTSTRAP_SERVERS")
    given_mongo = os.environ.get("TEST_MONGO_URI")
    if given_kafka and given_mongo:
        yield Services(given_kafka, given_mongo, os.environ.get("TEST_DAGSTER_PG_URL"))
        return
    state_dir = make_state_dir("enrollment-test-stack-")
    settings = private_stack_settings(state_dir)
    stack = LocalStack(settings, PipelineSettings())
    try:
        stack.up()  # raises ServiceError naming the service and its log: every test errors
        yield Services(
            stack.kafka.bootstrap_servers,
            stack.mongo.uri,
            stack.postgres.url("dagster"),
            settings,
        )
    finally:
        stack.down()
        if not os.environ.get("TEST_KEEP_STACK"):
            shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture
def kafka(services: Services) -> Iterator[KafkaClient]:
    client = KafkaClient(KafkaConfig(bootstrap_servers=services.kafka_bootstrap_servers))
    yield client
    client.close()


@pytest.fixture
def topic(kafka: KafkaClient) -> Iterator[str]:
    """A fresh 3-partition topic for this test, deleted afterwards."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    kafka.ensure_topics([name], partitions=TEST_PARTITIONS)
    yield name
    kafka.delete_topics([name])


@pytest.fixture
def lead_topic(kafka: KafkaClient) -> Iterator[str]:
    """A fresh 3-partition topic for the leads this test publishes."""
    name = f"test-leads-{uuid.uuid4().hex[:12]}"
    kafka.ensure_topics([name], partitions=3)
    yield name
    kafka.delete_topics([name])


@pytest.fixture
def mongo(services: Services) -> Iterator[MongoConnection]:
    """A fresh database for this test (indexes created), dropped afterwards."""
    connection = MongoConnection(
        MongoConfig(uri=services.mongo_uri, database=f"test_{uuid.uuid4().hex[:12]}")
    )
    connection.ensure_indexes()
    yield connection
    connection.client().drop_database(connection.database)
    connection.close()


@pytest.fixture
def own_mongo_server() -> Iterator[MongoWire]:
    """A MongoDB-wire server of this test's own (with its PostgreSQL for FerretDB).

    For tests that stop the server (SIGSTOP) or exhaust it: the session's server stays
    untouched. Same engine as `stack up` picks (STACK_MONGO_ENGINE).
    """
    state_dir = make_state_dir("enrollment-test-mongo-")
    stack = LocalStack(private_stack_settings(state_dir), PipelineSettings())
    server = stack.mongo
    try:
        if server.needs_postgres:
            stack.postgres.up()
        server.up()
        yield server
    finally:
        pid = server.daemon.pid()
        if pid is not None:
            os.kill(pid, signal.SIGCONT)  # a test that stopped it may have failed midway
        server.down()
        stack.postgres.down()
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture
def threaded_httpserver() -> Iterator[HTTPServer]:
    """pytest-httpserver answering each request on its own thread, so one stalled request
    does not queue the others behind it (as a real API would not)."""
    server = HTTPServer(host="127.0.0.1", threaded=True)
    server.start()
    yield server
    server.clear()
    server.stop()


@pytest.fixture
def local_crm() -> Iterator[LocalCrm]:
    (port,) = free_ports(1)
    crm = LocalCrm("127.0.0.1", port, token="s3cret-token").start()  # a real HTTP server
    yield crm
    crm.stop()


@pytest.fixture
def pipeline(kafka, mongo, topic, lead_topic) -> Pipeline:
    return Pipeline(kafka, mongo, topic, lead_topic)


class Inbox:
    """An SMTP handler that keeps messages and refuses addresses at invalid.example."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.peers: list[tuple[str, int]] = []  # the client connection of each message

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.endswith("@invalid.example"):
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        self.peers.append(session.peer)
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp_server() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    (port,) = free_ports(1)
    controllers = [Controller(inbox, hostname="127.0.0.1", port=port)]
    controllers[0].start()

    def restart() -> None:  # a new server on the same port: every connection is dropped
        controllers[-1].stop()
        controllers.append(Controller(inbox, hostname="127.0.0.1", port=port))
        controllers[-1].start()

    inbox.restart = restart
    yield inbox, port
    controllers[-1].stop()


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    (port,) = free_ports(1)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def aws_credentials(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
