"""Range planning (pure) and the thresholds of the ingestion health checks."""

from __future__ import annotations

import pytest

from enrollment_pipeline.defs.ingestion.checks import (
    DEAD_LETTER_RATE_CHECK,
    lag_result,
    rate_result,
)
from enrollment_pipeline.domain.offset_ranges import PartitionRange, plan_ranges


def test_every_idle_lagging_partition_from_its_committed_offset():
    plan = plan_ranges(
        "t", committed={0: 5, 1: 7}, ends={0: 10, 1: 7, 2: 3}, busy=set(), max_events=100
    )
    assert plan.ranges == (PartitionRange(0, 5, 10), PartitionRange(2, 0, 3))
    assert plan.key == "t:0@5,2@0"
    assert plan.size == 8


def test_busy_partitions_are_left_out():
    plan = plan_ranges("t", committed={}, ends={0: 4, 1: 4}, busy={0}, max_events=100)
    assert plan.partitions == [1]
    assert plan_ranges("t", committed={}, ends={0: 4}, busy={0}, max_events=100) is None


def test_the_cap_serves_the_biggest_lag_first():
    plan = plan_ranges("t", committed={}, ends={0: 3, 1: 50, 2: 20}, busy=set(), max_events=60)
    assert plan.ranges == (PartitionRange(1, 0, 50), PartitionRange(2, 0, 10))
    assert plan.size == 60


def test_nothing_to_do():
    assert plan_ranges("t", committed={0: 9}, ends={0: 9}, busy=set(), max_events=10) is None


@pytest.mark.parametrize(
    ("rejected", "total", "passed"), [(0, 0, True), (5, 100, True), (6, 100, False)]
)
def test_dead_letter_rate_threshold(rejected, total, passed):
    result = rate_result(DEAD_LETTER_RATE_CHECK, rejected, total, threshold=0.05)
    assert result.passed is passed
    assert result.metadata["dead_lettered"].value == rejected


@pytest.mark.parametrize(("left", "passed"), [(0, True), (100, True), (101, False)])
def test_consumer_lag_threshold(left, passed):
    assert lag_result(left, threshold=100).passed is passed


def test_rebuild_buckets_hold_at_most_the_events_of_one_pass():
    from collections import Counter

    from enrollment_pipeline.lib.backfill import _buckets

    counts = Counter({"APP-1": 3, "APP-2": 4, "APP-3": 2, "APP-4": 9, "APP-5": 1})
    buckets = _buckets(counts, 7)
    assert buckets == [{"APP-1", "APP-2"}, {"APP-3"}, {"APP-4"}, {"APP-5"}]
    assert set().union(*buckets) == set(counts)  # every application, once
    assert _buckets(Counter(), 7) == []
