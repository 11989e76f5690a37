"""The order in which one run serves leads (Contract 4): per application, by topic position.

Pure: leads of one application share a partition (the key is the application id), so their
offsets are their order. A parked or refused lead holds back the later leads of its
application only; a run's committed offset per partition stops before the first lead it did
not decide.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Set
from dataclasses import dataclass
from typing import Any

from enrollment_pipeline.domain.leads import LeadEvent
from enrollment_pipeline.domain.offset_ranges import RangePlan

Position = tuple[int, int]  # (partition, offset)


@dataclass(frozen=True)
class QueuedLead:
    """One lead to deliver, with where it was read (its place in the application's order)."""

    lead_event_id: str
    application_id: str
    payload: dict[str, Any]
    topic: str
    partition: int
    offset: int

    @classmethod
    def of_record(cls, lead: LeadEvent, topic: str, partition: int, offset: int) -> QueuedLead:
        payload = lead.model_dump(mode="json")
        return cls(lead.lead_event_id, lead.application_id, payload, topic, partition, offset)

    @property
    def position(self) -> Position:
        return (self.partition, self.offset)


@dataclass(frozen=True)
class LeadQueue:
    """One application's leads to try in order; `blocked_by` holds all of them back."""

    application_id: str
    leads: tuple[QueuedLead, ...]
    blocked_by: str | None


def lead_queues(
    fresh: Iterable[QueuedLead],
    waiting: Iterable[QueuedLead],
    known: Set[str],
    retry_apps: Set[str],
) -> list[LeadQueue]:
    """Each application's line: its waiting (parked or refused) leads first, then the fresh
    ones not recorded yet (`known` holds the recorded ids), all in topic order. An application
    whose head waits and is not due for a retry (`retry_apps`) is held back behind it."""
    waiting_by_app: dict[str, list[QueuedLead]] = defaultdict(list)
    for lead in waiting:
        waiting_by_app[lead.application_id].append(lead)
    new_by_app: dict[str, dict[str, QueuedLead]] = defaultdict(dict)
    for lead in fresh:
        if lead.lead_event_id not in known:  # delivered, parked or failed already: recorded
            new_by_app[lead.application_id].setdefault(lead.lead_event_id, lead)
    queues = []
    for app in sorted(set(waiting_by_app) | set(new_by_app)):
        held = sorted(waiting_by_app.get(app, []), key=lambda q: q.position)
        new = sorted(new_by_app.get(app, {}).values(), key=lambda q: q.position)
        if held and app not in retry_apps:
            # The head of the application's line is parked or failed: the rest waits.
            queues.append(LeadQueue(app, tuple(new), blocked_by=held[0].lead_event_id))
        else:
            queues.append(LeadQueue(app, tuple(held + new), blocked_by=None))
    return [q for q in queues if q.leads]


def commit_points(
    plan: RangePlan, fresh: Iterable[QueuedLead], undecided: Set[Position]
) -> dict[int, int]:
    """Per partition: the range's end, or the first lead of the range not yet decided."""
    fresh = list(fresh)
    offsets = {}
    for r in plan.ranges:
        held = [q.offset for q in fresh if q.partition == r.partition and q.position in undecided]
        offsets[r.partition] = min(held) if held else r.end
    return offsets
