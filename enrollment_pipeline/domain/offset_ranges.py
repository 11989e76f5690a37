"""Which offset ranges the sensor asks for: pure planning over committed and end offsets.

Ranges are per partition so that parallel ingestion over disjoint partitions stays possible.
A range is named by its start offsets only: when a run over it fails, the next tick asks for
the same starts again (perhaps with a later end) and counts it as another attempt.
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
