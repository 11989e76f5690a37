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

Scopes are the enrollment topic's partitions (`partition_scope`): an application's documents
belong to the partition of its key, so writers of disjoint partitions (parallel ingestion
runs, backfill shards) never wait for each other, and a writer of everything (a rebuild, an
unsharded backfill) takes every partition, in order.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from pymongo import DESCENDING
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError, PyMongoError

from enrollment_pipeline.lib.mongo.collections import WRITER_LEASES, Document

_SCOPE_PREFIX = "read_model:p"


def partition_scope(partition: int) -> str:
    """The lease of the read model's documents whose application key is on `partition`."""
    return f"{_SCOPE_PREFIX}{partition}"


def partition_scopes(partitions: Iterable[int]) -> list[str]:
    return [partition_scope(p) for p in sorted(set(partitions))]


def all_partition_scopes(count: int) -> list[str]:
    """Every partition's lease: what a writer of the whole read model takes."""
    return partition_scopes(range(count))


def scope_partition(scope: str) -> int | None:
    """The partition a scope leases (None for a scope of another kind)."""
    if not scope.startswith(_SCOPE_PREFIX):
        return None
    try:
        return int(scope[len(_SCOPE_PREFIX) :])
    except ValueError:
        return None


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
    scopes: Sequence[str]
    owner: str = field(default_factory=default_owner)
    description: str = ""
    run_id: str | None = None  # the Dagster run holding it, if any (the sensor looks for it)
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
                            "run_id": self.run_id,
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
        if not held:
            return
        try:
            self.collection.update_many(
                {"_id": {"$in": [f"{h.scope}:{h.epoch}" for h in held]}, "owner": self.owner},
                {"$set": {"released_at": self.clock()}},
            )
        except PyMongoError:
            pass  # the server is away: the leases expire after their ttl instead

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
        due = [h for h in held if h.expires_at - now < self.policy.ttl * (2 / 3)]
        if due:
            self._renew(due, now)
        # One query for every scope held: a newer epoch of any means it was taken over.
        newer = self.collection.find_one(
            {"$or": [{"scope": h.scope, "epoch": {"$gt": h.epoch}} for h in held]},
            {"scope": 1, "owner": 1},
        )
        if newer is not None:
            self.lost = (
                f"the {newer['scope']} lease was taken over by {newer['owner']} while this "
                "writer paused past its expiry; stopping before any further write (the rerun "
                "converges)"
            )
            raise LeaseLostError(self.lost)
        self._checked_at = time.monotonic()

    def _renew(self, held: list[_Held], now: datetime) -> None:
        expires_at = now + self.policy.ttl
        self.collection.update_many(
            {"_id": {"$in": [f"{h.scope}:{h.epoch}" for h in held]}, "owner": self.owner},
            {"$set": {"expires_at": expires_at}},
        )
        with self._lock:
            for h in held:
                h.expires_at = expires_at

    def _beat(self) -> None:
        interval = self.policy.ttl.total_seconds() / 3
        while not self._stop.wait(interval):
            try:
                now = self.clock()
                with self._lock:
                    held = list(self._held)
                if held:
                    self._renew(held, now)
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


def live_holders(
    db: Database[Document], scopes: Iterable[str], *, now: datetime | None = None
) -> dict[str, Document]:
    """The current epoch of each of `scopes` that someone holds now (not released, not
    expired), one query."""
    wanted = sorted(set(scopes))
    now = now or datetime.now(UTC)
    current: dict[str, Document] = {}
    for doc in db[WRITER_LEASES].find({"scope": {"$in": wanted}}):
        best = current.get(doc["scope"])
        if best is None or doc["epoch"] > best["epoch"]:
            current[doc["scope"]] = doc
    return {
        scope: doc
        for scope, doc in current.items()
        if doc.get("released_at") is None and _aware(doc["expires_at"]) > now
    }


def runs_that_died(
    db: Database[Document], run_ids: Iterable[str], *, now: datetime | None = None
) -> set[str]:
    """Of `run_ids`, the runs holding a lease that expired without being let go: their process
    stopped renewing (killed, or its machine lost) in the middle of their writes."""
    ids = sorted(set(run_ids))
    if not ids:
        return set()
    now = now or datetime.now(UTC)
    latest: dict[tuple[str, str], Document] = {}
    for doc in db[WRITER_LEASES].find({"run_id": {"$in": ids}}):
        key = (doc["run_id"], doc["scope"])
        if key not in latest or doc["epoch"] > latest[key]["epoch"]:
            latest[key] = doc
    return {
        run_id
        for (run_id, _), doc in latest.items()
        if doc.get("released_at") is None and _aware(doc["expires_at"]) <= now
    }


def describe_holder(doc: Document) -> str:
    what = f" ({doc['description']})" if doc.get("description") else ""
    return f"{doc['owner']}{what} since {_aware(doc['acquired_at']):%H:%M:%S} UTC"


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
