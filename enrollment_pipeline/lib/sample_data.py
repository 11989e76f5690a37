"""Realistic synthetic enrollment events (Contract 1), deterministic for a seed.

Pure: no Kafka, MongoDB or Dagster, no wall clock (the caller passes `start`), only the
standard library. Used by `enrollment-pipeline generate`, the demo, benchmarks and tests.

Each application follows a plausible lifecycle::

    ApplicationSubmitted
      [ApplicationUpdated]*  [BrokerAssigned]  [BrokerSignatureReceived]
      then one of: nothing (still open), ApplicationDeclined, ApplicationWithdrawn,
                   ApplicationApproved [EnrollmentCompleted | ApplicationWithdrawn]

Broker-sold applications usually get signed before approval; a good share stays open and
unsigned, so the broker follow-up queue has work. Applications are submitted one after the
other (exponential gaps, `mean_gap` on average) and their later events happen minutes to
days later, so the stream interleaves applications like a real topic does: all events are
ordered by `occurred_at` (ties by application, then lifecycle), and each application's
events are strictly increasing in time. The ordering is done with a heap bounded by the
lifecycle window, so millions of applications stream in constant memory.

With `bad_fraction` > 0 about that fraction of records is replaced by bad input of the
kinds in `BAD_KINDS` (see `_corrupt`); every other record is identical to the clean run's
record at the same position.
"""

from __future__ import annotations

import heapq
import json
import math
import random
import unicodedata
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "BAD_KINDS",
    "EVENT_TYPES",
    "SampleRecord",
    "encode_event",
    "event_dicts",
    "format_timestamp",
    "synthetic_events",
    "synthetic_records",
]

EVENT_TYPES = (
    "ApplicationSubmitted",
    "ApplicationUpdated",
    "BrokerAssigned",
    "BrokerSignatureReceived",
    "ApplicationApproved",
    "ApplicationDeclined",
    "ApplicationWithdrawn",
    "EnrollmentCompleted",
)

#: The kinds of bad input `synthetic_records` produces with `bad_fraction` > 0.
BAD_KINDS = (
    "not_json",  # truncated JSON, an HTML error page, plain text, or empty bytes
    "invalid_utf8",  # a JSON document with bytes that are not UTF-8
    "wrong_type",  # schema_version "1", payload a list, event_id a number, applicant a string
    "missing_field",  # a required top-level or payload field is absent
    "unknown_event_type",  # e.g. "ApplicationReopened"
    "unknown_schema_version",  # schema_version 2
    "null_key",  # the Kafka key is None (value is a valid event)
    "key_mismatch",  # the Kafka key is another application's id (value is a valid event)
    "nan",  # NaN / Infinity / -Infinity literals in the JSON
)

_DEFAULT_MEAN_GAP = timedelta(minutes=2)

# --------------------------------------------------------------------------- vocabularies

_FIRST_NAMES = (
    "James", "Mary", "Robert", "Patricia", "John", "Jennifer", "Michael", "Linda", "David",
    "Elizabeth", "William", "Barbara", "Richard", "Susan", "Joseph", "Jessica", "Thomas",
    "Sarah", "Christopher", "Karen", "Charles", "Lisa", "Daniel", "Nancy", "Matthew",
    "Sandra", "Anthony", "Betty", "Mark", "Ashley", "Donald", "Emily", "Steven", "Kimberly",
    "Andrew", "Margaret", "Joshua", "Donna", "Kevin", "Michelle", "Brian", "Carol", "Maria",
    "José", "Luis", "Sofia", "Wei", "Mei", "Aisha", "Omar", "Priya", "Raj", "Chloé",
    "Renée", "Zoë", "Mateo", "Camila", "Hiroshi", "Yuki", "Olumide", "Ngozi", "Liam",
    "Olivia", "Noah", "Emma", "Ethan", "Ava", "Lucas", "Mia", "Jamal", "Keisha",
)  # fmt: skip

_LAST_NAMES = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis",
    "Rodriguez", "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson",
    "Thomas", "Taylor", "Moore", "Jackson", "Martin", "Lee", "Perez", "Thompson", "White",
    "Harris", "Sanchez", "Clark", "Ramirez", "Lewis", "Robinson", "Walker", "Young",
    "Allen", "King", "Wright", "Scott", "Torres", "Nguyen", "Hill", "Flores", "Green",
    "Adams", "Nelson", "Baker", "Hall", "Rivera", "Campbell", "Mitchell", "Carter",
    "O'Brien", "McAllister", "Van der Berg", "Núñez", "Chen", "Wang", "Patel", "Kim",
    "Okafor", "Tanaka", "Schmidt", "Müller", "Kowalski", "Haddad", "Singh", "Cohen",
)  # fmt: skip

# Roughly population-weighted: big states appear more often.
_STATES = (
    ("CA", 39), ("TX", 30), ("FL", 22), ("NY", 20), ("PA", 13), ("IL", 12), ("OH", 12),
    ("GA", 11), ("NC", 11), ("MI", 10), ("NJ", 9), ("VA", 9), ("WA", 8), ("AZ", 7),
    ("TN", 7), ("MA", 7), ("IN", 7), ("MD", 6), ("MO", 6), ("WI", 6), ("CO", 6), ("MN", 6),
    ("SC", 5), ("AL", 5), ("LA", 5), ("KY", 4), ("OR", 4), ("OK", 4), ("CT", 4), ("UT", 3),
    ("IA", 3), ("NV", 3), ("AR", 3), ("MS", 3), ("KS", 3), ("NM", 2), ("NE", 2), ("ID", 2),
    ("WV", 2), ("HI", 1), ("NH", 1), ("ME", 1), ("MT", 1), ("RI", 1), ("DE", 1), ("SD", 1),
    ("ND", 1), ("AK", 1), ("DC", 1), ("VT", 1), ("WY", 1),
)  # fmt: skip
_STATE_CODES = tuple(s for s, _ in _STATES)
_STATE_WEIGHTS = tuple(w for _, w in _STATES)

_AREA_CODES = (
    "212", "213", "305", "312", "404", "415", "503", "512", "602", "617", "702", "713",
    "720", "801", "808", "813", "904", "919", "206", "303", "614", "615", "704", "971",
)  # fmt: skip

_EMAIL_DOMAINS = ("example.com", "example.org", "example.net", "mail.example.com")

_AGENCIES = (
    "summit-benefits", "harbor-insurance", "lakeside-agency", "pinnacle-health",
    "bluebird-brokers", "northstar-advisors", "keystone-coverage", "redwood-benefits",
    "meridian-insurance", "cornerstone-group",
)  # fmt: skip

_PRODUCTS = (
    # product, plan-id code, tiers, weight
    ("MEDICAL", "MED", ("BRONZE", "SILVER", "GOLD", "PLATINUM"), 55),
    ("DENTAL", "DEN", ("BASIC", "PLUS", "PREMIER"), 20),
    ("VISION", "VIS", ("STANDARD", "PREMIUM"), 15),
    ("LIFE", "LIF", ("TERM10", "TERM20", "WHOLE"), 10),
)
_PRODUCT_BY_NAME = {p[0]: p for p in _PRODUCTS}

_CHANNELS = (("BROKER", 50), ("ONLINE", 30), ("DIRECT", 20))

_DECLINE_REASONS = (
    "Applicant resides outside the plan service area",
    "Identity could not be verified",
    "Incomplete application: missing required documents",
    "Applicant not eligible for the selected plan",
    "Duplicate of an existing application",
    "Underwriting declined",
)
_WITHDRAW_REASONS = (
    "Applicant chose another carrier",
    "Coverage no longer needed",
    "Premium too high",
    "Applicant obtained coverage through an employer",
    "Withdrawn at the applicant's request",
    "Broker requested withdrawal on the applicant's behalf",
)

# --------------------------------------------------------------------------- public API


@dataclass(frozen=True)
class SampleRecord:
    """One Kafka record as produced, with what the generator knows about it."""

    key: bytes | None
    value: bytes
    #: The clean event this record carries or was derived from.
    event: dict[str, Any]
    #: None for a good record, else one of BAD_KINDS.
    bad_kind: str | None = None
    #: A short description of the specific corruption (e.g. "schema_version as a string").
    bad_detail: str | None = None

    @property
    def is_bad(self) -> bool:
        return self.bad_kind is not None


def format_timestamp(value: datetime) -> str:
    """ISO-8601 in UTC with milliseconds and 'Z', e.g. 2026-11-26T10:00:00.123Z."""
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def encode_event(event: dict[str, Any]) -> tuple[bytes, bytes]:
    """The Kafka (key, value) of a good event: application id and compact UTF-8 JSON."""
    return event["application_id"].encode("utf-8"), _dumps(event)


def event_dicts(
    applications: int,
    *,
    seed: int = 7,
    start: datetime,
    mean_gap: timedelta = _DEFAULT_MEAN_GAP,
    first_application_number: int = 1,
) -> Iterator[dict[str, Any]]:
    """The good Contract-1 events of `applications` applications, in `occurred_at` order.

    `start` is the first submission time (a naive datetime is taken as UTC). Application ids
    are `APP-{n:06d}` from `first_application_number` on, so separate runs can use disjoint
    ids. The same arguments always give the same events (event ids included).
    """
    if applications < 0:
        raise ValueError("applications must be >= 0")
    if mean_gap <= timedelta(0):
        raise ValueError("mean_gap must be positive")
    rng = random.Random(seed)
    start = _as_utc(start)
    brokers = [_broker(rng, n) for n in range(1, max(8, min(400, applications // 12)) + 1)]
    heap: list[tuple[datetime, int, int, dict[str, Any]]] = []
    submitted_at = _truncate_ms(start)
    for index in range(applications):
        if index:
            gap = rng.expovariate(1.0 / mean_gap.total_seconds())
            submitted_at = _truncate_ms(submitted_at + timedelta(seconds=max(gap, 0.001)))
        # Everything already queued that happens before this submission is final.
        while heap and heap[0][0] <= submitted_at:
            yield heapq.heappop(heap)[3]
        number = first_application_number + index
        for seq, (at, event) in enumerate(_lifecycle(rng, number, submitted_at, brokers)):
            heapq.heappush(heap, (at, number, seq, event))
    while heap:
        yield heapq.heappop(heap)[3]


def synthetic_records(
    applications: int,
    *,
    seed: int = 7,
    start: datetime,
    bad_fraction: float = 0.0,
    mean_gap: timedelta = _DEFAULT_MEAN_GAP,
    first_application_number: int = 1,
) -> Iterator[SampleRecord]:
    """Like `synthetic_events`, with each record labelled good or bad (and how)."""
    if not 0.0 <= bad_fraction <= 1.0:
        raise ValueError("bad_fraction must be between 0 and 1")
    bad_rng = random.Random(f"enrollment-pipeline bad input {seed}")
    events = event_dicts(
        applications,
        seed=seed,
        start=start,
        mean_gap=mean_gap,
        first_application_number=first_application_number,
    )
    for event in events:
        key, value = encode_event(event)
        if bad_fraction and bad_rng.random() < bad_fraction:
            kind = bad_rng.choice(BAD_KINDS)
            bad_key, bad_value, detail = _corrupt(bad_rng, kind, event, key)
            yield SampleRecord(bad_key, bad_value, event, kind, detail)
        else:
            yield SampleRecord(key, value, event)


def synthetic_events(
    applications: int,
    *,
    seed: int = 7,
    start: datetime,
    bad_fraction: float = 0.0,
    mean_gap: timedelta = _DEFAULT_MEAN_GAP,
    first_application_number: int = 1,
) -> Iterator[tuple[bytes | None, bytes]]:
    """Kafka (key, value) records of realistic enrollment events, deterministic for a seed.

    Good records have key = application id (UTF-8) and a Contract-1 JSON value. With
    `bad_fraction` > 0, roughly that fraction is replaced by bad input (see BAD_KINDS).
    """
    for record in synthetic_records(
        applications,
        seed=seed,
        start=start,
        bad_fraction=bad_fraction,
        mean_gap=mean_gap,
        first_application_number=first_application_number,
    ):
        yield record.key, record.value


# --------------------------------------------------------------------------- lifecycle


def _lifecycle(
    rng: random.Random, number: int, submitted_at: datetime, brokers: list[dict[str, str]]
) -> list[tuple[datetime, dict[str, Any]]]:
    app_id = f"APP-{number:06d}"
    events: list[tuple[datetime, dict[str, Any]]] = []
    t = submitted_at

    def emit(event_type: str, payload: dict[str, Any]) -> None:
        events.append((t, _event(rng, event_type, t, app_id, payload)))

    def later(low: timedelta, high: timedelta) -> datetime:
        # Log-uniform: most follow-ups come soon, a few take days.
        seconds = math.exp(
            rng.uniform(math.log(low.total_seconds()), math.log(high.total_seconds()))
        )
        return _truncate_ms(t + timedelta(seconds=seconds, microseconds=rng.randrange(1000) * 1000))

    applicant = _applicant(rng, submitted_at)
    plan = _plan(rng, submitted_at)
    channel = _weighted(rng, _CHANNELS)
    broker = dict(rng.choice(brokers)) if channel == "BROKER" else None
    consent = rng.random() < 0.6
    submitted: dict[str, Any] = {
        "applicant": dict(applicant),
        "plan": dict(plan),
        "channel": channel,
        "marketing_consent": consent,
    }
    if broker is not None:
        submitted["broker"] = dict(broker)
    emit("ApplicationSubmitted", submitted)

    # Middle: corrections and (re)assignments of a broker, in random order.
    steps = ["update"] * rng.choices((0, 1, 2, 3), weights=(55, 28, 12, 5))[0]
    if broker is not None and rng.random() < 0.08:
        steps.append("assign")  # the agency hands the case to a colleague
    elif broker is None and rng.random() < 0.12:
        steps.append("assign")  # a direct/online applicant asks for a broker
    rng.shuffle(steps)
    for step in steps:
        if step == "update":
            t = later(timedelta(minutes=5), timedelta(days=2))
            changes, consent = _changes(rng, applicant, plan, consent, t)
            emit("ApplicationUpdated", {"changes": changes})
        else:
            t = later(timedelta(minutes=30), timedelta(days=1))
            broker = dict(rng.choice([b for b in brokers if not broker or b != broker]))
            emit("BrokerAssigned", {"broker": dict(broker)})

    signed = broker is not None and rng.random() < 0.7
    if signed:
        assert broker is not None
        signing = later(timedelta(minutes=20), timedelta(days=4))
        signed_at = signing - timedelta(seconds=rng.randint(30, 900))
        t = signing
        emit(
            "BrokerSignatureReceived",
            {"broker_id": broker["broker_id"], "signed_at": format_timestamp(signed_at)},
        )

    if broker is not None and not signed:
        outcome = _weighted(rng, (("OPEN", 60), ("WITHDRAWN", 25), ("DECLINED", 15)))
    else:
        outcome = _weighted(
            rng, (("OPEN", 15), ("APPROVED", 65), ("DECLINED", 10), ("WITHDRAWN", 10))
        )
    if outcome == "OPEN":
        return events
    t = later(timedelta(hours=2), timedelta(days=7))
    if outcome == "DECLINED":
        emit("ApplicationDeclined", {"reason": rng.choice(_DECLINE_REASONS)})
        return events
    if outcome == "WITHDRAWN":
        emit("ApplicationWithdrawn", {"reason": rng.choice(_WITHDRAW_REASONS)})
        return events
    emit("ApplicationApproved", {})
    after = _weighted(rng, (("ENROLLED", 85), ("WITHDRAWN", 5), ("APPROVED", 10)))
    if after == "ENROLLED":
        t = later(timedelta(hours=1), timedelta(days=3))
        coverage = date.fromisoformat(plan["coverage_start"])
        effective = coverage if coverage > t.date() else _first_of_next_month(t.date())
        product_code = _PRODUCT_BY_NAME[plan["product"]][1]
        emit(
            "EnrollmentCompleted",
            {
                "policy_number": f"POL-{product_code}-{effective.year}-{number:07d}",
                "effective_date": effective.isoformat(),
            },
        )
    elif after == "WITHDRAWN":
        t = later(timedelta(days=1), timedelta(days=5))
        emit("ApplicationWithdrawn", {"reason": rng.choice(_WITHDRAW_REASONS)})
    return events


def _event(
    rng: random.Random, event_type: str, at: datetime, app_id: str, payload: dict[str, Any]
) -> dict[str, Any]:
    return {
        "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "event_type": event_type,
        "schema_version": 1,
        "occurred_at": format_timestamp(at),
        "application_id": app_id,
        "payload": payload,
    }


def _applicant(rng: random.Random, submitted_at: datetime) -> dict[str, Any]:
    first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
    applicant: dict[str, Any] = {
        "first_name": first,
        "last_name": last,
        "email": _email(rng, first, last),
    }
    if rng.random() < 0.8:
        applicant["phone"] = _phone(rng)
    applicant["state"] = rng.choices(_STATE_CODES, weights=_STATE_WEIGHTS)[0]
    if rng.random() < 0.85:
        age_days = rng.randint(18 * 365 + 5, 84 * 365)
        applicant["date_of_birth"] = (submitted_at.date() - timedelta(days=age_days)).isoformat()
    return applicant


def _plan(rng: random.Random, submitted_at: datetime) -> dict[str, str]:
    product, code, tiers, _ = rng.choices(_PRODUCTS, weights=[p[3] for p in _PRODUCTS])[0]
    coverage = _first_of_next_month(submitted_at.date())
    if rng.random() < 0.4:
        coverage = _first_of_next_month(coverage)
    return {
        "plan_id": f"PLN-{code}-{coverage.year}-{rng.choice(tiers)}",
        "product": product,
        "coverage_start": coverage.isoformat(),
    }


def _broker(rng: random.Random, number: int) -> dict[str, str]:
    first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
    local = f"{_ascii(first)}.{_ascii(last)}"
    return {
        "broker_id": f"BRK-{number:05d}",
        "name": f"{first} {last}",
        "email": f"{local}@{rng.choice(_AGENCIES)}.example.com",
    }


def _changes(
    rng: random.Random,
    applicant: dict[str, Any],
    plan: dict[str, str],
    consent: bool,
    at: datetime,
) -> tuple[dict[str, Any], bool]:
    """A realistic partial change; applies it to `applicant`/`plan`, returns the new consent."""
    kinds = rng.choices(
        ("phone", "email", "last_name", "state", "dob", "tier", "coverage", "consent"),
        weights=(20, 15, 6, 8, 6, 15, 10, 20),
        k=rng.choice((1, 1, 1, 2)),
    )
    applicant_changes: dict[str, Any] = {}
    plan_changes: dict[str, str] = {}
    changes: dict[str, Any] = {}
    for kind in kinds:
        if kind == "phone":
            applicant_changes["phone"] = _phone(rng)
        elif kind == "email":
            first = applicant_changes.get("first_name", applicant["first_name"])
            last = applicant_changes.get("last_name", applicant["last_name"])
            applicant_changes["email"] = _email(rng, first, last)
        elif kind == "last_name":
            last = rng.choice([n for n in _LAST_NAMES if n != applicant["last_name"]])
            applicant_changes["last_name"] = last
            applicant_changes["email"] = _email(rng, applicant["first_name"], last)
        elif kind == "state":
            state = rng.choices(_STATE_CODES, weights=_STATE_WEIGHTS)[0]
            if state != applicant["state"]:
                applicant_changes["state"] = state
        elif kind == "dob":
            age_days = rng.randint(18 * 365 + 5, 84 * 365)
            applicant_changes["date_of_birth"] = (at.date() - timedelta(days=age_days)).isoformat()
        elif kind == "tier":
            _, code, tiers, _ = _PRODUCT_BY_NAME[plan["product"]]
            year = date.fromisoformat(plan["coverage_start"]).year
            plan_changes["plan_id"] = f"PLN-{code}-{year}-{rng.choice(tiers)}"
        elif kind == "coverage":
            coverage = _first_of_next_month(date.fromisoformat(plan["coverage_start"]))
            plan_changes["coverage_start"] = coverage.isoformat()
            _, code, _, _ = _PRODUCT_BY_NAME[plan["product"]]
            tier = plan.get("plan_id", "").rsplit("-", 1)[-1]
            plan_changes["plan_id"] = f"PLN-{code}-{coverage.year}-{tier}"
        else:
            consent = not consent
            changes["marketing_consent"] = consent
    if not (applicant_changes or plan_changes or changes):
        applicant_changes["phone"] = _phone(rng)  # a move within the same state: new number
    if applicant_changes:
        applicant.update(applicant_changes)
        changes["applicant"] = applicant_changes
    if plan_changes:
        plan.update(plan_changes)
        changes["plan"] = plan_changes
    return changes, consent


# --------------------------------------------------------------------------- bad input


def _corrupt(
    rng: random.Random, kind: str, event: dict[str, Any], key: bytes
) -> tuple[bytes | None, bytes, str]:
    """(key, value, detail) of a bad record of `kind` derived from a good event."""
    value = _dumps(event)
    if kind == "not_json":
        variant = rng.randrange(4)
        if variant == 0:
            return key, value[: rng.randint(1, len(value) - 1)], "truncated JSON"
        if variant == 1:
            return (
                key,
                b"<html><body><h1>502 Bad Gateway</h1></body></html>",
                "an HTML error page",
            )
        if variant == 2:
            return key, f"{event['event_type']} {event['application_id']}".encode(), "plain text"
        return key, b"", "empty value"
    if kind == "invalid_utf8":
        # A Latin-1 producer: JSON whose non-ASCII text (names like Núñez, or the 'é' added to
        # the event id) is encoded as Latin-1, and a lone 0xE9 is not UTF-8.
        bad = dict(event, event_id=event["event_id"] + "\u00e9")
        raw = json.dumps(bad, ensure_ascii=False).encode("latin-1", errors="replace")
        return key, raw, "Latin-1 bytes"
    if kind == "wrong_type":
        bad = json.loads(value)
        variant = rng.randrange(4)
        if variant == 0:
            bad["schema_version"] = "1"
            detail = "schema_version as a string"
        elif variant == 1:
            bad["payload"] = [bad["payload"]]
            detail = "payload as a list"
        elif variant == 2:
            bad["event_id"] = rng.randint(1, 10**9)
            detail = "event_id as a number"
        elif event["event_type"] == "ApplicationSubmitted":
            applicant = bad["payload"]["applicant"]
            bad["payload"]["applicant"] = f"{applicant['first_name']} {applicant['last_name']}"
            detail = "applicant as a string"
        else:
            bad["occurred_at"] = {"date": bad["occurred_at"][:10]}
            detail = "occurred_at as an object"
        return key, _dumps(bad), detail
    if kind == "missing_field":
        bad = json.loads(value)
        required_in_payload = {
            "ApplicationSubmitted": ("applicant", "plan", "channel"),
            "ApplicationUpdated": ("changes",),
            "BrokerAssigned": ("broker",),
            "BrokerSignatureReceived": ("broker_id",),
            "ApplicationDeclined": ("reason",),
            "ApplicationWithdrawn": ("reason",),
            "EnrollmentCompleted": ("policy_number", "effective_date"),
        }.get(event["event_type"], ())
        candidates = [("", f) for f in ("event_id", "event_type", "occurred_at")]
        candidates += [("payload", f) for f in required_in_payload]
        where, field = rng.choice(candidates)
        (bad[where] if where else bad).pop(field)
        return key, _dumps(bad), f"{where + '.' if where else ''}{field} missing"
    if kind == "unknown_event_type":
        bad = json.loads(value)
        bad["event_type"] = rng.choice(
            ("ApplicationReopened", "PolicyCancelled", "applicationsubmitted", "BrokerChanged")
        )
        return key, _dumps(bad), f"event_type {bad['event_type']}"
    if kind == "unknown_schema_version":
        bad = json.loads(value)
        bad["schema_version"] = rng.choice((0, 2, 3))
        return key, _dumps(bad), f"schema_version {bad['schema_version']}"
    if kind == "null_key":
        return None, value, "null key"
    if kind == "key_mismatch":
        number = int(event["application_id"].rsplit("-", 1)[1])
        other = f"APP-{number + rng.randint(1, 999):06d}"
        return other.encode("utf-8"), value, f"key {other}"
    if kind == "nan":
        bad = json.loads(value)
        literal = rng.choice((math.nan, math.inf, -math.inf))
        if rng.random() < 0.5:
            bad["schema_version"] = literal
            where = "schema_version"
        else:
            bad["payload"]["premium"] = literal
            where = "payload.premium"
        text = json.dumps(bad, ensure_ascii=False, separators=(",", ":"), allow_nan=True)
        return key, text.encode("utf-8"), f"{json.dumps(literal)} in {where}"
    raise ValueError(f"unknown bad kind {kind!r}")


# --------------------------------------------------------------------------- helpers


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode(
        "utf-8"
    )


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _truncate_ms(value: datetime) -> datetime:
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def _first_of_next_month(day: date) -> date:
    return date(day.year + 1, 1, 1) if day.month == 12 else date(day.year, day.month + 1, 1)


def _weighted(rng: random.Random, options: tuple[tuple[str, int], ...]) -> str:
    return rng.choices([o for o, _ in options], weights=[w for _, w in options])[0]


def _ascii(name: str) -> str:
    """Lower-case ASCII letters of a name: 'Núñez' -> 'nunez', "O'Brien" -> 'obrien'."""
    decomposed = unicodedata.normalize("NFKD", name)
    return "".join(c for c in decomposed if c.isascii() and c.isalpha()).lower()


def _email(rng: random.Random, first: str, last: str) -> str:
    f, last_ascii = _ascii(first), _ascii(last)
    local = rng.choice(
        (
            f"{f}.{last_ascii}",
            f"{f[0]}{last_ascii}",
            f"{f}{last_ascii}{rng.randint(1, 99)}",
            f"{f}_{last_ascii}",
            f"{last_ascii}.{f}",
        )
    )
    return f"{local}@{rng.choice(_EMAIL_DOMAINS)}"


def _phone(rng: random.Random) -> str:
    # 555-0100..0199 are the numbers reserved for fiction.
    return f"+1{rng.choice(_AREA_CODES)}555{rng.randint(100, 199):04d}"


def write_archive(
    folder: str | Path,
    applications: int,
    *,
    seed: int,
    start: datetime,
    bad_fraction: float = 0.01,
    gzipped: bool = False,
    mean_gap: timedelta = timedelta(hours=2),
) -> dict[str, int]:
    """A Contract-5 archive of the same realistic history: `{day}.jsonl[.gz]` per day of
    `occurred_at` (UTC), bad lines included (a bad record goes to its clean event's day).
    Days without events get no file. Streams day by day (memory stays flat at any size).
    Returns the lines written per day."""
    import gzip

    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    day: str | None = None
    out: BinaryIO | None = None
    try:
        for record in synthetic_records(
            applications, seed=seed, start=start, bad_fraction=bad_fraction, mean_gap=mean_gap
        ):
            record_day = str(record.event["occurred_at"])[:10]
            if record_day != day:
                if out is not None:
                    out.close()
                day = record_day
                suffix = ".jsonl.gz" if gzipped else ".jsonl"
                path = root / f"{day}{suffix}"
                # A day met again (rare) appends lines, or a gzip member, to its file.
                mode = "ab" if day in counts else "wb"
                out = gzip.open(path, mode) if gzipped else path.open(mode)  # type: ignore[assignment]  # noqa: SIM115
            assert out is not None
            out.write(record.value.replace(b"\n", b" ") + b"\n")
            counts[record_day] = counts.get(record_day, 0) + 1
    finally:
        if out is not None:
            out.close()
    return dict(sorted(counts.items()))
