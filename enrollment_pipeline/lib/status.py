"""`enrollment-pipeline status`: is the pipeline healthy, does something need a person, or
could it not be checked? In the spirit of Kafka Connect's status endpoint.

What it reads: the Dagster instance ($DAGSTER_HOME: sensors and the schedule, each with its
last tick, and the last run of each Contract-6 job), lag per consumer group (Kafka end
offsets against the committed offsets in Mongo), open dead letters by reason, parked and
refused leads, PENDING follow-ups. Each read is one indexed query or a few.

The rule (also in the command's help):

- exit 1, **could not check**: Kafka or MongoDB did not answer, or DAGSTER_HOME is set but
  its instance cannot be opened. What could be read is still reported.
- exit 2, **needs a person**: a consumer group lags more than INGEST_MAX_CONSUMER_LAG; the
  last run of a job failed or was canceled; a sensor is off, its last tick failed, it gave
  up on a range, or it has not ticked for STALE_TICK (is the daemon running?); the schedule
  is on and its last tick failed; a lead was refused by the CRM (it waits for a redrive).
- exit 0 otherwise. Dead letters, parked leads (retried on their own) and PENDING follow-ups
  (brokers to chase: the OPS_EMAIL digest's work) are reported, not counted as problems.

Without DAGSTER_HOME the Dagster part is reported unknown, as a warning that does not change
the exit code: Kafka and MongoDB are still checked.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from enrollment_pipeline.lib.clients.kafka import KafkaClient, KafkaUnavailableError
from enrollment_pipeline.lib.clients.mongo import MongoConnection, MongoUnavailableError
from enrollment_pipeline.lib.mongo.collections import BROKER_FOLLOWUPS, DEAD_LETTERS
from enrollment_pipeline.lib.mongo.lead_store import FAILED, PARKED, LeadDeliveryStore
from enrollment_pipeline.lib.mongo.store import EnrollmentStore
from enrollment_pipeline.lib.operations import OffsetRow, offset_rows

JOBS = (
    "ingest_enrollment_events",
    "send_broker_followups",
    "deliver_leads",
    "backfill_enrollment_history",
    "rebuild_read_model",
)
# name, kind, on unless an operator turned it off (the code's default status)
INSTIGATORS = (
    ("enrollment_events_sensor", "sensor", True),
    ("lead_events_sensor", "sensor", True),
    ("hourly_broker_followups", "schedule", False),
)
# Sensors tick every few seconds: a last tick older than this means no daemon is ticking them.
STALE_TICK = timedelta(minutes=5)
FAILED_RUN_STATUSES = ("FAILURE", "CANCELED")


@dataclass(frozen=True)
class GroupLag:
    """One consumer group on its topic: its partitions and totals."""

    group: str
    topic: str
    rows: tuple[OffsetRow, ...]

    @property
    def lag(self) -> int:
        return sum(row.lag for row in self.rows)

    @property
    def end(self) -> int:
        return sum(row.end for row in self.rows)

    def to_json(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "topic": self.topic,
            "lag": self.lag,
            "end": self.end,
            "partitions": [
                {
                    "partition": row.partition,
                    "committed": row.committed,
                    "kafka_committed": row.kafka_committed,
                    "end": row.end,
                    "lag": row.lag,
                }
                for row in self.rows
            ],
        }


def lag_by_group(rows: Sequence[OffsetRow]) -> list[GroupLag]:
    """Rows grouped by (group, topic), in their order."""
    grouped: dict[tuple[str, str], list[OffsetRow]] = {}
    for row in rows:
        grouped.setdefault((row.group, row.topic), []).append(row)
    return [GroupLag(g, t, tuple(r)) for (g, t), r in grouped.items()]


@dataclass(frozen=True)
class Tick:
    at: datetime
    status: str  # SUCCESS | SKIPPED | FAILURE | STARTED
    message: str | None


@dataclass(frozen=True)
class Instigator:
    name: str
    kind: str  # sensor | schedule
    on: bool
    last_tick: Tick | None

    def to_json(self) -> dict[str, Any]:
        tick = self.last_tick
        return {
            "name": self.name,
            "type": self.kind,
            "on": self.on,
            "last_tick": None
            if tick is None
            else {"at": tick.at, "status": tick.status, "message": tick.message},
        }


@dataclass(frozen=True)
class LastRun:
    job: str
    run_id: str | None
    status: str | None  # None: never ran in this instance
    at: datetime | None  # when it ended (or started, or was created)

    def to_json(self, now: datetime) -> dict[str, Any]:
        return {
            "job": self.job,
            "run_id": self.run_id,
            "status": self.status,
            "at": self.at,
            # A run may end while status reads: never a negative age.
            "age_seconds": None
            if self.at is None
            else max(0, round((now - self.at).total_seconds())),
        }


@dataclass
class Status:
    checked_at: datetime
    max_consumer_lag: int
    dagster_home: str | None = None
    instigators: list[Instigator] | None = None
    last_runs: list[LastRun] | None = None
    lag: list[GroupLag] | None = None
    dead_letters: dict[str, int] | None = None
    leads: dict[str, int] | None = None
    pending_followups: int | None = None
    not_checked: list[str] = field(default_factory=list)  # exit 1
    problems: list[str] = field(default_factory=list)  # exit 2
    warnings: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.not_checked else 2 if self.problems else 0

    @property
    def verdict(self) -> str:
        return ("healthy", "could not check", "needs a person")[self.exit_code]

    def to_json(self) -> dict[str, Any]:
        now = self.checked_at
        return {
            "status": self.verdict,
            "exit_code": self.exit_code,
            "checked_at": now,
            "not_checked": self.not_checked,
            "problems": self.problems,
            "warnings": self.warnings,
            "dagster": {
                "home": self.dagster_home,
                "checked": self.instigators is not None,
                "instigators": None
                if self.instigators is None
                else [i.to_json() for i in self.instigators],
                "last_runs": None
                if self.last_runs is None
                else [r.to_json(now) for r in self.last_runs],
            },
            "lag": None
            if self.lag is None
            else {
                "max_consumer_lag": self.max_consumer_lag,
                "total": sum(g.lag for g in self.lag),
                "groups": [g.to_json() for g in self.lag],
            },
            "dead_letters": None
            if self.dead_letters is None
            else {"open": sum(self.dead_letters.values()), "by_reason": self.dead_letters},
            "leads": self.leads,
            "followups": None
            if self.pending_followups is None
            else {"pending": self.pending_followups},
        }


def check_status(
    *,
    kafka: KafkaClient,
    mongo: MongoConnection,
    enrollment_topic: str,
    lead_topic: str,
    max_consumer_lag: int,
    instance: Callable[[], Any] | None,
    dagster_home: str | None,
    now: datetime | None = None,
) -> Status:
    """Everything `status` reports. `instance` opens the Dagster instance (None: no
    DAGSTER_HOME); a system that does not answer is noted and the rest still checked."""
    status = Status(
        checked_at=now or datetime.now(UTC),
        max_consumer_lag=max_consumer_lag,
        dagster_home=dagster_home,
    )
    if instance is None:
        status.warnings.append(
            "DAGSTER_HOME is not set: sensors, the schedule and runs were not checked "
            "(export $(enrollment-pipeline stack env) sets the demo's)"
        )
    else:
        try:
            with instance() as opened:
                _check_dagster(status, opened)
        except Exception as exc:  # any failure to open or read the instance: not checked
            status.not_checked.append(
                f"the Dagster instance at DAGSTER_HOME={dagster_home}: "
                f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            )
    store: EnrollmentStore | None = None
    try:
        mongo.ping()
        mongo.ensure_indexes()
        store = EnrollmentStore.of(mongo)
        with mongo.explained_errors():
            _check_mongo(status, store)
    except MongoUnavailableError as exc:
        status.not_checked.append(str(exc))
        store = None
    if store is None:
        status.not_checked.append("lag not checked: the committed offsets are in MongoDB")
        return status
    try:
        rows = offset_rows(kafka, store, enrollment_topic=enrollment_topic, lead_topic=lead_topic)
    except KafkaUnavailableError as exc:
        status.not_checked.append(str(exc))
        return status
    status.lag = lag_by_group(rows)
    for group in status.lag:
        if group.lag > max_consumer_lag:
            status.problems.append(
                f"{group.group} lags {group.lag:,} events on {group.topic}, over "
                f"INGEST_MAX_CONSUMER_LAG ({max_consumer_lag:,}): are its sensor and runs "
                "going? (`enrollment-pipeline offsets show`)"
            )
    return status


def _check_mongo(status: Status, store: EnrollmentStore) -> None:
    db = store.db
    reasons = db[DEAD_LETTERS].aggregate(
        [
            {"$match": {"status": "OPEN"}},
            {"$group": {"_id": "$reason", "letters": {"$sum": 1}}},
        ]
    )
    status.dead_letters = dict(
        sorted(Counter({row["_id"]: row["letters"] for row in reasons}).most_common())
    )
    waiting = LeadDeliveryStore(db, store.writer).count_waiting()
    status.leads = {"parked": waiting.get(PARKED, 0), "refused": waiting.get(FAILED, 0)}
    status.pending_followups = db[BROKER_FOLLOWUPS].count_documents({"status": "PENDING"})
    if status.leads["refused"]:
        status.problems.append(
            f"{status.leads['refused']} lead(s) refused by the CRM wait for a person: read why "
            "with `enrollment-pipeline dead-letters list --reason crm_rejected`, fix, then "
            "`enrollment-pipeline dead-letters redrive --leads`"
        )


def _check_dagster(status: Status, instance: Any) -> None:
    now = status.checked_at
    states = list(instance.all_instigator_state())
    status.instigators = []
    for name, kind, default_on in INSTIGATORS:
        found = [s for s in states if s.instigator_name == name]
        ticks = [
            t
            for s in found
            for t in instance.get_ticks(s.instigator_origin_id, s.selector_id, limit=1)
        ]
        tick = max(ticks, key=lambda t: t.timestamp, default=None)
        stored = [s.status.value for s in found]
        if "RUNNING" in stored:
            on = True
        elif "STOPPED" in stored:
            on = False
        else:  # never toggled: the code's default
            on = default_on
        last = None
        if tick is not None:
            message = tick.skip_reason or (tick.error.message.strip() if tick.error else None)
            last = Tick(datetime.fromtimestamp(tick.timestamp, UTC), tick.status.value, message)
        status.instigators.append(Instigator(name, kind, on, last))
        _judge_instigator(status, Instigator(name, kind, on, last), now)
    status.last_runs = []
    import dagster as dg

    for job in JOBS:
        records = instance.get_run_records(dg.RunsFilter(job_name=job), limit=1)
        if not records:
            status.last_runs.append(LastRun(job, None, None, None))
            continue
        record = records[0]
        stamp = record.end_time or record.start_time
        at = datetime.fromtimestamp(stamp, UTC) if stamp else record.create_timestamp
        run = LastRun(job, record.dagster_run.run_id, record.dagster_run.status.value, at)
        status.last_runs.append(run)
        if run.status in FAILED_RUN_STATUSES:
            status.problems.append(
                f"the last {job} run {run.run_id} {run.status.lower()}: read its error in the "
                "UI (Runs) and fix the cause; its sensor requests the range again"
            )


def _judge_instigator(status: Status, item: Instigator, now: datetime) -> None:
    tick = item.last_tick
    if item.kind == "sensor" and not item.on:
        status.problems.append(f"{item.name} is off: turn it on (UI: Automation)")
        return
    if not item.on:
        return  # the schedule is off by default: it emails real brokers
    if tick is None:  # a schedule ticks on its cron (hourly): none yet is no news
        if item.kind == "sensor":
            status.warnings.append(f"{item.name} has not ticked in this instance yet")
        return
    if tick.status == "FAILURE":
        status.problems.append(f"{item.name}: its last tick failed: {tick.message or ''}".strip())
    elif tick.message and "not requested again" in tick.message:
        status.problems.append(f"{item.name}: {tick.message}")
    elif item.kind == "sensor" and now - tick.at > STALE_TICK:
        minutes = int((now - tick.at).total_seconds() // 60)
        status.problems.append(
            f"{item.name} last ticked {minutes} min ago: is the Dagster daemon running?"
        )
