"""The writers' lease: one writer of the read model at a time, across processes and machines.

Dagster's pool of one holds only for runs its queue launches; a CLI backfill (`dagster asset
materialize`), `dagster job execute`, `dead-letters redrive` or `offsets reset` writes beside
it. Every writer of the read model takes this lease first and holds it for its whole
read-fold-write, so a second writer waits (or refuses, naming the holder) instead of
overwriting a fold it never saw.

It needs nothing FerretDB v1 lacks. Every take-over is an `insert_one` of the next epoch's
`_id` (`{scope}:{epoch}`) into `writer_leases`: a unique `_id` is atomic on MongoDB and
FerretDB alike, so of two writers taking the same epoch exactly one wins. The current epoch of a
scope is its highest; the lease is free when that document is released or past its expiry.

- The holder renews its own epoch's `expires_at` from a heartbeat thread, and before each
  write command (`guard`, at most once per `check_interval`) checks that the current epoch is
  still its own: a holder that paused past its expiry (SIGSTOP, a long GC, a lost network)
  finds a newer epoch and stops with `LeaseLostError` before writing anything more.
- A writer that takes over an expired (not released) epoch waits `grace` before its first
  read, so whatever the old holder started before its last check (at most `check_interval`
  old, each command bounded by MONGO_TIMEOUT_MS) has ended first.
- A dead holder's lease expires after `ttl`; a released one is free at once.

Scopes are names: one for the whole read model today, one per Kafka partition when
ingestion runs over disjoint partitions in parallel.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from pymongo import DESCENDING
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError, PyMongoError

from enrollment_pipeline.lib.mongo.collections import WRITER_LEASES, Document

READ_MODEL_SCOPE = "read_model"


class LeaseHeldError(RuntimeError):
    """Another writer holds the lease and did not let go within the wait."""


class LeaseLostError(RuntimeError):
    """This writer's lease was taken over (it paused past its expiry): it must not write."""


@dataclass(frozen=True)
class LeasePolicy:
    """How long a lease lives without renewal, how long a writer waits for one, and how long
    a writer taking over an expired lease waits before it starts (WRITER_LEASE_*)."""

    ttl: timedelta = timedelta(seconds=60)
    wait: timedelta = timedelta(seconds=600)
    grace: timedelta = timedelta(seconds=35)
    poll: timedelta = timedelta(seconds=1)
    check_interval: timedelta = timedelta(seconds=1)

    @classmethod
    def from_settings(cls, settings: _LeaseSettings) -> LeasePolicy:
        return cls(
            ttl=timedelta(seconds=settings.writer_lease_ttl_seconds),
            wait=timedelta(seconds=settings.writer_lease_wait_seconds),
            grace=timedelta(seconds=settings.writer_lease_grace_seconds),
        )


class _LeaseSettings(Protocol):
    """WRITER_LEASE_*: `MongoSettings`, or the settings resource."""

    @property
    def writer_lease_ttl_seconds(self) -> float: ...
    @property
    def writer_lease_wait_seconds(self) -> float: ...
    @property
    def writer_lease_grace_seconds(self) -> float: ...


def default_owner() -> str:
    """Who holds a lease, as an operator reads it: host, process and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class _Held:
    scope: str
    epoch: int
    expires_at: datetime


@dataclass
class WriterLease:
    """A lease over some scopes, taken in name order (two writers never deadlock)."""

    db: Database[Document]
    scopes: Sequence[str] = (READ_MODEL_SCOPE,)
    owner: str = field(default_factory=default_owner)
    description: str = ""
    policy: LeasePolicy = field(default_factory=LeasePolicy)
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        self._held: list[_Held] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._checked_at = 0.0  # time.monotonic() of the last check that read the lease
        self.lost: str | None = None

    @property
    def collection(self) -> Any:
        return self.db[WRITER_LEASES]

    # -- taking and letting go -----------------------------------------------------------------

    def acquire(self) -> None:
        """Take every scope, waiting up to `policy.wait` for a holder to let go or expire."""
        deadline = time.monotonic() + self.policy.wait.total_seconds()
        self._stop = threading.Event()
        self.lost = None
        took_over = False
        try:
            for scope in sorted(set(self.scopes)):
                took_over |= self._take(scope, deadline)
        except BaseException:
            self.release()
            raise
        if took_over:
            # The last holder expired without letting go: a write command it started just
            # before its last check may still be running; let it end before we read.
            self.sleep(self.policy.grace.total_seconds())
            self.check()
        self._heartbeat = threading.Thread(target=self._beat, name="writer-lease", daemon=True)
        self._heartbeat.start()

    def _take(self, scope: str, deadline: float) -> bool:
        """Insert the next epoch of `scope` once it is free; True if it took over an expired
        epoch rather than a released one."""
        while True:
            current = self._current(scope)
            now = self.clock()
            if (
                current is None
                or current.get("released_at") is not None
                or (_aware(current["expires_at"]) <= now)
            ):
                epoch = (current["epoch"] + 1) if current else 1
                expired = current is not None and current.get("released_at") is None
                try:
                    self.collection.insert_one(
                        {
                            "_id": f"{scope}:{epoch}",
                            "scope": scope,
                            "epoch": epoch,
                            "owner": self.owner,
                            "description": self.description,
                            "acquired_at": now,
                            "expires_at": now + self.policy.ttl,
                            "released_at": None,
                            "took_over_from": current["owner"] if expired and current else None,
                        }
                    )
                except DuplicateKeyError:
                    continue  # another writer took this epoch first: look again
                with self._lock:
                    self._held.append(_Held(scope, epoch, now + self.policy.ttl))
                self._forget_old(scope, epoch)
                return expired
            if time.monotonic() >= deadline:
                raise LeaseHeldError(
                    f"the {scope} lease is held by {current['owner']}"
                    + (f" ({current['description']})" if current.get("description") else "")
                    + f" since {_aware(current['acquired_at']):%Y-%m-%d %H:%M:%S} UTC; waited "
                    f"{self.policy.wait.total_seconds():.0f} s (WRITER_LEASE_WAIT_SECONDS). "
                    "Try again when it ends; a holder that died lets go after "
                    f"{self.policy.ttl.total_seconds():.0f} s (WRITER_LEASE_TTL_SECONDS)"
                )
            self.sleep(self.policy.poll.total_seconds())

    def _current(self, scope: str) -> Document | None:
        found: Document | None = self.collection.find_one(
            {"scope": scope}, sort=[("epoch", DESCENDING)]
        )
        return found

    def _forget_old(self, scope: str, epoch: int) -> None:
        """Keep the collection small (every check reads it): epochs long gone are deleted."""
        if epoch % 20 == 0:
            self.collection.delete_many({"scope": scope, "epoch": {"$lt": epoch - 10}})

    def release(self) -> None:
        """Let go of every scope held (a crash instead lets them expire)."""
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=5)
            self._heartbeat = None
        with self._lock:
            held, self._held = self._held, []
        now = self.clock()
        for h in held:
            try:
                self.collection.update_one(
                    {"_id": f"{h.scope}:{h.epoch}", "owner": self.owner},
                    {"$set": {"released_at": now}},
                )
            except PyMongoError:
                pass  # the server is away: the lease expires after its ttl instead

    # -- while holding -----------------------------------------------------------------------

    def check(self) -> None:
        """Raise `LeaseLostError` unless every scope's current epoch is still this writer's
        and its expiry is ahead (renewing when a third of the ttl has passed)."""
        if self.lost:
            raise LeaseLostError(self.lost)
        now = self.clock()
        with self._lock:
            held = list(self._held)
        if not held:
            raise LeaseLostError("this writer holds no lease: acquire it before writing")
        fresh = time.monotonic() - self._checked_at < self.policy.check_interval.total_seconds()
        if fresh and all(h.expires_at - now > self.policy.ttl / 2 for h in held):
            return
        for h in held:
            if h.expires_at - now < self.policy.ttl * (2 / 3):
                self._renew(h, now)
            current = self._current(h.scope)
            if current is None or current["epoch"] != h.epoch or current["owner"] != self.owner:
                self.lost = (
                    f"the {h.scope} lease was taken over by "
                    f"{current['owner'] if current else 'nobody'} while this writer paused "
                    "past its expiry; stopping before any further write (the rerun converges)"
                )
                raise LeaseLostError(self.lost)
        self._checked_at = time.monotonic()

    def _renew(self, held: _Held, now: datetime) -> None:
        expires_at = now + self.policy.ttl
        self.collection.update_one(
            {"_id": f"{held.scope}:{held.epoch}", "owner": self.owner},
            {"$set": {"expires_at": expires_at}},
        )
        with self._lock:
            held.expires_at = expires_at

    def _beat(self) -> None:
        interval = self.policy.ttl.total_seconds() / 3
        while not self._stop.wait(interval):
            try:
                now = self.clock()
                with self._lock:
                    held = list(self._held)
                for h in held:
                    self._renew(h, now)
            except Exception:  # a failed renewal shows at the next check, which fails
                continue

    def guard(self) -> None:
        """What the bounded writer calls before each write command."""
        self.check()

    def __enter__(self) -> WriterLease:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def live_holder(
    db: Database[Document], scope: str = READ_MODEL_SCOPE, *, now: datetime | None = None
) -> str | None:
    """Who holds `scope` now (owner and what it does), or None when it is free."""
    current: Document | None = db[WRITER_LEASES].find_one(
        {"scope": scope}, sort=[("epoch", DESCENDING)]
    )
    now = now or datetime.now(UTC)
    if current is None or current.get("released_at") is not None:
        return None
    if _aware(current["expires_at"]) <= now:
        return None
    what = f" ({current['description']})" if current.get("description") else ""
    return f"{current['owner']}{what} since {_aware(current['acquired_at']):%H:%M:%S} UTC"


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@contextmanager
def holding(lease: WriterLease | None) -> Iterator[WriterLease | None]:
    """`with holding(lease):` takes and lets go of it; None holds nothing (tests, tools)."""
    if lease is None:
        yield None
        return
    with lease:
        yield lease
