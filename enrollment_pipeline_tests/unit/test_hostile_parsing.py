"""Whatever bytes arrive, parsing never raises, and whatever it accepts can be hashed, stored
and sorted (property-based); the corpus of hostile classes gets the reasons it deserves."""

from __future__ import annotations

import copy
import json
import random
import re
from datetime import UTC, datetime

import bson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enrollment_pipeline.domain.events import (
    DATETIME_PATTERN,
    EnrollmentEvent,
    Rejection,
    TimeBounds,
    parse_archive_line,
    parse_record,
)
from enrollment_pipeline.domain.leads import LeadEvent, parse_lead_record
from enrollment_pipeline.domain.projection import (
    MAX_ANOMALIES_KEPT,
    Application,
    fold_application,
    sorted_history,
)
from enrollment_pipeline.lib.ingestion.limits import InputLimits
from enrollment_pipeline_tests import factories as f
from enrollment_pipeline_tests.hostile import DUPLICATE, STORED, corpus

GOOD = json.dumps(f.submitted("APP-1", 0)).encode()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)


def assert_storable(outcome: EnrollmentEvent | Rejection) -> None:
    if isinstance(outcome, Rejection):
        assert outcome.detail and outcome.detail.isprintable()
        return
    document = outcome.to_document()
    bson.encode({"event": document})  # what the event store keeps
    assert "\x00" not in json.dumps(document, ensure_ascii=False)
    outcome.content_hash()
    outcome.sort_key()
    assert EnrollmentEvent.from_document(document) == outcome


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.binary(max_size=300))
def test_any_bytes_parse_without_raising(raw: bytes) -> None:
    for outcome in (parse_record(b"APP-1", raw), parse_archive_line(raw)):
        assert_storable(outcome)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_change_to_a_valid_event_parses_without_raising(data: st.DataObject) -> None:
    doc = copy.deepcopy(f.submitted("APP-1", 0))  # the factory shares its broker dict
    path = data.draw(
        st.sampled_from(
            [
                ("event_id",),
                ("occurred_at",),
                ("application_id",),
                ("schema_version",),
                ("event_type",),
                ("payload",),
                ("payload", "applicant"),
                ("payload", "applicant", "first_name"),
                ("payload", "broker", "email"),
                ("payload", "plan", "coverage_start"),
                ("payload", "marketing_consent"),
            ]
        )
    )
    node = doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = data.draw(json_values)
    raw = json.dumps(doc, allow_nan=True).encode("utf-8", "surrogatepass")
    assert_storable(parse_record(b"APP-1", raw))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_cut_or_corrupted_valid_event_parses_without_raising(data: st.DataObject) -> None:
    raw = bytearray(GOOD)
    for _ in range(data.draw(st.integers(min_value=1, max_value=5))):
        at = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
        raw[at] = data.draw(st.integers(min_value=0, max_value=255))
    cut = data.draw(st.integers(min_value=0, max_value=len(raw)))
    assert_storable(parse_record(b"APP-1", bytes(raw[:cut])))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    instant=st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.timezones()
    )
)
def test_any_instant_is_kept_only_inside_the_bounds(instant: datetime) -> None:
    doc = f.event("ApplicationApproved", "APP-1", 0)
    doc["occurred_at"] = wire = instant.isoformat()
    outcome = parse_record(b"APP-1", json.dumps(doc).encode())
    bounds = TimeBounds()
    try:
        inside = bounds.earliest <= instant.astimezone(UTC) < bounds.latest
    except (OverflowError, ValueError):
        inside = False
    if inside and re.fullmatch(DATETIME_PATTERN, wire):  # an offset of ±HH:MM (or Z)
        assert isinstance(outcome, EnrollmentEvent)
    else:
        assert isinstance(outcome, Rejection)
    assert_storable(outcome)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.binary(max_size=300), key=st.none() | st.binary(max_size=20))
def test_any_lead_record_parses_without_raising(raw: bytes, key: bytes | None) -> None:
    outcome = parse_lead_record(key, raw)
    if isinstance(outcome, LeadEvent):
        outcome.model_dump_json()


def test_each_hostile_class_gets_its_reason() -> None:
    limits = InputLimits(max_record_bytes=900_000)
    for record in corpus(per_kind=3, heavy=1):
        outcome = limits.record(record.key, record.value)
        got = outcome.reason.value if isinstance(outcome, Rejection) else STORED
        # Duplicates are decided against what came before, not by the parser.
        want = STORED if record.expect in (DUPLICATE, "conflicting_duplicate") else record.expect
        assert got == want, (record.kind, outcome)


@pytest.mark.parametrize("cut", [1, 40, 99, 100, 101, 150, 299])
def test_the_first_anomalies_are_kept_and_all_counted_wherever_a_batch_ends(cut: int) -> None:
    submitted = EnrollmentEvent.model_validate(f.submitted("APP-1", 0))
    noise = [
        EnrollmentEvent.model_validate(f.submitted("APP-1", minute)) for minute in range(1, 300)
    ]  # every later submission of the same application is an anomaly
    random.Random(cut).shuffle(noise)
    ordered = sorted_history([submitted, *noise])
    whole = fold_application("APP-1", ordered)
    assert whole.anomaly_count == 299
    assert len(whole.anomalies) == MAX_ANOMALIES_KEPT
    assert [a.event_id for a in whole.anomalies] == [e.event_id for e in ordered[1:101]]

    saved = Application.from_document(fold_application("APP-1", ordered[:cut]).to_document())
    assert saved is not None
    again = fold_application("APP-1", ordered[cut:], start=saved)
    assert again.to_document() == whole.to_document()


def test_a_document_of_an_earlier_version_with_every_anomaly_is_read_capped() -> None:
    events = [
        EnrollmentEvent.model_validate(f.event("ApplicationApproved", "APP-1", i))
        for i in range(250)
    ]
    document = fold_application("APP-1", events).to_document()
    document["anomalies"] = [document["anomalies"][0]] * 250  # as earlier versions kept them
    del document["anomaly_count"]
    saved = Application.from_document(document)
    assert saved is not None
    assert (len(saved.anomalies), saved.anomaly_count) == (MAX_ANOMALIES_KEPT, 250)


def test_a_document_this_version_cannot_read_is_refolded_not_a_crash() -> None:
    document = fold_application(
        "APP-1", [EnrollmentEvent.model_validate(f.submitted("APP-1", 0))]
    ).to_document()
    document["status"] = "ARCHIVED"  # edited by hand
    assert Application.from_document(document) is None
