"""The fold: status machine, anomalies, order independence, healing and the follow-up part."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enrollment_pipeline.domain.events import EnrollmentEvent
from enrollment_pipeline.domain.leads import lead_events
from enrollment_pipeline.domain.projection import (
    Application,
    FollowupState,
    fold_application,
    sorted_history,
)

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
APP = "APP-1"


def at(minute: float) -> datetime:
    return T0 + timedelta(minutes=minute)


def broker(broker_id: str) -> dict[str, str]:
    return {"broker_id": broker_id, "name": f"Broker {broker_id}", "email": f"{broker_id}@b.test"}


def event(
    event_type: str,
    minute: float,
    payload: dict[str, Any],
    *,
    event_id: str | None = None,
    app: str = APP,
) -> EnrollmentEvent:
    """Build through the wire format, so tests exercise the same validation as Kafka."""
    return EnrollmentEvent.model_validate(
        {
            "event_id": event_id or f"{app}:{event_type}:{minute}",
            "event_type": event_type,
            "schema_version": 1,
            "occurred_at": at(minute).isoformat(),
            "application_id": app,
            "payload": payload,
        }
    )


def submitted(
    minute: float = 0, *, broker_id: str | None = "B1", consent: bool = True, **kw: Any
) -> EnrollmentEvent:
    return event(
        "ApplicationSubmitted",
        minute,
        {
            "applicant": {
                "first_name": "Ada",
                "last_name": "Lovelace",
                "email": "ada@example.com",
                "state": "CA",
                "date_of_birth": "1990-12-10",
            },
            "plan": {"plan_id": "PLN-1", "product": "MEDICAL", "coverage_start": "2027-01-01"},
            "channel": "BROKER" if broker_id else "ONLINE",
            "broker": broker(broker_id) if broker_id else None,
            "marketing_consent": consent,
        },
        **kw,
    )


def updated(minute: float, changes: dict[str, Any], **kw: Any) -> EnrollmentEvent:
    return event("ApplicationUpdated", minute, {"changes": changes}, **kw)


def assigned(minute: float, broker_id: str, **kw: Any) -> EnrollmentEvent:
    return event("BrokerAssigned", minute, {"broker": broker(broker_id)}, **kw)


def signed(minute: float, broker_id: str, **kw: Any) -> EnrollmentEvent:
    payload = {"broker_id": broker_id, "signed_at": at(minute).isoformat()}
    return event("BrokerSignatureReceived", minute, payload, **kw)


def approved(minute: float, **kw: Any) -> EnrollmentEvent:
    return event("ApplicationApproved", minute, {}, **kw)


def declined(minute: float, **kw: Any) -> EnrollmentEvent:
    return event("ApplicationDeclined", minute, {"reason": "underwriting"}, **kw)


def withdrawn(minute: float, **kw: Any) -> EnrollmentEvent:
    return event("ApplicationWithdrawn", minute, {"reason": "changed mind"}, **kw)


def enrolled(minute: float, **kw: Any) -> EnrollmentEvent:
    payload = {"policy_number": "POL-1", "effective_date": "2027-01-01"}
    return event("EnrollmentCompleted", minute, payload, **kw)


def fold(*events: EnrollmentEvent) -> Application:
    return fold_application(APP, events)


def reasons(app: Application) -> list[str]:
    return [a.reason.value for a in app.anomalies]


# --- status machine -------------------------------------------------------------------------

HISTORY_TO = {
    "SUBMITTED": [submitted(0)],
    "APPROVED": [submitted(0), approved(1)],
    "DECLINED": [submitted(0), declined(1)],
    "WITHDRAWN": [submitted(0), withdrawn(1)],
    "ENROLLED": [submitted(0), approved(1), enrolled(2)],
}
TRANSITION = {"approve": approved, "decline": declined, "withdraw": withdrawn, "enroll": enrolled}
# None = illegal_transition; written out, not imported, so the test states the contract.
MACHINE = {
    ("SUBMITTED", "approve"): "APPROVED",
    ("SUBMITTED", "decline"): "DECLINED",
    ("SUBMITTED", "withdraw"): "WITHDRAWN",
    ("SUBMITTED", "enroll"): None,
    ("APPROVED", "approve"): None,
    ("APPROVED", "decline"): None,
    ("APPROVED", "withdraw"): "WITHDRAWN",
    ("APPROVED", "enroll"): "ENROLLED",
    **{(s, t): None for s in ("DECLINED", "WITHDRAWN", "ENROLLED") for t in TRANSITION},
}


@pytest.mark.parametrize(("start", "transition"), list(MACHINE))
def test_status_machine(start: str, transition: str) -> None:
    app = fold(*HISTORY_TO[start], TRANSITION[transition](10))
    expected = MACHINE[(start, transition)]
    if expected is None:
        assert app.status == start
        assert reasons(app) == ["illegal_transition"]
        assert app.updated_at == HISTORY_TO[start][-1].occurred_at
    else:
        assert app.status == expected
        assert app.anomalies == ()
        assert app.updated_at == at(10)


def test_terminal_details_are_kept() -> None:
    doc = fold(submitted(0), approved(1), enrolled(2)).to_document()
    assert (doc["policy_number"], doc["effective_date"]) == ("POL-1", "2027-01-01")
    assert fold(submitted(0), declined(1)).to_document()["decline_reason"] == "underwriting"
    assert fold(submitted(0), withdrawn(1)).to_document()["withdraw_reason"] == "changed mind"


# --- anomalies --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("events", "reason"),
    [
        pytest.param([approved(0), submitted(1)], "before_submission", id="approve-first"),
        pytest.param([updated(0, {"marketing_consent": False})], "before_submission", id="upd"),
        pytest.param([submitted(0), submitted(1, event_id="again")], "duplicate_submission"),
        pytest.param([submitted(0), enrolled(1)], "illegal_transition", id="enroll-submitted"),
        pytest.param([submitted(0), declined(1), approved(2)], "illegal_transition"),
        pytest.param(
            [submitted(0), declined(1), updated(2, {"marketing_consent": False})],
            "change_after_terminal",
            id="update-after-decline",
        ),
        pytest.param(
            [submitted(0), approved(1), enrolled(2), assigned(3, "B2")],
            "change_after_terminal",
            id="assign-after-enrolled",
        ),
        pytest.param(
            [submitted(0), withdrawn(1), updated(2, {"plan": {"product": "LIFE"}})],
            "change_after_terminal",
            id="update-after-withdrawn",
        ),
        pytest.param([submitted(0), signed(1, "B2")], "signature_from_other_broker"),
        pytest.param(
            [submitted(0, broker_id=None), signed(1, "B1")],
            "signature_from_other_broker",
            id="signature-without-broker",
        ),
        pytest.param(
            [submitted(0), assigned(1, "B2"), signed(2, "B1")],
            "signature_from_other_broker",
            id="signature-of-previous-broker",
        ),
    ],
)
def test_anomaly_is_recorded_and_changes_nothing(
    events: list[EnrollmentEvent], reason: str
) -> None:
    app = fold(*events)
    assert reasons(app) == [reason]
    anomalous = next(e for e in events if e.event_id == app.anomalies[0].event_id)
    clean = fold(*[e for e in events if e is not anomalous])
    doc, clean_doc = app.to_document(), clean.to_document()
    assert doc["anomalies"] == [
        {
            "event_id": anomalous.event_id,
            "event_type": anomalous.event_type.value,
            "occurred_at": anomalous.to_document()["occurred_at"],
            "reason": reason,
        }
    ]
    assert doc["event_count"] == clean_doc["event_count"] + 1
    assert doc["anomaly_count"] == clean_doc["anomaly_count"] + 1 == 1
    assert doc["fold"]["last_event"]["event_id"] == max(events, key=lambda e: e.sort_key()).event_id
    for key in ("anomalies", "anomaly_count", "event_count", "fold"):  # `fold`: the last event
        del doc[key], clean_doc[key]
    assert doc == clean_doc


def test_only_anomalies_still_give_a_document() -> None:
    app = fold(approved(5), enrolled(6))
    doc = app.to_document()
    assert doc["_id"] == APP
    assert doc["status"] is None
    assert doc["broker_followup_status"] is None
    assert doc["updated_at"] is None and doc["submitted_at"] is None
    assert [a["reason"] for a in doc["anomalies"]] == ["before_submission"] * 2
    assert app.followup is None
    assert lead_events(APP, [approved(5), enrolled(6)]) == []


# --- ordering, late events, healing -----------------------------------------------------------


def test_late_event_is_folded_into_place_not_appended() -> None:
    # Arrival order: submit, withdraw, then an approval that happened before the withdrawal.
    app = fold(submitted(0), withdrawn(10), approved(5))
    assert app.status == "WITHDRAWN"
    assert app.anomalies == ()
    assert app.updated_at == at(10)


def test_late_update_applies_under_later_status() -> None:
    app = fold(submitted(0), approved(10), updated(3, {"applicant": {"last_name": "King"}}))
    assert app.status == "APPROVED"
    assert app.applicant is not None and app.applicant.last_name == "King"


def test_late_submission_heals_earlier_anomaly() -> None:
    orphan = fold(approved(5))
    assert orphan.status is None and reasons(orphan) == ["before_submission"]
    healed = fold(approved(5), submitted(1))
    assert healed.status == "APPROVED"
    assert healed.anomalies == ()


def test_same_instant_sorts_by_lifecycle_rank() -> None:
    # Approved and Submitted at the same instant (one written with an offset): rank decides.
    same = event("ApplicationApproved", 0, {}, event_id="a-approve")
    assert fold(same, submitted(0, event_id="z-submit")).status == "APPROVED"
    offset = EnrollmentEvent.model_validate(
        {**same.to_document(), "occurred_at": "2026-11-26T12:00:00+02:00"}
    )
    assert fold(offset, submitted(0)).status == "APPROVED"


def test_same_instant_and_rank_sorts_by_event_id() -> None:
    app = fold(submitted(0), assigned(5, "B3", event_id="b"), assigned(5, "B2", event_id="a"))
    assert app.broker is not None and app.broker.broker_id == "B3"


def test_microseconds_order_events() -> None:
    app = fold(submitted(0), withdrawn(1 + 1e-6 / 60 * 2), approved(1 + 1e-6 / 60))
    assert app.status == "WITHDRAWN" and app.anomalies == ()


def test_duplicates_are_counted_once() -> None:
    sub = submitted(0)
    app = fold(sub, sub, approved(1), approved(1))
    assert app.event_count == 2
    assert app.status == "APPROVED" and app.anomalies == ()


def test_events_of_another_application_are_refused() -> None:
    with pytest.raises(ValueError):
        fold_application(APP, [submitted(0, app="APP-2")])


# --- the document -----------------------------------------------------------------------------


def test_document_shape_and_types() -> None:
    doc = fold(submitted(0), updated(2, {"applicant": {"phone": "555"}}), approved(3)).to_document()
    assert doc["applicant"] == {
        "first_name": "Ada",
        "last_name": "Lovelace",
        "email": "ada@example.com",
        "phone": "555",
        "state": "CA",
        "date_of_birth": "1990-12-10",
    }
    assert doc["plan"] == {"plan_id": "PLN-1", "product": "MEDICAL", "coverage_start": "2027-01-01"}
    assert doc["channel"] == "BROKER"
    assert doc["broker"] == broker("B1")
    assert doc["marketing_consent"] is True
    assert doc["status"] == "APPROVED"
    assert doc["submitted_at"] == at(0) and doc["submitted_at"].tzinfo is not None
    assert doc["updated_at"] == at(3) and doc["updated_at"].utcoffset() == timedelta(0)
    assert doc["broker_signature"] == {"required": True, "obtained": False, "signed_at": None}
    assert doc["broker_followup_status"] == "AWAITING_SIGNATURE"
    assert doc["event_count"] == 3
    assert doc["anomalies"] == []


def test_partial_update_merges_and_null_clears() -> None:
    app = fold(
        submitted(0),
        updated(1, {"applicant": {"phone": "555", "state": "NY"}, "plan": {"product": "LIFE"}}),
        updated(2, {"applicant": {"phone": None}, "marketing_consent": False}),
    )
    assert app.applicant is not None and app.plan is not None
    assert (app.applicant.phone, app.applicant.state, app.applicant.first_name) == (
        None,
        "NY",
        "Ada",
    )
    assert (app.plan.product, app.plan.plan_id) == ("LIFE", "PLN-1")
    assert app.marketing_consent is False


def test_updated_at_is_latest_applied_event_never_wall_clock() -> None:
    history = [submitted(0), approved(4), declined(9)]  # the decline is illegal after approve
    first, second = fold(*history), fold(*reversed(history))
    assert first.updated_at == second.updated_at == at(4)
    assert first.to_document() == second.to_document()


def test_offsets_are_stored_as_utc() -> None:
    sub = EnrollmentEvent.model_validate(
        {**submitted(0).to_document(), "occurred_at": "2026-11-26T05:00:00-05:00"}
    )
    app = fold(sub)
    doc = app.to_document()
    assert doc["submitted_at"] == at(0)
    assert doc["submitted_at"].tzinfo is UTC
    assert app.followup is not None and app.followup.cycle_started_at.tzinfo is UTC


# --- follow-up (Contract 3, fold part) ------------------------------------------------------


def test_no_followup_without_broker() -> None:
    app = fold(submitted(0, broker_id=None))
    assert app.followup is None
    assert app.to_document()["broker_signature"]["required"] is False


def test_broker_at_submission_awaits_signature_from_submission_time() -> None:
    followup = fold(submitted(0), approved(3)).followup
    assert followup is not None
    assert (followup.broker_id, followup.broker_email) == ("B1", "B1@b.test")
    assert followup.state is FollowupState.AWAITING_SIGNATURE
    assert followup.cycle_started_at == at(0)
    assert followup.signed_at is None


def test_broker_assigned_later_starts_the_cycle() -> None:
    followup = fold(submitted(0, broker_id=None), assigned(7, "B2")).followup
    assert followup is not None
    assert (followup.broker_id, followup.cycle_started_at) == ("B2", at(7))


def test_new_broker_restarts_cycle_and_needs_a_new_signature() -> None:
    app = fold(submitted(0), signed(2, "B1"), assigned(5, "B2"))
    assert app.followup is not None
    assert app.followup.state is FollowupState.AWAITING_SIGNATURE
    assert (app.followup.broker_id, app.followup.cycle_started_at) == ("B2", at(5))
    assert app.to_document()["broker_signature"] == {
        "required": True,
        "obtained": False,
        "signed_at": None,
    }


def test_same_broker_reassigned_keeps_cycle() -> None:
    app = fold(submitted(0), assigned(5, "B1"))
    assert app.followup is not None and app.followup.cycle_started_at == at(0)


def test_signature_signs() -> None:
    app = fold(submitted(0), signed(4, "B1"))
    assert app.followup is not None
    assert app.followup.state is FollowupState.SIGNED
    assert app.followup.signed_at == at(4)
    doc = app.to_document()
    assert doc["broker_signature"] == {"required": True, "obtained": True, "signed_at": at(4)}
    assert doc["broker_followup_status"] == "SIGNED"


@pytest.mark.parametrize(
    "closing", [[declined(5)], [withdrawn(5)], [approved(4), enrolled(5)]], ids=str
)
def test_terminal_without_signature_closes(closing: list[EnrollmentEvent]) -> None:
    app = fold(submitted(0), *closing)
    assert app.followup is not None and app.followup.state is FollowupState.CLOSED
    assert app.to_document()["broker_followup_status"] == "CLOSED"


def test_signed_stays_signed_after_decline() -> None:
    app = fold(submitted(0), signed(1, "B1"), declined(5))
    assert app.followup is not None and app.followup.state is FollowupState.SIGNED


def test_late_signature_turns_closed_into_signed() -> None:
    # The signature happened after the decline and arrived last: SIGNED > CLOSED.
    app = fold(submitted(0), declined(5), signed(8, "B1"))
    assert app.followup is not None and app.followup.state is FollowupState.SIGNED
    assert app.anomalies == ()


def test_late_arriving_earlier_signature_is_folded_in() -> None:
    app = fold(submitted(0), assigned(10, "B2"), signed(5, "B1"))
    assert app.anomalies == ()
    assert app.followup is not None
    assert (app.followup.broker_id, app.followup.state) == ("B2", FollowupState.AWAITING_SIGNATURE)


# --- property: order, duplicates and batching never change the result ------------------------

APPS = ("APP-A", "APP-B", "APP-C")
KINDS = ("submit", "update", "assign", "sign", "approve", "decline", "withdraw", "enroll")


@st.composite
def histories(draw: st.DrawFn) -> list[EnrollmentEvent]:
    events = []
    n = draw(st.integers(min_value=0, max_value=25))
    for i in range(n):
        app = draw(st.sampled_from(APPS))
        kind = draw(st.sampled_from(KINDS))
        minute = draw(st.integers(min_value=0, max_value=6))  # few instants: many ties
        kw = {"event_id": f"e{i:02d}", "app": app}
        broker_id = draw(st.sampled_from(["B1", "B2"]))
        if kind == "submit":
            events.append(
                submitted(
                    minute,
                    broker_id=draw(st.sampled_from([None, "B1"])),
                    consent=draw(st.booleans()),
                    **kw,
                )
            )
        elif kind == "update":
            changes = draw(
                st.sampled_from(
                    [
                        {"marketing_consent": True},
                        {"marketing_consent": False},
                        {"applicant": {"email": "new@example.com"}},
                        {"plan": {"product": "VISION"}},
                        {"applicant": {"date_of_birth": "1991-01-01"}},
                    ]
                )
            )
            events.append(updated(minute, changes, **kw))
        elif kind == "assign":
            events.append(assigned(minute, broker_id, **kw))
        elif kind == "sign":
            events.append(signed(minute, broker_id, **kw))
        else:
            factory = {
                "approve": approved,
                "decline": declined,
                "withdraw": withdrawn,
                "enroll": enrolled,
            }[kind]
            events.append(factory(minute, **kw))
    return events


def read_model(events: list[EnrollmentEvent]) -> dict[str, Any]:
    by_app: dict[str, list[EnrollmentEvent]] = {}
    for e in events:
        by_app.setdefault(e.application_id, []).append(e)
    return {
        app: (
            fold_application(app, evs).to_document(),
            fold_application(app, evs).followup,
            [lead.to_json_bytes() for lead in lead_events(app, evs)],
        )
        for app, evs in by_app.items()
    }


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=histories(), rng=st.randoms(use_true_random=False))
def test_fold_ignores_order_duplicates_and_batching(
    history: list[EnrollmentEvent], rng: random.Random
) -> None:
    expected = read_model(history)

    replayed = history + rng.sample(history, k=len(history) // 2)
    rng.shuffle(replayed)
    assert read_model(replayed) == expected

    # Micro-batches: the store keeps each event_id once; each batch refolds what it touched.
    store: dict[str, EnrollmentEvent] = {}
    documents: dict[str, Any] = {}
    cuts = sorted(rng.sample(range(len(replayed) + 1), k=min(3, len(replayed) + 1)))
    for start, end in zip([0, *cuts], [*cuts, len(replayed)], strict=True):
        batch = replayed[start:end]
        store.update({e.event_id: e for e in batch})
        touched = {e.application_id for e in batch}
        current = read_model(list(store.values()))
        documents.update({app: current[app] for app in touched})
    assert documents == expected


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=histories(), data=st.data())
def test_the_saved_state_plus_later_events_is_the_fold_of_all(
    history: list[EnrollmentEvent], data: st.DataObject
) -> None:
    """What a batch does for an application without late events: start from the document."""
    by_app: dict[str, list[EnrollmentEvent]] = {}
    for e in history:
        by_app.setdefault(e.application_id, []).append(e)
    for app, events in by_app.items():
        ordered = sorted_history(events)
        cut = data.draw(st.integers(min_value=1, max_value=len(ordered)))
        head, tail = ordered[:cut], ordered[cut:]
        saved = Application.from_document(fold_application(app, head).to_document())
        assert saved == fold_application(app, head)  # the document keeps the state exactly

        whole = fold_application(app, ordered)
        assert fold_application(app, tail, start=saved).to_document() == whole.to_document()
        assert lead_events(app, head) + lead_events(app, tail, start=saved) == lead_events(
            app, ordered
        )


def test_an_event_sorting_before_the_saved_state_is_refused() -> None:
    saved = fold(submitted(0), approved(5))
    late = updated(3, {"marketing_consent": False})
    assert not saved.applies_on_top([late])
    assert saved.applies_on_top([enrolled(6)])
    with pytest.raises(ValueError):
        fold_application("APP-1", [late], start=saved)


def test_a_document_without_fold_state_has_no_saved_state() -> None:
    doc = fold(submitted(0)).to_document()
    del doc["fold"]
    assert Application.from_document(doc) is None
