"""One offset-range mechanism for every topic we consume: typed run config and a sensor factory.

A sensor built here compares a topic's end offsets with a consumer group's committed ones (in
Mongo, authoritative) and requests runs over exact `[start, end)` ranges: up to one per lane of
partitions (`INGEST_PARALLEL_RUNS` lanes for ingestion, one for lead delivery), each tagged with
its lane so that the instance's `tag_concurrency_limits` never start two runs of one lane.
Partitions of a run still in flight, or leased by another writer (a backfill shard), wait. A
failed run's range is asked for again under a new run key (Dagster skips a reused key
forever), counted per partition: a partition that failed runs alone until its attempts are
spent, then is reported and left, and the others go on. A run whose lease expired unreleased
(its process was killed) is marked failed here, so its range is asked for again within a
lease's lifetime. A tick makes one ListOffsets call to Kafka, three small Mongo reads and a few
run-storage queries. One that has nothing to request waits, up to SENSOR_WAIT_SECONDS, for a
record (a fetch the broker answers when one is written) or for a run in flight to end, and then
ticks again at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import dagster as dg
from pydantic import Field

from enrollment_pipeline.defs.kafka.resources import KafkaResource
from enrollment_pipeline.defs.mongo.resources import MongoResource
from enrollment_pipeline.defs.settings.resources import PipelineSettingsResource
from enrollment_pipeline.domain.offset_ranges import (
    LaneRun,
    PartitionRange,
    RangePlan,
    partition_range_key,
    plan_lane_runs,
)
from enrollment_pipeline.lib.clients.kafka import KafkaUnavailableError
from enrollment_pipeline.lib.clients.mongo import MongoConnection
from enrollment_pipeline.lib.dagster_runs import FAILED, IN_FLIGHT
from enrollment_pipeline.lib.mongo.layout import PartitionCountChangedError, check_layout
from enrollment_pipeline.lib.mongo.lease import (
    describe_holder,
    live_holders,
    partition_scopes,
    runs_that_died,
    scope_partition,
)
from enrollment_pipeline.lib.mongo.store import EnrollmentStore

# The daemon's sensor loop runs every 5 s (Dagster's MIN_INTERVAL_LOOP_TIME) and paces the
# ticks: a minimum interval below it never makes the loop skip one. A tick with nothing to
# request waits up to SENSOR_WAIT_SECONDS for a record or for a run to end, so what arrives
# meanwhile gets its run at once rather than at the next loop (2.5 s later on average).
SENSOR_INTERVAL_SECONDS = 1

RANGE_TAG = "enrollment/range"
PARTITIONS_TAG = "enrollment/partitions"
ATTEMPT_TAG = "enrollment/attempt"
# One run per lane at a time: the instance's tag_concurrency_limits (dagster.yaml, deploy/).
LANE_TAG = "enrollment/lane"
# The queue starts live ingestion before backfill shards waiting for the same lane.
PRIORITY_TAG = "dagster/priority"
LIVE_PRIORITY = "10"
BACKFILL_PRIORITY = "-10"


def partition_range_tag(partition: int) -> str:
    """The tag naming a run's range of `partition` (`topic@start`): attempts count by it."""
    return f"enrollment/range-p{partition}"


class OffsetRange(dg.Config):
    partition: int = Field(ge=0)
    start: int = Field(ge=0)
    end: int = Field(ge=0)


class OffsetRangeConfig(dg.Config):
    """The exact range a run covers; its sensor fills it in."""

    topic: str
    ranges: list[OffsetRange] = Field(default_factory=list)

    def plan(self) -> RangePlan | None:
        """The range to read; None when the run covers no offsets."""
        if not self.ranges:
            return None
        return RangePlan(
            self.topic,
            tuple(PartitionRange(r.partition, r.start, r.end) for r in self.ranges),
        )

    @staticmethod
    def ranges_of(plan: RangePlan) -> list[OffsetRange]:
        return [OffsetRange(partition=r.partition, start=r.start, end=r.end) for r in plan.ranges]


def range_metadata(plan: RangePlan | None) -> dict[str, str]:
    return {str(r.partition): f"[{r.start}, {r.end})" for r in plan.ranges} if plan else {}


def run_partitions(run: dg.DagsterRun, topic: str) -> set[int]:
    if not run.tags.get(RANGE_TAG, "").startswith(f"{topic}:"):
        return set()
    return {int(p) for p in run.tags.get(PARTITIONS_TAG, "").split(",") if p.strip()}


def runs_in_flight(instance: dg.DagsterInstance, job_name: str) -> list[dg.DagsterRun]:
    return list(instance.get_runs(dg.RunsFilter(job_name=job_name, statuses=IN_FLIGHT)))


def busy_partitions(instance: dg.DagsterInstance, job_name: str, topic: str) -> set[int]:
    """Partitions of `topic` that a run not yet finished covers."""
    return {p for run in runs_in_flight(instance, job_name) for p in run_partitions(run, topic)}


def failures_by_partition(
    instance: dg.DagsterInstance,
    job_name: str,
    topic: str,
    committed: dict[int, int],
    lagging: list[int],
) -> dict[int, int]:
    """Failed runs over each lagging partition's range from its committed start."""
    counts = {}
    for partition in lagging:
        key = partition_range_key(topic, PartitionRange(partition, committed.get(partition, 0), 0))
        failed = instance.get_runs_count(
            dg.RunsFilter(
                job_name=job_name, statuses=FAILED, tags={partition_range_tag(partition): key}
            )
        )
        if failed:
            counts[partition] = failed
    return counts


@dataclass(frozen=True)
class _Wait:
    """What a tick that requested nothing waits for: a record past `ends`, or a run to end."""

    ends: dict[int, int]
    runs: list[str]


def runs_ended(instance: dg.DagsterInstance, run_ids: list[str]) -> bool:
    """Whether one of these runs is no longer in flight."""
    if not run_ids:
        return False
    still = instance.get_runs_count(dg.RunsFilter(run_ids=run_ids, statuses=IN_FLIGHT))
    return still < len(run_ids)


def _run_request(
    run: LaneRun, op_name: str, config_class: type[OffsetRangeConfig], lanes: bool
) -> dg.RunRequest:
    plan = run.plan
    tags = {
        RANGE_TAG: plan.key,
        PARTITIONS_TAG: ",".join(str(p) for p in plan.partitions),
        ATTEMPT_TAG: str(run.attempt),
        **{
            partition_range_tag(r.partition): partition_range_key(plan.topic, r)
            for r in plan.ranges
        },
    }
    if lanes:
        tags |= {LANE_TAG: str(run.lane), PRIORITY_TAG: LIVE_PRIORITY}
    return dg.RunRequest(
        run_key=f"{plan.key}#{','.join(str(r.end) for r in plan.ranges)}#{run.attempt}",
        run_config=dg.RunConfig(
            ops={op_name: config_class(topic=plan.topic, ranges=OffsetRangeConfig.ranges_of(plan))}
        ),
        tags=tags,
    )


def offset_range_sensor(
    *,
    name: str,
    job: dg.JobDefinition | dg.UnresolvedAssetJobDefinition,
    group: str,
    topic: Callable[[PipelineSettingsResource], str],
    max_events: Callable[[PipelineSettingsResource], int],
    max_attempts: Callable[[PipelineSettingsResource], int],
    op_name: str,
    config_class: type[OffsetRangeConfig] = OffsetRangeConfig,
    description: str,
    when_idle: Callable[
        [dg.SensorEvaluationContext, MongoConnection, PipelineSettingsResource],
        dg.RunRequest | None,
    ]
    | None = None,
    writes_read_model: bool = False,
    lanes: Callable[[PipelineSettingsResource], int] = lambda settings: 1,
    minimum_interval_seconds: int = SENSOR_INTERVAL_SECONDS,
) -> dg.SensorDefinition:
    """A sensor that keeps `group` caught up on `topic` by launching `job` over exact ranges;
    the range goes to the op `op_name` as its `config_class` (an `OffsetRangeConfig`).

    `when_idle` may ask for a run when nothing is lagging (lead delivery retries its parked
    leads that way). `lanes` gives the number of runs in flight at once (each over partitions
    `p % lanes == lane`, tagged with its lane). A sensor of the read model's writers
    (`writes_read_model`) records and checks the topic's partition count, waits for partitions
    another writer leases, and fails its runs whose lease expired unreleased.
    """

    def _tick(
        context: dg.SensorEvaluationContext,
        kafka: KafkaResource,
        mongo: MongoResource,
        settings: PipelineSettingsResource,
    ) -> tuple[dg.SensorResult | dg.SkipReason, _Wait | None]:
        """The tick's answer, and what to wait for when it requests nothing."""
        topic_name = topic(settings)
        ends = kafka.get_client().end_offsets(topic_name)
        db = mongo.get_client()
        in_flight = runs_in_flight(context.instance, job.name)
        held: dict[int, str] = {}
        layout = None
        with db.explained_errors():
            if writes_read_model:
                try:
                    layout = check_layout(db.db(), topic_name, len(ends))
                except PartitionCountChangedError as exc:
                    context.log.error(str(exc))
                    return dg.SkipReason(str(exc)), None
                ours = {run.run_id for run in in_flight}
                for scope, doc in live_holders(db.db(), partition_scopes(ends)).items():
                    partition = scope_partition(scope)
                    if partition is not None and doc.get("run_id") not in ours:
                        held[partition] = describe_holder(doc)
                for run_id in runs_that_died(db.db(), ours):
                    (dead,) = [run for run in in_flight if run.run_id == run_id]
                    message = (
                        f"run {run_id} stopped renewing its lease of partitions "
                        f"{dead.tags.get(PARTITIONS_TAG)} (its process died); marked failed "
                        "so that its range is requested again"
                    )
                    context.log.warning(message)
                    context.instance.report_run_failed(dead, message)
                    in_flight.remove(dead)
            committed = EnrollmentStore.of(db).committed_offsets(group, topic_name)
        busy = {p for run in in_flight for p in run_partitions(run, topic_name)}
        lagging = [p for p in sorted(ends) if ends[p] > committed.get(p, 0)]
        plans = plan_lane_runs(
            topic_name,
            committed=committed,
            ends=ends,
            busy=busy | set(held),
            max_events=max_events(settings),
            # Just after a change of partition count an application may have records on an
            # old and a new partition: one lane until the old records are applied.
            lanes=1 if layout is not None and layout.draining(committed) else lanes(settings),
            failures=failures_by_partition(
                context.instance, job.name, topic_name, committed, lagging
            ),
            max_attempts=max_attempts(settings),
        )
        stuck_messages = [
            f"partition {stuck.partition} of {topic_name} from offset {stuck.start} failed "
            f"{stuck.failures} times; not requested again. Inspect the failed runs, fix the "
            "cause, then rerun one from the UI or reset the offsets"
            for stuck in plans.stuck
        ]
        for message in stuck_messages:
            context.log.error(message)
        if plans.runs:
            requests = [
                _run_request(run, op_name, config_class, lanes=writes_read_model)
                for run in plans.runs
            ]
            return dg.SensorResult(run_requests=requests), None
        if not lagging:
            idle = when_idle(context, db, settings) if when_idle else None
            if idle is not None:
                return dg.SensorResult(run_requests=[idle]), None
            return dg.SkipReason("no new records"), _Wait(ends, [])
        reasons = list(stuck_messages)
        if held:
            holders = sorted(set(held.values()))
            reasons.append(
                f"partitions {sorted(held)} are being written by {'; '.join(holders)}; waiting"
            )
        if busy:
            reasons.append(f"partitions {sorted(busy)} have a run in flight")
        skip = dg.SkipReason("; ".join(reasons) or "nothing to request")
        if not in_flight:
            return skip, None
        free = {p: end for p, end in ends.items() if p not in busy and p not in held}
        return skip, _Wait(free, [run.run_id for run in in_flight])

    @dg.sensor(
        name=name,
        job=job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=description,
    )
    def _sensor(
        context: dg.SensorEvaluationContext,
        kafka: KafkaResource,
        mongo: MongoResource,
        settings: PipelineSettingsResource,
    ) -> dg.SensorResult | dg.SkipReason:
        # Nothing to request yet: wait within this tick for a record or for a run in flight to
        # end, and tick again at once, rather than at the daemon's next loop.
        deadline = time.monotonic() + settings.sensor_wait_seconds
        result, wait = _tick(context, kafka, mongo, settings)
        while wait is not None and (left := deadline - time.monotonic()) > 0:
            try:
                changed = kafka.get_client().wait_for_records(
                    topic(settings),
                    wait.ends,
                    timeout_s=left,
                    or_until=partial(runs_ended, context.instance, wait.runs),
                )
            except KafkaUnavailableError as exc:  # the tick's answer stands; the next one says
                context.log.warning(f"stopped waiting for records: {exc}")
                break
            if not changed:
                break
            result, wait = _tick(context, kafka, mongo, settings)
        return result

    return _sensor
