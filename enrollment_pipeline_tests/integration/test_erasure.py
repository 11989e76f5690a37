"""An applicant erased with `enrollment-pipeline erase` or the job `erase_applicant`: their
names, email, phone and date of birth are in no collection afterwards, also not after a
rebuild, a Kafka replay, a re-run backfill or a lead-topic replay; the application still folds,
and no lead of it reaches the CRM."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner

from enrollment_pipeline.cli import main
from enrollment_pipeline.defs.followups.assets import FollowupRunConfig, broker_followup_emails
from enrollment_pipeline.defs.privacy.jobs import erase_applicant
from enrollment_pipeline.defs.settings.resources import PipelineSettingsResource
from enrollment_pipeline.domain.offset_ranges import PartitionRange, RangePlan
from enrollment_pipeline.lib.backfill import backfill_days, rebuild_read_model
from enrollment_pipeline.lib.clients.archive import Archive
from enrollment_pipeline.lib.clients.crm import CrmClient
from enrollment_pipeline.lib.clients.email import SmtpEmailSender
from enrollment_pipeline.lib.consumer_groups import LEAD_INTEGRATION_GROUP
from enrollment_pipeline.lib.leads.delivery import deliver_range
from enrollment_pipeline.lib.mongo.collections import (
    DEAD_LETTERS,
    ENROLLMENT_EVENTS,
    ERASURES,
    FOLLOWUP_ATTEMPTS,
    LEAD_DELIVERIES,
)
from enrollment_pipeline.lib.mongo.lead_store import LeadDeliveryStore
from enrollment_pipeline.stack.crm import LocalCrm
from enrollment_pipeline_tests import factories as f
from enrollment_pipeline_tests.jobs import as_resources, run_job
from enrollment_pipeline_tests.pipeline import Pipeline, _normalized

pytestmark = pytest.mark.integration

APP = "APP-ERASE-1"
KEPT = "APP-KEEP-1"  # another applicant, whose data stays
FIRST, LAST, EMAIL, PHONE, BIRTH = (
    "Zebulon",
    "Quartermaine",
    "zebulon.q@privacy.example",
    "+1-555-0142",
    "1971-03-09",
)
NEW_EMAIL, NEW_PHONE = "zq.elsewhere@privacy.example", "+1-555-0177"
PERSONAL = (FIRST, LAST, EMAIL, PHONE, BIRTH, NEW_EMAIL, NEW_PHONE)


def submission(app_id: str = APP, minutes: float = 0, **kw) -> dict:
    event = f.submitted(app_id, minutes, **kw)
    event["payload"]["applicant"] = {
        "first_name": FIRST,
        "last_name": LAST,
        "email": EMAIL,
        "phone": PHONE,
        "state": "OR",
        "date_of_birth": BIRTH,
    }
    return event


def contact_change(minutes: float, **applicant) -> dict:
    return f.event("ApplicationUpdated", APP, minutes, {"changes": {"applicant": applicant}})


def history() -> tuple[list[tuple[bytes | None, bytes]], dict]:
    """The applicant's records as they reached Kafka: three good events and five bad inputs
    that carry their data (by key, by body, or just as bytes); and another applicant's."""
    submitted = submission()
    broken = dict(submission(), event_id="dup-no-plan")
    del broken["payload"]["plan"]
    records = [
        f.record(submitted),
        f.record(contact_change(10, email=NEW_EMAIL, phone=NEW_PHONE)),
        f.record(f.approved(APP, 20)),
        f.record(f.submitted(KEPT, 0)),
        # A schema violation under the applicant's key.
        (APP.encode(), json.dumps(broken).encode()),
        # Not JSON at all, under its key.
        (APP.encode(), f'{{"application_id": "{APP}", "email": "{EMAIL}"'.encode()),
        # Its event under another key, and with no key.
        (b"APP-OTHER", json.dumps(dict(submission(), event_id="wrong-key")).encode()),
        (None, json.dumps(dict(submission(), event_id="no-key")).encode()),
        # Bytes that are not even UTF-8, with its phone and name in them, no key.
        (None, b"\xff\xfe garbage " + PHONE.encode() + b" " + FIRST.encode()),
    ]
    return records, submitted


def archive(root: Path) -> list:
    """An archive day with one more update of the applicant and a broken line with its email."""
    day = f.T0.date()
    lines = [
        json.dumps(contact_change(30, phone=PHONE)),
        f'{{"event_type": "ApplicationUpdated", "email": "{EMAIL}", ',
    ]
    (root / f"{day.isoformat()}.jsonl").write_text("\n".join(lines) + "\n")
    return [day]


def everything(pipeline: Pipeline) -> dict[str, list[str]]:
    """Every document of every collection as text, raw bytes decoded."""
    db = pipeline.mongo.db()
    found: dict[str, list[str]] = {}
    for name in db.list_collection_names():
        texts = []
        for doc in db[name].find():
            texts.append(json.dumps(doc, default=str))
            if doc.get("raw_base64"):
                texts.append(base64.b64decode(doc["raw_base64"]).decode("utf-8", "replace"))
        found[name] = texts
    return found


def holding_personal_data(pipeline: Pipeline) -> dict[str, set[str]]:
    """Per collection, the applicant's values it still holds (case-insensitive)."""
    held: dict[str, set[str]] = {}
    for name, texts in everything(pipeline).items():
        blob = "\n".join(texts).lower()
        values = {v for v in PERSONAL if v.lower() in blob}
        if values:
            held[name] = values
    return held


def crm(url: str) -> CrmClient:
    return CrmClient(
        base_url=url, token="s3cret-token", allow_http=True, backoff_initial_s=0.01, max_attempts=1
    )


def deliver(pipeline: Pipeline, local_crm: LocalCrm, *, redrive: bool = False):
    committed = pipeline.store.committed_offsets(LEAD_INTEGRATION_GROUP, pipeline.lead_topic)
    ranges = tuple(
        PartitionRange(p, committed.get(p, 0), end)
        for p, end in sorted(pipeline.kafka.end_offsets(pipeline.lead_topic).items())
        if end > committed.get(p, 0)
    )
    return deliver_range(
        pipeline.kafka,
        pipeline.store,
        LeadDeliveryStore(pipeline.mongo.db(), pipeline.mongo.writer()),
        crm(local_crm.url),
        RangePlan(pipeline.lead_topic, ranges) if ranges else None,
        redrive=redrive,
    )


@pytest.fixture
def cli(monkeypatch, services, pipeline: Pipeline):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", services.kafka_bootstrap_servers)
    monkeypatch.setenv("MONGO_URI", services.mongo_uri)
    monkeypatch.setenv("MONGO_DATABASE", pipeline.mongo.database)
    monkeypatch.setenv("ENROLLMENT_TOPIC", pipeline.topic)
    monkeypatch.setenv("LEAD_TOPIC", pipeline.lead_topic)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    runner = CliRunner()
    return lambda *args, **kw: runner.invoke(main, list(args), catch_exceptions=False, **kw)


def send_followups(pipeline: Pipeline, port: int) -> None:
    sender = SmtpEmailSender(host="127.0.0.1", port=port, sender="f@example.com", timeout_s=5)
    result = dg.materialize(
        [broker_followup_emails],
        run_config=dg.RunConfig(
            ops={
                "broker_followup_emails": FollowupRunConfig(
                    as_of=(f.T0 + timedelta(hours=2)).isoformat()
                )
            }
        ),
        resources=as_resources(
            {
                "mongo": pipeline.mongo,
                "email": sender,
                "settings": PipelineSettingsResource(followup_max_age_days=10_000),
            }
        ),
    )
    assert result.success


def test_erase_from_the_cli_leaves_no_personal_value_and_nothing_brings_it_back(
    pipeline: Pipeline, cli, local_crm: LocalCrm, smtp_server, tmp_path: Path
):
    records, _ = history()
    pipeline.produce(records)
    pipeline.ingest()
    days = archive(tmp_path)
    backfill_days(Archive(root=str(tmp_path)), pipeline.store, days, lease=pipeline.lease())
    send_followups(pipeline, smtp_server[1])  # attempts exist: they must hold nothing of it
    assert pipeline.mongo.db()[FOLLOWUP_ATTEMPTS].count_documents({"app_id": APP}) == 1
    local_crm.fail_next(100, 503)
    deliver(pipeline, local_crm)  # every lead parked, its payload (contact data) kept
    waiting = pipeline.mongo.db()[LEAD_DELIVERIES].count_documents(
        {"application_id": APP, "lead": {"$exists": True}}
    )
    assert waiting == 2  # NEW, UPDATED (a backfill publishes none)
    local_crm.state.faults.clear()
    letters = pipeline.mongo.db()[DEAD_LETTERS].count_documents({})
    assert letters == 6  # five from Kafka, one from the archive
    held = holding_personal_data(pipeline)
    assert {"enrollment_events", "applications", "dead_letters", "lead_deliveries"} <= set(held)
    before = pipeline.applications()[APP]

    declined = cli("erase", APP, "--reason", "privacy request #4711", input="n\n")
    assert declined.exit_code == 1 and holding_personal_data(pipeline) == held
    unknown = cli("erase", "APP-NOBODY", "--reason", "typo", "--yes")
    assert unknown.exit_code == 1 and "nothing names 'APP-NOBODY'" in unknown.output

    erased = cli("erase", APP, "--reason", "privacy request #4711", "--yes")
    assert erased.exit_code == 0, erased.output
    assert "ask the CRM to delete" in erased.output
    assert holding_personal_data(pipeline) == {}

    document = pipeline.applications()[APP]
    assert (document["status"], document["event_count"]) == ("APPROVED", before["event_count"])
    assert document["applicant"]["first_name"] == "erased"
    assert document["applicant"]["state"] == "OR"
    assert document["broker"] == before["broker"]  # the broker's data is not the applicant's
    (record,) = pipeline.mongo.db()[ERASURES].find({"application_id": APP})
    assert record["reason"] == "privacy request #4711"
    assert record["requested_by"].startswith("enrollment-pipeline erase (")
    assert record["touched"] == {
        "erased_applications": 1,
        "lead_deliveries": 2,
        "enrollment_events": 3,  # submitted and two contact changes; the approval holds none
        "applications": 1,
        "broker_followups": 0,
        "dead_letters": 6,
    }
    other = pipeline.applications()[KEPT]
    assert other["applicant"]["email"] == "jane.doe@example.com"  # only this applicant
    # Support staff see that it was erased, and nothing of the person, even with --reveal.
    shown = cli("explain", APP, "--json", "--reveal")
    assert not any(value.lower() in shown.stdout.lower() for value in PERSONAL)
    explained = json.loads(shown.stdout)
    assert [e["reason"] for e in explained["erasures"]] == ["privacy request #4711"]
    assert {lead["where"] for lead in explained["leads"]} == {
        "not delivered: its applicant was erased"
    }

    # Its waiting leads are never delivered; the other applicant's are.
    deliver(pipeline, local_crm, redrive=True)
    arrived = {lead["application_id"] for lead in local_crm.state.leads}
    assert arrived == {KEPT}
    states = {
        d["status"] for d in pipeline.mongo.db()[LEAD_DELIVERIES].find({"application_id": APP})
    }
    assert states == {"ERASED"}

    # A rebuild gives the same redacted document.
    rebuild_read_model(pipeline.store, lease=pipeline.lease())
    assert _normalized(pipeline.applications()[APP]) == _normalized(document)

    # A Kafka replay from offset 0 and a re-run backfill bring nothing back.
    reset = cli("offsets", "reset", "--to-offset", "0", "--yes", "--force")
    assert reset.exit_code == 0, reset.output
    replay = pipeline.ingest()
    assert replay.report.applied == 0 and replay.report.duplicates == 4
    backfill_days(Archive(root=str(tmp_path)), pipeline.store, days, lease=pipeline.lease())
    assert holding_personal_data(pipeline) == {}
    assert pipeline.mongo.db()[DEAD_LETTERS].count_documents({}) == letters
    assert _normalized(pipeline.applications()[APP]) == _normalized(document)

    # A lead-topic replay posts none of its leads either.
    cli("offsets", "reset", "--consumer", "leads", "--to-offset", "0", "--yes", "--force")
    posted = len(local_crm.state.leads)
    deliver(pipeline, local_crm)
    assert {lead["application_id"] for lead in local_crm.state.leads} == {KEPT}
    assert len(local_crm.state.leads) == posted

    # Later events still fold, publish no lead, and bad input for it keeps no bytes.
    leads_before = len(pipeline.leads())
    late_bad = dict(submission(minutes=61), event_id="late-bad")
    del late_bad["payload"]["plan"]
    pipeline.produce(
        [f.record(f.withdrawn(APP, 60)), (APP.encode(), json.dumps(late_bad).encode())]
    )
    later = pipeline.ingest()
    assert later.report.applied == 1
    assert pipeline.applications()[APP]["status"] == "WITHDRAWN"
    assert len(pipeline.leads()) == leads_before  # a LOST lead would name it to the CRM
    assert holding_personal_data(pipeline) == {}
    late = [
        d
        for d in pipeline.mongo.db()[DEAD_LETTERS].find({"key": APP})
        if d["_id"].endswith(f":{later_offset(pipeline)}")
    ]
    assert late and late[0]["raw_base64"] is None and late[0]["raw_size"] > 0
    assert late[0]["raw_removed"] == "erasure"

    # The redacted events are still the events (a conflicting-duplicate check holds).
    stored = pipeline.mongo.db()[ENROLLMENT_EVENTS].count_documents({"application_id": APP})
    assert stored == 5  # three from Kafka, one from the archive, the withdrawal


def later_offset(pipeline: Pipeline) -> int:
    """The offset of the last record on the applicant's partition (the late bad one)."""
    records = pipeline.kafka.read_range(
        pipeline.topic, {p: (0, e) for p, e in pipeline.kafka.end_offsets(pipeline.topic).items()}
    )
    return max(r.offset for r in records if r.key == APP.encode())


def test_the_erase_applicant_job_does_the_same(pipeline: Pipeline):
    records, _ = history()
    pipeline.produce(records)
    pipeline.ingest()
    assert holding_personal_data(pipeline)

    outcome = run_job(
        erase_applicant,
        resources=pipeline.resources(),
        run_config={
            "ops": {
                "erase_applicant_data": {
                    "config": {"application_id": APP, "reason": "privacy request #4712"}
                }
            }
        },
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert outcome.success
    assert holding_personal_data(pipeline) == {}
    (record,) = pipeline.mongo.db()[ERASURES].find({"application_id": APP})
    assert record["requested_by"].startswith(f"erase_applicant (run {outcome.run_id}")
    assert record["touched"]["enrollment_events"] == 2
    assert record["touched"]["dead_letters"] == 5
    document = pipeline.applications()[APP]
    assert (document["status"], document["event_count"]) == ("APPROVED", 3)

    # A second erasure of the same applicant changes nothing more and says so.
    again = run_job(
        erase_applicant,
        resources=pipeline.resources(),
        run_config={
            "ops": {"erase_applicant_data": {"config": {"application_id": APP, "reason": "again"}}}
        },
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert again.success
    second = pipeline.mongo.db()[ERASURES].find_one({"reason": "again"})
    assert not any(second["touched"].values())

    unknown = run_job(
        erase_applicant,
        resources=pipeline.resources(),
        run_config={
            "ops": {
                "erase_applicant_data": {
                    "config": {"application_id": "APP-NOBODY", "reason": "typo"}
                }
            }
        },
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert not unknown.success
    failure = unknown.failure_data_for_node("erase_applicant_data").error
    assert "nothing names 'APP-NOBODY'" in failure.message
