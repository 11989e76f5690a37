"""Contract 1: the enrollment event, its validation and the dead-letter reasons.

Pure: bytes in, a validated frozen event or a `Rejection` out. Nothing here reads a clock,
a socket or a database, so Kafka records and archive lines go through exactly the same checks.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

SUPPORTED_SCHEMA_VERSION = 1
DEFAULT_MAX_BYTES = 1_000_000
_MAX_DETAIL = 500


class RejectReason(StrEnum):
    """Fixed dead-letter reason codes; operators filter and re-drive by them."""

    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    OVERSIZED = "oversized"
    NULL_KEY = "null_key"
    KEY_MISMATCH = "key_mismatch"
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"
    SCHEMA_VIOLATION = "schema_violation"
    CONFLICTING_DUPLICATE = "conflicting_duplicate"
    ARCHIVE_UNREADABLE = "archive_unreadable"
    CRM_REJECTED = "crm_rejected"


class EventType(StrEnum):
    """The eight event types of Contract 1 (values are the wire names)."""

    SUBMITTED = "ApplicationSubmitted"
    UPDATED = "ApplicationUpdated"
    BROKER_ASSIGNED = "BrokerAssigned"
    BROKER_SIGNATURE_RECEIVED = "BrokerSignatureReceived"
    APPROVED = "ApplicationApproved"
    DECLINED = "ApplicationDeclined"
    WITHDRAWN = "ApplicationWithdrawn"
    ENROLLMENT_COMPLETED = "EnrollmentCompleted"


# Lifecycle rank: the second sort key, so simultaneous events fold in a sensible order.
EVENT_TYPE_RANK: dict[EventType, int] = {t: i for i, t in enumerate(EventType)}

# --- shared field types -------------------------------------------------------------------

DATE_PATTERN = r"^\d{4}-\d{2}-\d{2}$"
DATETIME_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$"
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
STATE_PATTERN = r"^[A-Z]{2}$"
_DATE_RE = re.compile(DATE_PATTERN)
_DATETIME_RE = re.compile(DATETIME_PATTERN)


def _parse_date(value: Any) -> Any:
    """Accept a real date or a 'YYYY-MM-DD' string only (no timestamps, no datetimes)."""
    if isinstance(value, datetime):
        raise ValueError("must be a date (YYYY-MM-DD), not a datetime")
    if isinstance(value, date):
        return value
    if isinstance(value, str) and _DATE_RE.match(value):
        try:
            return date.fromisoformat(value)
        except ValueError:
            raise ValueError("must be a valid calendar date (YYYY-MM-DD)") from None
    raise ValueError("must be a date string YYYY-MM-DD")


def _parse_aware_datetime(value: Any) -> Any:
    """Accept an aware datetime or an ISO-8601 string with offset or Z; naive is ambiguous."""
    if isinstance(value, str):
        if not _DATETIME_RE.match(value):
            raise ValueError("must be an ISO-8601 date-time with an offset or Z")
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("must be a valid ISO-8601 date-time") from None
    if not isinstance(value, datetime):
        raise ValueError("must be an ISO-8601 date-time string")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("must carry a timezone offset or Z")
    return value


def to_utc(value: datetime) -> datetime:
    """The same instant in UTC, so offsets never change sorting or equality."""
    return value.astimezone(UTC)


def iso_z(value: datetime) -> str:
    """Deterministic wire form of an instant: UTC with a trailing 'Z'."""
    return to_utc(value).isoformat().replace("+00:00", "Z")


def _iso_date(value: date) -> str:
    return value.isoformat()


IsoDate = Annotated[
    date, BeforeValidator(_parse_date), PlainSerializer(_iso_date, when_used="json")
]
AwareDateTime = Annotated[
    datetime,
    BeforeValidator(_parse_aware_datetime),
    PlainSerializer(iso_z, when_used="json"),
]
NonEmptyStr = Annotated[str, Field(min_length=1)]
Email = Annotated[str, Field(pattern=EMAIL_PATTERN)]
UsState = Annotated[str, Field(pattern=STATE_PATTERN)]
Product = Literal["MEDICAL", "DENTAL", "VISION", "LIFE"]
Channel = Literal["BROKER", "DIRECT", "ONLINE"]


class _Strict(BaseModel):
    """Strict, closed, immutable: a wrong type or an unknown field is a schema violation."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


# --- payload parts ----------------------------------------------------------------------


class Applicant(_Strict):
    first_name: NonEmptyStr
    last_name: NonEmptyStr
    email: Email
    phone: NonEmptyStr | None = None
    state: UsState
    date_of_birth: IsoDate | None = None


class Plan(_Strict):
    plan_id: NonEmptyStr
    product: Product
    coverage_start: IsoDate


class Broker(_Strict):
    broker_id: NonEmptyStr
    name: NonEmptyStr
    email: Email


class _Partial(_Strict):
    """A partial update: only the fields the producer sent count, and at least one must."""

    _NULLABLE: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _no_null_for_required(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, value in data.items():
                if value is None and name in cls.model_fields and name not in cls._NULLABLE:
                    raise ValueError(f"{name} may not be null in a change")
        return data

    @model_validator(mode="after")
    def _non_empty(self) -> _Partial:
        if not self.model_fields_set:
            raise ValueError("must change at least one field")
        return self

    @model_serializer(mode="wrap")
    def _only_given(self, handler: Any) -> dict[str, Any]:
        # Only the given fields: `{"phone": null}` (clear) and `{}` mean different things.
        return {k: v for k, v in handler(self).items() if k in self.model_fields_set}

    def given(self) -> dict[str, Any]:
        """The changed fields as Python values, ready for `model_copy(update=...)`."""
        return {name: getattr(self, name) for name in self.model_fields_set}


class ApplicantChanges(_Partial):
    _NULLABLE: ClassVar[frozenset[str]] = frozenset({"phone", "date_of_birth"})

    first_name: NonEmptyStr | None = None
    last_name: NonEmptyStr | None = None
    email: Email | None = None
    phone: NonEmptyStr | None = None
    state: UsState | None = None
    date_of_birth: IsoDate | None = None


class PlanChanges(_Partial):
    plan_id: NonEmptyStr | None = None
    product: Product | None = None
    coverage_start: IsoDate | None = None


class Changes(_Partial):
    applicant: ApplicantChanges | None = None
    plan: PlanChanges | None = None
    marketing_consent: bool | None = None


# --- payloads per event type --------------------------------------------------------------


class ApplicationSubmittedPayload(_Strict):
    applicant: Applicant
    plan: Plan
    channel: Channel
    broker: Broker | None = None
    marketing_consent: bool


class ApplicationUpdatedPayload(_Strict):
    changes: Changes


class BrokerAssignedPayload(_Strict):
    broker: Broker


class BrokerSignatureReceivedPayload(_Strict):
    broker_id: NonEmptyStr
    signed_at: AwareDateTime


class ApplicationApprovedPayload(_Strict):
    pass


class ApplicationDeclinedPayload(_Strict):
    reason: str


class ApplicationWithdrawnPayload(_Strict):
    reason: str


class EnrollmentCompletedPayload(_Strict):
    policy_number: NonEmptyStr
    effective_date: IsoDate


Payload = (
    ApplicationSubmittedPayload
    | ApplicationUpdatedPayload
    | BrokerAssignedPayload
    | BrokerSignatureReceivedPayload
    | ApplicationApprovedPayload
    | ApplicationDeclinedPayload
    | ApplicationWithdrawnPayload
    | EnrollmentCompletedPayload
)

PAYLOAD_MODELS: dict[EventType, type[_Strict]] = {
    EventType.SUBMITTED: ApplicationSubmittedPayload,
    EventType.UPDATED: ApplicationUpdatedPayload,
    EventType.BROKER_ASSIGNED: BrokerAssignedPayload,
    EventType.BROKER_SIGNATURE_RECEIVED: BrokerSignatureReceivedPayload,
    EventType.APPROVED: ApplicationApprovedPayload,
    EventType.DECLINED: ApplicationDeclinedPayload,
    EventType.WITHDRAWN: ApplicationWithdrawnPayload,
    EventType.ENROLLMENT_COMPLETED: EnrollmentCompletedPayload,
}


def _schema_version(value: Any) -> Any:
    # `type(...) is int`: strict Literal[1] would let `true` through (True == 1).
    if type(value) is not int or value != SUPPORTED_SCHEMA_VERSION:
        raise ValueError(f"only schema_version {SUPPORTED_SCHEMA_VERSION} is supported")
    return value


class EnrollmentEvent(_Strict):
    """One Contract-1 event; `payload` is the model that its `event_type` names."""

    event_id: NonEmptyStr
    # Lax only here, so the wire string becomes the enum member; unknown names still fail.
    event_type: Annotated[EventType, Field(strict=False)]
    schema_version: Annotated[int, BeforeValidator(_schema_version)]
    occurred_at: AwareDateTime
    application_id: NonEmptyStr
    payload: Payload

    @field_validator("payload", mode="wrap")
    @classmethod
    def _payload_for_type(cls, value: Any, handler: Any, info: ValidationInfo) -> Any:
        # The payloads are not self-describing (Declined and Withdrawn share a shape), so
        # the event_type picks the model instead of a union guess.
        event_type = info.data.get("event_type")
        if event_type is None:
            raise ValueError("cannot be checked without a valid event_type")
        model = PAYLOAD_MODELS[event_type]
        if isinstance(value, model):
            return value
        return model.model_validate(value)

    @property
    def type_rank(self) -> int:
        """Lifecycle rank of the event type (Submitted=0 ... Enrolled=7)."""
        return EVENT_TYPE_RANK[self.event_type]

    def sort_key(self) -> tuple[datetime, int, str]:
        """Fold order: instant (UTC, microseconds), lifecycle rank, event_id; source-free."""
        return (to_utc(self.occurred_at), self.type_rank, self.event_id)

    def to_document(self) -> dict[str, Any]:
        """Canonical JSON-able content; instants in UTC with Z, dates as YYYY-MM-DD."""
        return self.model_dump(mode="json")

    def content_hash(self) -> str:
        """sha256 of the canonical content: same event_id + other hash = conflicting duplicate."""
        canonical = json.dumps(
            self.to_document(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> EnrollmentEvent:
        """Inverse of `to_document` (extra keys such as a stored `_id` must be removed first)."""
        return cls.model_validate(doc)


@dataclass(frozen=True)
class Rejection:
    """Why a record was dead-lettered; `detail` never contains field values (PII)."""

    reason: RejectReason
    detail: str


# --- parsing --------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            # Parsers disagree on which duplicate wins; refuse rather than guess.
            raise ValueError("duplicate object key")
        obj[key] = value
    return obj


def _short(text: str, limit: int = _MAX_DETAIL) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_validation_error(error: ValidationError) -> str:
    """Field paths and messages only, never the input values (they may be PII)."""
    parts = []
    for err in error.errors(include_url=False, include_context=False, include_input=False):
        loc = ".".join(_short(str(p), 60) for p in err["loc"]) or "(event)"
        parts.append(f"{loc}: {err['msg']}")
    return _short("; ".join(parts))


def _parse_value(value: bytes | None, max_bytes: int) -> EnrollmentEvent | Rejection:
    if value is None:
        return Rejection(RejectReason.SCHEMA_VIOLATION, "empty record")
    if len(value) > max_bytes:
        return Rejection(
            RejectReason.OVERSIZED, f"{len(value)} bytes exceeds the limit of {max_bytes}"
        )
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection(RejectReason.INVALID_UTF8, f"invalid UTF-8 at byte {exc.start}")
    try:
        data = json.loads(
            text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicate_keys
        )
    except json.JSONDecodeError as exc:
        return Rejection(RejectReason.INVALID_JSON, f"{exc.msg} at char {exc.pos}")
    except (ValueError, RecursionError) as exc:
        return Rejection(RejectReason.INVALID_JSON, _short(str(exc) or type(exc).__name__))
    if not isinstance(data, dict):
        return Rejection(
            RejectReason.SCHEMA_VIOLATION, f"expected a JSON object, got {type(data).__name__}"
        )
    event_type = data.get("event_type")
    if "event_type" not in data:
        return Rejection(RejectReason.SCHEMA_VIOLATION, "event_type: Field required")
    if not isinstance(event_type, str):
        return Rejection(RejectReason.SCHEMA_VIOLATION, "event_type: must be a string")
    if event_type not in EVENT_TYPE_RANK:
        return Rejection(
            RejectReason.UNKNOWN_EVENT_TYPE, f"unknown event_type {_short(event_type, 80)!r}"
        )
    version = data.get("schema_version")
    if type(version) is not int or version != SUPPORTED_SCHEMA_VERSION:
        shown = repr(version) if type(version) is int else type(version).__name__
        return Rejection(
            RejectReason.UNSUPPORTED_SCHEMA_VERSION,
            f"schema_version {_short(shown, 40)} (supported: {SUPPORTED_SCHEMA_VERSION})",
        )
    try:
        return EnrollmentEvent.model_validate(data)
    except ValidationError as exc:
        return Rejection(RejectReason.SCHEMA_VIOLATION, describe_validation_error(exc))


def parse_record(
    key: bytes | None, value: bytes | None, *, max_bytes: int = DEFAULT_MAX_BYTES
) -> EnrollmentEvent | Rejection:
    """Validate one Kafka record; the key must be the event's application_id (partitioning)."""
    parsed = _parse_value(value, max_bytes)
    if isinstance(parsed, Rejection):
        return parsed
    if key is None:
        return Rejection(RejectReason.NULL_KEY, "record has no key")
    try:
        decoded = key.decode("utf-8")
    except UnicodeDecodeError:
        return Rejection(RejectReason.KEY_MISMATCH, "key is not valid UTF-8")
    if decoded != parsed.application_id:
        return Rejection(RejectReason.KEY_MISMATCH, "key differs from payload application_id")
    return parsed


def parse_archive_line(
    raw: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES
) -> EnrollmentEvent | Rejection:
    """Validate one archive line: the same checks as Kafka, minus the key (lines have none)."""
    return _parse_value(raw, max_bytes)
