"""The drift check's pure parts: the sample and the comparison."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from enrollment_pipeline.domain.events import EnrollmentEvent
from enrollment_pipeline.domain.projection import fold_application
from enrollment_pipeline.lib.drift import (
    MISSING_FOLLOWUP,
    NO_STORED_EVENT,
    differences,
    paths_differing,
    reservoir,
)
from enrollment_pipeline_tests import factories as f


@given(st.lists(st.text(max_size=5), unique=True, max_size=60), st.integers(1, 80), st.integers())
def test_the_reservoir_keeps_min_of_size_and_stream_distinct_items(items, size, seed):
    kept = reservoir(iter(items), size, random.Random(seed))
    assert len(kept) == min(size, len(items))
    assert len(set(kept)) == len(kept) and set(kept) <= set(items)


def test_the_reservoir_gives_every_item_the_same_chance():
    counts = Counter(
        item for seed in range(3_000) for item in reservoir(range(20), 5, random.Random(seed))
    )
    # Each of 20 items is kept 5/20 of the time: 750 of 3,000 draws, give or take.
    assert set(counts) == set(range(20))
    assert all(650 < n < 850 for n in counts.values()), counts


def test_paths_name_the_nested_field_and_compare_at_mongo_precision():
    at = datetime(2026, 11, 2, 9, 0, 0, 123456, tzinfo=UTC)
    stored = {"a": 1, "b": {"c": "x", "d": at.replace(microsecond=123000)}, "e": [1, 2]}
    planned = {"a": 1, "b": {"c": "y", "d": at}, "e": [1, 2, 3], "f": None}
    assert paths_differing(stored, planned) == ["b.c", "e", "f"]


def test_a_document_equal_to_its_fold_has_no_difference_and_an_edit_is_named():
    events = [EnrollmentEvent.model_validate(f.submitted("APP-1", 0, broker=None))]
    document = fold_application("APP-1", events).to_document()
    assert differences("APP-1", document, events, None) == []
    edited = {**document, "applicant": {**document["applicant"], "email": "x@y.example"}}
    assert differences("APP-1", edited, events, None) == ["applicant.email"]
    assert differences("APP-1", document, [], None) == [NO_STORED_EVENT]


def test_a_missing_follow_up_is_named_once_and_a_stale_one_by_its_fields():
    events = [EnrollmentEvent.model_validate(f.submitted("APP-1", 0))]  # with a broker
    application = fold_application("APP-1", events)
    document = {**application.to_document(), "broker_followup_status": "AWAITING_SIGNATURE"}
    assert differences("APP-1", document, events, None) == [MISSING_FOLLOWUP]
    requirement = application.followup
    assert requirement is not None
    followup = {
        "_id": "APP-1",
        "app_id": "APP-1",
        "broker_id": requirement.broker_id,
        "broker_email": requirement.broker_email,
        "cycle_started_at": requirement.cycle_started_at,
        "fold_status": requirement.state,
        "signature_obtained": False,
        "signed_at": None,
        "submitted_at": document["submitted_at"],
        "status": "AWAITING_SIGNATURE",
    }
    assert differences("APP-1", document, events, followup) == []
    closed = {**followup, "status": "CLOSED"}
    assert differences("APP-1", document, events, closed) == ["broker_followups.status"]
