"""Which runs a backfill of archive days becomes: day chunks, times shards of applications.

A shard is a partition of the enrollment topic (`domain/partitioning.py`): its run takes that
partition's lease only and carries the partition's lane, so it queues behind (and lets pass,
by priority) live ingestion of the same lane and never stops the others. Chunks of days bound
how long one run holds its lane, so live events of a backfilled partition wait at most one
chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from enrollment_pipeline.domain.partitioning import lane_of


@dataclass(frozen=True)
class BackfillRun:
    first: date
    last: date  # inclusive
    shard: int | None  # None: every application, every partition's lease
    lane: int | None


def plan_backfill_runs(
    first: date,
    last: date,
    *,
    days_per_run: int,
    shards: int | None,
    lanes: int,
) -> list[BackfillRun]:
    """Every chunk of `days_per_run` days for each shard of `shards` (None: unsharded), in day
    order, shards of a chunk side by side."""
    if last < first:
        raise ValueError(f"--to {last} is before --from {first}")
    if days_per_run < 1:
        raise ValueError("a run covers at least one day")
    runs = []
    start = first
    while start <= last:
        end = min(last, start + timedelta(days=days_per_run - 1))
        if shards is None:
            runs.append(BackfillRun(start, end, None, None))
        else:
            runs += [BackfillRun(start, end, s, lane_of(s, lanes)) for s in range(shards)]
        start = end + timedelta(days=1)
    return runs
