"""One bad record never fails a batch: a thousand hostile records among good ones, through the
real sensor and job, on several partitions. Every position ends as exactly one of a stored
event, a dead letter (with the reason its class deserves) or a counted duplicate."""

from __future__ import annotations

import gzip
import json
import resource
from collections import Counter
from datetime import date
from pathlib import Path

import dagster as dg
import pytest

from enrollment_pipeline.domain.events import EnrollmentEvent
from enrollment_pipeline.lib.backfill import backfill_days
from enrollment_pipeline.lib.clients.archive import Archive
from enrollment_pipeline.lib.ingestion.limits import InputLimits
from enrollment_pipeline.lib.mongo.collections import ENROLLMENT_EVENTS
from enrollment_pipeline.lib.operations import redrive
from enrollment_pipeline.lib.sample_data import synthetic_records
from enrollment_pipeline_tests import factories as f
from enrollment_pipeline_tests.hostile import DUPLICATE, STORED, by_kind, corpus, interleaved
from enrollment_pipeline_tests.pipeline import Pipeline, assert_read_model_is_the_fold, drain

pytestmark = pytest.mark.integration

LIMIT = 900_000  # INGEST_MAX_RECORD_BYTES here: under the broker's own 1 MB


def outcomes(pipeline: Pipeline) -> dict[tuple[int, int], str]:
    """What became of each position of the topic: a dead letter's reason, or stored."""
    found: dict[tuple[int, int], str] = {}
    for letter_id, letter in pipeline.dead_letters().items():
        _, _, partition, offset = letter_id.split(":")
        found[(int(partition), int(offset))] = letter["reason"]
    for doc in pipeline.mongo.db()[ENROLLMENT_EVENTS].find({}, {"source": 1}):
        position = (doc["source"]["partition"], doc["source"]["offset"])
        assert position not in found, f"{position} is both a stored event and a dead letter"
        found[position] = STORED
    return found


def test_a_thousand_hostile_records_are_each_accounted_for_and_no_run_fails(
    pipeline: Pipeline,
):
    hostile = corpus(per_kind=25, limit=LIMIT)
    good = [(r.key, r.value) for r in synthetic_records(300, seed=5, start=f.T0)]
    stream = list(interleaved(good, hostile))
    assert sum(1 for *_, kind in stream if kind) >= 1_000
    pipeline.produce([(key, value) for key, value, _ in stream])

    with dg.instance_for_test() as instance:
        runs = drain(
            instance, pipeline, ingest_max_events_per_run=400, ingest_max_record_bytes=LIMIT
        )
        failed = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
    assert len(runs) > 3 and not failed

    # Each position, read back in order, with the class that produced it.
    expected: dict[tuple[bytes | None, bytes | None], list[str]] = {}
    for record in hostile:
        expected.setdefault((record.key, record.value), []).append(record.expect)
    ends = pipeline.kafka.end_offsets(pipeline.topic)
    read = pipeline.kafka.read_range(pipeline.topic, {p: (0, e) for p, e in ends.items()})
    assert len(read) == len(stream)
    seen = outcomes(pipeline)
    duplicates = 0
    for record in read:
        owed = expected.get((record.key, record.value))
        want = owed.pop(0) if owed else STORED
        got = seen.get((record.partition, record.offset), DUPLICATE)
        assert got == want, (record.partition, record.offset, want, got)
        duplicates += got == DUPLICATE
    assert (
        duplicates == sum(run["duplicates"] for run in runs) == by_kind(hostile)["exact_duplicate"]
    )
    assert_read_model_is_the_fold(
        pipeline, [(key, value) for key, value, _ in stream], in_order=False
    )
    # Every letter says why, and keeps at most its share of raw bytes.
    letters = pipeline.dead_letters().values()
    assert all(letter["detail"] and letter["raw_size"] is not None for letter in letters)
    assert max(len(letter["raw_base64"] or "") for letter in letters) <= 4 * 256 * 1024 / 3 + 4


def test_a_conflicting_copy_whose_application_lost_its_document_is_dead_lettered(
    pipeline: Pipeline,
):
    """A crash left an event stored but its application's document unwritten; then a copy of
    that event with other content arrives. The batch refolds the application and goes on."""
    submitted = f.submitted("APP-C", 0)
    pipeline.produce([f.record(submitted)])
    pipeline.ingest()
    pipeline.mongo.db()["applications"].delete_many({})  # the document the crash never wrote
    other = {**submitted, "payload": {**submitted["payload"], "channel": "DIRECT"}}
    pipeline.produce([f.record(other), f.record(f.submitted("APP-D", 1))])

    result = pipeline.ingest()

    assert result.report.dead_lettered == 1
    (letter,) = pipeline.dead_letters().values()
    assert letter["reason"] == "conflicting_duplicate"
    assert set(pipeline.applications()) == {"APP-C", "APP-D"}
    assert pipeline.applications()["APP-C"]["channel"] == "BROKER"  # the first copy counts


def test_a_cut_dead_letter_is_not_redriven_and_says_why(pipeline: Pipeline):
    bad = {**f.submitted("APP-X", 0), "padding": "y" * 300_000}
    pipeline.produce([f.record(bad)])
    pipeline.ingest()
    ((letter_id, letter),) = pipeline.dead_letters().items()
    assert letter["reason"] == "schema_violation"
    assert letter["raw_truncated"] and letter["raw_size"] > letter["raw_kept_bytes"] == 256 * 1024

    result = redrive(pipeline.store, [letter_id], publish_leads=None, lease=pipeline.lease())

    assert result.redriven == []
    assert "only the first 262144 of its" in result.still_rejected[letter_id]
    assert "re-publish the record from its source" in result.still_rejected[letter_id]


def test_a_newline_free_gzip_stream_is_one_oversized_letter_at_flat_memory(
    pipeline: Pipeline, tmp_path: Path
):
    day = date(2024, 2, 1)
    good = json.dumps(f.submitted("APP-G", 0)).encode()
    path = tmp_path / f"{day}.jsonl.gz"
    with gzip.open(path, "wb") as out:
        out.write(good + b"\n")
        for _ in range(400):  # 400 MB of one line, a few hundred kB compressed
            out.write(b"z" * 1_000_000)
        out.write(b"\n" + json.dumps(f.submitted("APP-H", 1)).encode() + b"\n")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    report = backfill_days(
        Archive(root=str(tmp_path)),
        pipeline.store,
        [day],
        lease=pipeline.lease(),
        limits=InputLimits(max_record_bytes=1_000_000),
    )

    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 64, f"peak memory grew by {grown_mb:.0f} MB"
    assert (report.lines_read, report.events_new, report.dead_lettered) == (3, 2, 1)
    (letter,) = pipeline.dead_letters().values()
    assert letter["reason"] == "oversized" and letter["raw_size"] == 400_000_000
    assert letter["source"] == {"file": path.name, "line": 2}
    assert set(pipeline.applications()) == {"APP-G", "APP-H"}
    stored = pipeline.mongo.db()[ENROLLMENT_EVENTS].find_one({"application_id": "APP-H"})
    assert EnrollmentEvent.from_document(stored["event"]).application_id == "APP-H"


def test_an_application_keeps_its_first_anomalies_and_counts_them_all(pipeline: Pipeline):
    """A producer replaying one bad approval a thousand times, each with a new id: the
    document stays small, and the fold from the store gives the same count."""
    approvals = [f.event("ApplicationApproved", "APP-NEVER", i) for i in range(1_000)]
    pipeline.produce([f.record(event) for event in approvals])
    pipeline.ingest()

    document = pipeline.applications()["APP-NEVER"]
    assert (document["status"], document["anomaly_count"], len(document["anomalies"])) == (
        None,
        1_000,
        100,
    )
    assert Counter(a["reason"] for a in document["anomalies"]) == {"before_submission": 100}
    assert_read_model_is_the_fold(pipeline, [f.record(event) for event in approvals])
