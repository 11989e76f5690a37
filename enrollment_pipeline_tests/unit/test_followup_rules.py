"""Contract 3's rules for the email job, as pure functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from enrollment_pipeline.domain.followup_rules import (
    Action,
    FollowupPolicy,
    decide,
    followup_email,
    header_safe,
    parse_quiet_hours,
)
from enrollment_pipeline.lib.followups.run import Pacer

NOW = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
POLICY = FollowupPolicy()


def due(**fields) -> dict:
    return {
        "_id": "APP-1",
        "broker_id": "BRK-A",
        "broker_email": "ada@brokers.example",
        "submitted_at": NOW - timedelta(days=1),
        "cycle_started_at": NOW - timedelta(days=1),
        "retry_count": 0,
        "attempt_count": 0,
        **fields,
    }


def test_a_due_followup_gets_the_next_attempt():
    decision = decide(due(retry_count=2, attempt_count=4), as_of=NOW, policy=POLICY)
    assert (decision.action, decision.attempt) == (Action.SEND, 5)
    assert decision.attempt_key(due()) == "APP-1:BRK-A:5"


def test_after_max_emails_it_escalates_without_an_email():
    decision = decide(due(retry_count=5, attempt_count=5), as_of=NOW, policy=POLICY)
    assert (decision.action, decision.reason) == (Action.ESCALATE, "max_emails_reached")


@pytest.mark.parametrize(("age_days", "action"), [(30, Action.SEND), (30.01, Action.EXPIRE)])
def test_older_than_the_cutoff_expires(age_days, action):
    submitted = NOW - timedelta(days=age_days)
    assert decide(due(submitted_at=submitted), as_of=NOW, policy=POLICY).action is action


def test_expiry_comes_before_escalation():
    old = due(submitted_at=NOW - timedelta(days=40), retry_count=5)
    assert decide(old, as_of=NOW, policy=POLICY).reason == "expired"


@pytest.mark.parametrize(
    ("text", "hour", "quiet"),
    [
        ("20-07", 20, True),
        ("20-07", 3, True),
        ("20-07", 7, False),
        ("20-07", 12, False),
        ("01-05", 1, True),
        ("01-05", 5, False),
        (None, 3, False),
        ("", 3, False),
    ],
)
def test_quiet_hours_wrap_midnight(text, hour, quiet):
    policy = FollowupPolicy(quiet_hours=parse_quiet_hours(text))
    at = NOW.replace(hour=hour)
    assert policy.is_quiet(at) is quiet
    assert (decide(due(), as_of=at, policy=policy).action is Action.WAIT) is quiet


@pytest.mark.parametrize("text", ["20", "25-07", "a-b", "20:00-07:00"])
def test_bad_quiet_hours_are_refused(text):
    with pytest.raises(ValueError, match="FOLLOWUP_QUIET_HOURS"):
        parse_quiet_hours(text)


def test_header_values_are_one_line():
    assert header_safe("Eve\r\nBcc: x@y.z\u2028") == "Eve Bcc: x@y.z"


def test_the_email_names_the_applicant_product_task_and_attempt_but_no_contact_data():
    application = {
        "broker": {"name": "Ada\nBroker"},
        "applicant": {"first_name": "Jane", "email": "jane@example.com"},
        "plan": {"product": "DENTAL"},
    }
    mail = followup_email(due(), application, attempt_in_cycle=2, max_emails=5)
    assert mail.subject == "Signature needed: Jane's dental application APP-1"
    assert "Hello Ada Broker," in mail.text and "reminder 2 of 5" in mail.text
    assert "jane@example.com" not in mail.text + mail.html
    assert "<p>Hello Ada Broker,</p>" in mail.html


def test_pacer_spaces_sends_evenly():
    clock, slept = [0.0], []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    pacer = Pacer(4.0, clock=lambda: clock[0], sleep=sleep)
    for _ in range(5):
        pacer.wait()
    assert slept == [0.25] * 4
