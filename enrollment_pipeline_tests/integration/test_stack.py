"""`stack up|down|status|env` on a private stack: idempotent up, clean down, data kept."""

from __future__ import annotations

import shutil
import socket
import uuid
from pathlib import Path

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


def test_up_twice_down_then_up_keeps_the_data():
    state_dir = make_state_dir("enrollment-stack-test-")
    stack = LocalStack(private_stack_settings(state_dir), PipelineSettings())
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
