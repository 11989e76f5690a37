"""Which offset ranges the sensor asks for: pure planning over committed and end offsets.

Ranges are per partition, runs cover disjoint partitions, and partitions are grouped in lanes
(`domain/partitioning.py`) so that up to one run per lane is in flight. A partition's range is
named by its start offset: when a run over it fails, the next tick asks for the same start again
(perhaps with a later end) and counts it as another attempt of that partition. A partition that
failed before runs alone, so a bad partition spends its attempts by itself and then stops,
while the others of its lane go on.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PartitionRange:
    partition: int
    start: int
    end: int  # exclusive

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class RangePlan:
    topic: str
    ranges: tuple[PartitionRange, ...]

    @property
    def key(self) -> str:
        """Stable name of the range: topic and start offsets (the end may grow)."""
        starts = ",".join(f"{r.partition}@{r.start}" for r in self.ranges)
        return f"{self.topic}:{starts}"

    @property
    def partitions(self) -> list[int]:
        return [r.partition for r in self.ranges]

    @property
    def size(self) -> int:
        return sum(r.size for r in self.ranges)

    def to_config(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "ranges": [
                {"partition": r.partition, "start": r.start, "end": r.end} for r in self.ranges
            ],
        }


def plan_ranges(
    topic: str,
    *,
    committed: Mapping[int, int],
    ends: Mapping[int, int],
    busy: Set[int],
    max_events: int,
) -> RangePlan | None:
    """One run's ranges: every idle partition with lag, at most `max_events` in all.

    The biggest lags are served first, so a hot partition cannot starve behind many quiet
    ones; a partition never committed starts at 0 (the whole retained log).
    """
    lagging = [
        (ends[p] - committed.get(p, 0), p)
        for p in sorted(ends)
        if p not in busy and ends[p] > committed.get(p, 0)
    ]
    lagging.sort(key=lambda item: (-item[0], item[1]))
    budget = max_events
    chosen: list[PartitionRange] = []
    for lag, partition in lagging:
        if budget <= 0:
            break
        start = committed.get(partition, 0)
        take = min(lag, budget)
        chosen.append(PartitionRange(partition, start, start + take))
        budget -= take
    if not chosen:
        return None
    return RangePlan(topic, tuple(sorted(chosen, key=lambda r: r.partition)))


def lag(committed: Mapping[int, int], ends: Mapping[int, int]) -> int:
    """Events not yet committed, over all partitions."""
    return sum(max(0, end - committed.get(p, 0)) for p, end in ends.items())


def partition_range_key(topic: str, partition_range: PartitionRange) -> str:
    """Stable name of one partition's range: topic and start offset (the end may grow)."""
    return f"{topic}@{partition_range.start}"


@dataclass(frozen=True)
class LaneRun:
    """One run to request: a lane's range, and which attempt at it this is."""

    lane: int
    plan: RangePlan
    attempt: int


@dataclass(frozen=True)
class StuckPartition:
    """A partition whose range failed `failures` times from `start`: not requested again."""

    partition: int
    start: int
    failures: int


@dataclass(frozen=True)
class LanePlans:
    runs: tuple[LaneRun, ...]
    stuck: tuple[StuckPartition, ...]
    busy_lanes: tuple[int, ...]


def plan_lane_runs(
    topic: str,
    *,
    committed: Mapping[int, int],
    ends: Mapping[int, int],
    busy: Set[int],
    max_events: int,
    lanes: int,
    failures: Mapping[int, int],
    max_attempts: int,
) -> LanePlans:
    """Up to one run per idle lane, each over lagging partitions of its lane.

    A lane with a partition in `busy` (a run in flight, or another writer's lease) waits.
    `failures[p]` counts the failed runs over partition p's range from its committed start: a
    partition with `max_attempts` of them is stuck (reported, not requested); one that failed
    fewer times runs alone, before the lane's other partitions, so it cannot make them fail.
    """
    lanes = max(1, lanes)
    stuck = tuple(
        StuckPartition(p, committed.get(p, 0), failures.get(p, 0))
        for p in sorted(ends)
        if ends[p] > committed.get(p, 0) and failures.get(p, 0) >= max_attempts
    )
    stuck_ids = {s.partition for s in stuck}
    runs: list[LaneRun] = []
    busy_lanes: list[int] = []
    for lane in range(lanes):
        members = [p for p in sorted(ends) if p % lanes == lane]
        if any(p in busy for p in members):
            busy_lanes.append(lane)
            continue
        eligible = {p: ends[p] for p in members if p not in stuck_ids}
        suspects = [p for p in eligible if failures.get(p, 0) > 0 and ends[p] > committed.get(p, 0)]
        chosen = suspects[:1] if suspects else list(eligible)
        plan = plan_ranges(
            topic,
            committed={p: committed[p] for p in chosen if p in committed},
            ends={p: eligible[p] for p in chosen},
            busy=set(),
            max_events=max_events,
        )
        if plan is not None:
            attempt = 1 + max(failures.get(p, 0) for p in plan.partitions)
            runs.append(LaneRun(lane, plan, attempt))
    return LanePlans(tuple(runs), stuck, tuple(busy_lanes))
