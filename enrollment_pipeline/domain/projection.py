"""The read model: an application is the strict fold of ALL its stored events.

The fold is a left fold in a total order (`EnrollmentEvent.sort_key`), so its state after the
last event, saved in the document (`fold`), is a valid start for events that sort after that
one: a batch applies them from the document alone. A late event (sorting before the saved
last one) refolds the whole history, so it lands in its place and an earlier anomaly can heal.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from enrollment_pipeline.domain.events import (
    Applicant,
    ApplicationDeclinedPayload,
    ApplicationSubmittedPayload,
    ApplicationUpdatedPayload,
    ApplicationWithdrawnPayload,
    Broker,
    BrokerAssignedPayload,
    BrokerSignatureReceivedPayload,
    EnrollmentCompletedPayload,
    EnrollmentEvent,
    EventType,
    Plan,
    iso_z,
    to_utc,
)

# The version of the `fold` sub-document; a document with another one is refolded in full.
FOLD_STATE_VERSION = 1
SortKey = tuple[datetime, int, str]
# An application keeps its first anomalies (in fold order) and counts all of them: a producer
# replaying a bad event id by id must not grow a document towards MongoDB's 16 MB limit.
MAX_ANOMALIES_KEPT = 100


class Status(StrEnum):
    SUBMITTED = "SUBMITTED"
    APPROVED = "APPROVED"
    DECLINED = "DECLINED"
    WITHDRAWN = "WITHDRAWN"
    ENROLLED = "ENROLLED"


TERMINAL_STATUSES = frozenset({Status.DECLINED, Status.WITHDRAWN, Status.ENROLLED})

# The status machine of Contract 1: (event type, status before) -> status after.
TRANSITIONS: dict[tuple[EventType, Status], Status] = {
    (EventType.APPROVED, Status.SUBMITTED): Status.APPROVED,
    (EventType.DECLINED, Status.SUBMITTED): Status.DECLINED,
    (EventType.WITHDRAWN, Status.SUBMITTED): Status.WITHDRAWN,
    (EventType.WITHDRAWN, Status.APPROVED): Status.WITHDRAWN,
    (EventType.ENROLLMENT_COMPLETED, Status.APPROVED): Status.ENROLLED,
}


class AnomalyReason(StrEnum):
    """Fixed codes for events that the fold records but does not apply."""

    BEFORE_SUBMISSION = "before_submission"
    DUPLICATE_SUBMISSION = "duplicate_submission"
    ILLEGAL_TRANSITION = "illegal_transition"
    CHANGE_AFTER_TERMINAL = "change_after_terminal"
    SIGNATURE_FROM_OTHER_BROKER = "signature_from_other_broker"


class FollowupState(StrEnum):
    """The fold-owned follow-up states (PENDING belongs to the email job, not the fold)."""

    AWAITING_SIGNATURE = "AWAITING_SIGNATURE"
    SIGNED = "SIGNED"
    CLOSED = "CLOSED"


@dataclass(frozen=True)
class Anomaly:
    event_id: str
    event_type: EventType
    occurred_at: datetime
    reason: AnomalyReason

    def to_document(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "event_type": self.event_type.value,
            "occurred_at": iso_z(self.occurred_at),
            "reason": self.reason.value,
        }


@dataclass(frozen=True)
class FollowupRequirement:
    """What the fold says about the broker signature; the email job owns retries on top."""

    broker_id: str
    broker_email: str
    broker_name: str
    cycle_started_at: datetime
    state: FollowupState
    signed_at: datetime | None


@dataclass(frozen=True)
class Application:
    """One application as folded so far; also the fold's state between events."""

    application_id: str
    status: Status | None = None
    applicant: Applicant | None = None
    plan: Plan | None = None
    channel: str | None = None
    broker: Broker | None = None
    marketing_consent: bool | None = None
    # Set when the current broker's signature requirement started (submission or assignment).
    broker_cycle_started_at: datetime | None = None
    # The current broker's signature time; reset when the broker changes.
    broker_signed_at: datetime | None = None
    submitted_at: datetime | None = None
    updated_at: datetime | None = None
    event_count: int = 0
    anomalies: tuple[Anomaly, ...] = ()  # the first MAX_ANOMALIES_KEPT
    anomaly_count: int = 0  # all of them
    decline_reason: str | None = None
    withdraw_reason: str | None = None
    policy_number: str | None = None
    effective_date: date | None = None
    # The sort key of the last event folded in (anomalies included): later ones apply on top.
    last_event_key: SortKey | None = None

    @property
    def followup(self) -> FollowupRequirement | None:
        """Contract 3, fold-owned part: SIGNED > CLOSED > AWAITING_SIGNATURE."""
        if self.status is None or self.broker is None or self.broker_cycle_started_at is None:
            return None
        if self.broker_signed_at is not None:
            state = FollowupState.SIGNED
        elif self.status in TERMINAL_STATUSES:
            state = FollowupState.CLOSED
        else:
            state = FollowupState.AWAITING_SIGNATURE
        return FollowupRequirement(
            broker_id=self.broker.broker_id,
            broker_email=self.broker.email,
            broker_name=self.broker.name,
            cycle_started_at=to_utc(self.broker_cycle_started_at),
            state=state,
            signed_at=_utc_or_none(self.broker_signed_at),
        )

    def to_document(self) -> dict[str, Any]:
        """The Mongo `applications` document; every key always present, so `$set` is exact."""
        followup = self.followup
        return {
            "_id": self.application_id,
            "applicant": self.applicant.model_dump(mode="json") if self.applicant else None,
            "plan": self.plan.model_dump(mode="json") if self.plan else None,
            "channel": self.channel,
            "broker": self.broker.model_dump(mode="json") if self.broker else None,
            "marketing_consent": self.marketing_consent,
            "status": self.status.value if self.status else None,
            "broker_signature": {
                "required": self.broker is not None,
                "obtained": self.broker_signed_at is not None,
                "signed_at": _utc_or_none(self.broker_signed_at),
            },
            "broker_followup_status": followup.state.value if followup else None,
            "submitted_at": _utc_or_none(self.submitted_at),
            "updated_at": _utc_or_none(self.updated_at),
            "event_count": self.event_count,
            "anomalies": [a.to_document() for a in self.anomalies],
            "anomaly_count": self.anomaly_count,
            "decline_reason": self.decline_reason,
            "withdraw_reason": self.withdraw_reason,
            "policy_number": self.policy_number,
            "effective_date": self.effective_date.isoformat() if self.effective_date else None,
            "fold": self._fold_state(),
        }

    def _fold_state(self) -> dict[str, Any]:
        """What the fold needs beyond the fields above, exactly (microseconds, as strings)."""
        last = self.last_event_key
        return {
            "version": FOLD_STATE_VERSION,
            "last_event": None
            if last is None
            else {"occurred_at": iso_z(last[0]), "rank": last[1], "event_id": last[2]},
            "submitted_at": _iso_or_none(self.submitted_at),
            "updated_at": _iso_or_none(self.updated_at),
            "broker_cycle_started_at": _iso_or_none(self.broker_cycle_started_at),
            "broker_signed_at": _iso_or_none(self.broker_signed_at),
        }

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Application | None:
        """The fold's state saved in an `applications` document; None when it has none, or
        one this version cannot read (written by another version, or edited by hand): the
        caller then refolds the application from the event store."""
        try:
            return cls._from_document(doc)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError):
            return None

    @classmethod
    def _from_document(cls, doc: dict[str, Any]) -> Application | None:
        fold = doc.get("fold")
        if not isinstance(fold, dict) or fold.get("version") != FOLD_STATE_VERSION:
            return None
        last = fold["last_event"]
        anomalies = doc["anomalies"]
        return cls(
            application_id=doc["_id"],
            status=Status(doc["status"]) if doc["status"] else None,
            applicant=Applicant.model_validate(doc["applicant"]) if doc["applicant"] else None,
            plan=Plan.model_validate(doc["plan"]) if doc["plan"] else None,
            channel=doc["channel"],
            broker=Broker.model_validate(doc["broker"]) if doc["broker"] else None,
            marketing_consent=doc["marketing_consent"],
            broker_cycle_started_at=_instant_or_none(fold["broker_cycle_started_at"]),
            broker_signed_at=_instant_or_none(fold["broker_signed_at"]),
            submitted_at=_instant_or_none(fold["submitted_at"]),
            updated_at=_instant_or_none(fold["updated_at"]),
            event_count=doc["event_count"],
            anomalies=tuple(
                Anomaly(
                    a["event_id"],
                    EventType(a["event_type"]),
                    datetime.fromisoformat(a["occurred_at"]),
                    AnomalyReason(a["reason"]),
                )
                for a in anomalies[:MAX_ANOMALIES_KEPT]
            ),
            # Documents of earlier versions kept every anomaly and no count.
            anomaly_count=doc.get("anomaly_count", len(anomalies)),
            decline_reason=doc["decline_reason"],
            withdraw_reason=doc["withdraw_reason"],
            policy_number=doc["policy_number"],
            effective_date=date.fromisoformat(doc["effective_date"])
            if doc["effective_date"]
            else None,
            last_event_key=None
            if last is None
            else (datetime.fromisoformat(last["occurred_at"]), last["rank"], last["event_id"]),
        )

    def applies_on_top(self, events: Iterable[EnrollmentEvent]) -> bool:
        """True when every event sorts after the last one folded in (no late event)."""
        last = self.last_event_key
        return last is None or all(event.sort_key() > last for event in events)


def _utc_or_none(value: datetime | None) -> datetime | None:
    return to_utc(value) if value is not None else None


def _iso_or_none(value: datetime | None) -> str | None:
    return iso_z(value) if value is not None else None


def _instant_or_none(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value is not None else None


@dataclass(frozen=True)
class FoldStep:
    """One event of the fold with the state before and after it (leads diff the two)."""

    event: EnrollmentEvent
    before: Application
    after: Application
    anomaly: Anomaly | None


def sorted_history(events: Iterable[EnrollmentEvent]) -> list[EnrollmentEvent]:
    """Distinct events in fold order; a repeated event_id keeps one deterministic copy."""
    chosen: dict[str, EnrollmentEvent] = {}
    for event in events:
        kept = chosen.get(event.event_id)
        if kept is None or _tiebreak(event) < _tiebreak(kept):
            chosen[event.event_id] = event
    return sorted(chosen.values(), key=lambda e: e.sort_key())


def _tiebreak(event: EnrollmentEvent) -> tuple[tuple[datetime, int, str], str]:
    # Conflicting copies are dead-lettered upstream; if one slips through, input order
    # must still not matter.
    return (event.sort_key(), event.content_hash())


def _anomaly_reason(state: Application, event: EnrollmentEvent) -> AnomalyReason | None:
    kind = event.event_type
    if kind is EventType.SUBMITTED:
        return AnomalyReason.DUPLICATE_SUBMISSION if state.status is not None else None
    if state.status is None:
        return AnomalyReason.BEFORE_SUBMISSION
    if kind in (EventType.UPDATED, EventType.BROKER_ASSIGNED):
        return AnomalyReason.CHANGE_AFTER_TERMINAL if state.status in TERMINAL_STATUSES else None
    if kind is EventType.BROKER_SIGNATURE_RECEIVED:
        payload = event.payload
        assert isinstance(payload, BrokerSignatureReceivedPayload)
        if state.broker is None or state.broker.broker_id != payload.broker_id:
            return AnomalyReason.SIGNATURE_FROM_OTHER_BROKER
        return None
    if (kind, state.status) not in TRANSITIONS:
        return AnomalyReason.ILLEGAL_TRANSITION
    return None


def _apply(state: Application, event: EnrollmentEvent) -> Application:
    """Apply an event already known to be legal."""
    at = event.occurred_at
    payload = event.payload
    changes: dict[str, Any] = {}
    if isinstance(payload, ApplicationSubmittedPayload):
        changes = {
            "status": Status.SUBMITTED,
            "applicant": payload.applicant,
            "plan": payload.plan,
            "channel": payload.channel,
            "broker": payload.broker,
            "marketing_consent": payload.marketing_consent,
            "submitted_at": at,
            "broker_cycle_started_at": at if payload.broker is not None else None,
            "broker_signed_at": None,
        }
    elif isinstance(payload, ApplicationUpdatedPayload):
        given = payload.changes
        if given.applicant is not None and state.applicant is not None:
            changes["applicant"] = state.applicant.model_copy(update=given.applicant.given())
        if given.plan is not None and state.plan is not None:
            changes["plan"] = state.plan.model_copy(update=given.plan.given())
        if given.marketing_consent is not None:
            changes["marketing_consent"] = given.marketing_consent
    elif isinstance(payload, BrokerAssignedPayload):
        changes["broker"] = payload.broker
        if state.broker is None or state.broker.broker_id != payload.broker.broker_id:
            # A different broker must sign again: a new follow-up cycle starts here.
            changes["broker_cycle_started_at"] = at
            changes["broker_signed_at"] = None
    elif isinstance(payload, BrokerSignatureReceivedPayload):
        if state.broker_signed_at is None:
            changes["broker_signed_at"] = payload.signed_at
    else:
        assert state.status is not None  # _anomaly_reason let only machine transitions through
        changes["status"] = TRANSITIONS[(event.event_type, state.status)]
        if isinstance(payload, ApplicationDeclinedPayload):
            changes["decline_reason"] = payload.reason
        elif isinstance(payload, ApplicationWithdrawnPayload):
            changes["withdraw_reason"] = payload.reason
        elif isinstance(payload, EnrollmentCompletedPayload):
            changes["policy_number"] = payload.policy_number
            changes["effective_date"] = payload.effective_date
    if state.updated_at is None or to_utc(at) > to_utc(state.updated_at):
        changes["updated_at"] = at
    return dataclasses.replace(state, **changes)


def fold_history(
    application_id: str, events: Iterable[EnrollmentEvent], *, start: Application | None = None
) -> list[FoldStep]:
    """Every step of the strict fold, in fold order; `fold_application` is its last state.

    From `start` (a state saved earlier) when given: then `events` must be new events that
    all sort after its last one, as `Application.applies_on_top` checks.
    """
    history = sorted_history(events)
    strangers = {e.application_id for e in history} - {application_id}
    if strangers:
        raise ValueError(f"events of other applications passed for {application_id!r}")
    if start is None:
        state = Application(application_id=application_id, event_count=len(history))
    else:
        if start.application_id != application_id or not start.applies_on_top(history):
            raise ValueError(f"events sorting before the saved state of {application_id!r}")
        state = dataclasses.replace(start, event_count=start.event_count + len(history))
    steps: list[FoldStep] = []
    for event in history:
        reason = _anomaly_reason(state, event)
        if reason is None:
            anomaly = None
            after = _apply(state, event)
        else:
            anomaly = Anomaly(event.event_id, event.event_type, event.occurred_at, reason)
            kept = state.anomalies
            if len(kept) < MAX_ANOMALIES_KEPT:
                kept = (*kept, anomaly)
            after = dataclasses.replace(
                state, anomalies=kept, anomaly_count=state.anomaly_count + 1
            )
        after = dataclasses.replace(after, last_event_key=event.sort_key())
        steps.append(FoldStep(event=event, before=state, after=after, anomaly=anomaly))
        state = after
    return steps


def fold_application(
    application_id: str, events: Iterable[EnrollmentEvent], *, start: Application | None = None
) -> Application:
    """The read model of one application from ALL its stored events, in any order (or
    from a saved `start` and the events that sort after it)."""
    steps = fold_history(application_id, events, start=start)
    if steps:
        return steps[-1].after
    return start or Application(application_id=application_id)
