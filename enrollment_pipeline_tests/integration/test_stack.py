"""`stack up|down|status|env` on a private stack: idempotent up, clean down, data kept."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import stat
import uuid
from pathlib import Path

import psycopg2
import pytest
import requests

from enrollment_pipeline.lib.clients.crm import CrmClient
from enrollment_pipeline.lib.clients.email import OutgoingEmail, SmtpEmailSender
from enrollment_pipeline.lib.clients.kafka import KafkaClient, KafkaConfig
from enrollment_pipeline.lib.clients.mongo import MongoConfig, MongoConnection
from enrollment_pipeline.settings import PipelineSettings
from enrollment_pipeline.stack.local import LocalStack
from enrollment_pipeline.stack.process import ServiceError
from enrollment_pipeline_tests.conftest import make_state_dir, private_stack_settings

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def open_to_others(state_dir: Path) -> list[str]:
    """Every folder and file under `state_dir` that its group or others may read, write or
    enter (sockets and links have no mode of their own and are left out)."""
    found = []
    for folder, dirs, files in os.walk(state_dir):
        for name in dirs + files:
            path = Path(folder, name)
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode) or stat.S_ISSOCK(mode):
                continue
            if mode & 0o077:
                found.append(f"{path.relative_to(state_dir)} {oct(mode & 0o777)}")
    return found


def assert_kept_for_its_owner(state_dir: Path) -> None:
    """The state folder opens to nobody else; as root only `postgres` (its group) may pass
    through it to its own folder, without listing it."""
    top = state_dir.stat()
    if os.geteuid() == 0:
        assert top.st_mode & 0o777 == 0o710
        assert top.st_gid == pwd.getpwnam("postgres").pw_gid
    else:
        assert top.st_mode & 0o777 == 0o700
    assert open_to_others(state_dir) == []


def test_up_twice_down_then_up_keeps_the_data():
    state_dir = make_state_dir("enrollment-stack-test-")
    stack = LocalStack(private_stack_settings(state_dir), PipelineSettings())
    # What an earlier version of the stack left readable by others is closed by `up`.
    earlier = state_dir / "logs" / "kafka.log"
    earlier.parent.mkdir(mode=0o755)
    earlier.write_text("--- an earlier start\n")
    earlier.chmod(0o644)
    try:
        stack.up()
        first = {s.name: s.pid for s in stack.status()}
        assert all(first.values()), first

        stack.up()  # harmless: nothing restarted
        assert {s.name: s.pid for s in stack.status()} == first

        env = stack.env()
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == stack.kafka.bootstrap_servers
        assert env["MONGO_URI"] == stack.mongo.uri

        marker = uuid.uuid4().hex
        mongo = MongoConnection(MongoConfig(uri=env["MONGO_URI"], database="stack_test"))
        mongo.db()["kept"].insert_one({"_id": marker})
        mongo.client().close()
        kafka = KafkaClient(KafkaConfig(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"]))
        kafka.produce_batch(env["ENROLLMENT_TOPIC"], [(b"APP-1", marker.encode())])
        # The SMTP sink keeps what it receives, one file per message in its Maildir.
        SmtpEmailSender(
            host=env["SMTP_HOST"], port=int(env["SMTP_PORT"]), sender="t@x.example"
        ).send(OutgoingEmail("broker@example.com", f"Signature needed {marker}", "Please sign."))
        (kept,) = (state_dir / "mail" / "new").iterdir()
        assert marker in kept.read_text()
        # The CRM test double takes a lead once, lists it, and says so in the status.
        lead = {
            "lead_event_id": marker,
            "source_event_id": "e-1",
            "application_id": "APP-1",
            "lead_status": "NEW",
            "occurred_at": "2026-11-01T09:00:00Z",
            "contact": dict.fromkeys(["first_name", "last_name", "email", "phone", "state"], "x"),
            "product": "DENTAL",
        }
        crm = CrmClient(base_url=env["LEAD_API_URL"], max_attempts=1)
        assert crm.post_lead(lead).status == 201
        assert crm.post_lead(lead).status == 409
        listed = requests.get(f"{env['LEAD_API_URL']}/leads", timeout=5).json()
        assert [x["lead_event_id"] for x in listed["leads"]] == [marker]
        assert "test double" in {s.name: s.address for s in stack.status()}["crm"]

        # Everything that holds data is its owner's only: Kafka's logs, the MongoDB-wire
        # server's data, PostgreSQL's cluster, the Maildir, the CRM double's log, the logs.
        held = [
            state_dir / "crm" / "received.jsonl",
            kept,
            next((state_dir / "kafka" / "data").glob(f"{env['ENROLLMENT_TOPIC']}-*/*.log")),
            state_dir / "postgres" / "data" / "PG_VERSION",
            state_dir / "logs" / "postgres.log",
            state_dir / "secrets" / "postgres-password",
        ]
        assert all(path.is_file() for path in held), held
        assert any((state_dir / "mongo").iterdir())
        assert earlier.stat().st_mode & 0o777 == 0o600
        assert_kept_for_its_owner(state_dir)

        # PostgreSQL takes only its generated password, for every database, local or not.
        dagster_url = env["DAGSTER_PG_URL"]
        password = (state_dir / "secrets" / "postgres-password").read_text().strip()
        assert f":{password}@" in dagster_url
        psycopg2.connect(dagster_url, connect_timeout=10).close()
        without = dagster_url.replace(f":{password}@", "@")
        wrong = dagster_url.replace(f":{password}@", ":not-the-password@")
        for refused_url in (without, wrong, without.replace("/dagster", "/ferretdb")):
            with pytest.raises(psycopg2.OperationalError, match="password"):
                psycopg2.connect(refused_url, connect_timeout=10)
        assert password not in stack.status()[0].address

        assert sorted(stack.down()) == ["crm", "kafka", "mongo", "postgres", "smtp"]
        assert not any(_alive(pid) for pid in first.values())
        assert not any(s.running for s in stack.status())
        assert stack.down() == []

        stack.up()
        mongo = MongoConnection(MongoConfig(uri=env["MONGO_URI"], database="stack_test"))
        assert mongo.db()["kept"].find_one({"_id": marker}) == {"_id": marker}
        mongo.client().close()
        ends = kafka.end_offsets(env["ENROLLMENT_TOPIC"])
        records = kafka.read_range(env["ENROLLMENT_TOPIC"], {p: (0, e) for p, e in ends.items()})
        assert [r.value for r in records] == [marker.encode()]
        assert kafka.partitions(env["ENROLLMENT_TOPIC"]) == list(range(6))
    finally:
        stack.down()
        shutil.rmtree(state_dir, ignore_errors=True)


def test_a_non_loopback_stack_host_is_refused_unless_allowed(tmp_path):
    settings = private_stack_settings(tmp_path).model_copy(update={"host": "10.0.0.5"})
    with pytest.raises(ServiceError) as refused:
        LocalStack(settings, PipelineSettings())
    message = str(refused.value)
    assert "\n" not in message and "STACK_HOST=10.0.0.5" in message
    assert "STACK_ALLOW_REMOTE=true" in message
    allowed = LocalStack(settings.model_copy(update={"allow_remote": True}), PipelineSettings())
    assert allowed.env()["KAFKA_BOOTSTRAP_SERVERS"].startswith("10.0.0.5:")


def test_a_taken_port_is_a_clear_error_naming_the_setting(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = private_stack_settings(tmp_path).model_copy(
            update={"kafka_port": taken.getsockname()[1]}
        )
        stack = LocalStack(settings, PipelineSettings())
        with pytest.raises(ServiceError, match=r"kafka: port .* STACK_KAFKA_PORT"):
            stack.kafka.up()
