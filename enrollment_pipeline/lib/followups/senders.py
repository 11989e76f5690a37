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
    PreparedEmail,
    TransientEmailError,
    UnknownEmailOutcome,
)
from enrollment_pipeline.lib.mongo.followup_store import (
    FollowupStore,
    send_started_op,
    set_attempt_op,
)
from enrollment_pipeline.lib.mongo.writes import WriteOp

# Writers of the attempts' records at once: while one command runs, the next collects what
# the senders hand over (on FerretDB each updated document is its own PostgreSQL transaction,
# and concurrent ones share their WAL flushes).
WRITERS = 2


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


class _Request:
    """What a sender hands the writers: its results not handed yet, and the message it is
    about to send (None: results only, nobody waits). Written in one command, the results
    before the `send_started_at`, so a sender's last result is never recorded after its next
    start."""

    def __init__(self, results: list[SendResult], start: Job | None) -> None:
        self.results, self.start = results, start
        self._answered = threading.Event()
        self._go = False

    def answer(self, go: bool) -> None:
        self._go = go
        self._answered.set()

    def wait(self) -> bool:
        """True once `send_started_at` is written; False when the run stops before."""
        self._answered.wait()
        return self._go


class _Channel:
    """From the senders to the writers, in order. `take` returns None once every sender is
    done and all was taken, or once the channel is closed."""

    def __init__(self, senders: int) -> None:
        self._ready = threading.Condition()
        self._requests: list[_Request] = []
        self._senders = senders
        self._closed = False
        self.errors: list[BaseException] = []  # what senders raised that nobody foresaw

    def put(self, request: _Request) -> bool:
        with self._ready:
            if self._closed:
                return False
            self._requests.append(request)
            self._ready.notify()
            return True

    def done(self, error: BaseException | None) -> None:
        with self._ready:
            self._senders -= 1
            if error is not None:
                self.errors.append(error)
            self._ready.notify_all()

    def take(self) -> list[_Request] | None:
        """Everything put since the last take (waits for one at least)."""
        with self._ready:
            while not self._requests and self._senders > 0 and not self._closed:
                self._ready.wait()
            if not self._requests:
                return None
            requests, self._requests = self._requests, []
            return requests

    def close(self) -> list[_Request]:
        with self._ready:
            self._closed = True
            requests, self._requests = self._requests, []
            self._ready.notify_all()
            return requests


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
        self._lock = threading.Lock()
        self._store_error: BaseException | None = None

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
            self._pool = ThreadPoolExecutor(
                self.concurrency + WRITERS - 1, thread_name_prefix="email"
            )
        todo = deque(jobs)
        workers = min(self.concurrency, len(jobs))
        channel = _Channel(workers)
        results: list[SendResult] = []
        futures: list[Future[None]] = [
            self._pool.submit(self._work, self.session(index), index == 0, todo, channel)
            for index in range(workers)
        ]
        futures += [self._pool.submit(self._write, channel, results) for _ in range(WRITERS - 1)]
        try:
            self._write(channel, results)
        except BaseException:
            # Interrupted (the run is being stopped): no message starts from here on.
            self.stopping.set()
            self.warm.set()
            for request in channel.close():
                request.answer(False)
            raise
        finally:
            for future in futures:
                future.result()
        error = channel.errors[0] if channel.errors else self._store_error
        if error is not None:
            raise error
        return results

    def _write(self, channel: _Channel, results: list[SendResult]) -> None:
        """A writer: the senders' attempt records, all that waits in one command, until every
        sender is done. A store that fails stops the run: nothing more is written, no message
        starts."""
        while (requests := channel.take()) is not None:
            ops: list[WriteOp] = []
            starting: list[_Request] = []
            for request in requests:
                with self._lock:
                    results.extend(request.results)
                ops.extend(op for op in map(self._record, request.results) if op is not None)
                if request.start is None:
                    continue
                if self.stopping.is_set() or self._store_error is not None:
                    request.answer(False)
                else:
                    starting.append(request)
            if starting:  # after the results: a sender's result goes before its next start
                keys = [request.start.key for request in starting if request.start is not None]
                ops.append(send_started_op(keys, as_of=self.as_of, run_id=self.run_id))
            try:
                if ops and self._store_error is None:
                    self.store.write_attempts(ops)
                go = self._store_error is None
            except BaseException as exc:  # not known to be written: those may not start
                with self._lock:
                    self._store_error = self._store_error or exc
                self.stopping.set()
                go = False
            for request in starting:
                request.answer(go)

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
        """Take jobs until none is left or the run stops; hand each result with the next
        message's start (or alone, at the end)."""
        error: BaseException | None = None
        pending: list[SendResult] = []
        try:
            if not first:
                self.warm.wait()  # the run's first message goes alone
            while not self.stopping.is_set():
                try:
                    job = todo.popleft()
                except IndexError:
                    break
                self.checkpoint("after_claim")
                prepared = self._prepare(session, job)
                if isinstance(prepared, SendResult):  # not sent: nothing left
                    pending.append(prepared)
                    if prepared.stops:
                        self.stopping.set()  # before anyone else asks to start
                    if prepared.kind is not Kind.INVALID:
                        self.warm.set()
                    continue
                self.pacer.wait()
                request, pending = _Request(pending, job), []
                if self.stopping.is_set() or not channel.put(request) or not request.wait():
                    break  # not started: it stays claimed, for the next run
                self.checkpoint("after_send_started")
                result = self._deliver(session, job, prepared)
                if result.stops:
                    self.stopping.set()
                self.warm.set()
                self.checkpoint("after_send")
                pending.append(result)
        except BaseException as exc:  # a crash: reported, the others stop
            self.stopping.set()
            error = exc
        finally:
            if pending:
                channel.put(_Request(pending, None))
            if first:
                self.warm.set()
            channel.done(error)

    def _prepare(self, session: EmailSession, job: Job) -> PreparedEmail | SendResult:
        """The message, built and checked; or why it cannot go (nothing has left)."""
        email = followup_email(
            job.followup,
            job.application,
            attempt_in_cycle=job.followup.get("retry_count", 0) + 1,
            max_emails=self.policy.max_emails,
        )
        outgoing = OutgoingEmail(
            email.to, email.subject, email.text, html=email.html, to_name=email.to_name
        )
        try:
            return session.prepare(outgoing)
        except InvalidAddressError as exc:
            return SendResult(job, Kind.INVALID, str(exc))
        except TransientEmailError as exc:
            return SendResult(job, Kind.RELEASED, str(exc), server_down=exc.server_down)

    def _deliver(self, session: EmailSession, job: Job, prepared: PreparedEmail) -> SendResult:
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
        return SendResult(job, Kind.SENT, message_id=message_id)
