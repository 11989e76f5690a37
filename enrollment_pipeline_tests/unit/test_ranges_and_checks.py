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


def test_a_spill_keeps_an_application_in_one_group_and_groups_bounded(tmp_path):
    from enrollment_pipeline.lib.spill import Spill, by_application

    spill = Spill(tmp_path, shards=8)
    for i in range(1_000):
        app = f"APP-{i % 97}"
        spill.add(app, {"a": app, "n": i})
    groups = list(spill.groups(max_records=200))
    assert len(groups) > 3
    assert sum(len(g) for g in groups) == 1_000
    owners = [set(by_application(g)) for g in groups]
    assert all(a.isdisjoint(b) for i, a in enumerate(owners) for b in owners[i + 1 :])
    assert all(len(g) < 200 + 1_000 // 8 * 2 for g in groups)  # a group is a few shards
    assert not list(tmp_path.iterdir())  # the files are gone once read
