"""Contract 4: lead-integration events derived from the same fold as the read model.

Leads come from `fold_history`, so an anomalous event never emits a lead and the leads of a
history do not depend on arrival order. Only the fields below leave the system.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from enrollment_pipeline.domain.events import (
    DEFAULT_MAX_BYTES,
    DEFAULT_TIME_BOUNDS,
    EMAIL_MAX,
    NAME_MAX,
    PHONE_MAX,
    Applicant,
    AwareDateTime,
    EnrollmentEvent,
    EventType,
    Id,
    Product,
    Rejection,
    RejectReason,
    TimeBounds,
    describe_validation_error,
)
from enrollment_pipeline.domain.projection import (
    TERMINAL_STATUSES,
    Application,
    FoldStep,
    fold_history,
)

# Fixed forever: changing it would give every replayed lead a new id (double delivery).
LEAD_NAMESPACE = uuid.UUID("0b5a8f2e-6d2c-5c61-9a43-6f1d7e3c2a10")

LeadStatus = Literal["NEW", "UPDATED", "LOST", "CONVERTED"]
_CONTACT_FIELDS = ("first_name", "last_name", "email", "phone", "state")


class _Closed(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class LeadContact(_Closed):
    first_name: Annotated[str, Field(max_length=NAME_MAX)]
    last_name: Annotated[str, Field(max_length=NAME_MAX)]
    email: Annotated[str, Field(max_length=EMAIL_MAX)]
    phone: Annotated[str, Field(max_length=PHONE_MAX)] | None
    state: Annotated[str, Field(max_length=NAME_MAX)]

    @classmethod
    def of(cls, applicant: Applicant) -> LeadContact:
        """Copy only the contact fields: no date of birth ever reaches the CRM."""
        return cls(**{name: getattr(applicant, name) for name in _CONTACT_FIELDS})


class LeadEvent(_Closed):
    lead_event_id: Id
    source_event_id: Id
    application_id: Id
    lead_status: LeadStatus
    occurred_at: AwareDateTime
    contact: LeadContact
    product: Product

    def to_json_bytes(self) -> bytes:
        """Compact UTF-8 JSON for the `lead-integration-events` topic (occurred_at with Z)."""
        return self.model_dump_json().encode("utf-8")

    @classmethod
    def from_json_bytes(cls, raw: bytes) -> LeadEvent:
        """Parse a value read back from the lead topic."""
        return cls.model_validate_json(raw)


def parse_lead_record(
    key: bytes | None,
    value: bytes | None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    time_bounds: TimeBounds = DEFAULT_TIME_BOUNDS,
) -> LeadEvent | Rejection:
    """Validate one record of the lead topic (Contract 4); the key must be its application.

    The detail of a rejection names fields, never values: a lead carries contact data. Never
    raises: a lead it returns can be stored and posted as JSON.
    """
    try:
        return _parse_lead_record(key, value, max_bytes, time_bounds)
    except Exception as exc:  # whatever a record triggers, it is that record's dead letter
        return Rejection(RejectReason.UNPROCESSABLE, f"{type(exc).__name__} while parsing")


def _parse_lead_record(
    key: bytes | None, value: bytes | None, max_bytes: int, time_bounds: TimeBounds
) -> LeadEvent | Rejection:
    if value is None:
        return Rejection(RejectReason.SCHEMA_VIOLATION, "empty record")
    if len(value) > max_bytes:
        return Rejection(RejectReason.OVERSIZED, f"{len(value)} bytes exceeds {max_bytes}")
    try:
        lead = LeadEvent.model_validate_json(value, context={"time_bounds": time_bounds})
        lead.model_dump_json()  # every value can be sent again (valid Unicode, UTC instant)
    except ValidationError as exc:
        kinds = {e["type"] for e in exc.errors(include_url=False, include_input=False)}
        reason = RejectReason.INVALID_JSON if "json_invalid" in kinds else None
        return Rejection(reason or RejectReason.SCHEMA_VIOLATION, describe_validation_error(exc))
    if key is None:
        return Rejection(RejectReason.NULL_KEY, "record has no key")
    if key != lead.application_id.encode("utf-8"):
        return Rejection(RejectReason.KEY_MISMATCH, "key differs from payload application_id")
    return lead


def lead_event_id(source_event_id: str) -> str:
    """Deterministic id: a replay of the same source event yields the same lead id."""
    return str(uuid.uuid5(LEAD_NAMESPACE, f"lead:{source_event_id}"))


def _lead(step: FoldStep, status: LeadStatus, state: Application) -> LeadEvent:
    assert state.applicant is not None and state.plan is not None  # only after submission
    return LeadEvent(
        lead_event_id=lead_event_id(step.event.event_id),
        source_event_id=step.event.event_id,
        application_id=step.event.application_id,
        lead_status=status,
        occurred_at=step.event.occurred_at,
        contact=LeadContact.of(state.applicant),
        product=state.plan.product,
    )


def _contact_or_plan_changed(before: Application, after: Application) -> bool:
    if before.plan != after.plan:
        return True
    if before.applicant is None or after.applicant is None:
        return before.applicant is not after.applicant
    return LeadContact.of(before.applicant) != LeadContact.of(after.applicant)


def lead_is_open(state: Application) -> bool:
    """A lead is open from its NEW until LOST or CONVERTED: exactly while the application is
    submitted, not terminal, with consent. So it follows from the fold's state alone, and
    leads can be derived from a saved state as well as from the whole history."""
    return (
        state.status is not None
        and state.status not in TERMINAL_STATUSES
        and state.marketing_consent is True
    )


def lead_events(
    application_id: str, events: Iterable[EnrollmentEvent], *, start: Application | None = None
) -> list[LeadEvent]:
    """The leads of an application's history, in fold order, at most one per event (from a
    saved `start` state: the leads of the events that sort after it).

    Revoking consent while open emits one LOST (contact and product as they were before the
    revoke) and nothing follows; granting consent again later opens a fresh lead with NEW,
    because the CRM dropped the contact on LOST and must be told to start again. UPDATED is
    emitted only when a contact field (first_name, last_name, email, phone, state) or the plan
    actually changed value; a date-of-birth-only update changes nothing the CRM sees.
    """
    return leads_of(fold_history(application_id, events, start=start))


def leads_of(steps: Iterable[FoldStep]) -> list[LeadEvent]:
    """The leads of fold steps already computed (see `lead_events`)."""
    leads: list[LeadEvent] = []
    for step in steps:
        if step.anomaly is not None:
            continue
        before, after, kind = step.before, step.after, step.event.event_type
        was_open = lead_is_open(before)
        if after.marketing_consent is not True:
            if was_open:
                leads.append(_lead(step, "LOST", before))
        elif not was_open:
            # First lead, or consent granted (again) by an update.
            if kind is EventType.SUBMITTED or (
                kind is EventType.UPDATED and before.marketing_consent is not True
            ):
                leads.append(_lead(step, "NEW", after))
        elif kind is EventType.UPDATED and _contact_or_plan_changed(before, after):
            leads.append(_lead(step, "UPDATED", after))
        elif kind in (EventType.DECLINED, EventType.WITHDRAWN):
            leads.append(_lead(step, "LOST", after))
        elif kind is EventType.ENROLLMENT_COMPLETED:
            leads.append(_lead(step, "CONVERTED", after))
    return leads
