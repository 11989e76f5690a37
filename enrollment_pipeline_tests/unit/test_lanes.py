"""Partitions, lanes and per-partition attempts: the planning that parallel runs rely on."""

from __future__ import annotations

import json
from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kafka.partitioner.default import murmur2 as kafka_python_murmur2

from enrollment_pipeline.domain.backfill_plan import plan_backfill_runs
from enrollment_pipeline.domain.offset_ranges import plan_lane_runs
from enrollment_pipeline.domain.partitioning import lane_of, murmur2, partition_of
from enrollment_pipeline.lib.backfill import Shard


@given(st.binary(max_size=64))
def test_murmur2_is_kafkas(data):
    assert murmur2(data) == kafka_python_murmur2(data) & 0xFFFFFFFF


def test_partition_of_spreads_application_ids_and_is_stable():
    ids = [f"APP-{i:07d}" for i in range(6_000)]
    counts = [0] * 6
    for app_id in ids:
        counts[partition_of(app_id, 6)] += 1
    assert min(counts) > 800, counts  # about 1,000 each
    assert [partition_of(i, 6) for i in ids[:50]] == [partition_of(i, 6) for i in ids[:50]]
    assert partition_of("APP-0000001", 1) == 0


def test_lanes_are_partition_modulo_lanes():
    assert [lane_of(p, 2) for p in range(6)] == [0, 1, 0, 1, 0, 1]
    assert [lane_of(p, 1) for p in range(4)] == [0, 0, 0, 0]


def test_one_run_per_idle_lane_over_disjoint_partitions():
    plans = plan_lane_runs(
        "t",
        committed={},
        ends={0: 10, 1: 10, 2: 10, 3: 10},
        busy=set(),
        max_events=1_000,
        lanes=2,
        failures={},
        max_attempts=3,
    )
    assert [(r.lane, r.plan.partitions) for r in plans.runs] == [(0, [0, 2]), (1, [1, 3])]
    assert all(r.attempt == 1 for r in plans.runs)


def test_a_lane_with_a_partition_in_flight_waits_and_the_others_go_on():
    plans = plan_lane_runs(
        "t",
        committed={},
        ends={0: 10, 1: 10, 2: 10, 3: 10},
        busy={2},
        max_events=1_000,
        lanes=2,
        failures={},
        max_attempts=3,
    )
    assert [(r.lane, r.plan.partitions) for r in plans.runs] == [(1, [1, 3])]
    assert plans.busy_lanes == (0,)


def test_a_failed_partition_runs_alone_then_stops_while_its_lane_goes_on():
    ends = {0: 10, 1: 10, 2: 10}
    committed = {0: 4, 1: 0, 2: 0}
    first = plan_lane_runs(
        "t",
        committed=committed,
        ends=ends,
        busy=set(),
        max_events=100,
        lanes=1,
        failures={0: 1},
        max_attempts=3,
    )
    (run,) = first.runs
    assert run.plan.partitions == [0] and run.plan.ranges[0].start == 4 and run.attempt == 2
    stuck = plan_lane_runs(
        "t",
        committed=committed,
        ends=ends,
        busy=set(),
        max_events=100,
        lanes=1,
        failures={0: 3},
        max_attempts=3,
    )
    (run,) = stuck.runs
    assert run.plan.partitions == [1, 2] and run.attempt == 1
    assert [(s.partition, s.start, s.failures) for s in stuck.stuck] == [(0, 4, 3)]


@given(
    st.integers(1, 12),
    st.integers(1, 5),
    st.integers(1, 10_000),
    st.randoms(use_true_random=False),
)
def test_runs_never_share_a_partition_nor_exceed_the_budget(partitions, lanes, budget, rng):
    ends = {p: rng.randrange(0, 5_000) for p in range(partitions)}
    committed = {p: rng.randrange(0, e + 1) for p, e in ends.items()}
    busy = {p for p in ends if rng.random() < 0.2}
    failures = {p: rng.randrange(0, 4) for p in ends}
    plans = plan_lane_runs(
        "t",
        committed=committed,
        ends=ends,
        busy=busy,
        max_events=budget,
        lanes=lanes,
        failures=failures,
        max_attempts=3,
    )
    seen: list[int] = [p for r in plans.runs for p in r.plan.partitions]
    assert len(seen) == len(set(seen))
    assert not set(seen) & busy
    assert not set(seen) & {s.partition for s in plans.stuck}
    for run in plans.runs:
        assert run.plan.size <= budget
        assert {p % lanes for p in run.plan.partitions} == {run.lane}
        assert all(
            committed[r.partition] == r.start < r.end <= ends[r.partition] for r in run.plan.ranges
        )
    assert len({r.lane for r in plans.runs}) == len(plans.runs)


def test_a_sharded_backfill_is_chunks_of_days_times_partitions():
    runs = plan_backfill_runs(
        date(2024, 1, 1), date(2024, 3, 5), days_per_run=31, shards=4, lanes=2
    )
    chunks = sorted({(r.first, r.last) for r in runs})
    assert chunks == [
        (date(2024, 1, 1), date(2024, 1, 31)),
        (date(2024, 2, 1), date(2024, 3, 2)),
        (date(2024, 3, 3), date(2024, 3, 5)),
    ]
    assert len(runs) == 12
    assert {(r.shard, r.lane) for r in runs} == {(0, 0), (1, 1), (2, 0), (3, 1)}
    (one,) = plan_backfill_runs(
        date(2024, 1, 1), date(2024, 1, 1), days_per_run=31, shards=None, lanes=2
    )
    assert (one.shard, one.lane) == (None, None)
    with pytest.raises(ValueError, match="before"):
        plan_backfill_runs(date(2024, 2, 1), date(2024, 1, 1), days_per_run=1, shards=1, lanes=1)


def test_each_archive_line_belongs_to_exactly_one_shard():
    lines = [
        json.dumps({"application_id": f"APP-{i:05d}", "event_type": "x"}).encode()
        for i in range(300)
    ] + [b"", b"not json", b"[1, 2]", b'{"application_id": 7}', b"{" * 5000]
    shards = [Shard(p, 4) for p in range(4)]
    for line in lines:
        assert sum(shard.owns(line) for shard in shards) == 1, line[:40]
    owners = [next(s.partition for s in shards if s.owns(line)) for line in lines[:300]]
    assert owners == [partition_of(f"APP-{i:05d}", 4) for i in range(300)]
    assert all(shards[0].owns(line) for line in lines[300:])  # no application: shard 0's
    with pytest.raises(ValueError, match=r"shards 0\.\.3"):
        Shard(4, 4)
