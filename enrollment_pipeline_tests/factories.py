"""Contract-1 events as the upstream systems send them, for tests."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def at(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def event(
    event_type: str,
    app_id: str,
    minutes: float,
    payload: dict[str, Any] | None = None,
    *,
    event_id: str | None = None,
) -> dict[str, Any]:
    return {
        "event_id": event_id or str(uuid.uuid4()),
        "event_type": event_type,
        "schema_version": 1,
        "occurred_at": at(minutes),
        "application_id": app_id,
        "payload": payload or {},
    }


BROKER_A = {"broker_id": "BRK-A", "name": "Ada Broker", "email": "ada@brokers.example"}
BROKER_B = {"broker_id": "BRK-B", "name": "Bo Broker", "email": "bo@brokers.example"}


def submitted(
    app_id: str, minutes: float = 0, *, broker: dict | None = BROKER_A, consent: bool = True, **kw
) -> dict[str, Any]:
    return event(
        "ApplicationSubmitted",
        app_id,
        minutes,
        {
            "applicant": {
                "first_name": "Jane",
                "last_name": "Doe",
                "email": "jane.doe@example.com",
                "phone": "+1-555-0100",
                "state": "CA",
                "date_of_birth": "1990-04-01",
            },
            "plan": {
                "plan_id": "PLN-MED-GOLD",
                "product": "MEDICAL",
                "coverage_start": "2027-01-01",
            },
            "channel": "BROKER" if broker else "ONLINE",
            **({"broker": broker} if broker else {}),
            "marketing_consent": consent,
        },
        **kw,
    )


def approved(app_id: str, minutes: float, **kw) -> dict[str, Any]:
    return event("ApplicationApproved", app_id, minutes, **kw)


def signed(app_id: str, minutes: float, broker_id: str = "BRK-A", **kw) -> dict[str, Any]:
    return event(
        "BrokerSignatureReceived",
        app_id,
        minutes,
        {"broker_id": broker_id, "signed_at": at(minutes)},
        **kw,
    )


def enrolled(app_id: str, minutes: float, **kw) -> dict[str, Any]:
    return event(
        "EnrollmentCompleted",
        app_id,
        minutes,
        {"policy_number": f"POL-{app_id}", "effective_date": "2027-01-01"},
        **kw,
    )


def withdrawn(app_id: str, minutes: float, **kw) -> dict[str, Any]:
    return event("ApplicationWithdrawn", app_id, minutes, {"reason": "changed mind"}, **kw)


def record(evt: dict[str, Any]) -> tuple[bytes, bytes]:
    """The Kafka (key, value) of an event."""
    return evt["application_id"].encode(), json.dumps(evt).encode()


# One complete ApplicationSubmitted as it arrives on the wire, for schema and parser tests.
SUBMITTED_WIRE: dict[str, Any] = {
    "event_id": "evt-1",
    "event_type": "ApplicationSubmitted",
    "schema_version": 1,
    "occurred_at": "2026-11-26T10:00:00Z",
    "application_id": "APP-1",
    "payload": {
        "applicant": {
            "first_name": "Ada",
            "last_name": "Lovelace",
            "email": "ada@example.com",
            "phone": "+1-555-0100",
            "state": "CA",
            "date_of_birth": "1990-12-10",
        },
        "plan": {"plan_id": "PLN-1", "product": "DENTAL", "coverage_start": "2027-01-01"},
        "channel": "BROKER",
        "broker": {"broker_id": "BRK-1", "name": "Bob Broker", "email": "bob@brokers.test"},
        "marketing_consent": True,
    },
}
