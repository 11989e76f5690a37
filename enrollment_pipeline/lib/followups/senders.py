"""The senders of a follow-up run: up to `concurrency` email sessions on their own threads,
paced together, and the group commit of their attempts' records (see `run.py` for the order
of an attempt and why each sender has at most one attempt started and unrecorded)."""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from enrollment_pipeline.domain.followup_rules import (
    INVALID_ADDRESS,
    RECIPIENT_REJECTED,
    Decision,
    FollowupPolicy,
    followup_email,
)
from enrollment_pipeline.lib.clients.email import (
    EmailSender,
    EmailSession,
    InvalidAddressError,
    OutgoingEmail,
    PermanentEmailError,
    TransientEmailError,
    UnknownEmailOutcome,
)
from enrollment_pipeline.lib.mongo.followup_store import (
    FollowupStore,
    send_started_op,
    set_attempt_op,
)
from enrollment_pipeline.lib.mongo.writes import WriteOp


class Pacer:
    """At most `per_second` sends a second (SES quotas), spaced evenly, whatever the number
    of threads that wait on it: each takes the next free slot."""

    def __init__(
        self,
        per_second: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.gap, self.clock, self.sleep = 1.0 / per_second, clock, sleep
        self.next_at = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = self.clock()
            at = max(now, self.next_at)
            self.next_at = at + self.gap
        if at > now:
            self.sleep(at - now)


@dataclass(frozen=True)
class Job:
    """One attempt to send: the follow-up, what the email shows, and its key."""

    followup: dict[str, Any]
    application: dict[str, Any] | None
    attempt: int
    key: str

    @classmethod
    def of(
        cls, followup: dict[str, Any], application: dict[str, Any] | None, decision: Decision
    ) -> Job:
        assert decision.attempt is not None  # a SEND decision always carries its attempt number
        return cls(followup, application, decision.attempt, decision.attempt_key(followup))


class Kind(Enum):
    SENT = "sent"
    UNKNOWN = "unknown"  # may have gone out: counted, never re-sent; stops the run
    INVALID = "invalid"  # failed, invalid_address: nothing left
    REJECTED = "rejected"  # failed, recipient_rejected
    RELEASED = "released"  # not sent, the key kept for the next run
    NOT_SENT = "not_sent"  # the run stopped before its send_started_at: claimed, nothing else


@dataclass(frozen=True)
class SendResult:
    job: Job
    kind: Kind
    detail: str | None = None
    message_id: str | None = None
    server_down: bool = False  # a RELEASED one whose server is unusable: the run stops

    @property
    def stops(self) -> bool:
        return self.kind is Kind.UNKNOWN or self.server_down


class _Start:
    """A sender's request to write `send_started_at` of its next message, and the answer."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self._answered = threading.Event()
        self._go = False

    def answer(self, go: bool) -> None:
        self._go = go
        self._answered.set()

    def wait(self) -> bool:
        """True once `send_started_at` is written; False when the run stops before."""
        self._answered.wait()
        return self._go


@dataclass(frozen=True)
class _Done:
    """A sender has no more to send on this page (`error`: what it raised)."""

    error: BaseException | None


_Item = SendResult | _Start | _Done


class _Channel:
    """From the senders to the run's thread, in order; closed when the page ends."""

    def __init__(self) -> None:
        self._ready = threading.Condition()
        self._items: list[_Item] = []
        self._closed = False

    def put(self, item: _Item) -> bool:
        with self._ready:
            if self._closed:
                return False
            self._items.append(item)
            self._ready.notify()
            return True

    def take(self) -> list[_Item]:
        """Everything put since the last take (waits for one at least)."""
        with self._ready:
            while not self._items:
                self._ready.wait()
            items, self._items = self._items, []
            return items

    def close(self) -> list[_Item]:
        with self._ready:
            self._closed = True
            items, self._items = self._items, []
            return items


class Mailer:
    """The senders of one run: up to `concurrency` sessions, each used by one thread at a
    time, paced together; and the group commit of their attempt records."""

    def __init__(
        self,
        store: FollowupStore,
        sender: EmailSender,
        *,
        concurrency: int,
        pacer: Pacer,
        as_of: datetime,
        policy: FollowupPolicy,
        run_id: str | None,
        checkpoint: Callable[[str], None],
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.store, self.sender, self.concurrency = store, sender, concurrency
        self.pacer, self.as_of, self.policy = pacer, as_of, policy
        self.run_id, self.checkpoint = run_id, checkpoint
        # This run's claims: a key claimed with another token was claimed before.
        self.token = uuid.uuid4().hex
        self.sessions: list[EmailSession] = []
        self.stopping = threading.Event()  # a server-level failure, an unknown outcome, a crash
        self.warm = threading.Event()  # the run's first message reached the server
        self._stack = ExitStack()
        self._pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> Mailer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopping.set()
        self.warm.set()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._stack.close()  # each session ends (SMTP QUIT)

    def session(self, index: int) -> EmailSession:
        """Session `index`, opened on first use (an SMTP session connects on its first
        message)."""
        while len(self.sessions) <= index:
            self.sessions.append(self._stack.enter_context(self.sender.session()))
        return self.sessions[index]

    def send(self, jobs: list[Job]) -> list[SendResult]:
        """Send `jobs`, up to `concurrency` at once; returns the result of each job a sender
        took (those the run stopped before stay claimed, for the next run). Raises what a
        sender raised that nobody foresaw, or what the store raised, once the other senders
        have finished the message they had in flight."""
        if not jobs or self.stopping.is_set():
            return []
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="email")
        todo = deque(jobs)
        channel = _Channel()
        workers = min(self.concurrency, len(jobs))
        futures: list[Future[None]] = [
            self._pool.submit(self._work, self.session(index), index == 0, todo, channel)
            for index in range(workers)
        ]
        results: list[SendResult] = []
        try:
            error = self._commit(channel, workers, results)
        except BaseException:
            # Interrupted (the run is being stopped): no message starts from here on.
            self.stopping.set()
            self.warm.set()
            for item in channel.close():
                if isinstance(item, _Start):
                    item.answer(False)
            raise
        finally:
            for future in futures:
                future.result()  # _work raises nothing: it reports through the channel
        if error is not None:
            raise error
        return results

    def _commit(
        self, channel: _Channel, workers: int, results: list[SendResult]
    ) -> BaseException | None:
        """The run's side: write the senders' attempt records, many in one command, until
        every sender is done. Returns the first error a sender or the store raised."""
        crash: BaseException | None = None
        store_error: BaseException | None = None
        active = workers
        while active:
            ops: list[WriteOp] = []
            starting: list[_Start] = []
            for item in channel.take():
                if isinstance(item, SendResult):
                    results.append(item)
                    op = self._record(item)
                    if op is not None:
                        ops.append(op)
                elif isinstance(item, _Start):
                    if self.stopping.is_set():
                        item.answer(False)
                    else:
                        starting.append(item)
                else:
                    active -= 1
                    if item.error is not None and crash is None:
                        crash = item.error
            if store_error is not None:  # write nothing more; let the senders finish
                for start in starting:
                    start.answer(False)
                continue
            if starting:  # after the results: a sender's result goes before its next start
                keys = [start.job.key for start in starting]
                ops.append(send_started_op(keys, as_of=self.as_of, run_id=self.run_id))
            try:
                if ops:
                    self.store.write_attempts(ops)
            except BaseException as exc:  # not known to be written: those may not start
                store_error = exc
                self.stopping.set()
                for start in starting:
                    start.answer(False)
                continue
            for start in starting:
                start.answer(True)
        return crash or store_error

    def _record(self, result: SendResult) -> WriteOp | None:
        """The attempt's record of a result (None: nothing to write)."""
        key, as_of = result.job.key, self.as_of
        if result.kind is Kind.SENT:
            return set_attempt_op(
                key, {"status": "sent", "sent_at": as_of, "message_id": result.message_id}
            )
        if result.kind is Kind.UNKNOWN:
            return set_attempt_op(
                key, {"status": "unknown", "resolved_at": as_of, "detail": result.detail}
            )
        if result.kind is Kind.INVALID:
            return set_attempt_op(
                key, {"status": "failed", "reason": INVALID_ADDRESS, "detail": result.detail}
            )
        if result.kind is Kind.REJECTED:
            return set_attempt_op(
                key, {"status": "failed", "reason": RECIPIENT_REJECTED, "detail": result.detail}
            )
        if result.kind is Kind.RELEASED:
            # Not sent: release the key (no send_started_at), so the next run sends under it.
            return set_attempt_op(
                key, {"status": "retry", "detail": result.detail}, unset=["send_started_at"]
            )
        return None

    # -- a sender's thread -------------------------------------------------------------------

    def _work(
        self, session: EmailSession, first: bool, todo: deque[Job], channel: _Channel
    ) -> None:
        error: BaseException | None = None
        try:
            if not first:
                self.warm.wait()
            while not self.stopping.is_set():
                try:
                    job = todo.popleft()
                except IndexError:
                    break
                result = self._one(session, job, channel)
                if result.stops:
                    self.stopping.set()  # before anyone else asks to start
                if result.kind is not Kind.INVALID:
                    self.warm.set()
                channel.put(result)
        except BaseException as exc:  # a crash: reported, the others stop
            self.stopping.set()
            error = exc
        finally:
            if first:
                self.warm.set()
            channel.put(_Done(error))

    def _one(self, session: EmailSession, job: Job, channel: _Channel) -> SendResult:
        """One attempt: prepare → send_started_at (by the run's thread) → deliver."""
        self.checkpoint("after_claim")
        email = followup_email(
            job.followup,
            job.application,
            attempt_in_cycle=job.followup.get("retry_count", 0) + 1,
            max_emails=self.policy.max_emails,
        )
        outgoing = OutgoingEmail(
            email.to, email.subject, email.text, html=email.html, to_name=email.to_name
        )
        try:  # nothing has left yet: whatever fails here was not sent
            prepared = session.prepare(outgoing)
        except InvalidAddressError as exc:
            return SendResult(job, Kind.INVALID, str(exc))
        except TransientEmailError as exc:
            return SendResult(job, Kind.RELEASED, str(exc), server_down=exc.server_down)
        self.pacer.wait()
        start = _Start(job)
        if self.stopping.is_set() or not channel.put(start) or not start.wait():
            return SendResult(job, Kind.NOT_SENT)
        self.checkpoint("after_send_started")
        try:
            message_id = session.deliver(prepared)
        except UnknownEmailOutcome as exc:
            # It may have reached the broker: counted as sent, never sent again; the run stops.
            return SendResult(job, Kind.UNKNOWN, str(exc))
        except InvalidAddressError as exc:
            return SendResult(job, Kind.INVALID, str(exc))
        except PermanentEmailError as exc:
            return SendResult(job, Kind.REJECTED, str(exc))
        except TransientEmailError as exc:
            return SendResult(job, Kind.RELEASED, str(exc), server_down=exc.server_down)
        self.checkpoint("after_send")
        return SendResult(job, Kind.SENT, message_id=message_id)
