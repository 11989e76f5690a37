"""An applicant forgotten: the personal fields of an event replaced by placeholders.

Pure. What goes: first and last name, email, phone and date of birth, wherever an event carries
them (the applicant of `ApplicationSubmitted`, the applicant changes of `ApplicationUpdated`).
What stays: ids, event types, times, statuses, the plan, the channel, consent, the broker (the
broker's data is not the applicant's) and the US state (two letters that identify no one, and
the plan is only read with it: products and prices are licensed per state).

The placeholders still pass Contract 1, so a redacted event is still an event: it can be stored,
hashed, folded and compared. They are the same for every event of an application, so a redacted
history folds to one redacted document, a rebuild gives it again, and a replayed original
redacts to exactly the stored event (a plain duplicate, not a conflict).
"""

from __future__ import annotations

import hashlib
from typing import Any

from enrollment_pipeline.domain.events import EnrollmentEvent, EventType

ERASED = "erased"
# The fields that go; `phone` and `date_of_birth` become null (both are optional).
ERASED_FIELDS = ("first_name", "last_name", "email", "phone", "date_of_birth")
# `.invalid` is reserved (RFC 2606): nothing is ever delivered there.
PLACEHOLDER_DOMAIN = "invalid.example"


def placeholder_email(application_id: str) -> str:
    """A valid address that names no one, the same for every event of the application (a
    hash, not the id itself, which may hold characters an address may not)."""
    digest = hashlib.sha256(application_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{ERASED}+{digest}@{PLACEHOLDER_DOMAIN}"


def _redacted_applicant(applicant: dict[str, Any], application_id: str) -> dict[str, Any]:
    """Only the keys present change (a partial update keeps its shape: `{}` and a null differ)."""
    replacement = {
        "first_name": ERASED,
        "last_name": ERASED,
        "email": placeholder_email(application_id),
        "phone": None,
        "date_of_birth": None,
    }
    return {k: replacement.get(k, v) for k, v in applicant.items()}


def redact_event_document(document: dict[str, Any]) -> dict[str, Any]:
    """The canonical form of an event (`EnrollmentEvent.to_document`) without personal data."""
    payload = dict(document.get("payload") or {})
    application_id = str(document.get("application_id"))
    kind = document.get("event_type")
    if kind == EventType.SUBMITTED and isinstance(payload.get("applicant"), dict):
        payload["applicant"] = _redacted_applicant(payload["applicant"], application_id)
    elif kind == EventType.UPDATED and isinstance(payload.get("changes"), dict):
        changes = dict(payload["changes"])
        if isinstance(changes.get("applicant"), dict):
            changes["applicant"] = _redacted_applicant(changes["applicant"], application_id)
        payload["changes"] = changes
    return {**document, "payload": payload}


def redact_event(event: EnrollmentEvent) -> EnrollmentEvent:
    """The event without personal data (the same event when it holds none): same id, type,
    time and application, a content hash of its own."""
    document = event.to_document()
    redacted = redact_event_document(document)
    if redacted == document:
        return event
    return EnrollmentEvent.from_document(redacted)


def personal_values(event: EnrollmentEvent) -> set[str]:
    """The personal values an event carries (to look for them where they may be copied)."""
    document = event.to_document()
    payload = document.get("payload") or {}
    applicant = payload.get("applicant") or (payload.get("changes") or {}).get("applicant") or {}
    return {
        str(applicant[k])
        for k in ERASED_FIELDS
        if applicant.get(k) not in (None, ERASED) and k in applicant
    } - {placeholder_email(event.application_id)}
