"""One run of the broker follow-ups at `as_of`, outside Dagster so tests can drive it.

Per due follow-up (Contract 3): expired → PENDING `expired`; `max_emails` sent → PENDING;
quiet hours → wait; else one email under the attempt key, exactly once, in this order:

    claim → prepare → send_started_at → deliver → sent | failed | unknown → outcome

`prepare` builds and checks the message before `send_started_at`: one whose message cannot be
built, or whose address the server cannot take, is `failed` with reason `invalid_address` and
the follow-up PENDING; the run goes on. A rerun finds the claim: `sent` or UNKNOWN is counted
and never re-sent; a claim without `send_started_at` (the run died before sending) is sent
under the same key; one with it but no result becomes UNKNOWN (it may have gone out): counted
as sent, never re-sent. A transient failure releases the claim for the next run and counts
nothing. A server-level failure (unreachable, login or sender refused) releases the claim too
and stops the run; a delivery whose outcome is unknown (the connection lost after the message
went out) is UNKNOWN at once, and stops the run as well.

Without a round trip to the store per email:

- A page's attempts are claimed with one unordered `insert_many` of their keys; the
  duplicates (earlier claims) are read back with one `$in`.
- Up to `concurrency` senders, each with its own session (an SMTP connection, or an SES
  client), prepare and deliver on their own threads, paced together by one `Pacer`. They
  never touch MongoDB.
- The run's own thread writes the attempts' records for all of them at once (a group
  commit): each command holds the results of the sends that ended since the last one and the
  `send_started_at` of the messages about to go out. A sender delivers only once the command
  with its `send_started_at` returned, and its result goes in an earlier command than its next
  `send_started_at` (or the same one, before it). So each sender has at most one attempt with
  `send_started_at` and no result at any moment: a crash leaves at most `concurrency`
  attempts UNKNOWN, never a page.
- The follow-ups' counters and the applications' `broker_followup_status` are written per
  page, in bounded commands, under the writers' lease, as before.

The first email of a run goes alone: the other senders start once it reached the server, so a
refused login or sender costs one message, not `concurrency`. A server-level failure or an
unknown outcome on any sender stops the run: the others finish the message they have in flight
(its `send_started_at` written), record it, and start no other. An exception nobody foresaw
(a crash) stops the run the same way, then is raised, before the page's follow-ups are
written (the rerun counts what the attempts recorded).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
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
    pending_digest,
)
from enrollment_pipeline.lib.clients.email import (
    EmailError,
    EmailSender,
    InvalidAddressError,
    OutgoingEmail,
    check_mailbox,
)
from enrollment_pipeline.lib.followups.senders import Job, Kind, Mailer, Pacer, SendResult
from enrollment_pipeline.lib.mongo.followup_store import (
    FollowupStore,
    failed_outcome,
    pending_outcome,
    sent_outcome,
    set_attempt_op,
)
from enrollment_pipeline.lib.mongo.lease import WriterLease, holding
from enrollment_pipeline.lib.mongo.writes import WriteOp

# Steps a test may stop a run at, to prove an attempt is never sent twice. They run on the
# sender's thread, once per attempt.
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


def send_followups(
    store: FollowupStore,
    sender: EmailSender,
    *,
    as_of: datetime,
    policy: FollowupPolicy,
    max_per_second: float = 10.0,
    concurrency: int = 1,
    lease: WriterLease | None,
    ops_email: str | None = None,
    run_id: str | None = None,
    checkpoint: Callable[[str], None] = no_checkpoint,
) -> FollowupReport:
    """Email the follow-ups due at `as_of`, page by page, with up to `concurrency` sends in
    flight; each page's outcomes are written under the writers' `lease`, so ingestion cannot
    interleave with them (Contract 3's field ownership: the fold never undoes a PENDING it did
    not see)."""
    report = FollowupReport()
    mailer = Mailer(
        store,
        sender,
        concurrency=concurrency,
        pacer=Pacer(max_per_second),
        as_of=as_of,
        policy=policy,
        run_id=run_id,
        checkpoint=checkpoint,
    )
    with mailer, _PageWriter(store, lease) as pages:
        for page in store.due_pages(as_of):
            applications = store.applications([f["_id"] for f in page])
            outcomes = _PageOutcomes(report, as_of=as_of, policy=policy)
            sends: list[Job] = []
            for followup in page:
                report.due += 1
                decision = decide(followup, as_of=as_of, policy=policy)
                if decision.action is Action.WAIT:
                    report.waiting += 1
                    continue
                if decision.action in (Action.EXPIRE, Action.ESCALATE):
                    assert decision.reason is not None
                    outcomes.pending(followup, decision)
                    continue
                if report.sender_down:
                    continue  # counted as due; the next run tries again
                sends.append(Job.of(followup, applications.get(followup["_id"]), decision))
            if sends:
                jobs = _claimed(store, sends, outcomes, mailer.token, as_of=as_of, run_id=run_id)
                for result in mailer.send(jobs):
                    outcomes.record(result)
            pages.write(outcomes)
        pages.wait()
        if ops_email and report.newly_pending and not report.sender_down:
            subject, text = pending_digest(report.newly_pending, as_of=as_of)
            try:
                mailer.session(0)(OutgoingEmail(ops_email, subject, text))
            except EmailError as exc:
                report.errors[f"ops digest: {exc}"] += 1
    return report


class _PageWriter:
    """Writes each page's follow-up outcomes under the writers' lease, on a thread of its own,
    while the next page is claimed and sent; one page at a time, in order."""

    def __init__(self, store: FollowupStore, lease: WriterLease | None) -> None:
        self.store, self.lease = store, lease
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="followup-outcomes")
        self._last: Future[None] | None = None

    def __enter__(self) -> _PageWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._pool.shutdown(wait=True)

    def write(self, outcomes: _PageOutcomes) -> None:
        """After the previous page's (raising what it raised), start this page's writes."""
        self.wait()
        if outcomes.updates or outcomes.pending_apps:
            self._last = self._pool.submit(self._apply, outcomes.updates, outcomes.pending_apps)

    def wait(self) -> None:
        last, self._last = self._last, None
        if last is not None:
            last.result()

    def _apply(self, updates: list[UpdateOne], pending_apps: list[str]) -> None:
        with holding(self.lease):
            self.store.guarded(self.lease).apply(updates, pending_apps)


class _PageOutcomes:
    """A page's follow-up outcomes and newly PENDING applications, and the report's counts."""

    def __init__(self, report: FollowupReport, *, as_of: datetime, policy: FollowupPolicy) -> None:
        self.report, self.as_of, self.policy = report, as_of, policy
        self.updates: list[UpdateOne] = []
        self.pending_apps: list[str] = []

    def pending(self, followup: dict[str, Any], decision: Decision) -> None:
        """EXPIRE or ESCALATE: PENDING without an email."""
        assert decision.reason is not None
        self.updates.append(pending_outcome(followup, reason=decision.reason, as_of=self.as_of))
        self.pending_apps.append(followup["_id"])
        self.report.newly_pending.append((followup["_id"], decision.reason))
        if decision.action is Action.EXPIRE:
            self.report.expired += 1
        else:
            self.report.escalated += 1

    def counted(self, job: Job, status: str) -> None:
        """An email counted as sent (`sent`, or `unknown`: it may have gone out)."""
        self.report.sent += status == "sent"
        self.report.unknown += status == "unknown"
        self.updates.append(
            sent_outcome(
                job.followup,
                attempt=job.attempt,
                key=job.key,
                as_of=self.as_of,
                next_due_at=self.as_of + self.policy.interval,
                status=status,
            )
        )

    def rejected(self, job: Job, reason: str) -> None:
        """A permanent failure: the attempt is used up and the follow-up goes PENDING."""
        self.report.escalated += 1
        self.report.invalid_address += reason == INVALID_ADDRESS
        self.report.newly_pending.append((job.followup["_id"], reason))
        self.pending_apps.append(job.followup["_id"])
        self.updates.append(
            failed_outcome(
                job.followup, attempt=job.attempt, key=job.key, reason=reason, as_of=self.as_of
            )
        )

    def record(self, result: SendResult) -> None:
        """What a send came to, on the follow-up and in the report."""
        if result.kind is Kind.SENT:
            self.counted(result.job, "sent")
        elif result.kind is Kind.UNKNOWN:
            self.report.errors[result.detail or "unknown outcome"] += 1
            self.report.sender_down = self.report.sender_down or result.detail
            self.counted(result.job, "unknown")
        elif result.kind is Kind.INVALID:
            self.rejected(result.job, INVALID_ADDRESS)
        elif result.kind is Kind.REJECTED:
            self.rejected(result.job, RECIPIENT_REJECTED)
        elif result.kind is Kind.RELEASED:
            self.report.failed += 1
            self.report.errors[result.detail or "not sent"] += 1
            if result.server_down:
                self.report.sender_down = self.report.sender_down or result.detail


def _buildable(followup: dict[str, Any]) -> bool:
    """Whether a message to this follow-up's address can be built at all."""
    try:
        check_mailbox(str(followup.get("broker_email") or ""))
    except InvalidAddressError:
        return False
    return True


def _claimed(
    store: FollowupStore,
    jobs: list[Job],
    outcomes: _PageOutcomes,
    token: str,
    *,
    as_of: datetime,
    run_id: str | None,
) -> list[Job]:
    """Claim the page's attempts at once; settle those claimed before (a rerun) and return the
    ones to send now: claimed by this run, or claimed before and never sent."""
    earlier = store.claim_many(
        [
            {
                "_id": job.key,
                "app_id": job.followup["_id"],
                "broker_id": job.followup["broker_id"],
                "attempt": job.attempt,
                "claimed_at": as_of,
                "run_id": run_id,
            }
            for job in jobs
        ],
        token=token,
    )
    to_send: list[Job] = []
    settled: list[WriteOp] = []
    for job in jobs:
        before = earlier.get(job.key)
        if before is None:
            to_send.append(job)
        elif before["status"] in ("sent", "unknown"):
            outcomes.counted(job, before["status"])
        elif before["status"] == "failed":
            outcomes.rejected(job, before.get("reason") or RECIPIENT_REJECTED)
        elif before.get("send_started_at") is not None:
            if not _buildable(job.followup):
                # Left by an earlier version, whose run died building this very message
                # (after send_started_at): it cannot have gone out, so it is no UNKNOWN.
                settled.append(
                    set_attempt_op(
                        job.key,
                        {"status": "failed", "reason": INVALID_ADDRESS, "resolved_at": as_of},
                    )
                )
                outcomes.rejected(job, INVALID_ADDRESS)
            else:
                settled.append(set_attempt_op(job.key, {"status": "unknown", "resolved_at": as_of}))
                outcomes.counted(job, "unknown")
        else:
            # Claimed, never sent (a crash before the send, or a transient failure): send now.
            to_send.append(job)
    if settled:
        store.write_attempts(settled)
    return to_send
