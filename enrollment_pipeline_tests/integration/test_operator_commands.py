"""`enrollment-pipeline offsets …` and `dead-letters …` against the real services."""

from __future__ import annotations

import json

import dagster as dg
import pytest
from click.testing import CliRunner

from enrollment_pipeline.cli import main
from enrollment_pipeline.defs.ingestion.jobs import ingest_enrollment_events
from enrollment_pipeline.domain.offset_ranges import PartitionRange, RangePlan
from enrollment_pipeline.lib.consumer_groups import ENROLLMENT_GROUPS, READ_MODEL_GROUP
from enrollment_pipeline.lib.ingestion.run import ingest_range
from enrollment_pipeline.lib.mongo.collections import APPLICATIONS, DEAD_LETTERS
from enrollment_pipeline.lib.mongo.store import EnrollmentStore
from enrollment_pipeline_tests import factories as f
from enrollment_pipeline_tests.jobs import resolve
from enrollment_pipeline_tests.pipeline import short_lease

pytestmark = pytest.mark.integration


@pytest.fixture
def cli(monkeypatch, services, mongo, topic, lead_topic):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", services.kafka_bootstrap_servers)
    monkeypatch.setenv("MONGO_URI", services.mongo_uri)
    monkeypatch.setenv("MONGO_DATABASE", mongo.database)
    monkeypatch.setenv("ENROLLMENT_TOPIC", topic)
    monkeypatch.setenv("LEAD_TOPIC", lead_topic)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    runner = CliRunner()

    def invoke(*args: str):
        result = runner.invoke(main, list(args), catch_exceptions=False)
        return result

    return invoke


def ingest_all(kafka, mongo, topic, lead_topic):
    store = EnrollmentStore.of(mongo)
    committed = store.committed_offsets(READ_MODEL_GROUP, topic)
    ranges = tuple(
        PartitionRange(p, committed.get(p, 0), end)
        for p, end in sorted(kafka.end_offsets(topic).items())
        if end > committed.get(p, 0)
    )
    return ingest_range(
        kafka, store, RangePlan(topic, ranges), lead_topic=lead_topic, lease=short_lease(mongo)
    )


def test_offsets_show_and_reset_for_a_replay(cli, kafka, mongo, topic, lead_topic):
    kafka.produce_batch(topic, [f.record(f.submitted(f"APP-{i}", i)) for i in range(9)])
    ingest_all(kafka, mongo, topic, lead_topic)
    ends = kafka.end_offsets(topic)

    shown = cli("offsets", "show")
    assert shown.exit_code == 0
    assert "read-model-service" in shown.output and "lead-integration-service" in shown.output

    refused = cli("offsets", "reset", "--to-offset", "0", "--yes")
    assert refused.exit_code != 0 and "DAGSTER_HOME" in refused.output

    reset = cli("offsets", "reset", "--to-offset", "0", "--yes", "--force")
    assert reset.exit_code == 0, reset.output
    store = EnrollmentStore.of(mongo)
    for group in ENROLLMENT_GROUPS:
        assert store.committed_offsets(group, topic) == dict.fromkeys(ends, 0)
        in_kafka = {k: v for k, v in kafka.group_offsets(group).items() if k[0] == topic}
        assert in_kafka == {(topic, p): 0 for p in ends}

    before = list(mongo.db()[APPLICATIONS].find())
    replay = ingest_all(kafka, mongo, topic, lead_topic)
    assert (replay.report.applied, replay.report.duplicates) == (0, 9)
    assert list(mongo.db()[APPLICATIONS].find()) == before


def test_dead_letters_list_show_and_redrive(cli, kafka, mongo, topic, lead_topic):
    good = f.submitted("APP-77", 0)
    # A producer bug: the key is missing. After the fix, the kept record is re-driven as is
    # (the redrive uses the key it has; here the body carries the id, so we fix the letter).
    kafka.produce_batch(
        topic, [(None, json.dumps(good).encode()), f.record(f.submitted("APP-1", 0))]
    )
    ingest_all(kafka, mongo, topic, lead_topic)
    (letter,) = mongo.db()[DEAD_LETTERS].find()
    assert letter["reason"] == "null_key"

    listed = cli("dead-letters", "list", "--reason", "null_key")
    assert letter["_id"] in listed.output

    shown = cli("dead-letters", "show", letter["_id"], "--json", "--reveal")
    assert json.loads(shown.stdout)["raw"] == json.dumps(good)

    still_bad = cli("dead-letters", "redrive", letter["_id"])
    assert "re-driven: 0; still rejected: 1" in still_bad.output

    mongo.db()[DEAD_LETTERS].update_one({"_id": letter["_id"]}, {"$set": {"key": "APP-77"}})
    redriven = cli("dead-letters", "redrive", "--reason", "null_key")
    assert "re-driven: 1; still rejected: 0" in redriven.output
    assert mongo.db()[APPLICATIONS].find_one({"_id": "APP-77"})["status"] == "SUBMITTED"
    assert mongo.db()[DEAD_LETTERS].find_one({"_id": letter["_id"]})["status"] == "REDRIVEN"
    assert letter["_id"] not in cli("dead-letters", "list").output


def test_offsets_reset_is_refused_while_an_ingestion_run_is_in_flight(
    cli, kafka, mongo, topic, tmp_path, monkeypatch
):
    kafka.produce_batch(topic, [f.record(f.submitted("APP-1", 0))])
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with dg.DagsterInstance.get() as instance:
        run = instance.create_run_for_job(
            resolve(ingest_enrollment_events, {"kafka": kafka, "mongo": mongo}),
            run_config={"ops": {"ingest_offset_range": {"config": {"topic": topic, "ranges": []}}}},
            status=dg.DagsterRunStatus.STARTED,
        )
    refused = cli("offsets", "reset", "--to-offset", "0", "--yes")
    assert refused.exit_code != 0
    assert run.run_id in refused.output

    with dg.DagsterInstance.get() as instance:
        instance.report_run_failed(instance.get_run_by_id(run.run_id))
    assert cli("offsets", "reset", "--to-offset", "0", "--yes").exit_code == 0


def test_offsets_reset_per_partition_shows_before_and_after_and_never_skips_by_accident(
    cli, kafka, mongo, topic, lead_topic
):
    kafka.produce_batch(topic, [f.record(f.submitted(f"APP-{i}", i)) for i in range(30)])
    ingest_all(kafka, mongo, topic, lead_topic)
    ends = kafka.end_offsets(topic)
    busy = max(ends, key=ends.get)
    store = EnrollmentStore.of(mongo)

    back = cli("offsets", "reset", "--to-offset", f"{busy}=1", "--yes", "--force")
    assert back.exit_code == 0, back.output
    assert f"partition {busy}: {ends[busy]} -> 1 (replays {ends[busy] - 1})" in back.output
    for group in ENROLLMENT_GROUPS:
        assert store.committed_offsets(group, topic)[busy] == 1
        assert kafka.group_offsets(group)[(topic, busy)] == 1

    # Forward past the committed offset would skip records unread.
    skip = cli("offsets", "reset", "--to-offset", f"{busy}={ends[busy]}", "--yes", "--force")
    assert skip.exit_code == 1
    assert "would skip unread records" in skip.output and "--allow-skip" in skip.output
    assert store.committed_offsets(READ_MODEL_GROUP, topic)[busy] == 1
    by_time = cli("offsets", "reset", "--to-time", "2999-01-01T00:00:00", "--yes", "--force")
    assert by_time.exit_code == 1 and "would skip unread records" in by_time.output

    allowed = cli(
        "offsets",
        "reset",
        "--to-offset",
        f"{busy}={ends[busy]}",
        "--allow-skip",
        "--yes",
        "--force",
    )
    assert allowed.exit_code == 0, allowed.output
    assert f"partition {busy}: 1 -> {ends[busy]} (skips {ends[busy] - 1})" in allowed.output
    assert store.committed_offsets(READ_MODEL_GROUP, topic)[busy] == ends[busy]

    unknown = cli("offsets", "reset", "--to-offset", "99=0", "--yes", "--force")
    assert unknown.exit_code == 1
    assert unknown.output.strip().splitlines() == [
        f"Error: {topic} has no partition 99 (it has 0, 1, 2)"
    ]


CONTACT = ("Jane", "Doe", "jane.doe@example.com", "+1-555-0100", "1990-04-01", "Ada Broker")


def test_dead_letters_show_masks_contact_values_unless_revealed(
    cli, kafka, mongo, topic, lead_topic
):
    no_key = f.submitted("APP-77", 0)
    cut_short = json.dumps(f.submitted("APP-78", 1))[:-60]  # not JSON, contact values inside
    kafka.produce_batch(
        topic, [(None, json.dumps(no_key).encode()), (b"APP-78", cut_short.encode())]
    )
    ingest_all(kafka, mongo, topic, lead_topic)
    letters = {d["reason"]: d["_id"] for d in mongo.db()[DEAD_LETTERS].find()}
    assert set(letters) == {"null_key", "invalid_json"}

    for reason, app_id in (("null_key", "APP-77"), ("invalid_json", "APP-78")):
        shown = cli("dead-letters", "show", letters[reason])
        assert shown.exit_code == 0
        assert "ApplicationSubmitted" in shown.stdout and app_id in shown.stdout
        assert f"reason       {reason}" in shown.stdout
        assert not [value for value in CONTACT if value in shown.output], shown.output
        as_json = json.loads(cli("dead-letters", "show", letters[reason], "--json").stdout)
        assert as_json["masked"] is True and as_json["reason"] == reason
        assert not [value for value in CONTACT if value in json.dumps(as_json)]
        revealed = cli("dead-letters", "show", letters[reason], "--reveal")
        assert all(value in revealed.stdout for value in CONTACT[:4])


def test_dead_letters_list_checks_the_reason_and_says_n_of_m(cli, kafka, mongo, topic, lead_topic):
    kafka.produce_batch(topic, [(None, b"{}"), (None, b"[]"), f.record(f.submitted("APP-1", 0))])
    ingest_all(kafka, mongo, topic, lead_topic)

    typo = cli("dead-letters", "list", "--reason", "schema_violaton")
    assert typo.exit_code == 2  # a usage error, before anything is read
    assert "'schema_violaton' is not one of" in typo.stderr
    assert "'schema_violation'" in typo.stderr and "'crm_rejected'" in typo.stderr

    cut = cli("dead-letters", "list", "--limit", "1")
    assert cut.exit_code == 0
    assert "1 of 2 open dead letters; the newest 1 shown, --limit shows more" in cut.stderr
    assert len(cut.stdout.strip().splitlines()) == 2  # the header and one letter
    listed = json.loads(cli("dead-letters", "list", "--limit", "1", "--json").stdout)
    assert (listed["total"], listed["shown"], listed["truncated"]) == (2, 1, True)
    whole = json.loads(cli("dead-letters", "list", "--json").stdout)
    assert (whole["total"], whole["truncated"]) == (2, False)
    assert {d["reason"] for d in whole["dead_letters"]} == {"schema_violation"}


def test_offsets_show_groups_with_totals_and_filters(cli, kafka, mongo, topic, lead_topic):
    kafka.produce_batch(topic, [f.record(f.submitted(f"APP-{i}", i)) for i in range(9)])
    ingest_all(kafka, mongo, topic, lead_topic)
    kafka.produce_batch(topic, [f.record(f.submitted(f"APP-{i}", i)) for i in range(9, 12)])

    shown = json.loads(cli("offsets", "show", "--json").stdout)
    groups = {g["group"]: g for g in shown["groups"]}
    assert set(groups) == {*ENROLLMENT_GROUPS, "lead-integration-service"}
    assert groups[READ_MODEL_GROUP]["lag"] == 3 and groups[READ_MODEL_GROUP]["end"] == 12
    assert sum(p["lag"] for p in groups[READ_MODEL_GROUP]["partitions"]) == 3
    leads = groups["lead-integration-service"]
    assert leads["topic"] == lead_topic and leads["lag"] == 9  # nine leads, none delivered
    assert shown["lag"] == 3 * 3 + 9

    only = json.loads(cli("offsets", "show", "--group", READ_MODEL_GROUP, "--json").stdout)
    assert [g["group"] for g in only["groups"]] == [READ_MODEL_GROUP]
    by_topic = json.loads(cli("offsets", "show", "--topic", lead_topic, "--json").stdout)
    assert [g["group"] for g in by_topic["groups"]] == ["lead-integration-service"]

    table = cli("offsets", "show", "--group", READ_MODEL_GROUP).stdout  # piped: plain
    assert not set(table) & set("┏┃━│└┡")
    header, *rows = table.strip().splitlines()
    assert header.split() == [
        "group",
        "topic",
        "partition",
        "committed",
        "in",
        "kafka",
        "end",
        "lag",
    ]
    total = rows[-1].split()
    assert total[:3] == [READ_MODEL_GROUP, topic, "total"] and total[-2:] == ["12", "3"]
    assert len({len(row) for row in rows}) == 1  # right-aligned numbers end in one column
