"""How long a dead letter keeps its raw bytes (DEAD_LETTER_RAW_RETENTION_DAYS).

A rejected input is kept whole so it can be re-driven after a fix; it may hold personal data,
so after the period (from `first_seen_at`) its bytes go and the letter keeps its reason,
detail, key, size and SHA-256 (enough to find the input at its source). Applied by the daily
job `dead_letter_retention`, so it holds on a quiet topic too.

Bounded whatever the backlog: each round reads at most `batch` ids (`first_seen_at` is indexed
on MongoDB; FerretDB scans, which is why a round is small) and drops their bytes with one
bounded update each through the `BoundedWriter` (no `update_many`: on FerretDB that is one
long scan-and-update command); a run stops after `max_rounds` and the next run goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from enrollment_pipeline.lib.mongo.dead_letters import RETENTION
from enrollment_pipeline.lib.mongo.store import EnrollmentStore


@dataclass(frozen=True)
class RetentionReport:
    cutoff: datetime
    removed: int
    more_left: bool  # the run stopped at `max_rounds`: the next one goes on


def expire_raw_bytes(
    store: EnrollmentStore,
    *,
    days: int,
    now: datetime | None = None,
    batch: int = 500,
    max_rounds: int = 40,
) -> RetentionReport:
    """Drop the raw bytes of dead letters first seen more than `days` days before `now`."""
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    removed = 0
    for _ in range(max_rounds):
        ids = store.dead_letters.raw_first_seen_before(cutoff, limit=batch)
        if not ids:
            return RetentionReport(cutoff, removed, more_left=False)
        removed += store.dead_letters.remove_raw(ids, why=RETENTION, now=now or datetime.now(UTC))
    more = bool(store.dead_letters.raw_first_seen_before(cutoff, limit=1))
    return RetentionReport(cutoff, removed, more_left=more)
