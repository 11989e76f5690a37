"""One run of the broker follow-ups at `as_of`, outside Dagster so tests can drive it.

Per due follow-up (Contract 3): expired → PENDING `expired`; `max_emails` sent → PENDING;
quiet hours → wait; else one email under the attempt key, exactly once:

    claim (insert_one of the key) → prepare → send_started_at → deliver → sent | failed |
    unknown → outcome

`prepare` builds and checks the message before `send_started_at`: one whose message cannot be
built, or whose address the server cannot take, is `failed` with reason `invalid_address` and
the follow-up PENDING; the run goes on. A rerun finds the claim: `sent` or UNKNOWN is counted
and never re-sent; a claim without `send_started_at` (the run died before sending) is sent
under the same key; one with it but no result becomes UNKNOWN (it may have gone out): counted
as sent, never re-sent. A transient failure releases the claim for the next run and counts
nothing. A server-level failure (unreachable, login or sender refused) releases the claim too
and stops the run; a delivery whose outcome is unknown (the connection lost after the message
went out) is UNKNOWN at once, and stops the run as well.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pymongo import UpdateOne

from enrollment_pipeline.domain.followup_rules import (
    INVALID_ADDRESS,
    RECIPIENT_REJECTED,
    Action,
    Decision,
    FollowupPolicy,
    decide,
    followup_email,
    pending_digest,
)
from enrollment_pipeline.lib.clients.email import (
    EmailError,
    EmailSession,
    InvalidAddressError,
    OutgoingEmail,
    PermanentEmailError,
    TransientEmailError,
    UnknownEmailOutcome,
    check_mailbox,
)
from enrollment_pipeline.lib.mongo.followup_store import (
    FollowupStore,
    failed_outcome,
    pending_outcome,
    sent_outcome,
)
from enrollment_pipeline.lib.mongo.lease import WriterLease, holding

# Steps a test may stop a run at, to prove an attempt is never sent twice.
CHECKPOINTS = ("after_claim", "after_send_started", "after_send")


def no_checkpoint(step: str) -> None:
    return None


@dataclass
class FollowupReport:
    """What the run's asset metadata shows."""

    due: int = 0
    sent: int = 0
    failed: int = 0  # transient: tried again next run, not counted
    unknown: int = 0  # may have gone out (a crash, a lost connection): counted, never re-sent
    escalated: int = 0  # PENDING after max_emails, or a permanent failure
    invalid_address: int = 0  # of those, a message that could not be built or taken
    expired: int = 0
    waiting: int = 0  # quiet hours
    newly_pending: list[tuple[str, str]] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    # Why the run stopped sending (server-level failure or an unknown outcome): it fails red.
    sender_down: str | None = None


class Pacer:
    """At most `per_second` sends a second (SES quotas), spaced evenly."""

    def __init__(
        self,
        per_second: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.gap, self.clock, self.sleep = 1.0 / per_second, clock, sleep
        self.next_at = 0.0

    def wait(self) -> None:
        now = self.clock()
        if now < self.next_at:
            self.sleep(self.next_at - now)
            now = self.next_at
        self.next_at = now + self.gap


def send_followups(
    store: FollowupStore,
    session: EmailSession,
    *,
    as_of: datetime,
    policy: FollowupPolicy,
    max_per_second: float = 10.0,
    lease: WriterLease | None,
    ops_email: str | None = None,
    run_id: str | None = None,
    checkpoint: Callable[[str], None] = no_checkpoint,
) -> FollowupReport:
    """Email the follow-ups due at `as_of`, page by page; each page's outcomes are written
    under the writers' `lease`, so ingestion cannot interleave with them (Contract 3's field
    ownership: the fold never undoes a PENDING it did not see)."""
    report = FollowupReport()
    pacer = Pacer(max_per_second)
    for page in store.due_pages(as_of):
        applications = store.applications([f["_id"] for f in page])
        outcomes: list[UpdateOne] = []
        pending_apps: list[str] = []
        for followup in page:
            report.due += 1
            decision = decide(followup, as_of=as_of, policy=policy)
            if decision.action is Action.WAIT:
                report.waiting += 1
                continue
            if decision.action in (Action.EXPIRE, Action.ESCALATE):
                assert decision.reason is not None
                outcomes.append(pending_outcome(followup, reason=decision.reason, as_of=as_of))
                pending_apps.append(followup["_id"])
                report.newly_pending.append((followup["_id"], decision.reason))
                if decision.action is Action.EXPIRE:
                    report.expired += 1
                else:
                    report.escalated += 1
                continue
            if report.sender_down:
                continue  # counted as due; the next run tries again
            outcome = _attempt(
                store,
                session,
                followup,
                applications.get(followup["_id"]),
                decision,
                as_of=as_of,
                policy=policy,
                pacer=pacer,
                report=report,
                pending_apps=pending_apps,
                run_id=run_id,
                checkpoint=checkpoint,
            )
            if outcome is not None:
                outcomes.append(outcome)
        with holding(lease):
            store.guarded(lease).apply(outcomes, pending_apps)
    if ops_email and report.newly_pending and not report.sender_down:
        subject, text = pending_digest(report.newly_pending, as_of=as_of)
        try:
            session(OutgoingEmail(ops_email, subject, text))
        except EmailError as exc:
            report.errors[f"ops digest: {exc}"] += 1
    return report


def _buildable(followup: dict[str, Any]) -> bool:
    """Whether a message to this follow-up's address can be built at all."""
    try:
        check_mailbox(str(followup.get("broker_email") or ""))
    except InvalidAddressError:
        return False
    return True


def _attempt(
    store: FollowupStore,
    session: EmailSession,
    followup: dict[str, Any],
    application: dict[str, Any] | None,
    decision: Decision,
    *,
    as_of: datetime,
    policy: FollowupPolicy,
    pacer: Pacer,
    report: FollowupReport,
    pending_apps: list[str],
    run_id: str | None,
    checkpoint: Callable[[str], None],
) -> UpdateOne | None:
    """One attempt, exactly once; returns the outcome to write on the follow-up (or None)."""
    attempt = decision.attempt
    assert attempt is not None  # a SEND decision always carries its attempt number
    key = decision.attempt_key(followup)
    next_due_at = as_of + policy.interval

    def counted(status: str) -> UpdateOne:
        return sent_outcome(
            followup, attempt=attempt, key=key, as_of=as_of, next_due_at=next_due_at, status=status
        )

    def rejected(reason: str) -> UpdateOne:
        report.escalated += 1
        report.newly_pending.append((followup["_id"], reason))
        pending_apps.append(followup["_id"])
        return failed_outcome(followup, attempt=attempt, key=key, reason=reason, as_of=as_of)

    earlier = store.claim(
        key,
        {
            "app_id": followup["_id"],
            "broker_id": followup["broker_id"],
            "attempt": attempt,
            "claimed_at": as_of,
            "run_id": run_id,
        },
    )
    if earlier is not None:
        if earlier["status"] in ("sent", "unknown"):
            report.sent += earlier["status"] == "sent"
            report.unknown += earlier["status"] == "unknown"
            return counted(earlier["status"])
        if earlier["status"] == "failed":
            return rejected(earlier.get("reason") or RECIPIENT_REJECTED)
        if earlier.get("send_started_at") is not None:
            if not _buildable(followup):
                # Left by an earlier version, whose run died building this very message
                # (after send_started_at): it cannot have gone out, so it is no UNKNOWN.
                store.set_attempt(
                    key, {"status": "failed", "reason": INVALID_ADDRESS, "resolved_at": as_of}
                )
                report.invalid_address += 1
                return rejected(INVALID_ADDRESS)
            store.set_attempt(key, {"status": "unknown", "resolved_at": as_of})
            report.unknown += 1
            return counted("unknown")
        # Claimed, never sent (a crash before the send, or a transient failure): send now.
    checkpoint("after_claim")

    email = followup_email(
        followup,
        application,
        attempt_in_cycle=followup.get("retry_count", 0) + 1,
        max_emails=policy.max_emails,
    )
    outgoing = OutgoingEmail(
        email.to, email.subject, email.text, html=email.html, to_name=email.to_name
    )

    def released(exc: TransientEmailError) -> None:
        # Not sent: release the key (no send_started_at), so the next run sends under it.
        store.set_attempt(key, {"status": "retry", "detail": str(exc)}, unset=["send_started_at"])
        report.failed += 1
        report.errors[str(exc)] += 1
        if exc.server_down:
            report.sender_down = str(exc)

    def invalid(exc: InvalidAddressError) -> UpdateOne:
        store.set_attempt(key, {"status": "failed", "reason": INVALID_ADDRESS, "detail": str(exc)})
        report.invalid_address += 1
        return rejected(INVALID_ADDRESS)

    try:  # nothing has left yet: whatever fails here was not sent
        prepared = session.prepare(outgoing)
    except InvalidAddressError as exc:
        return invalid(exc)
    except TransientEmailError as exc:
        released(exc)
        return None
    pacer.wait()
    store.set_attempt(key, {"send_started_at": as_of, "run_id": run_id})
    checkpoint("after_send_started")
    try:
        message_id = session.deliver(prepared)
    except UnknownEmailOutcome as exc:
        # It may have reached the broker: counted as sent, never sent again; the run stops.
        store.set_attempt(key, {"status": "unknown", "resolved_at": as_of, "detail": str(exc)})
        report.unknown += 1
        report.errors[str(exc)] += 1
        report.sender_down = str(exc)
        return counted("unknown")
    except InvalidAddressError as exc:
        return invalid(exc)
    except PermanentEmailError as exc:
        store.set_attempt(
            key, {"status": "failed", "reason": RECIPIENT_REJECTED, "detail": str(exc)}
        )
        return rejected(RECIPIENT_REJECTED)
    except TransientEmailError as exc:
        released(exc)
        return None
    checkpoint("after_send")
    store.set_attempt(key, {"status": "sent", "sent_at": as_of, "message_id": message_id})
    report.sent += 1
    return counted("sent")
