"""Merging the fold's view of a follow-up into the queue document (Contract 3 ownership).

The fold (ingestion, backfill, rebuild) owns whether a signature is required, signed or
closed, and which broker; the email job owns `retry_count`, attempts, `next_due_at` after a
send and the escalation (`pending_reason`). This module writes only the fold's fields, except
when a new broker (a new cycle) restarts the follow-up. The effective status takes precedence
SIGNED > CLOSED > PENDING > AWAITING_SIGNATURE.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

AWAITING = "AWAITING_SIGNATURE"
PENDING = "PENDING"
SIGNED = "SIGNED"
CLOSED = "CLOSED"
OPEN_STATUSES = (AWAITING, PENDING)


@dataclass(frozen=True)
class FollowupChange:
    """What to `$set` on the queue document (None when nothing changes)."""

    application_id: str
    set_fields: dict[str, Any]
    set_on_insert: dict[str, Any]
    status: str
    opened: bool  # a new cycle that awaits a signature
    closed: bool  # an open follow-up became SIGNED or CLOSED


def mongo_precision(value: Any) -> Any:
    """Datetimes as MongoDB keeps them (milliseconds), so a stored value compares equal."""
    if isinstance(value, datetime):
        return value.replace(microsecond=value.microsecond // 1000 * 1000)
    return value


def _same(stored: Any, computed: Any) -> bool:
    return bool(mongo_precision(stored) == mongo_precision(computed))


def effective_status(fold_state: str, pending_reason: str | None) -> str:
    if fold_state in (SIGNED, CLOSED):
        return fold_state
    return PENDING if pending_reason else AWAITING


def merge_followup(
    application_id: str,
    requirement: Any,
    existing: dict[str, Any] | None,
    *,
    submitted_at: datetime | None,
) -> FollowupChange | None:
    """The queue update for one application, given the fold's `FollowupRequirement`.

    None when the application needs no follow-up (it never had a broker) or when the stored
    document already says everything the fold knows (a replay writes nothing).
    """
    if requirement is None:
        return None
    new_cycle = (
        existing is None
        or existing.get("broker_id") != requirement.broker_id
        or not _same(existing.get("cycle_started_at"), requirement.cycle_started_at)
    )
    pending_reason = None if new_cycle or existing is None else existing.get("pending_reason")
    status = effective_status(requirement.state, pending_reason)
    fields: dict[str, Any] = {
        "app_id": application_id,
        "broker_id": requirement.broker_id,
        "broker_email": requirement.broker_email,
        "cycle_started_at": requirement.cycle_started_at,
        "fold_status": requirement.state,
        "signature_obtained": requirement.state == SIGNED,
        "signed_at": requirement.signed_at,
        "submitted_at": submitted_at,
        "status": status,
    }
    if new_cycle:
        fields.update(
            retry_count=0,
            next_due_at=requirement.cycle_started_at,
            last_email_sent_at=None,
            pending_reason=None,
        )
    if existing is not None and all(_same(existing.get(k), v) for k, v in fields.items()):
        return None
    was_open = existing is not None and existing.get("status") in OPEN_STATUSES
    return FollowupChange(
        application_id=application_id,
        set_fields=fields,
        set_on_insert={"attempts": [], "attempt_count": 0},
        status=status,
        opened=new_cycle and status == AWAITING,
        closed=was_open and status in (SIGNED, CLOSED),
    )
