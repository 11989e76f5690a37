"""`enrollment-pipeline status` and `explain` on a real scenario: a PENDING follow-up, a
parked lead, dead letters, then a lead the CRM refused; Kafka and MongoDB real, the CRM the
local test double."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import timedelta

import dagster as dg
import pytest
from click.testing import CliRunner

from enrollment_pipeline.cli import main
from enrollment_pipeline.defs.ingestion.jobs import ingest_enrollment_events
from enrollment_pipeline.domain.followup_rules import FollowupPolicy
from enrollment_pipeline.domain.offset_ranges import PartitionRange, RangePlan
from enrollment_pipeline.lib.clients.crm import CrmClient
from enrollment_pipeline.lib.clients.email import SmtpEmailSender
from enrollment_pipeline.lib.consumer_groups import LEAD_INTEGRATION_GROUP
from enrollment_pipeline.lib.followups.run import send_followups
from enrollment_pipeline.lib.leads.delivery import LeadDeliveryPolicy, deliver_range
from enrollment_pipeline.lib.mongo.followup_store import FollowupStore
from enrollment_pipeline.lib.mongo.lead_store import LeadDeliveryStore
from enrollment_pipeline_tests import factories as f
from enrollment_pipeline_tests.jobs import resolve
from enrollment_pipeline_tests.pipeline import Pipeline, short_lease

pytestmark = pytest.mark.integration

# The contact values of f.submitted: none may show unless --reveal.
CONTACT = ("Jane", "jane.doe@example.com", "+1-555-0100", "1990-04-01", "Ada Broker", "ada@brok")


def deliver(pipeline: Pipeline, crm_url: str, *, max_attempts: int = 1):
    committed = pipeline.store.committed_offsets(LEAD_INTEGRATION_GROUP, pipeline.lead_topic)
    ends = pipeline.kafka.end_offsets(pipeline.lead_topic)
    ranges = tuple(
        PartitionRange(p, committed.get(p, 0), end)
        for p, end in sorted(ends.items())
        if end > committed.get(p, 0)
    )
    crm = CrmClient(
        base_url=crm_url, token="s3cret-token", allow_http=True, max_attempts=max_attempts
    )
    return deliver_range(
        pipeline.kafka,
        pipeline.store,
        LeadDeliveryStore(pipeline.mongo.db(), pipeline.mongo.writer()),
        crm,
        RangePlan(pipeline.lead_topic, ranges) if ranges else None,
        policy=LeadDeliveryPolicy(),
    )


@pytest.fixture
def scenario(pipeline: Pipeline, local_crm, smtp_server):
    """APP-PEND: submitted long ago, so its follow-up went PENDING (expired); its lead is
    parked (the CRM answered 503); a record keyed APP-PEND with another application's body
    and one without a key are dead letters."""
    _, port = smtp_server
    other = f.submitted("APP-OTHER", 1)
    pipeline.produce(
        [
            f.record(f.submitted("APP-PEND", 0)),
            (b"APP-PEND", json.dumps(other).encode()),  # key_mismatch, names APP-PEND
            (None, json.dumps(f.submitted("APP-NOKEY", 2)).encode()),  # null_key
        ]
    )
    pipeline.ingest()
    local_crm.fail_next(1, 503)
    assert deliver(pipeline, local_crm.url).parked == 1
    sender = SmtpEmailSender(host="127.0.0.1", port=port, sender="f@example.com", timeout_s=5)
    report = send_followups(
        FollowupStore.of(pipeline.mongo),
        sender,
        as_of=f.T0 + timedelta(days=31),
        policy=FollowupPolicy(),
        lease=short_lease(pipeline.mongo),
    )
    assert report.expired == 1
    return pipeline


@pytest.fixture
def cli(monkeypatch, services, pipeline: Pipeline, local_crm):
    for name, value in {
        "KAFKA_BOOTSTRAP_SERVERS": services.kafka_bootstrap_servers,
        "MONGO_URI": services.mongo_uri,
        "MONGO_DATABASE": pipeline.mongo.database,
        "ENROLLMENT_TOPIC": pipeline.topic,
        "LEAD_TOPIC": pipeline.lead_topic,
        "LEAD_API_URL": local_crm.url,
        "LEAD_API_ALLOW_HTTP": "true",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)

    def invoke(*args: str):
        return CliRunner().invoke(main, list(args), catch_exceptions=False)

    return invoke


def test_status_reports_each_part_and_exits_by_its_rule(scenario, cli, local_crm, monkeypatch):
    shown = cli("status", "--json")
    report = json.loads(shown.stdout)
    assert shown.exit_code == 0, report  # pending, parked and dead letters are not problems
    assert (report["status"], report["problems"], report["not_checked"]) == ("healthy", [], [])
    assert report["followups"] == {"pending": 1}
    assert report["leads"] == {"parked": 1, "refused": 0}
    assert report["dead_letters"] == {"open": 2, "by_reason": {"key_mismatch": 1, "null_key": 1}}
    groups = {g["group"]: g for g in report["lag"]["groups"]}
    assert groups["read-model-service"]["lag"] == 0
    assert groups["read-model-service"]["end"] == 3
    assert groups["lead-integration-service"]["lag"] == 0  # a parked lead holds no offset
    assert report["dagster"]["checked"] is False
    assert any("DAGSTER_HOME" in w for w in report["warnings"])

    text = cli("status")
    assert text.exit_code == 0
    assert "Follow-ups PENDING (brokers to chase): 1" in text.stdout
    assert "Leads waiting: 1 parked" in text.stdout
    assert "Dead letters open: 2 (key_mismatch 1, null_key 1)" in text.stdout

    # The CRM refuses a lead: that waits for a person.
    scenario.produce([f.record(f.submitted("APP-REF", 3))])
    scenario.ingest()
    local_crm.fail_next(1, 422)
    assert deliver(scenario, local_crm.url).permanently_failed == 1
    refused = cli("status", "--json")
    report = json.loads(refused.stdout)
    assert refused.exit_code == 2
    assert report["status"] == "needs a person"
    assert report["leads"]["refused"] == 1
    assert any("refused by the CRM" in p and "crm_rejected" in p for p in report["problems"])
    assert "Needs a person:" in cli("status").stdout

    # MongoDB cannot be reached: could not check, said in one line naming MONGO_URI.
    monkeypatch.setenv("MONGO_URI", "mongodb://127.0.0.1:1/")
    started = time.monotonic()
    down = cli("status", "--json")
    assert down.exit_code == 1
    report = json.loads(down.stdout)
    assert report["status"] == "could not check"
    assert any("MONGO_URI" in line for line in report["not_checked"])
    assert report["followups"] is None and report["lag"] is None
    assert time.monotonic() - started < 20


def test_status_reads_the_dagster_instance(scenario, cli, monkeypatch, tmp_path, kafka, mongo):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with dg.DagsterInstance.get() as instance:
        run = instance.create_run_for_job(
            resolve(ingest_enrollment_events, {"kafka": kafka, "mongo": mongo}),
            run_config={"ops": {"ingest_offset_range": {"config": {"topic": "t", "ranges": []}}}},
            status=dg.DagsterRunStatus.STARTED,
        )
        instance.report_run_failed(instance.get_run_by_id(run.run_id))

    shown = cli("status", "--json")
    report = json.loads(shown.stdout)
    assert shown.exit_code == 2
    assert report["dagster"]["checked"] is True
    last = {r["job"]: r for r in report["dagster"]["last_runs"]}
    assert last["ingest_enrollment_events"]["status"] == "FAILURE"
    assert last["ingest_enrollment_events"]["run_id"] == run.run_id
    assert 0 <= last["ingest_enrollment_events"]["age_seconds"] < 120
    assert last["send_broker_followups"]["status"] is None  # never ran here
    assert any("ingest_enrollment_events" in p and run.run_id in p for p in report["problems"])
    instigators = {i["name"]: i for i in report["dagster"]["instigators"]}
    assert instigators["enrollment_events_sensor"]["on"] is True  # on by default
    assert instigators["hourly_broker_followups"]["on"] is False  # off by default
    assert "FAILURE" in cli("status").stdout


def test_explain_follows_one_application_everywhere(scenario, cli):
    shown = cli("explain", "APP-PEND", "--json")
    assert shown.exit_code == 0
    found = json.loads(shown.stdout)
    (event,) = found["events"]
    assert (event["event_type"], event["effect"]) == ("ApplicationSubmitted", "applied")
    assert event["source"]["id"].startswith(f"kafka:{scenario.topic}:")
    assert found["document"]["status"] == "SUBMITTED"
    assert found["document"]["applicant"]["first_name"] == "***"
    followup = found["followup"]
    assert (followup["status"], followup["pending_reason"]) == ("PENDING", "expired")
    (lead,) = found["leads"]
    assert lead["lead_status"] == "NEW" and lead["published"] is True
    assert lead["delivery"]["status"] == "PARKED"
    assert lead["where"].startswith("parked: retries exhausted")
    assert [d["reason"] for d in found["dead_letters"]] == ["key_mismatch"]
    assert not any(value in shown.stdout for value in CONTACT)

    text = cli("explain", "APP-PEND")
    assert text.exit_code == 0
    assert "ApplicationSubmitted" in text.stdout and "applied" in text.stdout
    assert "Follow-up: PENDING (expired)" in text.stdout
    assert "parked: retries exhausted" in text.stdout
    assert not any(value in text.stdout for value in CONTACT)
    revealed = cli("explain", "APP-PEND", "--reveal", "--json")
    assert "jane.doe@example.com" in revealed.stdout

    unknown = cli("explain", "APP-NOBODY")
    assert unknown.exit_code == 1 and "nothing names 'APP-NOBODY'" in unknown.stderr


def test_an_unreachable_kafka_is_one_line_within_the_bootstrap_timeout(services, mongo):
    env = {
        "PATH": "/usr/bin:/bin",
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "MONGO_URI": services.mongo_uri,
        "MONGO_DATABASE": mongo.database,
    }
    started = time.monotonic()
    result = subprocess.run(
        [f"{sys.prefix}/bin/enrollment-pipeline", "offsets", "show"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("Error: Kafka at 127.0.0.1:1 did not answer within 10 s")
    assert "KAFKA_BOOTSTRAP_SERVERS" in line
    assert elapsed < 10 + 10  # the bootstrap timeout, plus starting Python and MongoDB
