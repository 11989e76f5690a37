"""The synthetic event generator: deterministic, Contract-1 shaped, plausible lifecycles.

The Contract-1 checks here are written by hand on purpose, so they stand on their own; when
the pydantic models exist, `test_good_records_parse_and_bad_ones_are_rejected` also checks
the generator against them.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise

import pytest

from enrollment_pipeline.domain.events import EnrollmentEvent, Rejection, parse_record
from enrollment_pipeline.lib.sample_data import (
    BAD_KINDS,
    EVENT_TYPES,
    SampleRecord,
    encode_event,
    event_dicts,
    synthetic_events,
    synthetic_records,
)

START = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)

TOP_LEVEL = {"event_id", "event_type", "schema_version", "occurred_at", "application_id", "payload"}
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")
APP_ID = re.compile(r"^APP-\d{6,}$")
EMAIL = re.compile(r"^[a-z0-9._+-]+@([a-z0-9-]+\.)*example\.(com|org|net)$")
PLAN_ID = re.compile(r"^PLN-(MED|DEN|VIS|LIF)-\d{4}-[A-Z0-9]+$")
PRODUCTS = {"MEDICAL", "DENTAL", "VISION", "LIFE"}
CHANNELS = {"BROKER", "DIRECT", "ONLINE"}
TERMINAL = {"DECLINED", "WITHDRAWN", "ENROLLED"}
TRANSITIONS = {
    "ApplicationApproved": ({"SUBMITTED"}, "APPROVED"),
    "ApplicationDeclined": ({"SUBMITTED"}, "DECLINED"),
    "ApplicationWithdrawn": ({"SUBMITTED", "APPROVED"}, "WITHDRAWN"),
    "EnrollmentCompleted": ({"APPROVED"}, "ENROLLED"),
}


# --------------------------------------------------------------------------- hand checks


def _timestamp(value: object) -> datetime:
    assert isinstance(value, str) and TIMESTAMP.match(value), value
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _date(value: object) -> date:
    assert isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value), value
    return date.fromisoformat(value)


def _text(value: object) -> str:
    assert isinstance(value, str) and value.strip(), value
    return value


def _check_applicant(applicant: object, *, partial: bool) -> None:
    assert isinstance(applicant, dict) and applicant
    allowed = {"first_name", "last_name", "email", "phone", "state", "date_of_birth"}
    assert set(applicant) <= allowed, applicant
    if not partial:
        assert {"first_name", "last_name", "email", "state"} <= set(applicant), applicant
    for name in ("first_name", "last_name"):
        if name in applicant:
            _text(applicant[name])
    if "email" in applicant:
        assert EMAIL.match(applicant["email"]), applicant["email"]
    if "phone" in applicant:
        assert re.fullmatch(r"\+1\d{10}", applicant["phone"]), applicant["phone"]
    if "state" in applicant:
        assert re.fullmatch(r"[A-Z]{2}", applicant["state"]), applicant["state"]
    if "date_of_birth" in applicant:
        _date(applicant["date_of_birth"])


def _check_plan(plan: object, *, partial: bool) -> None:
    assert isinstance(plan, dict) and plan
    assert set(plan) <= {"plan_id", "product", "coverage_start"}, plan
    if not partial:
        assert set(plan) == {"plan_id", "product", "coverage_start"}, plan
    if "plan_id" in plan:
        assert PLAN_ID.match(plan["plan_id"]), plan
    if "product" in plan:
        assert plan["product"] in PRODUCTS, plan
    if "coverage_start" in plan:
        _date(plan["coverage_start"])


def _check_broker(broker: object) -> None:
    assert isinstance(broker, dict)
    assert set(broker) == {"broker_id", "name", "email"}, broker
    assert re.fullmatch(r"BRK-\d{5}", broker["broker_id"]), broker
    _text(broker["name"])
    assert EMAIL.match(broker["email"]), broker


def check_event(event: object) -> None:
    """Plain-assert Contract-1 validation of one decoded event."""
    assert isinstance(event, dict)
    assert set(event) == TOP_LEVEL, event.keys()
    assert isinstance(event["event_id"], str) and event["event_id"], event
    assert event["event_type"] in EVENT_TYPES, event
    assert type(event["schema_version"]) is int and event["schema_version"] == 1, event
    _timestamp(event["occurred_at"])
    assert isinstance(event["application_id"], str) and APP_ID.match(event["application_id"])
    payload = event["payload"]
    assert isinstance(payload, dict), event
    kind = event["event_type"]
    if kind == "ApplicationSubmitted":
        assert {"applicant", "plan", "channel", "marketing_consent"} <= set(payload), payload
        assert set(payload) <= {"applicant", "plan", "channel", "broker", "marketing_consent"}
        _check_applicant(payload["applicant"], partial=False)
        _check_plan(payload["plan"], partial=False)
        assert payload["channel"] in CHANNELS, payload
        assert isinstance(payload["marketing_consent"], bool), payload
        if "broker" in payload:
            _check_broker(payload["broker"])
    elif kind == "ApplicationUpdated":
        assert set(payload) == {"changes"}, payload
        changes = payload["changes"]
        assert isinstance(changes, dict) and changes, payload
        assert set(changes) <= {"applicant", "plan", "marketing_consent"}, changes
        if "applicant" in changes:
            _check_applicant(changes["applicant"], partial=True)
        if "plan" in changes:
            _check_plan(changes["plan"], partial=True)
        if "marketing_consent" in changes:
            assert isinstance(changes["marketing_consent"], bool), changes
    elif kind == "BrokerAssigned":
        assert set(payload) == {"broker"}, payload
        _check_broker(payload["broker"])
    elif kind == "BrokerSignatureReceived":
        assert set(payload) == {"broker_id", "signed_at"}, payload
        _text(payload["broker_id"])
        _timestamp(payload["signed_at"])
    elif kind == "ApplicationApproved":
        assert payload == {}, payload
    elif kind in ("ApplicationDeclined", "ApplicationWithdrawn"):
        assert set(payload) == {"reason"}, payload
        _text(payload["reason"])
    else:
        assert kind == "EnrollmentCompleted"
        assert set(payload) == {"policy_number", "effective_date"}, payload
        _text(payload["policy_number"])
        _date(payload["effective_date"])


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def problem(key: bytes | None, value: bytes) -> str | None:
    """Why a (key, value) record is not a valid Contract-1 record, or None if it is."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid_utf8"
    try:
        event = json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        return "invalid_json"
    try:
        check_event(event)
    except (AssertionError, KeyError, TypeError, ValueError) as exc:
        return f"invalid_event: {exc}"
    if key is None:
        return "null_key"
    if key != event["application_id"].encode("utf-8"):
        return "key_mismatch"
    return None


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def clean() -> list[SampleRecord]:
    return list(synthetic_records(300, seed=11, start=START))


@pytest.fixture(scope="module")
def dirty() -> list[SampleRecord]:
    return list(synthetic_records(300, seed=11, start=START, bad_fraction=0.15))


def _by_application(records: list[SampleRecord]) -> dict[str, list[dict]]:
    apps: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        apps[record.event["application_id"]].append(record.event)
    return apps


# --------------------------------------------------------------------------- tests


def test_the_same_seed_gives_the_same_records_and_another_seed_others():
    first = list(synthetic_events(40, seed=3, start=START, bad_fraction=0.2))
    again = list(synthetic_events(40, seed=3, start=START, bad_fraction=0.2))
    other = list(synthetic_events(40, seed=4, start=START, bad_fraction=0.2))
    assert first == again
    assert first != other
    assert all(isinstance(v, bytes) and (k is None or isinstance(k, bytes)) for k, v in first)


def test_synthetic_events_yields_the_labelled_records_keys_and_values():
    records = list(synthetic_records(25, seed=5, start=START, bad_fraction=0.3))
    pairs = list(synthetic_events(25, seed=5, start=START, bad_fraction=0.3))
    assert pairs == [(r.key, r.value) for r in records]


def test_every_good_record_is_a_valid_contract_1_record_keyed_by_its_application(clean):
    assert len(clean) > 300  # lifecycles, not just submissions
    for record in clean:
        assert not record.is_bad
        assert problem(record.key, record.value) is None, record
        assert record.key == record.event["application_id"].encode("utf-8")
        assert json.loads(record.value) == record.event
        assert (record.key, record.value) == encode_event(record.event)


def test_event_ids_are_unique_uuids_and_application_ids_are_numbered(clean):
    ids = [r.event["event_id"] for r in clean]
    assert len(set(ids)) == len(ids)
    assert all(
        re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", i)
        for i in ids
    )
    apps = {r.event["application_id"] for r in clean}
    assert apps == {f"APP-{n:06d}" for n in range(1, 301)}
    shifted = {
        e["application_id"] for e in event_dicts(3, start=START, first_application_number=5000)
    }
    assert shifted == {"APP-005000", "APP-005001", "APP-005002"}


def test_events_are_interleaved_in_time_and_each_application_is_in_order(clean):
    times = [_timestamp(r.event["occurred_at"]) for r in clean]
    assert times == sorted(times)
    assert times[0] == START
    for events in _by_application(clean).values():
        at = [_timestamp(e["occurred_at"]) for e in events]
        assert all(a < b for a, b in pairwise(at)), events
        assert events[0]["event_type"] == "ApplicationSubmitted"
    # Interleaved: some application's events are separated by other applications' events.
    order = [r.event["application_id"] for r in clean]
    switches = sum(1 for a, b in pairwise(order) if a != b)
    assert switches > len(_by_application(clean)) * 1.5


def test_lifecycles_follow_the_status_machine_and_signatures_match_the_broker(clean):
    outcomes = Counter()
    for events in _by_application(clean).values():
        status = None
        broker = None
        for event in events:
            kind, payload = event["event_type"], event["payload"]
            if kind == "ApplicationSubmitted":
                assert status is None
                status, broker = "SUBMITTED", payload.get("broker")
                if payload["channel"] == "BROKER":
                    assert broker is not None, event
                else:
                    assert broker is None, event
            elif kind in ("ApplicationUpdated", "BrokerAssigned"):
                assert status not in TERMINAL and status is not None, event
                if kind == "BrokerAssigned":
                    assert payload["broker"] != broker
                    broker = payload["broker"]
            elif kind == "BrokerSignatureReceived":
                assert broker is not None and payload["broker_id"] == broker["broker_id"]
                assert _timestamp(payload["signed_at"]) <= _timestamp(event["occurred_at"])
            else:
                allowed, status_after = TRANSITIONS[kind]
                assert status in allowed, (status, event)
                status = status_after
        outcomes[status] += 1
    assert set(outcomes) == {"SUBMITTED", "APPROVED", "DECLINED", "WITHDRAWN", "ENROLLED"}
    assert outcomes["ENROLLED"] > outcomes["DECLINED"]


def test_some_applications_stay_open_and_unsigned_with_a_broker(clean):
    awaiting = 0
    signed = 0
    for events in _by_application(clean).values():
        broker = events[0]["payload"].get("broker")
        signature = None
        for event in events[1:]:
            if event["event_type"] == "BrokerAssigned":
                broker, signature = event["payload"]["broker"], None
            elif event["event_type"] == "BrokerSignatureReceived":
                signature = event["payload"]["broker_id"]
        final = events[-1]["event_type"]
        if (
            broker
            and signature is None
            and final not in ("ApplicationDeclined", "ApplicationWithdrawn")
        ):
            awaiting += 1
        if broker and signature == broker["broker_id"]:
            signed += 1
    assert awaiting >= 20  # follow-up candidates
    assert signed >= 50


def test_realistic_values_and_variety(clean):
    submitted = [
        r.event["payload"] for r in clean if r.event["event_type"] == "ApplicationSubmitted"
    ]
    assert {p["channel"] for p in submitted} == CHANNELS
    assert {p["plan"]["product"] for p in submitted} == PRODUCTS
    assert {p["marketing_consent"] for p in submitted} == {True, False}
    assert len({p["applicant"]["state"] for p in submitted}) > 20
    assert any("phone" not in p["applicant"] for p in submitted)
    assert any("phone" in p["applicant"] for p in submitted)
    assert any("date_of_birth" not in p["applicant"] for p in submitted)
    for p in submitted:
        applicant = p["applicant"]
        born = date.fromisoformat(applicant.get("date_of_birth", "2000-01-01"))
        assert 17 < (START.date() - born).days / 365.25 < 86
        assert date.fromisoformat(p["plan"]["coverage_start"]).day == 1
        assert date.fromisoformat(p["plan"]["coverage_start"]) > START.date()
        assert p["plan"]["plan_id"].startswith(
            {"MEDICAL": "PLN-MED", "DENTAL": "PLN-DEN", "VISION": "PLN-VIS", "LIFE": "PLN-LIF"}[
                p["plan"]["product"]
            ]
        )
    kinds = Counter(r.event["event_type"] for r in clean)
    assert set(kinds) == set(EVENT_TYPES)
    changes = [
        r.event["payload"]["changes"]
        for r in clean
        if r.event["event_type"] == "ApplicationUpdated"
    ]
    assert any("applicant" in c for c in changes)
    assert any("plan" in c for c in changes)
    assert any("marketing_consent" in c for c in changes)
    policies = [
        r.event["payload"]["policy_number"]
        for r in clean
        if r.event["event_type"] == "EnrollmentCompleted"
    ]
    assert len(set(policies)) == len(policies)


def test_naive_start_is_utc_and_mean_gap_spreads_submissions():
    naive = list(event_dicts(5, seed=2, start=START.replace(tzinfo=None)))
    assert naive == list(event_dicts(5, seed=2, start=START))
    slow = [
        e
        for e in event_dicts(200, start=START, mean_gap=timedelta(hours=1))
        if e["event_type"] == "ApplicationSubmitted"
    ]
    span = _timestamp(slow[-1]["occurred_at"]) - START
    assert timedelta(days=4) < span < timedelta(days=14)


def test_bad_fraction_is_roughly_honoured_with_every_kind(dirty):
    bad = [r for r in dirty if r.is_bad]
    fraction = len(bad) / len(dirty)
    assert 0.10 < fraction < 0.20, fraction
    assert {r.bad_kind for r in bad} == set(BAD_KINDS)
    assert not any(r.is_bad for r in synthetic_records(50, start=START))
    everything = list(synthetic_records(20, start=START, bad_fraction=1.0))
    assert all(r.is_bad for r in everything)


def test_bad_records_are_bad_and_the_others_match_the_clean_run(clean, dirty):
    assert len(clean) == len(dirty)
    expected = {
        "not_json": {"invalid_json"},
        "invalid_utf8": {"invalid_utf8"},
        "nan": {"invalid_json"},
        "null_key": {"null_key"},
        "key_mismatch": {"key_mismatch"},
    }
    for good, record in zip(clean, dirty, strict=True):
        assert record.event == good.event
        if not record.is_bad:
            assert (record.key, record.value) == (good.key, good.value)
            continue
        found = problem(record.key, record.value)
        assert found is not None, record
        if record.bad_kind in expected:
            assert found in expected[record.bad_kind], (found, record)
        else:
            assert found.startswith("invalid_event"), (found, record)
        if record.bad_kind in ("null_key", "key_mismatch"):
            assert problem(good.key, record.value) is None  # only the key is wrong
    nan = [r for r in dirty if r.bad_kind == "nan"]
    assert all(
        any(c in r.value for c in (b"NaN", b"Infinity")) for r in nan
    )  # Python's json accepts these by default: a parser must refuse them on purpose
    assert any(math.isnan(v) or math.isinf(v) for r in nan for v in _floats(json.loads(r.value)))


def _floats(obj: object):
    if isinstance(obj, float):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _floats(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _floats(v)


def test_invalid_arguments_are_refused():
    with pytest.raises(ValueError):
        list(synthetic_events(1, start=START, bad_fraction=1.5))
    with pytest.raises(ValueError):
        list(synthetic_events(-1, start=START))
    with pytest.raises(ValueError):
        list(event_dicts(1, start=START, mean_gap=timedelta(0)))
    assert list(synthetic_events(0, start=START)) == []


def test_good_records_parse_and_bad_ones_are_rejected(dirty):
    # The contract's reason codes for the kinds that have exactly one cause.
    reasons = {
        "null_key": "null_key",
        "key_mismatch": "key_mismatch",
        "invalid_utf8": "invalid_utf8",
    }
    for record in dirty:
        parsed = parse_record(record.key, record.value)
        if record.is_bad:
            why = (record.bad_kind, record.bad_detail, parsed)
            assert isinstance(parsed, Rejection), why
            if record.bad_kind in reasons:
                assert str(parsed.reason) == reasons[record.bad_kind], why
        else:
            assert isinstance(parsed, EnrollmentEvent), (record.event, parsed)
