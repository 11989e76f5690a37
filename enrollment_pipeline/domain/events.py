"""Contract 1: the enrollment event, its validation and the dead-letter reasons.

Pure: bytes in, a validated frozen event or a `Rejection` out. Nothing here reads a clock,
a socket or a database, so Kafka records and archive lines go through exactly the same checks.

Parsing never raises, whatever the bytes: an event it returns can be hashed, stored (every
string is valid Unicode and bounded in length, every instant converts to UTC within
`TimeBounds`) and sorted, so no later step of a batch can fail on one record.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import StrEnum
from functools import cached_property
from typing import Annotated, Any, ClassVar, Literal, TypeVar

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

# Lengths (in characters) that no real id or text reaches: they keep every document, query
# and dead-letter detail far from MongoDB's 16 MB limit (schemas/ says the same).
ID_MAX = 256
NAME_MAX = 200
EMAIL_MAX = 254
PHONE_MAX = 40
TEXT_MAX = 2_000


@dataclass(frozen=True)
class TimeBounds:
    """The instants an event may carry, in UTC (EVENT_TIME_MIN, EVENT_TIME_MAX): fixed dates,
    not relative to any clock, so a replay decides exactly as the first pass did. Outside
    them (or beyond what a datetime holds) is a `schema_violation`."""

    earliest: datetime = datetime(1900, 1, 1, tzinfo=UTC)
    latest: datetime = datetime(2200, 1, 1, tzinfo=UTC)

    def check(self, value: datetime) -> datetime:
        try:
            instant = value.astimezone(UTC)
        except (OverflowError, ValueError):
            raise ValueError("is outside what a date-time can hold in UTC") from None
        if not self.earliest <= instant < self.latest:
            raise ValueError(
                f"must be from {iso_z(self.earliest)} up to (not including) {iso_z(self.latest)}"
            )
        return value


DEFAULT_TIME_BOUNDS = TimeBounds()


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
    # Parsed, but could not be processed (hashed, stored, sorted): the exception's class and
    # a detail free of field values.
    UNPROCESSABLE = "unprocessable"


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
_SUSPECT_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})")
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


def _parse_aware_datetime(value: Any, info: ValidationInfo) -> Any:
    """Accept an aware datetime or an ISO-8601 string with offset or Z; naive is ambiguous.

    When the validation context carries `TimeBounds` (every parse of input does), the
    instant must fall inside them; stored events, read back without a context, were checked
    when they came in."""
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
    bounds = (info.context or {}).get("time_bounds") if info.context else None
    if isinstance(bounds, TimeBounds):
        bounds.check(value)
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
NonEmptyStr = Annotated[str, Field(min_length=1, max_length=TEXT_MAX)]
Id = Annotated[str, Field(min_length=1, max_length=ID_MAX)]
Name = Annotated[str, Field(min_length=1, max_length=NAME_MAX)]
Phone = Annotated[str, Field(min_length=1, max_length=PHONE_MAX)]
Text = Annotated[str, Field(max_length=TEXT_MAX)]
Email = Annotated[str, Field(pattern=EMAIL_PATTERN, max_length=EMAIL_MAX)]
UsState = Annotated[str, Field(pattern=STATE_PATTERN)]
Product = Literal["MEDICAL", "DENTAL", "VISION", "LIFE"]
Channel = Literal["BROKER", "DIRECT", "ONLINE"]


class _Strict(BaseModel):
    """Strict, closed, immutable: a wrong type or an unknown field is a schema violation."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


# --- payload parts ----------------------------------------------------------------------


class Applicant(_Strict):
    first_name: Name
    last_name: Name
    email: Email
    phone: Phone | None = None
    state: UsState
    date_of_birth: IsoDate | None = None


class Plan(_Strict):
    plan_id: Id
    product: Product
    coverage_start: IsoDate


class Broker(_Strict):
    broker_id: Id
    name: Name
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

    first_name: Name | None = None
    last_name: Name | None = None
    email: Email | None = None
    phone: Phone | None = None
    state: UsState | None = None
    date_of_birth: IsoDate | None = None


class PlanChanges(_Partial):
    plan_id: Id | None = None
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
    broker_id: Id
    signed_at: AwareDateTime


class ApplicationApprovedPayload(_Strict):
    pass


class ApplicationDeclinedPayload(_Strict):
    reason: Text


class ApplicationWithdrawnPayload(_Strict):
    reason: Text


class EnrollmentCompletedPayload(_Strict):
    policy_number: Id
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

    event_id: Id
    # Lax only here, so the wire string becomes the enum member; unknown names still fail.
    event_type: Annotated[EventType, Field(strict=False)]
    schema_version: Annotated[int, BeforeValidator(_schema_version)]
    occurred_at: AwareDateTime
    application_id: Id
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
        return model.model_validate(value, context=info.context)

    @property
    def type_rank(self) -> int:
        """Lifecycle rank of the event type (Submitted=0 ... Enrolled=7)."""
        return EVENT_TYPE_RANK[self.event_type]

    @cached_property
    def _sort_key(self) -> tuple[datetime, int, str]:
        return (to_utc(self.occurred_at), self.type_rank, self.event_id)

    def sort_key(self) -> tuple[datetime, int, str]:
        """Fold order: instant (UTC, microseconds), lifecycle rank, event_id; source-free."""
        return self._sort_key

    @cached_property
    def _document(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_document(self) -> dict[str, Any]:
        """Canonical JSON-able content; instants in UTC with Z, dates as YYYY-MM-DD. Computed
        once: treat it as read-only."""
        return self._document

    @cached_property
    def _content_hash(self) -> str:
        canonical = json.dumps(
            self.to_document(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def content_hash(self) -> str:
        """sha256 of the canonical content: same event_id + other hash = conflicting duplicate."""
        return self._content_hash

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> EnrollmentEvent:
        """Inverse of `to_document` (extra keys such as a stored `_id` must be removed first).
        Stored events were checked against the bounds of their day: not again here."""
        return cls.model_validate(doc)

    @classmethod
    def from_stored(cls, doc: dict[str, Any]) -> EnrollmentEvent:
        """`from_document` for a document this pipeline stored itself (validated when it came
        in): built without validating it again, an order of magnitude faster, for refolds
        and rebuilds that read many events. Anything unexpected takes the validating path."""
        try:
            event_type = EventType(doc["event_type"])
            return cls.model_construct(
                event_id=doc["event_id"],
                event_type=event_type,
                schema_version=doc["schema_version"],
                occurred_at=datetime.fromisoformat(doc["occurred_at"]),
                application_id=doc["application_id"],
                payload=_STORED_PAYLOADS[event_type](doc["payload"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            return cls.model_validate(doc)


def _date_or_none(value: str | None) -> date | None:
    return date.fromisoformat(value) if value is not None else None


_M = TypeVar("_M", bound=BaseModel)


def _built(model: type[_M], values: dict[str, Any], dates: tuple[str, ...] = ()) -> _M:
    """`model` from stored values, without validation; only the given fields are set (a
    partial change keeps knowing which fields it changes)."""
    fields = dict(values)
    for name in dates:
        if name in fields:
            fields[name] = _date_or_none(fields[name])
    return model.model_construct(**fields)


def _broker(values: dict[str, Any] | None) -> Broker | None:
    return None if values is None else _built(Broker, values)


def _stored_submitted(payload: dict[str, Any]) -> ApplicationSubmittedPayload:
    return _built(
        ApplicationSubmittedPayload,
        {
            **payload,
            "applicant": _built(Applicant, payload["applicant"], ("date_of_birth",)),
            "plan": _built(Plan, payload["plan"], ("coverage_start",)),
            "broker": _broker(payload.get("broker")),
        },
    )


def _stored_updated(payload: dict[str, Any]) -> ApplicationUpdatedPayload:
    changes = dict(payload["changes"])
    if changes.get("applicant") is not None:
        changes["applicant"] = _built(ApplicantChanges, changes["applicant"], ("date_of_birth",))
    if changes.get("plan") is not None:
        changes["plan"] = _built(PlanChanges, changes["plan"], ("coverage_start",))
    return _built(ApplicationUpdatedPayload, {"changes": _built(Changes, changes)})


def _stored_signature(payload: dict[str, Any]) -> BrokerSignatureReceivedPayload:
    return _built(
        BrokerSignatureReceivedPayload,
        {**payload, "signed_at": datetime.fromisoformat(payload["signed_at"])},
    )


_STORED_PAYLOADS: dict[EventType, Callable[[dict[str, Any]], Any]] = {
    EventType.SUBMITTED: _stored_submitted,
    EventType.UPDATED: _stored_updated,
    EventType.BROKER_ASSIGNED: lambda p: _built(
        BrokerAssignedPayload, {"broker": _built(Broker, p["broker"])}
    ),
    EventType.BROKER_SIGNATURE_RECEIVED: _stored_signature,
    EventType.APPROVED: lambda p: _built(ApplicationApprovedPayload, p),
    EventType.DECLINED: lambda p: _built(ApplicationDeclinedPayload, p),
    EventType.WITHDRAWN: lambda p: _built(ApplicationWithdrawnPayload, p),
    EventType.ENROLLMENT_COMPLETED: lambda p: _built(
        EnrollmentCompletedPayload, p, ("effective_date",)
    ),
}


@dataclass(frozen=True)
class Rejection:
    """Why a record was dead-lettered; `detail` never contains field values (PII)."""

    reason: RejectReason
    detail: str


# --- parsing --------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        # Parsers disagree on which duplicate wins; refuse rather than guess.
        raise ValueError("duplicate object key")
    return obj


def _short(text: str, limit: int = _MAX_DETAIL) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_validation_error(error: ValidationError) -> str:
    """Field paths and messages only, never the input values (they may be PII)."""
    parts = []
    for err in error.errors(include_url=False, include_context=False, include_input=False):
        loc = ".".join(_short(printable(str(p)), 60) for p in err["loc"]) or "(event)"
        parts.append(f"{loc}: {printable(err['msg'])}")
    return _short("; ".join(parts))


def _unstorable(data: Any) -> Rejection | None:
    """Why a string anywhere in `data` (keys included) cannot be kept, or None: a lone
    surrogate (JSON's `\\ud800`) is no Unicode text, so it can be neither hashed as UTF-8 nor
    stored; a NUL (U+0000) is refused by PostgreSQL's jsonb, under FerretDB."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return Rejection(
                    RejectReason.INVALID_JSON, "a string holds a lone UTF-16 surrogate"
                )
            if "\x00" in item:
                return Rejection(
                    RejectReason.SCHEMA_VIOLATION, "a string holds a NUL character (U+0000)"
                )
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def printable(text: str) -> str:
    """`text` with every character that is not printable (controls, NUL, lone surrogates)
    escaped, so a detail can be stored and shown anywhere."""
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )


def _parse_value(
    value: bytes | None, max_bytes: int, bounds: TimeBounds
) -> EnrollmentEvent | Rejection:
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
    # Only an escape can put a NUL or a lone surrogate in a decoded string (JSON refuses them
    # raw); most records have none, and skip the walk.
    unstorable = _unstorable(data) if _SUSPECT_ESCAPE.search(text) else None
    if unstorable is not None:
        return unstorable
    event_type = data.get("event_type")
    if "event_type" not in data:
        return Rejection(RejectReason.SCHEMA_VIOLATION, "event_type: Field required")
    if not isinstance(event_type, str):
        return Rejection(RejectReason.SCHEMA_VIOLATION, "event_type: must be a string")
    if event_type not in EVENT_TYPE_RANK:
        return Rejection(
            RejectReason.UNKNOWN_EVENT_TYPE,
            f"unknown event_type {_short(printable(event_type), 80)!r}",
        )
    version = data.get("schema_version")
    if type(version) is not int or version != SUPPORTED_SCHEMA_VERSION:
        shown = repr(version) if type(version) is int else type(version).__name__
        return Rejection(
            RejectReason.UNSUPPORTED_SCHEMA_VERSION,
            f"schema_version {_short(shown, 40)} (supported: {SUPPORTED_SCHEMA_VERSION})",
        )
    try:
        event = EnrollmentEvent.model_validate(data, context={"time_bounds": bounds})
    except ValidationError as exc:
        return Rejection(RejectReason.SCHEMA_VIOLATION, describe_validation_error(exc))
    event.content_hash()  # computed once, here, where a failure is this record's alone
    event.sort_key()
    return event


def _unprocessable(exc: BaseException) -> Rejection:
    # The class only: an exception's text may quote the input (PII).
    return Rejection(RejectReason.UNPROCESSABLE, f"{type(exc).__name__} while parsing")


def parse_record(
    key: bytes | None,
    value: bytes | None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    time_bounds: TimeBounds = DEFAULT_TIME_BOUNDS,
) -> EnrollmentEvent | Rejection:
    """Validate one Kafka record; the key must be the event's application_id (partitioning).
    Never raises."""
    try:
        return _parse_record(key, value, max_bytes, time_bounds)
    except Exception as exc:  # whatever a record triggers, it is that record's dead letter
        return _unprocessable(exc)


def _parse_record(
    key: bytes | None, value: bytes | None, max_bytes: int, time_bounds: TimeBounds
) -> EnrollmentEvent | Rejection:
    parsed = _parse_value(value, max_bytes, time_bounds)
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
    raw: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    time_bounds: TimeBounds = DEFAULT_TIME_BOUNDS,
) -> EnrollmentEvent | Rejection:
    """Validate one archive line: the same checks as Kafka, minus the key (lines have none).
    Never raises."""
    try:
        return _parse_value(raw, max_bytes, time_bounds)
    except Exception as exc:
        return _unprocessable(exc)
